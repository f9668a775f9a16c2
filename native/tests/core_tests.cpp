// Tests of the pure C++ core (agent_swarm_core), without Python and without a test framework.
//
// Built by CMake with -DAGENT_SWARM_BUILD_TESTS=ON, natively (Linux, macOS, MSVC) and with
// MinGW-w64 for Windows (ci/mingw-w64-x86_64.cmake), where CTest runs it through Wine.
//
//   agent_swarm_core_tests [--dir DIR] [--list] [FILTER...]
//
// FILTER selects tests whose "group.name" starts with it ("clone", "paths.long"); none: all.
// Each test runs in a fresh scratch directory under DIR (default: the temp directory).
// One line per test: "ok", "FAIL" (with file:line and why) or "SKIP" (with the reason), then
// "N passed, N failed, N skipped". Exit status: 1 if a test failed, 77 if every selected test
// was skipped (CTest's SKIP_RETURN_CODE), 2 on bad usage, else 0.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "agent_swarm/clone.hpp"
#include "agent_swarm/errors.hpp"
#include "agent_swarm/image.hpp"
#include "io.hpp"  // internal: io::win_path (Windows)

#ifdef _WIN32
#include <windows.h>
#include <winioctl.h>
#else
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

using namespace agent_swarm;

namespace {

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;

// ------------------------------------------------------------------ the runner

struct Failure {
    std::string message;
};
struct Skip {
    std::string reason;
};

struct TestCase {
    std::string id;  // group.name
    void (*fn)();
};

std::vector<TestCase>& registry() {
    static std::vector<TestCase> tests;
    return tests;
}

struct Registrar {
    Registrar(const char* group, const char* name, void (*fn)()) {
        registry().push_back({std::string(group) + "." + name, fn});
    }
};

#define TEST(group, name)                                                                   \
    void test_##group##_##name();                                                           \
    const Registrar registrar_##group##_##name(#group, #name, &test_##group##_##name);      \
    void test_##group##_##name()

[[noreturn]] void fail_at(const char* file, int line, const std::string& why) {
    const char* base = std::strrchr(file, '/');
    throw Failure{std::string(base ? base + 1 : file) + ":" + std::to_string(line) + ": " + why};
}

[[noreturn]] void skip(std::string reason) { throw Skip{std::move(reason)}; }

std::string show(const std::string& s) { return "\"" + s + "\""; }
template <class T>
std::string show(const T& v) {
    return std::to_string(v);
}
std::string show(ImageFormat f) { return format_name(f); }
std::string show(CloneMethod m) { return m == CloneMethod::Reflink ? "Reflink" : "Copy"; }

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) fail_at(__FILE__, __LINE__, "CHECK(" #cond ") failed"); \
    } while (0)

#define CHECK_EQ(a, b)                                                                   \
    do {                                                                                 \
        const auto& va_ = (a);                                                           \
        const auto& vb_ = (b);                                                           \
        if (!(va_ == vb_))                                                               \
            fail_at(__FILE__, __LINE__,                                                  \
                    "CHECK_EQ(" #a ", " #b "): " + show(va_) + " != " + show(vb_));      \
    } while (0)

template <class E, class F>
E expect_throw(F&& f, const char* expr, const char* type, const char* file, int line) {
    try {
        f();
    } catch (const E& e) {
        return e;
    } catch (const std::exception& e) {
        fail_at(file, line,
                std::string(expr) + ": expected " + type + ", got another exception: " + e.what());
    }
    fail_at(file, line, std::string(expr) + ": expected " + type + ", nothing was thrown");
}

#define EXPECT_THROW(E, expr) \
    expect_throw<E>([&] { (void)(expr); }, #expr, #E, __FILE__, __LINE__)

// PathError with this errno, for `path` (checked when non-empty).
#define EXPECT_PATH_ERROR(expr, err, path_)                                                  \
    do {                                                                                     \
        PathError e_ = EXPECT_THROW(PathError, expr);                                        \
        if (e_.code().value() != (err))                                                      \
            fail_at(__FILE__, __LINE__,                                                      \
                    std::string(#expr ": expected errno " #err " (") + std::strerror(err) + \
                        "), got " + std::to_string(e_.code().value()) + ": " + e_.what());   \
        const std::string want_ = (path_);                                                   \
        if (!want_.empty() && e_.path() != want_)                                            \
            fail_at(__FILE__, __LINE__,                                                      \
                    std::string(#expr ": PathError.path() is ") + show(e_.path()) +          \
                        ", expected " + show(want_));                                        \
    } while (0)

// ------------------------------------------------------------------ files, independently

std::string g_scratch_root;  // --dir, or the temp directory
std::string g_dir;           // the current test's scratch directory

#ifdef _WIN32
const char kSep = '\\';

std::wstring to_wide(const std::string& s) {
    if (s.empty()) return {};
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), int(s.size()), nullptr, 0);
    if (n <= 0) throw std::runtime_error("test helper: not UTF-8: " + s);
    std::wstring w(size_t(n), L'\0');
    MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s.data(), int(s.size()), &w[0], n);
    return w;
}

std::string to_utf8(const std::wstring& w) {
    if (w.empty()) return {};
    int n = WideCharToMultiByte(CP_UTF8, 0, w.data(), int(w.size()), nullptr, 0, nullptr, nullptr);
    std::string s(size_t(n), '\0');
    WideCharToMultiByte(CP_UTF8, 0, w.data(), int(w.size()), &s[0], n, nullptr, nullptr);
    return s;
}

// The helpers' own long-path form (the code under test has its own): every path they get is
// absolute with backslashes, as built by join() from the scratch root.
std::wstring wpath(const std::string& p) {
    std::wstring w = to_wide(p);
    if (w.compare(0, 4, L"\\\\?\\") == 0) return w;
    if (w.compare(0, 2, L"\\\\") == 0) return L"\\\\?\\UNC\\" + w.substr(2);
    return L"\\\\?\\" + w;
}

[[noreturn]] void win_fail(const std::string& what, const std::string& path) {
    throw std::runtime_error("test helper: " + what + " " + path + ": Win32 error " +
                             std::to_string(GetLastError()));
}

struct Handle {
    HANDLE h;
    explicit Handle(HANDLE x) : h(x) {}
    ~Handle() {
        if (h != INVALID_HANDLE_VALUE) CloseHandle(h);
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
};
#else
const char kSep = '/';

[[noreturn]] void posix_fail(const std::string& what, const std::string& path) {
    throw std::runtime_error("test helper: " + what + " " + path + ": " + std::strerror(errno));
}

struct Fd {
    int fd;
    explicit Fd(int x) : fd(x) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};
#endif

std::string join(const std::string& a, const std::string& b) {
    return a.empty() || a.back() == kSep ? a + b : a + kSep + b;
}
std::string in_dir(const std::string& name) { return join(g_dir, name); }

void make_dir(const std::string& p) {
#ifdef _WIN32
    if (!CreateDirectoryW(wpath(p).c_str(), nullptr)) win_fail("mkdir", p);
#else
    if (::mkdir(p.c_str(), 0755) != 0) posix_fail("mkdir", p);
#endif
}

bool path_exists(const std::string& p) {
#ifdef _WIN32
    return GetFileAttributesW(wpath(p).c_str()) != INVALID_FILE_ATTRIBUTES;
#else
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
#endif
}

// Write `data` at each offset of a file of `size` bytes; the rest is never written (a hole
// where the filesystem supports them; on Windows the file is made sparse first).
void write_sparse(const std::string& p, uint64_t size,
                  const std::vector<std::pair<uint64_t, std::string>>& chunks) {
#ifdef _WIN32
    Handle f(CreateFileW(wpath(p).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, CREATE_ALWAYS,
                         FILE_ATTRIBUTE_NORMAL, nullptr));
    if (f.h == INVALID_HANDLE_VALUE) win_fail("create", p);
    FILE_SET_SPARSE_BUFFER sb{};
    sb.SetSparse = TRUE;
    DWORD ret = 0;
    DeviceIoControl(f.h, FSCTL_SET_SPARSE, &sb, sizeof sb, nullptr, 0, &ret, nullptr);  // best effort
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = LONGLONG(size);
    if (!SetFileInformationByHandle(f.h, FileEndOfFileInfo, &eof, sizeof eof)) win_fail("resize", p);
    for (const auto& [off, data] : chunks) {
        OVERLAPPED ov{};
        ov.Offset = DWORD(off);
        ov.OffsetHigh = DWORD(off >> 32);
        DWORD done = 0;
        if (!WriteFile(f.h, data.data(), DWORD(data.size()), &done, &ov) || done != data.size())
            win_fail("write", p);
    }
#else
    Fd f(::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (f.fd < 0) posix_fail("create", p);
    if (::ftruncate(f.fd, off_t(size)) != 0) posix_fail("resize", p);
    for (const auto& [off, data] : chunks)
        if (::pwrite(f.fd, data.data(), data.size(), off_t(off)) != ssize_t(data.size()))
            posix_fail("write", p);
#endif
}

void write_file(const std::string& p, const std::string& data) {
    write_sparse(p, data.size(), {{0, data}});
}

std::string read_file(const std::string& p) {
    std::string out;
#ifdef _WIN32
    Handle f(CreateFileW(wpath(p).c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                         FILE_ATTRIBUTE_NORMAL, nullptr));
    if (f.h == INVALID_HANDLE_VALUE) win_fail("open", p);
    char buf[65536];
    DWORD got = 0;
    while (ReadFile(f.h, buf, sizeof buf, &got, nullptr) && got > 0) out.append(buf, got);
#else
    Fd f(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (f.fd < 0) posix_fail("open", p);
    char buf[65536];
    ssize_t got;
    while ((got = ::read(f.fd, buf, sizeof buf)) > 0) out.append(buf, size_t(got));
    if (got < 0) posix_fail("read", p);
#endif
    return out;
}

// Bytes the filesystem allocated for the file.
uint64_t allocated(const std::string& p) {
#ifdef _WIN32
    // GetCompressedFileSizeW is the documented answer for sparse files; Wine returns the file
    // size there but the real allocation in FILE_STANDARD_INFO: take the smaller.
    DWORD high = 0;
    DWORD low = GetCompressedFileSizeW(wpath(p).c_str(), &high);
    if (low == INVALID_FILE_SIZE && GetLastError() != NO_ERROR) win_fail("size of", p);
    uint64_t n = uint64_t(high) << 32 | low;
    Handle f(CreateFileW(wpath(p).c_str(), FILE_READ_ATTRIBUTES, FILE_SHARE_READ | FILE_SHARE_WRITE,
                         nullptr, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
    FILE_STANDARD_INFO si{};
    if (f.h != INVALID_HANDLE_VALUE &&
        GetFileInformationByHandleEx(f.h, FileStandardInfo, &si, sizeof si))
        n = std::min(n, uint64_t(si.AllocationSize.QuadPart));
    return n;
#else
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) posix_fail("stat", p);
    return uint64_t(st.st_blocks) * 512;
#endif
}

// Names in a directory (UTF-8), without "." and "..", sorted.
std::vector<std::string> list_dir(const std::string& d) {
    std::vector<std::string> names;
#ifdef _WIN32
    WIN32_FIND_DATAW fd;
    HANDLE h = FindFirstFileW((wpath(d) + L"\\*").c_str(), &fd);
    if (h == INVALID_HANDLE_VALUE) win_fail("list", d);
    do {
        std::wstring n = fd.cFileName;
        if (n != L"." && n != L"..") names.push_back(to_utf8(n));
    } while (FindNextFileW(h, &fd));
    FindClose(h);
#else
    DIR* dir = ::opendir(d.c_str());
    if (!dir) posix_fail("list", d);
    while (dirent* e = ::readdir(dir)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(dir);
#endif
    std::sort(names.begin(), names.end());
    return names;
}

void remove_tree(const std::string& d) {
#ifdef _WIN32
    WIN32_FIND_DATAW fd;
    HANDLE h = FindFirstFileW((wpath(d) + L"\\*").c_str(), &fd);
    if (h != INVALID_HANDLE_VALUE) {
        do {
            std::wstring n = fd.cFileName;
            if (n == L"." || n == L"..") continue;
            std::string child = join(d, to_utf8(n));
            if (fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) {
                remove_tree(child);
            } else {
                SetFileAttributesW(wpath(child).c_str(), FILE_ATTRIBUTE_NORMAL);
                DeleteFileW(wpath(child).c_str());
            }
        } while (FindNextFileW(h, &fd));
        FindClose(h);
    }
    RemoveDirectoryW(wpath(d).c_str());
#else
    if (DIR* dir = ::opendir(d.c_str())) {
        while (dirent* e = ::readdir(dir)) {
            std::string n = e->d_name;
            if (n == "." || n == "..") continue;
            std::string child = join(d, n);
            struct stat st {};
            if (::lstat(child.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
                ::chmod(child.c_str(), 0700);
                remove_tree(child);
            } else {
                ::unlink(child.c_str());
            }
        }
        ::closedir(dir);
    }
    ::rmdir(d.c_str());
#endif
}

std::string default_scratch_root() {
#ifdef _WIN32
    wchar_t buf[MAX_PATH + 2];
    DWORD n = GetTempPathW(MAX_PATH + 2, buf);
    if (n == 0 || n > MAX_PATH + 1) throw std::runtime_error("test helper: no temp directory");
    std::string s = to_utf8(std::wstring(buf, n));
#else
    const char* t = std::getenv("TMPDIR");
    std::string s = t && *t ? t : "/tmp";
#endif
    while (s.size() > 1 && s.back() == kSep) s.pop_back();
    return s;
}

std::string new_scratch_dir(const std::string& test_id) {
    static unsigned counter = 0;
#ifdef _WIN32
    unsigned long pid = GetCurrentProcessId();
#else
    unsigned long pid = (unsigned long)::getpid();
#endif
    for (;;) {
        std::string name = "as-core-" + std::to_string(pid) + "-" + std::to_string(counter++) +
                           "-" + test_id;
        std::string d = join(g_scratch_root, name);
        if (!path_exists(d)) {
            make_dir(d);
            return d;
        }
    }
}

// Deterministic pseudo-random bytes (xorshift64*), different per seed.
std::string random_bytes(size_t n, uint64_t seed) {
    std::string out(n, '\0');
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; ++i) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out[i] = char((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
    return out;
}

// ------------------------------------------------------------------ a minimal VHDX writer
// An independent dynamic VHDX (MS-VHDX v1): identifier, two headers, two region tables, an
// empty 1 MiB log, the metadata region and an all-"not present" BAT; checked here against
// qemu-img check and vhdiinfo when it was written.

uint32_t crc32c(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

void le16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
void le32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
void le64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint32_t rd_be32(const std::string& s, size_t off) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(s[off + i]);
    return v;
}
uint64_t rd_be64(const std::string& s, size_t off) {
    return uint64_t(rd_be32(s, off)) << 32 | rd_be32(s, off + 4);
}

// GUID as stored: Data1, Data2, Data3 little-endian, Data4 as written.
void guid(uint8_t* p, uint32_t d1, uint16_t d2, uint16_t d3, uint64_t d4) {
    le32(p, d1);
    le16(p + 4, d2);
    le16(p + 6, d3);
    for (int i = 0; i < 8; ++i) p[8 + i] = uint8_t(d4 >> (8 * (7 - i)));
}

void write_dynamic_vhdx(const std::string& path, uint64_t virtual_size, uint32_t block_size) {
    std::string file(4 * MiB, '\0');
    auto at = [&](uint64_t off) { return reinterpret_cast<uint8_t*>(&file[size_t(off)]); };
    std::memcpy(at(0), "vhdxfile", 8);
    for (int copy = 0; copy < 2; ++copy) {  // headers at 64 KiB and 128 KiB
        uint8_t* h = at((1 + uint64_t(copy)) * 64 * KiB);
        std::memcpy(h, "head", 4);
        le64(h + 8, uint64_t(copy) + 1);                                      // sequence number
        guid(h + 16, 0x11111111, 0x2222, 0x4333, 0x8444555566667777ull);     // FileWriteGuid
        guid(h + 32, 0x88888888, 0x9999, 0x4aaa, 0x8bbbccccddddeeeeull);     // DataWriteGuid
        le16(h + 66, 1);                                                      // version
        le32(h + 68, uint32_t(MiB));                                          // log length
        le64(h + 72, MiB);                                                    // log offset
        le32(h + 4, crc32c(h, 4 * KiB));
    }
    for (int copy = 0; copy < 2; ++copy) {  // region tables at 192 KiB and 256 KiB
        uint8_t* r = at((3 + uint64_t(copy)) * 64 * KiB);
        std::memcpy(r, "regi", 4);
        le32(r + 8, 2);
        guid(r + 16, 0x2DC27766, 0xF623, 0x4200, 0x9D64115E9BFD4A08ull);  // BAT
        le64(r + 32, 3 * MiB);
        le32(r + 40, uint32_t(MiB));
        le32(r + 44, 1);
        guid(r + 48, 0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE575F050F886Eull);  // metadata
        le64(r + 64, 2 * MiB);
        le32(r + 72, uint32_t(MiB));
        le32(r + 76, 1);
        le32(r + 4, crc32c(r, 64 * KiB));
    }
    uint8_t* m = at(2 * MiB);
    std::memcpy(m, "metadata", 8);
    le16(m + 10, 5);
    struct Item {
        uint32_t d1;
        uint16_t d2, d3;
        uint64_t d4;
        uint32_t off, len, flags;
    };
    const Item items[] = {
        {0xCAA16737, 0xFA36, 0x4D43, 0xB3B633F0AA44E76Bull, 0x10000, 8, 0x4},   // file parameters
        {0x2FA54224, 0xCD1B, 0x4876, 0xB2115DBED83BF4B8ull, 0x10008, 8, 0x6},   // virtual disk size
        {0xBECA12AB, 0xB2E6, 0x4523, 0x93EFC309E000C746ull, 0x10010, 16, 0x6},  // page 83 data
        {0x8141BF1D, 0xA96F, 0x4709, 0xBA47F233A8FAAB5Full, 0x10020, 4, 0x6},   // logical sector
        {0xCDA348C7, 0x445D, 0x4471, 0x9CC9E9885251C556ull, 0x10024, 4, 0x6},   // physical sector
    };
    for (size_t i = 0; i < 5; ++i) {
        uint8_t* e = m + 32 + 32 * i;
        guid(e, items[i].d1, items[i].d2, items[i].d3, items[i].d4);
        le32(e + 16, items[i].off);
        le32(e + 20, items[i].len);
        le32(e + 24, items[i].flags);
    }
    le32(m + 0x10000, block_size);
    le64(m + 0x10008, virtual_size);
    guid(m + 0x10010, 0x12345678, 0x9abc, 0x4def, 0x8123456789abcdefull);
    le32(m + 0x10020, 512);
    le32(m + 0x10024, 4096);
    write_sparse(path, file.size(),
                 {{0, file.substr(0, 320 * KiB)}, {2 * MiB, file.substr(2 * MiB, 128 * KiB)}});
}

// ------------------------------------------------------------------ clone_file

TEST(clone, copy_mode_copies_every_byte) {
    std::string src = in_dir("src.bin"), dst = in_dir("dst.bin");
    std::string data = random_bytes(3 * MiB + 123, 1);
    write_file(src, data);
    CHECK_EQ(clone_file(src, dst, CloneMode::Copy, false), CloneMethod::Copy);
    CHECK(read_file(dst) == data);
    CHECK(read_file(src) == data);
    CHECK(list_dir(g_dir) == (std::vector<std::string>{"dst.bin", "src.bin"}));  // no temp left
}

TEST(clone, auto_mode_falls_back_to_a_copy_or_reflinks) {
    std::string src = in_dir("src.bin"), dst = in_dir("dst.bin");
    std::string data = random_bytes(1 * MiB + 7, 2);
    write_file(src, data);
    CloneMethod m = clone_file(src, dst, CloneMode::Auto, false);
    std::printf("  (auto mode used %s)\n", show(m).c_str());
    CHECK(read_file(dst) == data);
}

TEST(clone, empty_file) {
    std::string src = in_dir("empty"), dst = in_dir("empty.copy");
    write_file(src, "");
    CHECK_EQ(clone_file(src, dst, CloneMode::Copy, false), CloneMethod::Copy);
    CHECK(path_exists(dst));
    CHECK_EQ(read_file(dst).size(), size_t(0));
    clone_file(src, in_dir("empty.auto"), CloneMode::Auto, false);
    CHECK_EQ(read_file(in_dir("empty.auto")).size(), size_t(0));
}

// Holes in the source stay holes in the copy (a sparse destination on Windows).
TEST(clone, copy_keeps_holes) {
    std::string src = in_dir("sparse.img"), dst = in_dir("sparse.copy");
    const uint64_t size = 64 * MiB;
    std::vector<std::pair<uint64_t, std::string>> chunks = {
        {0, random_bytes(64 * KiB, 3)},
        {20 * MiB, random_bytes(128 * KiB, 4)},
        {size - 4 * KiB, random_bytes(4 * KiB, 5)},
    };
    write_sparse(src, size, chunks);
    CHECK_EQ(clone_file(src, dst, CloneMode::Copy, false), CloneMethod::Copy);
    std::string got = read_file(dst);
    CHECK_EQ(uint64_t(got.size()), size);
    std::string want(size_t(size), '\0');
    for (const auto& [off, data] : chunks) want.replace(size_t(off), data.size(), data);
    CHECK(got == want);

    uint64_t src_alloc = allocated(src), dst_alloc = allocated(dst);
    std::printf("  (allocated: source %llu, copy %llu of %llu bytes)\n",
                (unsigned long long)src_alloc, (unsigned long long)dst_alloc,
                (unsigned long long)size);
    if (src_alloc >= size / 2)
        skip("this filesystem did not keep the source sparse (" + std::to_string(src_alloc) +
             " bytes allocated): holes cannot be checked here; the copy's bytes were");
#ifdef _WIN32
    // clone_file makes the copy sparse only where the volume says it can.
    DWORD fs_flags = 0;
    {
        Handle f(CreateFileW(wpath(dst).c_str(), FILE_READ_ATTRIBUTES, FILE_SHARE_READ, nullptr,
                             OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
        if (f.h == INVALID_HANDLE_VALUE ||
            !GetVolumeInformationByHandleW(f.h, nullptr, 0, nullptr, nullptr, &fs_flags, nullptr, 0))
            fs_flags = 0;
    }
    if (!(fs_flags & FILE_SUPPORTS_SPARSE_FILES))
        skip("the volume does not report sparse-file support (FILE_SUPPORTS_SPARSE_FILES; Wine "
             "never does), so the copy is dense by design: its bytes were checked, holes not");
    DWORD attrs = GetFileAttributesW(wpath(dst).c_str());
    CHECK(attrs != INVALID_FILE_ATTRIBUTES && (attrs & FILE_ATTRIBUTE_SPARSE_FILE));
#endif
    CHECK(dst_alloc <= src_alloc + 1 * MiB);
}

// A file that ends in a hole keeps its size (the copy is resized, not written to the end).
TEST(clone, trailing_hole_keeps_the_size) {
    std::string src = in_dir("tail.img"), dst = in_dir("tail.copy");
    write_sparse(src, 16 * MiB, {{0, random_bytes(4 * KiB, 6)}});
    clone_file(src, dst, CloneMode::Copy, false);
    std::string got = read_file(dst);
    CHECK_EQ(uint64_t(got.size()), 16 * MiB);
    CHECK(got.substr(0, 4 * KiB) == random_bytes(4 * KiB, 6));
    CHECK(got.find_first_not_of('\0', 4 * KiB) == std::string::npos);
}

// Zeros written as data are copied as zeros (or left as holes): the bytes read back equal.
TEST(clone, explicit_zeros_read_back_as_zeros) {
    std::string src = in_dir("zeros.img"), dst = in_dir("zeros.copy");
    std::string data = random_bytes(1 * MiB, 7) + std::string(3 * MiB, '\0') + random_bytes(1 * MiB, 8);
    write_file(src, data);
    clone_file(src, dst, CloneMode::Copy, false);
    CHECK(read_file(dst) == data);
}

TEST(clone, existing_destination_is_refused_without_overwrite) {
    std::string src = in_dir("src.bin"), dst = in_dir("dst.bin");
    write_file(src, "new contents");
    write_file(dst, "old");
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Copy, false), EEXIST, dst);
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Auto, false), EEXIST, dst);
    CHECK_EQ(read_file(dst), std::string("old"));
    // No temporary file is left next to it.
    CHECK(list_dir(g_dir) == (std::vector<std::string>{"dst.bin", "src.bin"}));
}

TEST(clone, overwrite_replaces_the_destination) {
    std::string src = in_dir("src.bin"), dst = in_dir("dst.bin");
    std::string data = random_bytes(200 * KiB, 9);
    write_file(src, data);
    write_file(dst, random_bytes(1 * MiB, 10));  // longer than the source
    CHECK_EQ(clone_file(src, dst, CloneMode::Copy, true), CloneMethod::Copy);
    CHECK(read_file(dst) == data);
    clone_file(src, dst, CloneMode::Auto, true);
    CHECK(read_file(dst) == data);
    CHECK(list_dir(g_dir) == (std::vector<std::string>{"dst.bin", "src.bin"}));
}

TEST(clone, overwrite_creates_a_missing_destination) {
    std::string src = in_dir("src.bin"), dst = in_dir("dst.bin");
    write_file(src, "abc");
    clone_file(src, dst, CloneMode::Copy, true);
    CHECK_EQ(read_file(dst), std::string("abc"));
}

#ifndef _WIN32
TEST(clone, file_mode_is_preserved) {
    std::string src = in_dir("script.sh"), dst = in_dir("script.copy");
    write_file(src, "#!/bin/sh\n");
    ::chmod(src.c_str(), 0750);
    clone_file(src, dst, CloneMode::Copy, false);
    struct stat st {};
    CHECK(::stat(dst.c_str(), &st) == 0);
    CHECK_EQ(unsigned(st.st_mode & 07777), 0750u);
}
#endif

// ------------------------------------------------------------------ errors (clone.hpp)

TEST(errors, missing_source) {
    std::string src = in_dir("nope"), dst = in_dir("dst");
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Auto, false), ENOENT, src);
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Copy, true), ENOENT, src);
    CHECK(!path_exists(dst));
}

TEST(errors, source_is_a_directory) {
    std::string src = in_dir("subdir"), dst = in_dir("dst");
    make_dir(src);
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Copy, false), EISDIR, src);
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Auto, false), EISDIR, src);
    CHECK(!path_exists(dst));
}

TEST(errors, destination_directory_missing) {
    std::string src = in_dir("src"), dst = join(in_dir("no-such-dir"), "dst");
    write_file(src, "x");
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Copy, false), ENOENT, dst);
    CHECK(list_dir(g_dir) == (std::vector<std::string>{"src"}));
}

TEST(errors, empty_paths) {
    std::string src = in_dir("src");
    write_file(src, "x");
    EXPECT_THROW(std::invalid_argument, clone_file("", in_dir("dst"), CloneMode::Auto, false));
    EXPECT_THROW(std::invalid_argument, clone_file(src, "", CloneMode::Auto, false));
}

TEST(errors, image_info_of_missing_and_garbage_files) {
    std::string missing = in_dir("missing.qcow2"), junk = in_dir("junk.bin");
    EXPECT_PATH_ERROR(image_info(missing), ENOENT, missing);
    write_file(junk, std::string(1000, 'j'));  // not a multiple of 512: not even raw
    ImageError e = EXPECT_THROW(ImageError, image_info(junk));
    CHECK_EQ(e.path(), junk);
    EXPECT_THROW(std::invalid_argument, parse_format("vmdk"));
}

// ------------------------------------------------------------------ block cloning / reflink

std::string errno_name(int err) {
    if (err == EOPNOTSUPP) return "EOPNOTSUPP";
    if (err == EXDEV) return "EXDEV";
    if (err == EINVAL) return "EINVAL";
    if (err == ENOTSUP) return "ENOTSUP";
    return "errno " + std::to_string(err);
}

#ifdef _WIN32
// What the volume and the filesystem itself say about block cloning, asked directly (not
// through the core): the volume's FILE_SUPPORTS_BLOCK_REFCOUNTING flag and the answer to one
// FSCTL_DUPLICATE_EXTENTS_TO_FILE (0x98344) of the first 64 KiB of `src` into a new file.
std::string block_clone_probe(const std::string& src, const std::string& probe) {
    Handle s(CreateFileW(wpath(src).c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr,
                         OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
    Handle d(CreateFileW(wpath(probe).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr,
                         CREATE_NEW, FILE_ATTRIBUTE_NORMAL, nullptr));
    if (s.h == INVALID_HANDLE_VALUE || d.h == INVALID_HANDLE_VALUE) return "(probe: cannot open)";
    DWORD fs_flags = 0;
    GetVolumeInformationByHandleW(d.h, nullptr, 0, nullptr, nullptr, &fs_flags, nullptr, 0);
    FILE_END_OF_FILE_INFO eof{};
    eof.EndOfFile.QuadPart = LONGLONG(64 * KiB);  // the target region must lie inside EOF
    SetFileInformationByHandle(d.h, FileEndOfFileInfo, &eof, sizeof eof);
    struct {
        HANDLE FileHandle;
        LARGE_INTEGER SourceFileOffset, TargetFileOffset, ByteCount;
    } dd{};
    dd.FileHandle = s.h;
    dd.ByteCount.QuadPart = LONGLONG(64 * KiB);
    DWORD ret = 0;
    BOOL ok = DeviceIoControl(d.h, 0x98344, &dd, sizeof dd, nullptr, 0, &ret, nullptr);
    DWORD err = ok ? 0 : GetLastError();
    std::string answer = ok                               ? "succeeded"
                         : err == ERROR_NOT_SUPPORTED     ? "fails with ERROR_NOT_SUPPORTED"
                         : err == ERROR_INVALID_FUNCTION  ? "fails with ERROR_INVALID_FUNCTION"
                         : err == ERROR_INVALID_PARAMETER ? "fails with ERROR_INVALID_PARAMETER"
                                                          : "fails with Win32 error " +
                                                                std::to_string(err);
    return std::string("the volume ") +
           ((fs_flags & 0x08000000) ? "reports" : "does not report") +
           " FILE_SUPPORTS_BLOCK_REFCOUNTING, FSCTL_DUPLICATE_EXTENTS_TO_FILE itself " + answer;
}
#endif

// Reflink mode either shares the blocks or says clearly that it can't: on Windows that is
// FSCTL_DUPLICATE_EXTENTS_TO_FILE, which only ReFS (and Dev Drive) volumes do; Wine answers
// ERROR_NOT_SUPPORTED, so under Wine this is reported as a skip.
TEST(block_clone, reflink_mode) {
    std::string src = in_dir("src.img"), dst = in_dir("dst.img");
    std::string data = random_bytes(2 * MiB + 4 * KiB, 11);  // not a multiple of a cluster
    write_file(src, data);
    try {
        CloneMethod m = clone_file(src, dst, CloneMode::Reflink, false);
        CHECK_EQ(m, CloneMethod::Reflink);
        CHECK(read_file(dst) == data);
        CHECK_EQ(clone_file(src, in_dir("auto.img"), CloneMode::Auto, false), CloneMethod::Reflink);
        std::printf("  (blocks shared: the filesystem clones)\n");
        return;
    } catch (const PathError& e) {
        int err = e.code().value();
        if (err != EOPNOTSUPP && err != EXDEV && err != ENOTSUP && err != EINVAL) throw;
        CHECK(!path_exists(dst));
        CHECK(list_dir(g_dir) == (std::vector<std::string>{"src.img"}));
        // Auto mode then copies.
        CHECK_EQ(clone_file(src, dst, CloneMode::Auto, false), CloneMethod::Copy);
        CHECK(read_file(dst) == data);
#ifdef _WIN32
        skip("block clone: not supported by this filesystem/Wine (clone_file(Reflink) raised " +
             errno_name(err) + "; " + block_clone_probe(src, in_dir("probe.img")) +
             "); only the copy fallback ran");
#else
        skip("reflink: not supported by this filesystem (clone_file(Reflink) raised " +
             errno_name(err) + "); only the copy fallback ran");
#endif
    }
}

// ------------------------------------------------------------------ images

TEST(images, qcow2_overlay_header) {
    std::string base = in_dir("base.raw"), ov = in_dir("overlay.qcow2");
    write_sparse(base, 4 * MiB, {{0, random_bytes(64 * KiB, 12)}});
    create_qcow2_overlay(ov, "base.raw", std::nullopt, std::nullopt);

    // The header, read independently (big-endian qcow2 v3).
    std::string h = read_file(ov);
    CHECK(h.size() >= 512);
    CHECK(h.compare(0, 4, "QFI\xfb") == 0);
    CHECK_EQ(rd_be32(h, 4), 3u);                     // version
    CHECK_EQ(rd_be32(h, 20), 16u);                   // cluster_bits: 64 KiB
    CHECK_EQ(rd_be64(h, 24), 4 * MiB);               // virtual size
    uint64_t boff = rd_be64(h, 8);
    uint32_t blen = rd_be32(h, 16);
    CHECK(boff > 0 && boff + blen <= h.size());
    CHECK_EQ(h.substr(size_t(boff), blen), std::string("base.raw"));

    // And through the core.
    CHECK_EQ(detect_format(ov), ImageFormat::Qcow2);
    ImageInfo info = image_info(ov);
    CHECK_EQ(info.path, ov);
    CHECK_EQ(info.format, ImageFormat::Qcow2);
    CHECK_EQ(info.virtual_size, 4 * MiB);
    CHECK_EQ(info.cluster_size, uint32_t(64 * KiB));
    CHECK(info.backing_file && *info.backing_file == "base.raw");
    CHECK(info.backing_path && *info.backing_path == base);
    CHECK(info.backing_format && *info.backing_format == ImageFormat::Raw);
    CHECK(!info.encryption && !info.data_file && info.incompatible_features.empty());
    std::vector<ImageInfo> chain = image_chain(ov);
    CHECK_EQ(chain.size(), size_t(2));
    CHECK_EQ(chain[1].format, ImageFormat::Raw);
    CHECK_EQ(chain[1].virtual_size, 4 * MiB);
}

TEST(images, qcow2_overlay_chain_and_size) {
    std::string base = in_dir("base.raw"), mid = in_dir("mid.qcow2"), top = in_dir("top.qcow2");
    write_sparse(base, 2 * MiB, {});
    create_qcow2_overlay(mid, base, ImageFormat::Raw, std::nullopt);  // absolute backing
    create_qcow2_overlay(top, "mid.qcow2", ImageFormat::Qcow2, 8 * MiB);
    ImageInfo info = image_info(top);
    CHECK_EQ(info.virtual_size, 8 * MiB);
    CHECK(info.backing_format && *info.backing_format == ImageFormat::Qcow2);
    std::vector<ImageInfo> chain = image_chain(top);
    CHECK_EQ(chain.size(), size_t(3));
    CHECK_EQ(chain[1].path, mid);
    CHECK(chain[1].backing_file && *chain[1].backing_file == base);
    CHECK_EQ(chain[2].path, base);
}

TEST(images, qcow2_overlay_errors) {
    std::string base = in_dir("base.raw"), ov = in_dir("ov.qcow2");
    write_sparse(base, 1 * MiB, {});
    create_qcow2_overlay(ov, base, std::nullopt, std::nullopt);
    EXPECT_PATH_ERROR(create_qcow2_overlay(ov, base, std::nullopt, std::nullopt), EEXIST, ov);
    std::string missing = in_dir("missing.raw");
    EXPECT_THROW(PathError, create_qcow2_overlay(in_dir("o2.qcow2"), missing, std::nullopt,
                                                 std::nullopt));
    EXPECT_THROW(std::invalid_argument,
                 create_qcow2_overlay(in_dir("o3.qcow2"), base, std::nullopt, uint64_t(1000)));
    EXPECT_THROW(std::invalid_argument,
                 create_qcow2_overlay(in_dir("o4.qcow2"), base, std::nullopt, uint64_t(512)));
    CHECK(!path_exists(in_dir("o2.qcow2")) && !path_exists(in_dir("o3.qcow2")));
}

TEST(images, vhdx_differencing_header) {
    std::string parent = in_dir("parent.vhdx"), child = in_dir("child.vhdx");
    write_dynamic_vhdx(parent, 64 * MiB, uint32_t(32 * MiB));
    ImageInfo pinfo = image_info(parent);
    CHECK_EQ(pinfo.format, ImageFormat::Vhdx);
    CHECK_EQ(pinfo.virtual_size, 64 * MiB);
    CHECK_EQ(pinfo.cluster_size, uint32_t(32 * MiB));
    CHECK(!pinfo.backing_file);

    create_vhdx_differencing(child, parent);
    std::string h = read_file(child);
    CHECK(h.size() >= 320 * KiB);
    CHECK(h.compare(0, 8, "vhdxfile") == 0);
    CHECK(h.compare(64 * KiB, 4, "head") == 0 && h.compare(128 * KiB, 4, "head") == 0);
    CHECK(h.compare(192 * KiB, 4, "regi") == 0 && h.compare(256 * KiB, 4, "regi") == 0);

    CHECK_EQ(detect_format(child), ImageFormat::Vhdx);
    ImageInfo info = image_info(child);
    CHECK_EQ(info.format, ImageFormat::Vhdx);
    CHECK_EQ(info.virtual_size, 64 * MiB);
    CHECK(info.backing_file && *info.backing_file == ".\\parent.vhdx");
    CHECK(info.backing_path && *info.backing_path == parent);
    CHECK(info.backing_format && *info.backing_format == ImageFormat::Vhdx);
    std::vector<ImageInfo> chain = image_chain(child);
    CHECK_EQ(chain.size(), size_t(2));
    CHECK_EQ(chain[1].path, parent);
}

TEST(images, vhdx_differencing_errors) {
    std::string parent = in_dir("parent.vhdx"), child = in_dir("child.vhdx");
    std::string raw = in_dir("disk.raw");
    write_dynamic_vhdx(parent, 16 * MiB, uint32_t(1 * MiB));
    write_sparse(raw, 1 * MiB, {});
    create_vhdx_differencing(child, parent);
    EXPECT_PATH_ERROR(create_vhdx_differencing(child, parent), EEXIST, child);
    EXPECT_THROW(ImageError, create_vhdx_differencing(in_dir("c2.vhdx"), raw));
    EXPECT_PATH_ERROR(create_vhdx_differencing(in_dir("c3.vhdx"), in_dir("none.vhdx")), ENOENT,
                      in_dir("none.vhdx"));
    // A qcow2 overlay cannot sit on a VHDX.
    EXPECT_THROW(std::invalid_argument,
                 create_qcow2_overlay(in_dir("o.qcow2"), parent, std::nullopt, std::nullopt));
}

// ------------------------------------------------------------------ paths

// A directory whose path is longer than MAX_PATH (260), three 100-character components down.
std::string long_dir() {
    std::string d = g_dir;
    for (char c : {'a', 'b', 'c'}) {
        d = join(d, std::string(100, c));
        make_dir(d);
    }
    return d;
}

TEST(paths, clone_in_a_directory_longer_than_max_path) {
    std::string d = long_dir();
    std::string src = join(d, "src.bin"), dst = join(d, "dst.bin");
    CHECK(dst.size() > 300);
    std::string data = random_bytes(300 * KiB, 13);
    write_file(src, data);
    CHECK_EQ(clone_file(src, dst, CloneMode::Copy, false), CloneMethod::Copy);
    CHECK(read_file(dst) == data);
    EXPECT_PATH_ERROR(clone_file(src, dst, CloneMode::Auto, false), EEXIST, dst);
    std::string other = random_bytes(10 * KiB, 14);
    write_file(src, other);
    clone_file(src, dst, CloneMode::Auto, true);
    CHECK(read_file(dst) == other);
    CHECK(list_dir(d) == (std::vector<std::string>{"dst.bin", "src.bin"}));
    std::string missing = join(d, "missing");
    EXPECT_PATH_ERROR(clone_file(missing, join(d, "x"), CloneMode::Copy, false), ENOENT, missing);
}

TEST(paths, images_in_a_directory_longer_than_max_path) {
    std::string d = long_dir();
    std::string base = join(d, "base.raw"), ov = join(d, "ov.qcow2");
    std::string parent = join(d, "parent.vhdx"), child = join(d, "child.vhdx");
    write_sparse(base, 1 * MiB, {});
    create_qcow2_overlay(ov, "base.raw", std::nullopt, std::nullopt);
    ImageInfo qi = image_info(ov);
    CHECK(qi.backing_path && *qi.backing_path == base);
    CHECK(qi.backing_format && *qi.backing_format == ImageFormat::Raw);
    CHECK_EQ(image_chain(ov).size(), size_t(2));

    write_dynamic_vhdx(parent, 8 * MiB, uint32_t(1 * MiB));
    create_vhdx_differencing(child, parent);
    ImageInfo vi = image_info(child);
    CHECK(vi.backing_path && *vi.backing_path == parent);
    CHECK_EQ(image_chain(child).size(), size_t(2));
}

// UTF-8 names reach the filesystem as the same characters (CreateFileW on Windows, not the
// ANSI code page): Latin, CJK and a character outside the BMP (a UTF-16 surrogate pair).
const std::string kUnicodeName = "d\xc3\xafsk-\xe5\x90\x8d\xe5\x89\x8d-\xf0\x9f\x98\x80.bin";

TEST(paths, non_ascii_file_names) {
    std::string src = in_dir("plain.bin"), dst = in_dir(kUnicodeName);
    std::string back = in_dir(kUnicodeName + ".back");
    std::string data = random_bytes(70 * KiB, 15);
    write_file(src, data);
    clone_file(src, dst, CloneMode::Auto, false);
    clone_file(dst, back, CloneMode::Copy, false);
    CHECK(read_file(back) == data);
    std::vector<std::string> names = list_dir(g_dir);
    CHECK(std::find(names.begin(), names.end(), kUnicodeName) != names.end());
    CHECK_EQ(names.size(), size_t(3));
#ifdef _WIN32
    // The exact UTF-16 name, surrogate pair included.
    const std::wstring wide = L"d\u00efsk-\u540d\u524d-\U0001F600.bin";
    CHECK_EQ(wide.size(), size_t(14));  // the emoji is two UTF-16 units
    WIN32_FIND_DATAW fd;
    HANDLE h = FindFirstFileW((wpath(g_dir) + L"\\" + wide).c_str(), &fd);
    CHECK(h != INVALID_HANDLE_VALUE);
    FindClose(h);
    CHECK(std::wstring(fd.cFileName) == wide);
#endif
}

TEST(paths, non_ascii_image_names) {
    std::string dir = in_dir("\xc3\xa9t\xc3\xa9");  // "été"
    make_dir(dir);
    std::string base = join(dir, "b\xc3\xa4se.raw"), ov = join(dir, kUnicodeName + ".qcow2");
    write_sparse(base, 1 * MiB, {});
    create_qcow2_overlay(ov, "b\xc3\xa4se.raw", std::nullopt, std::nullopt);
    ImageInfo qi = image_info(ov);
    CHECK(qi.backing_file && *qi.backing_file == "b\xc3\xa4se.raw");
    CHECK(qi.backing_path && *qi.backing_path == base);

    std::string parent = join(dir, "p\xc3\xa4rent.vhdx"), child = join(dir, kUnicodeName + ".vhdx");
    write_dynamic_vhdx(parent, 8 * MiB, uint32_t(1 * MiB));
    create_vhdx_differencing(child, parent);
    ImageInfo vi = image_info(child);
    CHECK(vi.backing_file && *vi.backing_file == ".\\p\xc3\xa4rent.vhdx");
    CHECK(vi.backing_path && *vi.backing_path == parent);
}

#ifdef _WIN32
TEST(paths, invalid_utf8_is_refused) {
    std::string src = in_dir("src");
    write_file(src, "x");
    EXPECT_THROW(std::invalid_argument, clone_file(src, in_dir("bad\xff.bin"), CloneMode::Copy, false));
    EXPECT_THROW(std::invalid_argument, image_info(in_dir("bad\xc3.img")));
}

// A path the caller already gave in the long-path form works too (temp file beside it).
TEST(paths, verbatim_paths_are_taken_as_they_are) {
    std::string src = in_dir("src.bin");
    std::string data = random_bytes(5 * KiB, 16);
    write_file(src, data);
    std::string vsrc = to_utf8(wpath(src)), vdst = to_utf8(wpath(in_dir("dst.bin")));
    CHECK(vsrc.compare(0, 4, "\\\\?\\") == 0);
    clone_file(vsrc, vdst, CloneMode::Auto, false);
    CHECK(read_file(in_dir("dst.bin")) == data);
    std::string base = in_dir("base.raw");
    write_sparse(base, 1 * MiB, {});
    std::string vov = to_utf8(wpath(in_dir("ov.qcow2")));
    create_qcow2_overlay(vov, "base.raw", std::nullopt, std::nullopt);
    ImageInfo info = image_info(vov);
    CHECK(info.backing_path && *info.backing_path == to_utf8(wpath(base)));
    CHECK_EQ(image_chain(vov).size(), size_t(2));
    CHECK(list_dir(g_dir) == (std::vector<std::string>{"base.raw", "dst.bin", "ov.qcow2", "src.bin"}));
}

// io::win_path: which paths get the \\?\ prefix, and how they are normalized.
TEST(paths, win_path_prefixes_long_paths) {
    CHECK(io::win_path("C:\\short\\path.img") == L"C:\\short\\path.img");
    CHECK(io::win_path("rel/short.img") == L"rel/short.img");
    const std::string comp(100, 'x');
    const std::wstring wcomp(100, L'x');
    // Long: absolute, '/' turned into '\', "." and ".." resolved, then prefixed.
    std::string lp = "C:/" + comp + "/./" + comp + "/../" + comp + "/" + comp + "/f.img";
    CHECK(io::win_path(lp) ==
          L"\\\\?\\C:\\" + wcomp + L"\\" + wcomp + L"\\" + wcomp + L"\\f.img");
    // UNC.
    std::string unc = "\\\\server\\share\\" + comp + "\\" + comp + "\\" + comp + "\\f.img";
    CHECK(io::win_path(unc) ==
          L"\\\\?\\UNC\\server\\share\\" + wcomp + L"\\" + wcomp + L"\\" + wcomp + L"\\f.img");
    // Already verbatim (or a device path): unchanged, however long.
    std::string verb = "\\\\?\\C:\\" + comp + "\\" + comp + "\\" + comp;
    CHECK(io::win_path(verb) == to_wide(verb));
    // Relative and long: made absolute against the current directory.
    std::wstring rel = io::win_path(comp + "\\" + comp + "\\" + comp);
    CHECK(rel.compare(0, 4, L"\\\\?\\") == 0);
    CHECK(rel.size() > 300 && rel.substr(rel.size() - 101) == L"\\" + wcomp);
    CHECK(rel.find(L'/') == std::wstring::npos);
}
#endif

// ------------------------------------------------------------------ main

int run(const std::vector<std::string>& args) {
    std::vector<std::string> filters;
    bool list = false;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--list") {
            list = true;
        } else if (args[i] == "--dir" && i + 1 < args.size()) {
            g_scratch_root = args[++i];
        } else if (!args[i].empty() && args[i][0] == '-') {
            std::fprintf(stderr, "usage: agent_swarm_core_tests [--dir DIR] [--list] [FILTER...]\n");
            return 2;
        } else {
            filters.push_back(args[i]);
        }
    }
    std::vector<const TestCase*> selected;
    for (const TestCase& t : registry()) {
        bool match = filters.empty();
        for (const auto& f : filters) match = match || t.id.compare(0, f.size(), f) == 0;
        if (match) selected.push_back(&t);
    }
    if (list) {
        for (const TestCase* t : selected) std::printf("%s\n", t->id.c_str());
        return 0;
    }
    if (selected.empty()) {
        std::fprintf(stderr, "no test matches the filter\n");
        return 2;
    }
    if (g_scratch_root.empty()) g_scratch_root = default_scratch_root();
    while (g_scratch_root.size() > 1 && g_scratch_root.back() == kSep) g_scratch_root.pop_back();
#ifdef _WIN32
    std::printf("platform: Windows (%s), scratch %s\n",
                GetProcAddress(GetModuleHandleW(L"ntdll.dll"), "wine_get_version") ? "Wine"
                                                                                     : "native",
                g_scratch_root.c_str());
#else
    std::printf("platform: POSIX, scratch %s\n", g_scratch_root.c_str());
#endif
    int passed = 0, failed = 0, skipped = 0;
    for (const TestCase* t : selected) {
        std::fflush(stdout);
        std::string status, detail;
        try {
            g_dir = new_scratch_dir(t->id);
            t->fn();
            status = "ok";
            ++passed;
        } catch (const Skip& s) {
            status = "SKIP";
            detail = s.reason;
            ++skipped;
        } catch (const Failure& f) {
            status = "FAIL";
            detail = f.message;
            ++failed;
        } catch (const std::exception& e) {
            status = "FAIL";
            detail = std::string("unexpected exception: ") + e.what();
            ++failed;
        }
        if (!g_dir.empty()) remove_tree(g_dir);
        g_dir.clear();
        std::printf("%-4s %s%s%s\n", status.c_str(), t->id.c_str(), detail.empty() ? "" : ": ",
                    detail.c_str());
    }
    std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    std::fflush(stdout);
    if (failed) return 1;
    return passed == 0 ? 77 : 0;
}

}  // namespace

#ifdef _WIN32
int wmain(int argc, wchar_t** argv) {
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) args.push_back(to_utf8(argv[i]));
    return run(args);
}
#else
int main(int argc, char** argv) { return run(std::vector<std::string>(argv + 1, argv + argc)); }
#endif
