// Windows clone_file: ReFS block cloning (FSCTL_DUPLICATE_EXTENTS_TO_FILE), else a copy that
// keeps holes (FSCTL_QUERY_ALLOCATED_RANGES + a sparse destination).
//
// Block-cloning rules (learn.microsoft.com, "Block Cloning"): source and destination regions
// begin and end on a cluster boundary; one call clones less than 4 GiB; the destination
// region must lie inside the destination's end of file (so size it first); both files on
// the same ReFS volume with the same integrity-stream setting; a sparse source needs a
// sparse destination.
#include "agent_swarm/clone.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <windows.h>
#include <winioctl.h>
#include <io.h>
#include <sys/stat.h>

#include "io.hpp"

// Not in every SDK (MinGW's winioctl.h lacks them): values from the Windows SDK.
#ifndef FSCTL_DUPLICATE_EXTENTS_TO_FILE
#define FSCTL_DUPLICATE_EXTENTS_TO_FILE \
    CTL_CODE(FILE_DEVICE_FILE_SYSTEM, 209, METHOD_BUFFERED, FILE_WRITE_DATA)
#endif
#ifndef FSCTL_GET_INTEGRITY_INFORMATION
#define FSCTL_GET_INTEGRITY_INFORMATION \
    CTL_CODE(FILE_DEVICE_FILE_SYSTEM, 159, METHOD_BUFFERED, FILE_ANY_ACCESS)
#endif
#ifndef FSCTL_SET_INTEGRITY_INFORMATION
#define FSCTL_SET_INTEGRITY_INFORMATION \
    CTL_CODE(FILE_DEVICE_FILE_SYSTEM, 160, METHOD_BUFFERED, FILE_READ_DATA | FILE_WRITE_DATA)
#endif
#ifndef FILE_SUPPORTS_BLOCK_REFCOUNTING
#define FILE_SUPPORTS_BLOCK_REFCOUNTING 0x08000000
#endif
#ifndef ERROR_BLOCK_TOO_MANY_REFERENCES
#define ERROR_BLOCK_TOO_MANY_REFERENCES 347L
#endif
// The values the Windows SDK's winioctl.h has (whichever header defined them here).
static_assert(FSCTL_DUPLICATE_EXTENTS_TO_FILE == 0x98344, "FSCTL_DUPLICATE_EXTENTS_TO_FILE");
static_assert(FSCTL_GET_INTEGRITY_INFORMATION == 0x9027C, "FSCTL_GET_INTEGRITY_INFORMATION");
static_assert(FSCTL_SET_INTEGRITY_INFORMATION == 0x9C280, "FSCTL_SET_INTEGRITY_INFORMATION");

namespace agent_swarm {
namespace {

// Same layouts as the SDK's DUPLICATE_EXTENTS_DATA and FSCTL_{GET,SET}_INTEGRITY_INFORMATION_BUFFER.
struct DuplicateExtentsData {
    HANDLE FileHandle;
    LARGE_INTEGER SourceFileOffset;
    LARGE_INTEGER TargetFileOffset;
    LARGE_INTEGER ByteCount;
};
struct GetIntegrityInfo {
    WORD ChecksumAlgorithm;
    WORD Reserved;
    DWORD Flags;
    DWORD ChecksumChunkSizeInBytes;
    DWORD ClusterSizeInBytes;
};
struct SetIntegrityInfo {
    WORD ChecksumAlgorithm;
    WORD Reserved;
    DWORD Flags;
};
static_assert(sizeof(DuplicateExtentsData) == 4 * 8 || sizeof(void*) != 8,
              "DUPLICATE_EXTENTS_DATA is 32 bytes on 64-bit Windows");

HANDLE os_handle(const io::File& f) { return reinterpret_cast<HANDLE>(_get_osfhandle(f.fd())); }

bool set_size(HANDLE h, uint64_t size) {
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = LONGLONG(size);
    return SetFileInformationByHandle(h, FileEndOfFileInfo, &eof, sizeof eof) != 0;
}

bool set_sparse(HANDLE h) {
    FILE_SET_SPARSE_BUFFER b{};
    b.SetSparse = TRUE;
    DWORD ret = 0;
    return DeviceIoControl(h, FSCTL_SET_SPARSE, &b, sizeof b, nullptr, 0, &ret, nullptr) != 0;
}

// Errors that mean "this volume/file pair can't be block-cloned" (fall back in Auto mode).
bool clone_unsupported(DWORD err) {
    return err == ERROR_NOT_SUPPORTED || err == ERROR_INVALID_FUNCTION ||
           err == ERROR_NOT_SAME_DEVICE || err == ERROR_INVALID_PARAMETER ||
           err == ERROR_BLOCK_TOO_MANY_REFERENCES;
}

uint64_t cluster_size_of(const std::string& path) {
    std::wstring w = io::win_path(io::absolute(path));
    std::vector<wchar_t> root(w.size() + 2);
    if (!GetVolumePathNameW(w.c_str(), root.data(), DWORD(root.size()))) return 0;
    DWORD spc = 0, bps = 0, free_clusters = 0, total = 0;
    if (!GetDiskFreeSpaceW(root.data(), &spc, &bps, &free_clusters, &total)) return 0;
    return uint64_t(spc) * bps;
}

// Clone all of src into dst (empty, open for writing). Returns ERROR_SUCCESS or the Win32
// error that stopped it; on failure dst may hold partial data (the caller resets it).
DWORD block_clone(HANDLE src, HANDLE dst, uint64_t size, bool src_sparse,
                  const std::string& dst_path) {
    DWORD fs_flags = 0;
    if (!GetVolumeInformationByHandleW(dst, nullptr, 0, nullptr, nullptr, &fs_flags, nullptr, 0))
        return GetLastError();
    if (!(fs_flags & FILE_SUPPORTS_BLOCK_REFCOUNTING)) return ERROR_NOT_SUPPORTED;
    BY_HANDLE_FILE_INFORMATION si{}, di{};
    if (!GetFileInformationByHandle(src, &si) || !GetFileInformationByHandle(dst, &di))
        return GetLastError();
    if (si.dwVolumeSerialNumber != di.dwVolumeSerialNumber) return ERROR_NOT_SAME_DEVICE;

    // Cluster size, and the destination's integrity streams set like the source's.
    uint64_t cluster = 0;
    GetIntegrityInfo src_integrity{}, dst_integrity{};
    DWORD ret = 0;
    if (DeviceIoControl(src, FSCTL_GET_INTEGRITY_INFORMATION, nullptr, 0, &src_integrity,
                        sizeof src_integrity, &ret, nullptr)) {
        cluster = src_integrity.ClusterSizeInBytes;
        if (DeviceIoControl(dst, FSCTL_GET_INTEGRITY_INFORMATION, nullptr, 0, &dst_integrity,
                            sizeof dst_integrity, &ret, nullptr) &&
            (dst_integrity.ChecksumAlgorithm != src_integrity.ChecksumAlgorithm ||
             dst_integrity.Flags != src_integrity.Flags)) {
            SetIntegrityInfo set{};
            set.ChecksumAlgorithm = src_integrity.ChecksumAlgorithm;
            set.Flags = src_integrity.Flags;
            if (!DeviceIoControl(dst, FSCTL_SET_INTEGRITY_INFORMATION, &set, sizeof set, nullptr,
                                 0, &ret, nullptr))
                return GetLastError();
        }
    }
    if (cluster == 0) cluster = cluster_size_of(dst_path);
    if (cluster == 0 || (cluster & (cluster - 1))) return ERROR_NOT_SUPPORTED;

    if (src_sparse && !set_sparse(dst)) return GetLastError();
    const uint64_t aligned = (size + cluster - 1) / cluster * cluster;
    if (!set_size(dst, aligned)) return GetLastError();
    const uint64_t max_chunk = ((uint64_t(1) << 32) - 1) / cluster * cluster;  // < 4 GiB
    for (uint64_t off = 0; off < aligned;) {
        DuplicateExtentsData dd{};
        dd.FileHandle = src;
        dd.SourceFileOffset.QuadPart = LONGLONG(off);
        dd.TargetFileOffset.QuadPart = LONGLONG(off);
        uint64_t n = std::min(max_chunk, aligned - off);
        dd.ByteCount.QuadPart = LONGLONG(n);
        if (!DeviceIoControl(dst, FSCTL_DUPLICATE_EXTENTS_TO_FILE, &dd, sizeof dd, nullptr, 0,
                             &ret, nullptr))
            return GetLastError();
        off += n;
    }
    if (!set_size(dst, size)) return GetLastError();
    return ERROR_SUCCESS;
}

// Allocated (data) ranges of src below size; the whole file when the filesystem can't say.
std::vector<std::pair<uint64_t, uint64_t>> data_ranges(HANDLE src, uint64_t size) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    FILE_ALLOCATED_RANGE_BUFFER query{};
    query.FileOffset.QuadPart = 0;
    query.Length.QuadPart = LONGLONG(size);
    std::vector<FILE_ALLOCATED_RANGE_BUFFER> buf(256);
    while (size > 0) {
        DWORD ret = 0;
        BOOL ok = DeviceIoControl(src, FSCTL_QUERY_ALLOCATED_RANGES, &query, sizeof query,
                                  buf.data(), DWORD(buf.size() * sizeof buf[0]), &ret, nullptr);
        DWORD err = ok ? ERROR_SUCCESS : GetLastError();
        if (!ok && err != ERROR_MORE_DATA) return {{0, size}};
        size_t n = ret / sizeof buf[0];
        for (size_t i = 0; i < n; ++i)
            out.emplace_back(uint64_t(buf[i].FileOffset.QuadPart), uint64_t(buf[i].Length.QuadPart));
        if (err != ERROR_MORE_DATA || n == 0) break;
        uint64_t next = out.back().first + out.back().second;
        if (next >= size) break;
        query.FileOffset.QuadPart = LONGLONG(next);
        query.Length.QuadPart = LONGLONG(size - next);
    }
    return out;
}

bool all_zero(const uint8_t* p, size_t n) {
    return std::all_of(p, p + n, [](uint8_t b) { return b == 0; });
}

void sparse_copy(const io::File& in, const io::File& out, uint64_t size) {
    HANDLE hs = os_handle(in), hd = os_handle(out);
    // A sparse destination keeps holes; zero chunks are then skipped as well.
    DWORD fs_flags = 0;
    bool sparse = GetVolumeInformationByHandleW(hd, nullptr, 0, nullptr, nullptr, &fs_flags,
                                                nullptr, 0) &&
                  (fs_flags & FILE_SUPPORTS_SPARSE_FILES) && set_sparse(hd);
    std::vector<uint8_t> buf(1u << 20);
    for (auto [off, len] : data_ranges(hs, size)) {
        if (off >= size) break;
        len = std::min(len, size - off);
        while (len > 0) {
            size_t want = size_t(std::min<uint64_t>(len, buf.size()));
            size_t got = in.pread(buf.data(), want, off);
            if (got == 0) break;
            if (!sparse || !all_zero(buf.data(), got)) out.pwrite_all(buf.data(), got, off);
            off += got;
            len -= got;
            if (got < want) break;
        }
    }
    if (!set_size(hd, size))
        throw PathError(io::errno_from_win32(GetLastError()), "cannot resize", out.path());
}

}  // namespace

CloneMethod clone_file(const std::string& src, const std::string& dst, CloneMode mode,
                       bool overwrite) {
    if (src.empty()) throw std::invalid_argument("source path is empty");
    if (dst.empty()) throw std::invalid_argument("destination path is empty");

    io::File in = io::File::open_read(src);
    struct _stat64 st {};
    if (_fstat64(in.fd(), &st) != 0) throw_errno("cannot stat", src);
    if ((st.st_mode & _S_IFMT) != _S_IFREG)
        throw PathError(EINVAL, "source is not a regular file", src);
    const uint64_t size = uint64_t(st.st_size);

    io::AtomicOutput out(dst, overwrite);
    HANDLE hs = os_handle(in), hd = os_handle(out.file());
    if (hs == INVALID_HANDLE_VALUE || hd == INVALID_HANDLE_VALUE)
        throw PathError(EBADF, "cannot get a file handle", src, dst);

    if (mode != CloneMode::Copy) {
        BY_HANDLE_FILE_INFORMATION si{};
        bool src_sparse = GetFileInformationByHandle(hs, &si) &&
                          (si.dwFileAttributes & FILE_ATTRIBUTE_SPARSE_FILE);
        DWORD err = block_clone(hs, hd, size, src_sparse, out.temp_path());
        if (err == ERROR_SUCCESS) {
            out.set_mode(unsigned(st.st_mode) & 07777);
            out.commit();
            return CloneMethod::Reflink;
        }
        int e = io::errno_from_win32(err);
        if (!clone_unsupported(err)) throw PathError(e, "cannot clone blocks", src, dst);
        if (mode == CloneMode::Reflink)
            throw PathError(err == ERROR_NOT_SAME_DEVICE ? EXDEV : EOPNOTSUPP,
                            "reflink not supported here (filesystem does not share extents, "
                            "or src and dst are on different filesystems)",
                            src, dst);
        if (!set_size(hd, 0))  // drop whatever a partial clone left
            throw PathError(io::errno_from_win32(GetLastError()), "cannot resize", dst);
    }

    sparse_copy(in, out.file(), size);
    out.set_mode(unsigned(st.st_mode) & 07777);
    out.commit();
    return CloneMethod::Copy;
}

}  // namespace agent_swarm
