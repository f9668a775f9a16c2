// Internal (POSIX only: Linux and macOS): hole-preserving copy helpers for clone_file's
// fallback. Header-only so both clone_linux.cpp and clone_darwin.cpp share one tested loop.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include "io.hpp"

#ifndef SEEK_DATA
#define SEEK_DATA 3
#endif
#ifndef SEEK_HOLE
#define SEEK_HOLE 4
#endif

namespace agent_swarm::posix {

inline bool all_zero(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (p[i]) return false;
    return true;
}

// Copy [off, off + len) of `in` to the same offsets of `out` with pread/pwrite. All-zero
// chunks are not written: `out` is a new file that the caller extends to its final size, so
// they read back as zeros and stay holes. Stops early if `in` shrinks.
inline void copy_range_rw(const io::File& in, const io::File& out, uint64_t off, uint64_t len,
                          std::vector<uint8_t>& buf) {
    if (buf.empty()) buf.resize(1u << 20);
    while (len > 0) {
        size_t want = size_t(len < buf.size() ? len : buf.size());
        size_t got = in.pread(buf.data(), want, off);
        if (got == 0) return;  // source shrank underneath us
        if (!all_zero(buf.data(), got)) out.pwrite_all(buf.data(), got, off);
        off += got;
        len -= got;
        if (got < want) return;
    }
}

// Call fn(offset, length) for each data segment of `fd` below `size`, found with
// SEEK_DATA/SEEK_HOLE. When the filesystem can't report holes the whole file is one segment.
template <class Fn>
void for_each_data_segment(int fd, const std::string& path, uint64_t size, Fn&& fn) {
    uint64_t off = 0;
    while (off < size) {
        off_t data = ::lseek(fd, off_t(off), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) return;  // only a hole remains
            if (errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) {
                fn(off, size - off);  // no hole support: treat the rest as data
                return;
            }
            throw_errno("cannot look for data (SEEK_DATA)", path);
        }
        if (uint64_t(data) >= size) return;
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        uint64_t end = hole < 0 ? size : uint64_t(hole);
        if (end > size) end = size;
        if (end <= uint64_t(data)) return;
        fn(uint64_t(data), end - uint64_t(data));
        off = end;
    }
}

}  // namespace agent_swarm::posix
