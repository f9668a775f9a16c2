#include "io.hpp"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <random>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef _WIN32
#include <direct.h>
#include <io.h>
#include <windows.h>
#define AS_O_BINARY O_BINARY
#else
#include <unistd.h>
#define AS_O_BINARY 0
#endif
#ifndef O_CLOEXEC
#ifdef _WIN32
#define O_CLOEXEC _O_NOINHERIT
#else
#define O_CLOEXEC 0
#endif
#endif

namespace agent_swarm::io {

#ifdef _WIN32
// Paths are UTF-8 (Python's filesystem encoding on Windows); the narrow CRT functions would
// read them in the ANSI code page, so every path goes through the wide API.
std::wstring widen(const std::string& utf8) {
    if (utf8.empty()) return {};
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8.data(), int(utf8.size()),
                                nullptr, 0);
    if (n <= 0) throw std::invalid_argument("path is not valid UTF-8: " + utf8);
    std::wstring w(size_t(n), L'\0');
    MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8.data(), int(utf8.size()), &w[0], n);
    return w;
}

std::string narrow(const std::wstring& utf16) {
    if (utf16.empty()) return {};
    int n = WideCharToMultiByte(CP_UTF8, 0, utf16.data(), int(utf16.size()), nullptr, 0, nullptr,
                                nullptr);
    std::string s(size_t(n > 0 ? n : 0), '\0');
    if (n > 0)
        WideCharToMultiByte(CP_UTF8, 0, utf16.data(), int(utf16.size()), &s[0], n, nullptr,
                            nullptr);
    return s;
}

int errno_from_win32(unsigned long err) {
    switch (err) {
        case ERROR_FILE_NOT_FOUND:
        case ERROR_PATH_NOT_FOUND:
        case ERROR_INVALID_DRIVE:
        case ERROR_BAD_NETPATH:
            return ENOENT;
        case ERROR_ACCESS_DENIED:
        case ERROR_SHARING_VIOLATION:
        case ERROR_LOCK_VIOLATION:
            return EACCES;
        case ERROR_ALREADY_EXISTS:
        case ERROR_FILE_EXISTS:
            return EEXIST;
        case ERROR_NOT_SAME_DEVICE:
            return EXDEV;
        case ERROR_DISK_FULL:
        case ERROR_HANDLE_DISK_FULL:
            return ENOSPC;
        case ERROR_NOT_SUPPORTED:
        case ERROR_INVALID_FUNCTION:
            return EOPNOTSUPP;
        case ERROR_INVALID_PARAMETER:
        case ERROR_INVALID_NAME:
            return EINVAL;
        case ERROR_WRITE_PROTECT:
            return EROFS;
        case ERROR_FILENAME_EXCED_RANGE:
            return ENAMETOOLONG;
        case ERROR_DIRECTORY:
            return ENOTDIR;
        default:
            return EIO;
    }
}

std::wstring win_path(const std::string& utf8) {
    std::wstring w = widen(utf8);
    auto verbatim = [](const std::wstring& s) {
        return s.compare(0, 4, L"\\\\?\\") == 0 || s.compare(0, 4, L"\\\\.\\") == 0;
    };
    // 248, not 260: CreateDirectoryW leaves room for an 8.3 name (Rust's std does the same).
    if (w.size() < 248 || verbatim(w)) return w;
    DWORD n = GetFullPathNameW(w.c_str(), 0, nullptr, nullptr);
    if (n == 0) return w;  // let the call that uses it fail with the real error
    std::wstring full(n, L'\0');
    n = GetFullPathNameW(w.c_str(), n, &full[0], nullptr);
    if (n == 0 || n >= full.size()) return w;
    full.resize(n);
    if (verbatim(full)) return full;
    if (full.compare(0, 2, L"\\\\") == 0) return L"\\\\?\\UNC\\" + full.substr(2);
    return L"\\\\?\\" + full;
}
#endif

namespace {
#ifdef _WIN32
// CreateFileW and friends on win_path(): UTF-8 names and paths longer than MAX_PATH (the CRT's
// _wopen/_wstat64 would pass a long path through unprefixed, and fail on it).
using stat_t = struct _stat64;
int do_fstat(int fd, stat_t* st) { return _fstat64(fd, st); }
int fail_win32() {
    errno = errno_from_win32(GetLastError());
    return -1;
}
// Only what callers read: the file type (and size). Like lstat, a symlink is not followed.
int do_lstat(const char* p, stat_t* st) {
    WIN32_FILE_ATTRIBUTE_DATA a{};
    if (!GetFileAttributesExW(win_path(p).c_str(), GetFileExInfoStandard, &a)) return fail_win32();
    *st = stat_t{};
    st->st_mode = (a.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) ? _S_IFDIR : _S_IFREG;
    st->st_size = int64_t(uint64_t(a.nFileSizeHigh) << 32 | a.nFileSizeLow);
    return 0;
}
// O_RDONLY or O_RDWR, with O_CREAT|O_EXCL; `mode` is POSIX-only. The handle is not inherited
// by child processes (like O_CLOEXEC), and the file can be renamed or deleted while open.
int do_open(const std::string& p, int flags, int mode = 0) {
    (void)mode;
    const bool write = (flags & (O_WRONLY | O_RDWR)) != 0;
    const DWORD disposition =
        (flags & O_CREAT) ? ((flags & O_EXCL) ? CREATE_NEW : OPEN_ALWAYS) : OPEN_EXISTING;
    HANDLE h = CreateFileW(win_path(p).c_str(), GENERIC_READ | (write ? GENERIC_WRITE : 0),
                           FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                           disposition, FILE_ATTRIBUTE_NORMAL, nullptr);
    if (h == INVALID_HANDLE_VALUE) return fail_win32();
    int fd = _open_osfhandle(intptr_t(h), _O_BINARY);  // access comes from the handle
    if (fd < 0) {
        CloseHandle(h);
        errno = EMFILE;
    }
    return fd;
}
int do_unlink(const std::string& p) {
    return DeleteFileW(win_path(p).c_str()) ? 0 : fail_win32();
}
#else
using stat_t = struct stat;
int do_fstat(int fd, stat_t* st) { return ::fstat(fd, st); }
int do_lstat(const char* p, stat_t* st) { return ::lstat(p, st); }
int do_open(const std::string& p, int flags, int mode = 0) { return ::open(p.c_str(), flags, mode); }
int do_unlink(const std::string& p) { return ::unlink(p.c_str()); }
#endif
}  // namespace

File File::open_read(const std::string& path) {
    int fd = do_open(path, O_RDONLY | O_CLOEXEC | AS_O_BINARY);
    if (fd < 0) {
#ifdef _WIN32
        // Windows refuses to open a directory as a file with EACCES.
        int e = errno;
        stat_t st{};
        if (e == EACCES && do_lstat(path.c_str(), &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
            throw PathError(EISDIR, "is a directory", path);
        errno = e;
#endif
        throw_errno("cannot open", path);
    }
    File f(fd, path);
    stat_t st{};
    if (do_fstat(fd, &st) != 0) throw_errno("cannot stat", path);
    if ((st.st_mode & S_IFMT) == S_IFDIR) throw PathError(EISDIR, "is a directory", path);
    return f;
}

File& File::operator=(File&& o) noexcept {
    if (this != &o) {
        close();
        fd_ = o.fd_;
        path_ = std::move(o.path_);
        o.fd_ = -1;
    }
    return *this;
}

File::~File() { close(); }

void File::close() {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
}

uint64_t File::size() const {
    stat_t st{};
    if (do_fstat(fd_, &st) != 0) throw_errno("cannot stat", path_);
    return uint64_t(st.st_size);
}

uint64_t File::allocated_bytes() const {
    stat_t st{};
    if (do_fstat(fd_, &st) != 0) throw_errno("cannot stat", path_);
#ifdef _WIN32
    return uint64_t(st.st_size);
#else
    return uint64_t(st.st_blocks) * 512u;
#endif
}

FileId File::id() const {
#ifdef _WIN32
    BY_HANDLE_FILE_INFORMATION fi{};
    auto h = reinterpret_cast<HANDLE>(_get_osfhandle(fd_));
    if (h == INVALID_HANDLE_VALUE || !GetFileInformationByHandle(h, &fi)) {
        errno = EIO;
        throw_errno("cannot stat", path_);
    }
    return FileId{fi.dwVolumeSerialNumber, uint64_t(fi.nFileIndexHigh) << 32 | fi.nFileIndexLow};
#else
    stat_t st{};
    if (do_fstat(fd_, &st) != 0) throw_errno("cannot stat", path_);
    return FileId{uint64_t(st.st_dev), uint64_t(st.st_ino)};
#endif
}

size_t File::pread(void* buf, size_t n, uint64_t off) const {
    auto* p = static_cast<uint8_t*>(buf);
    size_t done = 0;
    while (done < n) {
#ifdef _WIN32
        if (_lseeki64(fd_, int64_t(off + done), SEEK_SET) < 0) throw_errno("cannot seek", path_);
        int r = ::_read(fd_, p + done, unsigned(std::min<size_t>(n - done, 1u << 30)));
#else
        ssize_t r = ::pread(fd_, p + done, n - done, off_t(off + done));
#endif
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno("cannot read", path_);
        }
        if (r == 0) break;
        done += size_t(r);
    }
    return done;
}

void File::pread_exact(void* buf, size_t n, uint64_t off, const char* what) const {
    if (pread(buf, n, off) != n)
        throw ImageError(path_, std::string("truncated image: cannot read ") + what);
}

void File::pwrite_all(const void* buf, size_t n, uint64_t off) const {
    auto* p = static_cast<const uint8_t*>(buf);
    size_t done = 0;
    while (done < n) {
#ifdef _WIN32
        if (_lseeki64(fd_, int64_t(off + done), SEEK_SET) < 0) throw_errno("cannot seek", path_);
        int r = ::_write(fd_, p + done, unsigned(std::min<size_t>(n - done, 1u << 30)));
#else
        ssize_t r = ::pwrite(fd_, p + done, n - done, off_t(off + done));
#endif
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno("cannot write", path_);
        }
        done += size_t(r);
    }
}

void File::truncate(uint64_t size) const {
#ifdef _WIN32
    // Not _chsize_s: it writes zeros to extend a file, which defeats sparse files.
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = LONGLONG(size);
    HANDLE h = reinterpret_cast<HANDLE>(_get_osfhandle(fd_));
    if (h == INVALID_HANDLE_VALUE ||
        !SetFileInformationByHandle(h, FileEndOfFileInfo, &eof, sizeof eof))
        throw PathError(errno_from_win32(GetLastError()), "cannot resize", path_);
#else
    if (::ftruncate(fd_, off_t(size)) != 0) throw_errno("cannot resize", path_);
#endif
}

void File::sync() const {
#ifdef _WIN32
    if (_commit(fd_) != 0) throw_errno("cannot flush", path_);
#else
    if (::fsync(fd_) != 0) throw_errno("cannot flush", path_);
#endif
}

bool exists(const std::string& path) {
    stat_t st{};
    return do_lstat(path.c_str(), &st) == 0;
}

bool is_absolute(const std::string& path) {
#ifdef _WIN32
    return (path.size() > 2 && path[1] == ':' && (path[2] == '\\' || path[2] == '/')) ||
           (path.size() > 1 && (path[0] == '\\' || path[0] == '/'));
#else
    return !path.empty() && path[0] == '/';
#endif
}

static bool is_sep(char c) {
#ifdef _WIN32
    return c == '/' || c == '\\';
#else
    return c == '/';
#endif
}

// The separator joins use: '\\' on Windows, where a `\\?\` path takes no '/'.
#ifdef _WIN32
static const char* const kSep = "\\";
#else
static const char* const kSep = "/";
#endif

std::string dirname(const std::string& path) {
    size_t i = path.size();
    while (i > 0 && !is_sep(path[i - 1])) --i;
    if (i == 0) return ".";
    size_t j = i;
    while (j > 1 && is_sep(path[j - 1])) --j;
    return path.substr(0, j);
}

std::string resolve_relative(const std::string& base_file, const std::string& rel) {
    if (is_absolute(rel)) return rel;
    std::string d = dirname(base_file);
    if (d == ".") return rel;
    return is_sep(d.back()) ? d + rel : d + kSep + rel;  // "/" or "C:\\": no doubled separator
}

std::string absolute(const std::string& path) {
    if (is_absolute(path)) return path;
#ifdef _WIN32
    wchar_t* cwd = _wgetcwd(nullptr, 0);
    if (!cwd) throw_errno("cannot get current directory", path);
    std::string d = narrow(cwd);
    free(cwd);
#else
    char buf[4096];
    if (!::getcwd(buf, sizeof buf)) throw_errno("cannot get current directory", path);
    std::string d = buf;
#endif
    return is_sep(d.back()) ? d + path : d + kSep + path;
}

// ---- AtomicOutput ----

static std::string temp_name_for(const std::string& final_path) {
    static std::atomic<uint64_t> counter{0};
    std::random_device rd;
    uint64_t r = (uint64_t(rd()) << 32) ^ rd() ^
                 uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                 (counter.fetch_add(1) << 48);
    std::string d = dirname(final_path);
    size_t i = final_path.size();
    while (i > 0 && !is_sep(final_path[i - 1])) --i;
    std::string base = final_path.substr(i);
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".%016llx.tmp", (unsigned long long)r);
    bool has_dir = false;
    for (char c : final_path) has_dir = has_dir || is_sep(c);
    if (has_dir && !is_sep(d.back())) d += kSep;  // "/" or "C:\\": no doubled separator
    return (has_dir ? d : std::string()) + "." + base + suffix;
}

AtomicOutput::AtomicOutput(std::string final_path, bool overwrite, bool durable)
    : final_path_(std::move(final_path)), overwrite_(overwrite), durable_(durable) {
    if (final_path_.empty()) throw std::invalid_argument("destination path is empty");
    if (!overwrite_ && exists(final_path_))
        throw PathError(EEXIST, "destination already exists", final_path_);
    for (int attempt = 0; attempt < 16; ++attempt) {
        temp_path_ = temp_name_for(final_path_);
        int fd = do_open(temp_path_, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | AS_O_BINARY, 0644);
        if (fd >= 0) {
            file_ = File(fd, temp_path_);
            return;
        }
        if (errno != EEXIST) throw_errno("cannot create", final_path_);
    }
    throw PathError(EEXIST, "cannot create a unique temporary file", final_path_);
}

AtomicOutput::~AtomicOutput() {
    if (!committed_) {
        file_.close();
        if (!temp_path_.empty()) do_unlink(temp_path_);
    }
}

void AtomicOutput::set_mode(unsigned mode) const {
#ifndef _WIN32
    if (::fchmod(file_.fd(), mode_t(mode & 07777)) != 0) throw_errno("cannot chmod", temp_path_);
#else
    (void)mode;
#endif
}

void AtomicOutput::commit() {
    if (durable_) file_.sync();
    file_.close();
#ifdef _WIN32
    if (!MoveFileExW(win_path(temp_path_).c_str(), win_path(final_path_).c_str(),
                     MOVEFILE_WRITE_THROUGH | (overwrite_ ? MOVEFILE_REPLACE_EXISTING : 0))) {
        int e = errno_from_win32(GetLastError());
        if (e == EEXIST) throw PathError(e, "destination already exists", final_path_);
        throw PathError(e, "cannot move into place", final_path_, temp_path_);
    }
#else
    if (overwrite_) {
        if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0)
            throw_errno("cannot move into place", final_path_, temp_path_);
    } else {
        // link(2) fails with EEXIST instead of replacing: no race with a concurrent writer.
        if (::link(temp_path_.c_str(), final_path_.c_str()) != 0)
            throw_errno(errno == EEXIST ? "destination already exists" : "cannot move into place",
                        final_path_);
        do_unlink(temp_path_);
    }
    // Make the rename durable.
    int dfd = durable_ ? ::open(dirname(final_path_).c_str(), O_RDONLY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
#endif
    committed_ = true;
}

}  // namespace agent_swarm::io
