// MS-VHDX: reader (header / region table / metadata / parent locator) and a writer for
// dynamic differencing disks. Everything in the format is little-endian; header, region
// table and log checksums are CRC-32C (Castagnoli).
//
// File layout written by create_vhdx_differencing (the same as qemu-img and Hyper-V):
//   0        file type identifier ("vhdxfile" + creator)
//   64 KiB   header 1            128 KiB  header 2
//   192 KiB  region table 1      256 KiB  region table 2
//   1 MiB    log (1 MiB, empty: LogGuid is zero)
//   2 MiB    metadata region (1 MiB): table + items
//   3 MiB    BAT (rounded up to 1 MiB), every entry NOT_PRESENT -> a sparse hole
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "formats.hpp"

#ifdef _WIN32
#include <windows.h>
#endif

namespace agent_swarm {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kHeader1Offset = 64 * kKiB;
constexpr uint64_t kHeader2Offset = 128 * kKiB;
constexpr uint64_t kRegionTable1Offset = 192 * kKiB;
constexpr uint64_t kRegionTable2Offset = 256 * kKiB;
constexpr size_t kHeaderSize = 4 * kKiB;          // checksummed part of a header
constexpr size_t kRegionTableSize = 64 * kKiB;
constexpr size_t kMetadataTableSize = 64 * kKiB;
constexpr uint32_t kMaxTableEntries = 2047;
constexpr uint64_t kMaxVirtualSize = 64ull * 1024 * 1024 * kMiB;  // 64 TiB
constexpr uint32_t kMetaIsVirtualDisk = 0x2;
constexpr uint32_t kMetaIsRequired = 0x4;
constexpr uint32_t kParamHasParent = 0x2;

// ---- CRC-32C (reflected polynomial 0x82F63B78) ----
struct Crc32cTable {
    uint32_t t[256];
    constexpr Crc32cTable() : t{} {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
    }
};
constexpr Crc32cTable kCrcTable{};

uint32_t crc32c(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) c = kCrcTable.t[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

// CRC of a structure whose 32-bit checksum field sits at byte 4 (computed as if zero).
uint32_t struct_crc(const uint8_t* p, size_t n) {
    std::vector<uint8_t> tmp(p, p + n);
    std::memset(tmp.data() + 4, 0, 4);
    return crc32c(tmp.data(), n);
}

void put_struct_crc(uint8_t* p, size_t n) {
    std::memset(p + 4, 0, 4);
    io::put_le32(p + 4, crc32c(p, n));
}

// ---- GUIDs (on-disk: Data1 LE32, Data2 LE16, Data3 LE16, Data4[8]) ----
struct Guid {
    std::array<uint8_t, 16> b{};
    bool operator==(const Guid& o) const { return b == o.b; }
    bool operator!=(const Guid& o) const { return b != o.b; }
    bool is_zero() const {
        return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
    }
    static Guid read(const uint8_t* p) {
        Guid g;
        std::memcpy(g.b.data(), p, 16);
        return g;
    }
    void write(uint8_t* p) const { std::memcpy(p, b.data(), 16); }
    // "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (lower case).
    std::string str() const {
        char s[40];
        std::snprintf(s, sizeof s, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                      unsigned(io::le32(&b[0])), unsigned(io::le16(&b[4])),
                      unsigned(io::le16(&b[6])), b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                      b[15]);
        return s;
    }
};

constexpr Guid make_guid(uint32_t d1, uint16_t d2, uint16_t d3, uint64_t d4) {
    Guid g{};
    for (int i = 0; i < 4; ++i) g.b[size_t(i)] = uint8_t(d1 >> (8 * i));
    for (int i = 0; i < 2; ++i) g.b[size_t(4 + i)] = uint8_t(d2 >> (8 * i));
    for (int i = 0; i < 2; ++i) g.b[size_t(6 + i)] = uint8_t(d3 >> (8 * i));
    for (int i = 0; i < 8; ++i) g.b[size_t(8 + i)] = uint8_t(d4 >> (8 * (7 - i)));
    return g;
}

const Guid kBatRegion = make_guid(0x2DC27766, 0xF623, 0x4200, 0x9D64115E9BFD4A08ull);
const Guid kMetadataRegion = make_guid(0x8B7CA206, 0x4790, 0x4B9A, 0xB8FE575F050F886Eull);
const Guid kFileParameters = make_guid(0xCAA16737, 0xFA36, 0x4D43, 0xB3B633F0AA44E76Bull);
const Guid kVirtualDiskSize = make_guid(0x2FA54224, 0xCD1B, 0x4876, 0xB2115DBED83BF4B8ull);
const Guid kPage83Data = make_guid(0xBECA12AB, 0xB2E6, 0x4523, 0x93EFC309E000C746ull);
const Guid kLogicalSectorSize = make_guid(0x8141BF1D, 0xA96F, 0x4709, 0xBA47F233A8FAAB5Full);
const Guid kPhysicalSectorSize = make_guid(0xCDA348C7, 0x445D, 0x4471, 0x9CC9E9885251C556ull);
const Guid kParentLocator = make_guid(0xA8D35F2D, 0xB30B, 0x454D, 0xABF7D3D84834AB0Cull);
const Guid kVhdxParentLocatorType = make_guid(0xB04AEFB7, 0xD19E, 0x4A81, 0xB78925B8E9445913ull);

// A random (version 4) GUID.
Guid random_guid() {
    std::random_device rd;
    Guid g;
    for (size_t i = 0; i < 16; i += 4) io::put_le32(&g.b[i], uint32_t(rd()));
    g.b[7] = uint8_t((g.b[7] & 0x0F) | 0x40);  // Data3 high nibble: version 4
    g.b[8] = uint8_t((g.b[8] & 0x3F) | 0x80);  // RFC 4122 variant
    return g;
}

// ---- UTF-8 <-> UTF-16LE ----
bool utf8_to_utf16le(const std::string& s, std::vector<uint8_t>& out) {
    out.clear();
    auto put = [&](uint32_t u) {
        out.push_back(uint8_t(u));
        out.push_back(uint8_t(u >> 8));
    };
    for (size_t i = 0; i < s.size();) {
        uint8_t c = uint8_t(s[i]);
        uint32_t cp;
        size_t n;
        if (c < 0x80) { cp = c; n = 1; }
        else if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; n = 2; }
        else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; n = 3; }
        else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; n = 4; }
        else return false;
        if (i + n > s.size()) return false;
        for (size_t k = 1; k < n; ++k) {
            uint8_t cc = uint8_t(s[i + k]);
            if ((cc & 0xC0) != 0x80) return false;
            cp = cp << 6 | (cc & 0x3F);
        }
        static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            put(0xD800 | (cp >> 10));
            put(0xDC00 | (cp & 0x3FF));
        } else {
            put(cp);
        }
        i += n;
    }
    return true;
}

bool utf16le_to_utf8(const uint8_t* p, size_t nbytes, std::string& out) {
    out.clear();
    if (nbytes % 2) return false;
    size_t n = nbytes / 2;
    for (size_t i = 0; i < n; ++i) {
        uint32_t u = io::le16(p + 2 * i);
        if (u >= 0xD800 && u <= 0xDBFF) {
            if (i + 1 >= n) return false;
            uint32_t lo = io::le16(p + 2 * (i + 1));
            if (lo < 0xDC00 || lo > 0xDFFF) return false;
            u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
            ++i;
        } else if (u >= 0xDC00 && u <= 0xDFFF) {
            return false;
        }
        if (u < 0x80) {
            out += char(u);
        } else if (u < 0x800) {
            out += char(0xC0 | (u >> 6));
            out += char(0x80 | (u & 0x3F));
        } else if (u < 0x10000) {
            out += char(0xE0 | (u >> 12));
            out += char(0x80 | ((u >> 6) & 0x3F));
            out += char(0x80 | (u & 0x3F));
        } else {
            out += char(0xF0 | (u >> 18));
            out += char(0x80 | ((u >> 12) & 0x3F));
            out += char(0x80 | ((u >> 6) & 0x3F));
            out += char(0x80 | (u & 0x3F));
        }
    }
    return true;
}

// ---- parsed image ----
struct VhdxImage {
    uint64_t virtual_size = 0;
    uint32_t block_size = 0;
    uint32_t logical_sector_size = 0;
    uint32_t physical_sector_size = 0;
    bool has_parent = false;
    Guid data_write_guid;
    Guid log_guid;
    std::vector<std::pair<std::string, std::string>> locator;  // parent locator (UTF-8)

    const std::string* locator_value(const char* key) const {
        for (const auto& kv : locator)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
};

bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

struct Header {
    bool valid = false;
    uint64_t seq = 0;
    std::array<uint8_t, kHeaderSize> raw{};
};

Header read_header(const io::File& f, uint64_t off, const char* what) {
    Header h;
    f.pread_exact(h.raw.data(), kHeaderSize, off, what);
    const uint8_t* p = h.raw.data();
    h.valid = std::memcmp(p, "head", 4) == 0 && io::le32(p + 4) == struct_crc(p, kHeaderSize);
    h.seq = io::le64(p + 8);
    return h;
}

// Parse and validate everything but the BAT.
VhdxImage parse_vhdx(const io::File& f) {
    const std::string& path = f.path();
    auto bad = [&](const std::string& why) { return ImageError(path, "invalid VHDX image: " + why); };

    uint8_t ident[8];
    f.pread_exact(ident, 8, 0, "VHDX file type identifier");
    if (std::memcmp(ident, detail::kVhdxMagic, 8) != 0)
        throw bad("missing 'vhdxfile' file type identifier");
    const uint64_t file_size = f.size();

    // Headers: the valid one with the higher sequence number is current.
    Header h1 = read_header(f, kHeader1Offset, "VHDX header 1");
    Header h2 = read_header(f, kHeader2Offset, "VHDX header 2");
    const Header* cur = nullptr;
    if (h1.valid && h2.valid) {
        if (h1.seq > h2.seq) cur = &h1;
        else if (h2.seq > h1.seq) cur = &h2;
        else if (h1.raw == h2.raw) cur = &h1;  // identical copies (e.g. Disk2VHD) are fine
        else throw bad("both headers are valid but differ and have the same sequence number");
    } else if (h1.valid) {
        cur = &h1;
    } else if (h2.valid) {
        cur = &h2;
    } else {
        throw bad("no valid header (bad signature or checksum in both header copies)");
    }
    const uint8_t* hp = cur->raw.data();
    VhdxImage img;
    img.data_write_guid = Guid::read(hp + 32);
    img.log_guid = Guid::read(hp + 48);
    uint16_t log_version = io::le16(hp + 64);
    uint16_t version = io::le16(hp + 66);
    uint32_t log_length = io::le32(hp + 68);
    uint64_t log_offset = io::le64(hp + 72);
    if (version != 1) throw bad("unsupported header version " + std::to_string(version));
    if (log_version != 0) throw bad("unsupported log version " + std::to_string(log_version));
    if (log_length % kMiB || log_offset % kMiB || (log_length && log_offset < kMiB))
        throw bad("log region is not aligned to 1 MiB");

    // Region table: copy 1, or copy 2 when copy 1 is damaged.
    std::vector<uint8_t> rt(kRegionTableSize);
    auto rt_valid = [&](uint64_t off, const char* what) {
        f.pread_exact(rt.data(), kRegionTableSize, off, what);
        return std::memcmp(rt.data(), "regi", 4) == 0 &&
               io::le32(rt.data() + 4) == struct_crc(rt.data(), kRegionTableSize);
    };
    if (!rt_valid(kRegionTable1Offset, "VHDX region table") &&
        !rt_valid(kRegionTable2Offset, "VHDX region table"))
        throw bad("no valid region table (bad signature or checksum in both copies)");
    uint32_t rcount = io::le32(rt.data() + 8);
    if (rcount > kMaxTableEntries) throw bad("region table has too many entries");
    bool have_bat = false, have_meta = false;
    uint64_t meta_off = 0, meta_len = 0, bat_off = 0, bat_len = 0;
    for (uint32_t i = 0; i < rcount; ++i) {
        const uint8_t* e = rt.data() + 16 + 32 * size_t(i);
        Guid id = Guid::read(e);
        uint64_t off = io::le64(e + 16);
        uint32_t len = io::le32(e + 24);
        bool required = io::le32(e + 28) & 1;
        bool is_bat = id == kBatRegion, is_meta = id == kMetadataRegion;
        if (!is_bat && !is_meta) {
            if (required) throw bad("unsupported required region " + id.str());
            continue;
        }
        if ((is_bat && have_bat) || (is_meta && have_meta))
            throw bad(std::string("duplicate ") + (is_bat ? "BAT" : "metadata") + " region");
        if (off % kMiB || off < kMiB || len == 0 || len % kMiB)
            throw bad(std::string(is_bat ? "BAT" : "metadata") +
                      " region is not aligned to 1 MiB");
        if (off + len > file_size)
            throw ImageError(path, std::string("truncated image: the ") +
                                       (is_bat ? "BAT" : "metadata") +
                                       " region lies beyond the end of the file");
        if (is_bat) { have_bat = true; bat_off = off; bat_len = len; }
        else { have_meta = true; meta_off = off; meta_len = len; }
    }
    if (!have_bat) throw bad("no BAT region");
    if (!have_meta) throw bad("no metadata region");
    (void)bat_off;

    // Metadata table.
    std::vector<uint8_t> mt(kMetadataTableSize);
    f.pread_exact(mt.data(), kMetadataTableSize, meta_off, "VHDX metadata table");
    if (std::memcmp(mt.data(), "metadata", 8) != 0) throw bad("bad metadata table signature");
    uint16_t mcount = io::le16(mt.data() + 10);
    if (mcount > kMaxTableEntries) throw bad("metadata table has too many entries");
    struct Item { bool present = false; uint32_t off = 0, len = 0; };
    Item fp, vds, lss, pss, p83, pl;
    for (uint16_t i = 0; i < mcount; ++i) {
        const uint8_t* e = mt.data() + 32 + 32 * size_t(i);
        Guid id = Guid::read(e);
        uint32_t off = io::le32(e + 16), len = io::le32(e + 20), flags = io::le32(e + 24);
        Item* it = id == kFileParameters      ? &fp
                   : id == kVirtualDiskSize   ? &vds
                   : id == kLogicalSectorSize ? &lss
                   : id == kPhysicalSectorSize ? &pss
                   : id == kPage83Data        ? &p83
                   : id == kParentLocator     ? &pl
                                              : nullptr;
        if (!it) {
            if (flags & kMetaIsRequired) throw bad("unsupported required metadata item " + id.str());
            continue;
        }
        if (it->present) throw bad("duplicate metadata item " + id.str());
        if (len && (off < kMetadataTableSize || uint64_t(off) + len > meta_len))
            throw bad("metadata item " + id.str() + " lies outside the metadata region");
        *it = Item{true, off, len};
    }
    auto read_item = [&](const Item& it, const char* name, size_t want) {
        if (!it.present) throw bad(std::string("missing required metadata item: ") + name);
        if (want && it.len != want)
            throw bad(std::string("metadata item ") + name + " has size " +
                      std::to_string(it.len) + ", expected " + std::to_string(want));
        std::vector<uint8_t> buf(it.len);
        f.pread_exact(buf.data(), buf.size(), meta_off + it.off, name);
        return buf;
    };

    auto b = read_item(fp, "file parameters", 8);
    img.block_size = io::le32(b.data());
    uint32_t params = io::le32(b.data() + 4);
    img.has_parent = params & kParamHasParent;
    if (img.block_size < kMiB || img.block_size > 256 * kMiB || !is_pow2(img.block_size))
        throw bad("invalid block size " + std::to_string(img.block_size) +
                  " (must be a power of two between 1 MiB and 256 MiB)");

    b = read_item(lss, "logical sector size", 4);
    img.logical_sector_size = io::le32(b.data());
    if (img.logical_sector_size != 512 && img.logical_sector_size != 4096)
        throw bad("invalid logical sector size " + std::to_string(img.logical_sector_size));

    if (pss.present) {
        b = read_item(pss, "physical sector size", 4);
        img.physical_sector_size = io::le32(b.data());
        if (img.physical_sector_size != 512 && img.physical_sector_size != 4096)
            throw bad("invalid physical sector size " + std::to_string(img.physical_sector_size));
    } else {
        img.physical_sector_size = img.logical_sector_size;
    }

    b = read_item(vds, "virtual disk size", 8);
    img.virtual_size = io::le64(b.data());
    if (img.virtual_size == 0 || img.virtual_size > kMaxVirtualSize ||
        img.virtual_size % img.logical_sector_size)
        throw bad("invalid virtual disk size " + std::to_string((unsigned long long)img.virtual_size));

    // The BAT must be large enough for the disk.
    uint64_t chunk_ratio = (uint64_t(1) << 23) * img.logical_sector_size / img.block_size;
    uint64_t data_blocks = (img.virtual_size + img.block_size - 1) / img.block_size;
    uint64_t entries = img.has_parent
                           ? (data_blocks + chunk_ratio - 1) / chunk_ratio * (chunk_ratio + 1)
                           : data_blocks + (data_blocks - 1) / chunk_ratio;
    if (entries * 8 > bat_len)
        throw bad("BAT region (" + std::to_string((unsigned long long)bat_len) + " bytes) is too small for " +
                  std::to_string((unsigned long long)entries) + " entries");

    if (img.has_parent) {
        if (!pl.present) throw bad("differencing image without a parent locator");
        b = read_item(pl, "parent locator", 0);
        if (b.size() < 20) throw bad("parent locator is truncated");
        if (Guid::read(b.data()) != kVhdxParentLocatorType)
            throw bad("unsupported parent locator type " + Guid::read(b.data()).str());
        uint16_t count = io::le16(b.data() + 18);
        if (20 + 12 * size_t(count) > b.size()) throw bad("parent locator entries are truncated");
        for (uint16_t i = 0; i < count; ++i) {
            const uint8_t* e = b.data() + 20 + 12 * size_t(i);
            uint32_t ko = io::le32(e), vo = io::le32(e + 4);
            uint16_t kl = io::le16(e + 8), vl = io::le16(e + 10);
            if (kl == 0 || uint64_t(ko) + kl > b.size() || uint64_t(vo) + vl > b.size())
                throw bad("parent locator entry " + std::to_string(i) + " is out of bounds");
            std::string k, v;
            if (!utf16le_to_utf8(b.data() + ko, kl, k) || !utf16le_to_utf8(b.data() + vo, vl, v))
                throw bad("parent locator entry " + std::to_string(i) + " is not valid UTF-16");
            img.locator.emplace_back(std::move(k), std::move(v));
        }
    }
    return img;
}

// ---- paths ----

// Convert a Windows-style locator path to this platform's separators.
std::string native_seps(std::string s) {
#ifndef _WIN32
    std::replace(s.begin(), s.end(), '\\', '/');
#endif
    return s;
}

#ifndef _WIN32
bool is_windows_absolute(const std::string& s) {
    return (s.size() > 2 && s[1] == ':' && (s[2] == '\\' || s[2] == '/')) ||
           (s.size() > 1 && s[0] == '\\' && s[1] == '\\');
}

// Lexically normalized components of an absolute POSIX path ("/a/./b/../c" -> {a, c}).
std::vector<std::string> posix_components(const std::string& abs) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i <= abs.size()) {
        size_t j = abs.find('/', i);
        if (j == std::string::npos) j = abs.size();
        std::string c = abs.substr(i, j - i);
        if (c == "..") {
            if (!out.empty()) out.pop_back();
        } else if (!c.empty() && c != ".") {
            out.push_back(std::move(c));
        }
        i = j + 1;
    }
    return out;
}
#endif

struct LocatorPaths {
    std::optional<std::string> relative;   // ".\name" / "..\dir\name" (UTF-8)
    std::optional<std::string> absolute;   // absolute_win32_path
    std::optional<std::string> volume;     // volume_path
};

// Relative path from directory components `from` to file components `to`, Windows style.
std::optional<std::string> relative_win(const std::vector<std::string>& from,
                                        const std::vector<std::string>& to,
                                        bool case_insensitive) {
    auto eq = [&](const std::string& a, const std::string& b) {
        if (!case_insensitive) return a == b;
        if (a.size() != b.size()) return false;
        for (size_t i = 0; i < a.size(); ++i) {
            char x = a[i], y = b[i];
            if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
            if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
            if (x != y) return false;
        }
        return true;
    };
    if (to.empty()) return std::nullopt;
    size_t common = 0;
    while (common < from.size() && common + 1 < to.size() && eq(from[common], to[common])) ++common;
    std::string r;
    if (common == from.size()) r = ".\\";
    for (size_t i = common; i < from.size(); ++i) r += "..\\";
    for (size_t i = common; i < to.size(); ++i) {
        r += to[i];
        if (i + 1 < to.size()) r += '\\';
    }
    return r;
}

#ifdef _WIN32
using io::narrow;
using io::widen;

// The plain Win32 form of a long-path (`\\?\`) one: `\\?\C:\a` -> `C:\a`,
// `\\?\UNC\server\share` -> `\\server\share`; anything else unchanged.
std::wstring plain_form(const std::wstring& p) {
    if (p.compare(0, 8, L"\\\\?\\UNC\\") == 0) return L"\\\\" + p.substr(8);
    if (p.compare(0, 4, L"\\\\?\\") == 0 && p.size() > 5 && p[5] == L':') return p.substr(4);
    return p;
}

// Absolute and normalized, in the plain form a parent locator records.
std::wstring full_path(const std::string& p) {
    std::wstring w = widen(p);
    DWORD n = GetFullPathNameW(w.c_str(), 0, nullptr, nullptr);
    if (n == 0) throw PathError(EINVAL, "cannot make the path absolute", p);
    std::wstring out(n, L'\0');
    n = GetFullPathNameW(w.c_str(), n, &out[0], nullptr);
    out.resize(n);
    return plain_form(out);
}

// "C:\a\b" -> root "C:", components {a, b}; "\\server\share\a" -> root "\\server\share".
void split_windows(const std::string& full, std::string& root, std::vector<std::string>& comps) {
    std::string s = full;
    std::replace(s.begin(), s.end(), '/', '\\');
    size_t start = 0;
    if (s.size() >= 2 && s[1] == ':') {
        root = s.substr(0, 2);
        start = 2;
    } else if (s.rfind("\\\\", 0) == 0) {
        size_t a = s.find('\\', 2);
        size_t b2 = a == std::string::npos ? a : s.find('\\', a + 1);
        root = s.substr(0, b2);
        start = b2 == std::string::npos ? s.size() : b2;
    }
    comps.clear();
    size_t i = start;
    while (i < s.size()) {
        size_t j = s.find('\\', i);
        if (j == std::string::npos) j = s.size();
        std::string c = s.substr(i, j - i);
        if (c == "..") {
            if (!comps.empty()) comps.pop_back();
        } else if (!c.empty() && c != ".") {
            comps.push_back(c);
        }
        i = j + 1;
    }
}

LocatorPaths locator_paths(const std::string& child, const std::string& parent) {
    LocatorPaths lp;
    std::wstring parent_full = full_path(parent);
    std::string pabs = narrow(parent_full), cabs = narrow(full_path(child));
    lp.absolute = pabs;
    std::string proot, croot;
    std::vector<std::string> pc, cc;
    split_windows(pabs, proot, pc);
    split_windows(cabs, croot, cc);
    if (!cc.empty()) cc.pop_back();  // the child's directory
    if (!proot.empty() && CompareStringOrdinal(widen(proot).c_str(), -1, widen(croot).c_str(), -1,
                                               TRUE) == CSTR_EQUAL)
        lp.relative = relative_win(cc, pc, true);
    // Asked with the long-path form (a parent deeper than MAX_PATH); the mount point is
    // compared in the plain form, whichever form the answer comes in.
    wchar_t mount[MAX_PATH + 1], volume[64];
    if (GetVolumePathNameW(io::win_path(pabs).c_str(), mount, MAX_PATH + 1) &&
        GetVolumeNameForVolumeMountPointW(mount, volume, 64)) {
        std::wstring m = plain_form(mount);
        if (parent_full.size() >= m.size() &&
            CompareStringOrdinal(parent_full.c_str(), int(m.size()), m.c_str(), int(m.size()),
                                 TRUE) == CSTR_EQUAL)
            lp.volume = narrow(volume) + narrow(parent_full.substr(m.size()));
    }
    return lp;
}
#else
LocatorPaths locator_paths(const std::string& child, const std::string& parent) {
    LocatorPaths lp;
    std::vector<std::string> pc = posix_components(io::absolute(parent));
    std::vector<std::string> cc = posix_components(io::absolute(child));
    std::string pabs;
    for (const auto& c : pc) pabs += "/" + c;
    lp.absolute = pabs.empty() ? "/" : pabs;
    if (!cc.empty()) cc.pop_back();  // the child's directory
    lp.relative = relative_win(cc, pc, false);
    return lp;
}
#endif

// ---- writer helpers ----
struct Blob {
    uint64_t off;
    std::vector<uint8_t> data;
};

// Write `data` at `off`, skipping trailing zeros (the file is new and sparse).
void write_trimmed(const io::File& f, const std::vector<uint8_t>& data, uint64_t off) {
    size_t n = data.size();
    while (n > 0 && data[n - 1] == 0) --n;
    n = std::min(data.size(), (n + 4095) / 4096 * 4096);
    if (n) f.pwrite_all(data.data(), n, off);
}

}  // namespace

namespace detail {

void vhdx_read_info(const io::File& f, ImageInfo& info) {
    VhdxImage img = parse_vhdx(f);
    info.format = ImageFormat::Vhdx;
    info.virtual_size = img.virtual_size;
    info.cluster_size = img.block_size;
    info.backing_file.reset();
    info.backing_path.reset();
    info.backing_format.reset();
    if (!img.has_parent) return;

    const std::string* rel = img.locator_value("relative_path");
    const std::string* abs = img.locator_value("absolute_win32_path");
    const std::string* vol = img.locator_value("volume_path");
    const std::string* recorded = rel ? rel : abs ? abs : vol;
    if (!recorded || recorded->empty())
        throw ImageError(f.path(),
                         "invalid VHDX image: the parent locator records no parent path "
                         "(relative_path, absolute_win32_path or volume_path)");
    info.backing_file = *recorded;
    info.backing_format = ImageFormat::Vhdx;

    // Candidate locations, in the order Hyper-V tries them: relative, volume, absolute.
    std::vector<std::string> candidates;
    if (rel && !rel->empty()) {
        std::string r = native_seps(*rel);
        if (io::is_absolute(r)) {
            candidates.push_back(r);
        } else {
            while (r.size() > 2 && r[0] == '.' && (r[1] == '/' || r[1] == '\\')) r.erase(0, 2);
            candidates.push_back(io::resolve_relative(f.path(), r));
        }
    }
#ifdef _WIN32
    if (vol && !vol->empty()) candidates.push_back(*vol);
    if (abs && !abs->empty()) candidates.push_back(*abs);
#else
    // A POSIX writer (this one) records the host's absolute path; a Windows one can't be
    // resolved here.
    if (abs && !abs->empty() && !is_windows_absolute(*abs) && io::is_absolute(*abs))
        candidates.push_back(*abs);
#endif
    for (const auto& c : candidates)
        if (io::exists(c)) {
            info.backing_path = c;
            return;
        }
    info.backing_path = candidates.empty() ? *recorded : candidates.front();
}

}  // namespace detail

void create_vhdx_differencing(const std::string& path, const std::string& parent) {
    if (path.empty()) throw std::invalid_argument("path must not be empty");
    if (parent.empty()) throw std::invalid_argument("parent must not be empty");

    // --- the parent ---
    VhdxImage pimg;
    {
        io::File pf = io::File::open_read(parent);
        uint8_t magic[8] = {};
        size_t got = pf.pread(magic, sizeof magic, 0);
        if (got < 8 || std::memcmp(magic, detail::kVhdxMagic, 8) != 0) {
            bool qcow2 = got >= 4 && std::memcmp(magic, detail::kQcow2Magic, 4) == 0;
            throw ImageError(parent, std::string("the parent of a VHDX differencing disk must be "
                                                 "a VHDX image, but this is ") +
                                         (qcow2 ? "a qcow2 image" : "not a VHDX image (no "
                                                                    "'vhdxfile' signature)"));
        }
        pimg = parse_vhdx(pf);
    }
    if (!pimg.log_guid.is_zero())
        throw ImageError(parent,
                         "the VHDX parent has a log that was not replayed (it was not closed "
                         "cleanly); open it once read-write (Hyper-V, or `qemu-img check -r all`) "
                         "before creating a differencing disk on it");

    // --- parent locator ---
    LocatorPaths lp = locator_paths(path, parent);
    std::vector<std::pair<std::string, std::string>> kv;
    kv.emplace_back("parent_linkage", "{" + pimg.data_write_guid.str() + "}");
    if (lp.relative) kv.emplace_back("relative_path", *lp.relative);
    if (lp.volume) kv.emplace_back("volume_path", *lp.volume);
    if (lp.absolute) kv.emplace_back("absolute_win32_path", *lp.absolute);

    std::vector<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> enc;
    for (const auto& [k, v] : kv) {
        std::vector<uint8_t> ke, ve;
        if (!utf8_to_utf16le(k, ke) || !utf8_to_utf16le(v, ve))
            throw std::invalid_argument("the parent path '" + v +
                                        "' is not valid UTF-8 and cannot be recorded in a VHDX "
                                        "parent locator");
        if (ve.size() > 0xFFFF)
            throw std::invalid_argument("the parent path is too long for a VHDX parent locator");
        enc.emplace_back(std::move(ke), std::move(ve));
    }
    std::vector<uint8_t> locator(20 + 12 * enc.size());
    kVhdxParentLocatorType.write(locator.data());
    io::put_le16(locator.data() + 18, uint16_t(enc.size()));
    for (size_t i = 0; i < enc.size(); ++i) {
        uint8_t* e = locator.data() + 20 + 12 * i;
        io::put_le32(e, uint32_t(locator.size()));
        io::put_le16(e + 8, uint16_t(enc[i].first.size()));
        locator.insert(locator.end(), enc[i].first.begin(), enc[i].first.end());
        e = locator.data() + 20 + 12 * i;  // insert may reallocate
        io::put_le32(e + 4, uint32_t(locator.size()));
        io::put_le16(e + 10, uint16_t(enc[i].second.size()));
        locator.insert(locator.end(), enc[i].second.begin(), enc[i].second.end());
    }

    // --- geometry ---
    const uint64_t log_offset = kMiB, log_length = kMiB;
    const uint64_t meta_offset = 2 * kMiB, meta_length = kMiB;
    const uint64_t bat_offset = 3 * kMiB;
    const uint64_t chunk_ratio = (uint64_t(1) << 23) * pimg.logical_sector_size / pimg.block_size;
    const uint64_t data_blocks = (pimg.virtual_size + pimg.block_size - 1) / pimg.block_size;
    const uint64_t bitmap_blocks = (data_blocks + chunk_ratio - 1) / chunk_ratio;
    const uint64_t bat_entries = bitmap_blocks * (chunk_ratio + 1);
    const uint64_t bat_length = (bat_entries * 8 + kMiB - 1) / kMiB * kMiB;
    if (bat_length > 0xFFF00000ull)
        throw ImageError(parent, "the disk is too large for a VHDX differencing disk");
    if (kMetadataTableSize + 40 + locator.size() > meta_length)
        throw std::invalid_argument("the parent path is too long for a VHDX parent locator");

    // --- file type identifier ---
    std::vector<uint8_t> ident(64 * kKiB);
    std::memcpy(ident.data(), detail::kVhdxMagic, 8);
    {
        std::vector<uint8_t> creator;
        utf8_to_utf16le("agent-swarm", creator);
        std::memcpy(ident.data() + 8, creator.data(), creator.size());
    }

    // --- headers ---
    const Guid file_write = random_guid(), data_write = random_guid();
    auto make_header = [&](uint64_t seq) {
        std::vector<uint8_t> h(kHeaderSize);
        std::memcpy(h.data(), "head", 4);
        io::put_le64(h.data() + 8, seq);
        file_write.write(h.data() + 16);
        data_write.write(h.data() + 32);
        // LogGuid (48..63) zero: no log entries to replay.
        io::put_le16(h.data() + 64, 0);  // LogVersion
        io::put_le16(h.data() + 66, 1);  // Version
        io::put_le32(h.data() + 68, uint32_t(log_length));
        io::put_le64(h.data() + 72, log_offset);
        put_struct_crc(h.data(), kHeaderSize);
        return h;
    };

    // --- region table ---
    std::vector<uint8_t> rt(kRegionTableSize);
    std::memcpy(rt.data(), "regi", 4);
    io::put_le32(rt.data() + 8, 2);
    kBatRegion.write(rt.data() + 16);
    io::put_le64(rt.data() + 32, bat_offset);
    io::put_le32(rt.data() + 40, uint32_t(bat_length));
    io::put_le32(rt.data() + 44, 1);  // Required
    kMetadataRegion.write(rt.data() + 48);
    io::put_le64(rt.data() + 64, meta_offset);
    io::put_le32(rt.data() + 72, uint32_t(meta_length));
    io::put_le32(rt.data() + 76, 1);  // Required
    put_struct_crc(rt.data(), kRegionTableSize);

    // --- metadata region ---
    std::vector<uint8_t> meta(kMetadataTableSize + 40 + locator.size());
    std::memcpy(meta.data(), "metadata", 8);
    struct MetaItem { const Guid* id; uint32_t len; uint32_t flags; };
    const MetaItem items[] = {
        {&kFileParameters, 8, kMetaIsRequired},
        {&kVirtualDiskSize, 8, kMetaIsVirtualDisk | kMetaIsRequired},
        {&kPage83Data, 16, kMetaIsVirtualDisk | kMetaIsRequired},
        {&kLogicalSectorSize, 4, kMetaIsVirtualDisk | kMetaIsRequired},
        {&kPhysicalSectorSize, 4, kMetaIsVirtualDisk | kMetaIsRequired},
        {&kParentLocator, uint32_t(locator.size()), kMetaIsRequired},
    };
    io::put_le16(meta.data() + 10, uint16_t(std::size(items)));
    uint32_t item_off = uint32_t(kMetadataTableSize);
    for (size_t i = 0; i < std::size(items); ++i) {
        uint8_t* e = meta.data() + 32 + 32 * i;
        items[i].id->write(e);
        io::put_le32(e + 16, item_off);
        io::put_le32(e + 20, items[i].len);
        io::put_le32(e + 24, items[i].flags);
        uint8_t* d = meta.data() + item_off;
        const Guid& id = *items[i].id;
        if (id == kFileParameters) {
            io::put_le32(d, pimg.block_size);
            io::put_le32(d + 4, kParamHasParent);  // LeaveBlocksAllocated (bit 0) = 0
        } else if (id == kVirtualDiskSize) {
            io::put_le64(d, pimg.virtual_size);
        } else if (id == kPage83Data) {
            random_guid().write(d);
        } else if (id == kLogicalSectorSize) {
            io::put_le32(d, pimg.logical_sector_size);
        } else if (id == kPhysicalSectorSize) {
            io::put_le32(d, pimg.physical_sector_size);
        } else {
            std::memcpy(d, locator.data(), locator.size());
        }
        item_off += items[i].len;
    }

    // --- write ---
    io::AtomicOutput out(path);
    const io::File& f = out.file();
    write_trimmed(f, ident, 0);
    write_trimmed(f, make_header(1), kHeader1Offset);
    write_trimmed(f, make_header(2), kHeader2Offset);
    write_trimmed(f, rt, kRegionTable1Offset);
    write_trimmed(f, rt, kRegionTable2Offset);
    write_trimmed(f, meta, meta_offset);
    f.truncate(bat_offset + bat_length);  // log and BAT: zero (empty log, NOT_PRESENT blocks)
    out.commit();
}

}  // namespace agent_swarm
