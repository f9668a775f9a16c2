// Linux clone_file: ioctl(FICLONE) (XFS with reflink=1, btrfs, bcachefs, OCFS2, ...), else a
// hole-preserving copy (SEEK_DATA/SEEK_HOLE + copy_file_range, pread/pwrite as fallback).
#include "agent_swarm/clone.hpp"

#include <cerrno>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "io.hpp"
#include "posix_copy.hpp"

// Old kernel headers (manylinux build images) may lack these.
#ifndef FICLONE
#define FICLONE _IOW(0x94, 9, int)
#endif
#if defined(__NR_copy_file_range)
#define AS_NR_COPY_FILE_RANGE __NR_copy_file_range
#elif defined(__x86_64__)
#define AS_NR_COPY_FILE_RANGE 326
#elif defined(__aarch64__)
#define AS_NR_COPY_FILE_RANGE 285
#endif

namespace agent_swarm {
namespace {

bool reflink_unsupported(int e) {
    return e == EOPNOTSUPP || e == ENOTSUP || e == EXDEV || e == EINVAL || e == ENOTTY ||
           e == ENOSYS;
}

// copy_file_range for [off, off+len). Returns false (nothing or part copied; `off`/`len`
// updated) when the kernel or filesystem can't do it, so the caller falls back.
bool copy_range_cfr(const io::File& in, const io::File& out, uint64_t& off, uint64_t& len) {
#ifdef AS_NR_COPY_FILE_RANGE
    while (len > 0) {
        loff_t in_off = loff_t(off), out_off = loff_t(off);
        size_t chunk = size_t(len < (1ull << 30) ? len : (1ull << 30));
        long n = ::syscall(AS_NR_COPY_FILE_RANGE, in.fd(), &in_off, out.fd(), &out_off, chunk, 0u);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP ||
                errno == ENOTSUP || errno == EBADF || errno == EPERM)
                return false;
            throw_errno("cannot copy data", in.path(), out.path());
        }
        if (n == 0) {  // source shrank underneath us
            len = 0;
            return true;
        }
        off += uint64_t(n);
        len -= uint64_t(n);
    }
    return true;
#else
    (void)in; (void)out; (void)off; (void)len;
    return false;
#endif
}

}  // namespace

CloneMethod clone_file(const std::string& src, const std::string& dst, CloneMode mode,
                       bool overwrite) {
    if (src.empty()) throw std::invalid_argument("source path is empty");
    if (dst.empty()) throw std::invalid_argument("destination path is empty");

    // Refuse FIFOs and devices before open(2), which would block on a FIFO.
    struct stat pre {};
    if (::stat(src.c_str(), &pre) != 0) throw_errno("cannot open", src);
    if (S_ISDIR(pre.st_mode)) throw PathError(EISDIR, "source is a directory", src);
    if (!S_ISREG(pre.st_mode)) throw PathError(EINVAL, "source is not a regular file", src);

    io::File in = io::File::open_read(src);
    struct stat st {};
    if (::fstat(in.fd(), &st) != 0) throw_errno("cannot stat", src);
    if (!S_ISREG(st.st_mode)) throw PathError(EINVAL, "source is not a regular file", src);

    io::AtomicOutput out(dst, overwrite);
    const io::File& of = out.file();

    if (mode != CloneMode::Copy) {
        if (::ioctl(of.fd(), FICLONE, in.fd()) == 0) {
            out.set_mode(unsigned(st.st_mode) & 07777);
            out.commit();
            return CloneMethod::Reflink;
        }
        int e = errno;
        if (mode == CloneMode::Reflink) {
            if (reflink_unsupported(e))
                throw PathError(e,
                                "reflink not supported here (filesystem does not share extents, "
                                "or src and dst are on different filesystems)",
                                src, dst);
            throw PathError(e, "cannot reflink", src, dst);
        }
        if (!reflink_unsupported(e)) throw PathError(e, "cannot reflink", src, dst);
    }

    // Hole-preserving copy. In Copy mode, plain reads and writes: copy_file_range would
    // share extents on XFS/btrfs, and Copy promises independent blocks.
    const uint64_t size = uint64_t(st.st_size);
    bool use_cfr = mode == CloneMode::Auto;
    std::vector<uint8_t> buf;
    posix::for_each_data_segment(in.fd(), src, size, [&](uint64_t off, uint64_t len) {
        if (use_cfr && copy_range_cfr(in, of, off, len)) return;
        use_cfr = false;
        posix::copy_range_rw(in, of, off, len, buf);
    });
    of.truncate(size);  // trailing holes stay holes
    out.set_mode(unsigned(st.st_mode) & 07777);
    out.commit();
    return CloneMethod::Copy;
}

}  // namespace agent_swarm
