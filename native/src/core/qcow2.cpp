// qcow2: header parsing, overlay creation, conversion to raw.
//
// Format reference: QEMU docs/interop/qcow2.txt. All fields are big-endian.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#ifdef AGENT_SWARM_HAVE_ZLIB
#include <zlib.h>
#endif

#include "formats.hpp"

namespace agent_swarm {

namespace detail {

namespace {

constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtBackingFormat = 0xE2792ACAu;
constexpr uint32_t kExtFeatureTable = 0x6803f857u;
constexpr uint32_t kExtDataFile = 0x44415441u;

constexpr uint64_t kIncompatDirty = 1u << 0;
constexpr uint64_t kIncompatCorrupt = 1u << 1;
constexpr uint64_t kIncompatDataFile = 1u << 2;
constexpr uint64_t kIncompatCompression = 1u << 3;
constexpr uint64_t kIncompatExtL2 = 1u << 4;
constexpr uint64_t kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                    kIncompatCompression | kIncompatExtL2;

constexpr uint64_t kMaxL1Bytes = 32u << 20;        // QEMU's QCOW_MAX_L1_SIZE
constexpr uint64_t kMaxRefTableBytes = 8u << 20;   // QEMU's QCOW_MAX_REFTABLE_SIZE
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint32_t kMaxBackingName = 1023;
constexpr uint32_t kV2HeaderLength = 72;
constexpr uint32_t kV3MinHeaderLength = 104;

constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // L1/L2 entry bits 9..55
constexpr uint64_t kOflagCompressed = 1ull << 62;
constexpr uint64_t kOflagZero = 1ull;

struct Header {
    uint32_t version = 0;
    uint64_t backing_offset = 0;
    uint32_t backing_size = 0;
    uint32_t cluster_bits = 0;
    uint64_t cluster_size = 0;
    uint64_t size = 0;
    uint32_t crypt_method = 0;
    uint32_t l1_size = 0;
    uint64_t l1_offset = 0;
    uint64_t refcount_table_offset = 0;
    uint32_t refcount_table_clusters = 0;
    uint32_t nb_snapshots = 0;
    uint64_t snapshots_offset = 0;
    uint64_t incompatible = 0;
    uint64_t compatible = 0;
    uint64_t autoclear = 0;
    uint32_t refcount_order = 4;
    uint32_t header_length = kV2HeaderLength;
    uint8_t compression_type = 0;  // 0 zlib, 1 zstd
    bool data_file_ext = false;
    std::optional<std::string> data_file;  // the data file extension's name, as recorded
    uint64_t file_size = 0;
    std::optional<std::string> backing_file;
    std::optional<std::string> backing_format;  // name as recorded
};

std::string hex(uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

// Entries needed in the L1 table to map `size` bytes.
uint64_t l1_entries_for(uint64_t size, uint32_t cluster_bits, uint32_t l2_entry_bytes) {
    // One L2 table (a cluster) maps cluster_size / l2_entry_bytes clusters.
    uint32_t l2_bits = cluster_bits - (l2_entry_bytes == 16 ? 4 : 3);
    uint32_t shift = cluster_bits + l2_bits;
    return (size >> shift) + ((size & ((uint64_t(1) << shift) - 1)) != 0);
}

// Parse and validate the header, its extensions and the backing file name.
Header parse_header(const io::File& f) {
    const std::string& path = f.path();
    auto bad = [&](const std::string& why) { return ImageError(path, "invalid qcow2 image: " + why); };

    Header h;
    h.file_size = f.size();
    // Most images keep header, extensions and backing name in the first 4 KiB; read more
    // (up to the end of cluster 0) only when needed.
    std::vector<uint8_t> c0(size_t(std::min<uint64_t>(h.file_size, 4096)));
    size_t got = f.pread(c0.data(), c0.size(), 0);
    c0.resize(got);
    auto ensure = [&](uint64_t end, const char* what) {
        if (end <= c0.size()) return;
        if (end > h.file_size)
            throw ImageError(path, std::string("invalid qcow2 image: truncated (") + what +
                                       " ends at byte " + std::to_string(end) + ", file has " +
                                       std::to_string(h.file_size) + ")");
        size_t old = c0.size();
        c0.resize(size_t(end));
        f.pread_exact(c0.data() + old, size_t(end - old), old, what);
    };

    if (c0.size() < 4 || std::memcmp(c0.data(), kQcow2Magic, 4) != 0) throw bad("no qcow2 magic");
    ensure(kV2HeaderLength, "header");
    h.version = io::be32(&c0[4]);
    if (h.version != 2 && h.version != 3)
        throw ImageError(path, "unsupported qcow2 version " + std::to_string(h.version));
    ensure(h.version == 2 ? kV2HeaderLength : kV3MinHeaderLength, "header");
    const uint8_t* p = c0.data();
    h.backing_offset = io::be64(p + 8);
    h.backing_size = io::be32(p + 16);
    h.cluster_bits = io::be32(p + 20);
    h.size = io::be64(p + 24);
    h.crypt_method = io::be32(p + 32);
    h.l1_size = io::be32(p + 36);
    h.l1_offset = io::be64(p + 40);
    h.refcount_table_offset = io::be64(p + 48);
    h.refcount_table_clusters = io::be32(p + 56);
    h.nb_snapshots = io::be32(p + 60);
    h.snapshots_offset = io::be64(p + 64);

    if (h.cluster_bits < 9 || h.cluster_bits > 21)
        throw bad("cluster_bits " + std::to_string(h.cluster_bits) + " out of range 9..21");
    h.cluster_size = uint64_t(1) << h.cluster_bits;
    const uint64_t cmask = h.cluster_size - 1;

    if (h.version == 3) {
        h.incompatible = io::be64(p + 72);
        h.compatible = io::be64(p + 80);
        h.autoclear = io::be64(p + 88);
        h.refcount_order = io::be32(p + 96);
        h.header_length = io::be32(p + 100);
        if (h.header_length < kV3MinHeaderLength)
            throw bad("header_length " + std::to_string(h.header_length) + " is below 104");
        if (h.header_length > h.cluster_size)
            throw bad("header_length " + std::to_string(h.header_length) +
                      " exceeds the cluster size");
        ensure(h.header_length, "header");
        p = c0.data();
        if (h.header_length > 104) h.compression_type = c0[104];
        if (h.refcount_order > 6)
            throw bad("refcount_order " + std::to_string(h.refcount_order) + " exceeds 6");
        if (h.incompatible & ~kIncompatKnown)
            throw ImageError(path, "unsupported qcow2 incompatible feature bits " +
                                       hex(h.incompatible & ~kIncompatKnown));
        if (h.compression_type > 1)
            throw bad("unknown compression type " + std::to_string(h.compression_type));
        if (bool(h.incompatible & kIncompatCompression) != (h.compression_type != 0))
            throw bad("compression type field and incompatible feature bit disagree");
    }

    if (h.crypt_method > 2) throw bad("unknown encryption method " + std::to_string(h.crypt_method));

    // L1 table.
    const uint32_t l2_entry_bytes = (h.incompatible & kIncompatExtL2) ? 16 : 8;
    if (uint64_t(h.l1_size) * 8 > kMaxL1Bytes)
        throw bad("L1 table of " + std::to_string(h.l1_size) + " entries is too large");
    if (h.l1_size < l1_entries_for(h.size, h.cluster_bits, l2_entry_bytes))
        throw bad("L1 table (" + std::to_string(h.l1_size) + " entries) too small for size " +
                  std::to_string(h.size));
    if (h.l1_size > 0) {
        if (h.l1_offset & cmask) throw bad("L1 table offset " + hex(h.l1_offset) + " not cluster-aligned");
        if (h.l1_offset > h.file_size || uint64_t(h.l1_size) * 8 > h.file_size - h.l1_offset)
            throw ImageError(path, "invalid qcow2 image: truncated (L1 table at " +
                                       hex(h.l1_offset) + " lies beyond the end of the file)");
    }
    // Refcount table and snapshots (not used here, but a broken table means a broken image).
    if (h.refcount_table_clusters == 0) throw bad("no refcount table");
    if (uint64_t(h.refcount_table_clusters) * h.cluster_size > kMaxRefTableBytes)
        throw bad("refcount table too large");
    if (h.refcount_table_offset & cmask) throw bad("refcount table offset not cluster-aligned");
    if (h.nb_snapshots > kMaxSnapshots) throw bad("too many snapshots");
    if (h.nb_snapshots && (h.snapshots_offset & cmask))
        throw bad("snapshot table offset not cluster-aligned");

    // Backing file name.
    if (h.backing_offset != 0 && h.backing_size != 0) {
        if (h.backing_offset > h.cluster_size) throw bad("backing file name offset beyond cluster 0");
        if (h.backing_size > kMaxBackingName || h.backing_size > h.cluster_size - h.backing_offset)
            throw bad("backing file name too long (" + std::to_string(h.backing_size) + " bytes)");
        ensure(h.backing_offset + h.backing_size, "backing file name");
        std::string name(reinterpret_cast<const char*>(c0.data() + h.backing_offset), h.backing_size);
        if (name.find('\0') != std::string::npos) throw bad("backing file name contains a NUL byte");
        h.backing_file = std::move(name);
    }

    // Header extensions: from the end of the header to the backing name (or end of cluster 0).
    uint64_t off = h.header_length;
    uint64_t ext_end = h.backing_offset ? std::min<uint64_t>(h.backing_offset, h.cluster_size)
                                        : h.cluster_size;
    while (off + 8 <= ext_end) {
        if (off + 8 > h.file_size) break;  // QEMU reads zeros (= end marker) past EOF
        ensure(off + 8, "header extension");
        uint32_t type = io::be32(&c0[off]);
        uint32_t len = io::be32(&c0[off + 4]);
        off += 8;
        if (type == kExtEnd) break;
        if (len > ext_end - off)
            throw bad("header extension " + hex(type) + " overruns cluster 0");
        ensure(off + len, "header extension");
        const char* data = reinterpret_cast<const char*>(&c0[off]);
        if (type == kExtBackingFormat) {
            if (len >= 16) throw bad("backing format name too long");
            std::string name(data, len);
            name = name.substr(0, name.find('\0'));
            h.backing_format = std::move(name);
        } else if (type == kExtDataFile) {
            h.data_file_ext = true;
            std::string name(data, len);  // QEMU reads it with g_strndup: up to a NUL
            h.data_file = name.substr(0, name.find('\0'));
        }
        off += (uint64_t(len) + 7) & ~uint64_t(7);
    }
    return h;
}

}  // namespace

void qcow2_read_info(const io::File& f, ImageInfo& info) {
    Header h = parse_header(f);
    info.format = ImageFormat::Qcow2;
    info.virtual_size = h.size;
    info.cluster_size = uint32_t(h.cluster_size);
    info.backing_file = h.backing_file;
    if (h.crypt_method == 1) info.encryption = "aes";
    if (h.crypt_method == 2) info.encryption = "luks";
    info.data_file = h.data_file;
    info.incompatible_features.clear();
    static constexpr const char* kIncompatNames[] = {"dirty", "corrupt", "data_file",
                                                     "compression_type", "extended_l2"};
    for (unsigned bit = 0; bit < sizeof kIncompatNames / sizeof kIncompatNames[0]; ++bit)
        if (h.incompatible & (uint64_t(1) << bit))
            info.incompatible_features.push_back(kIncompatNames[bit]);
    info.backing_format.reset();
    if (h.backing_file && h.backing_format) {
        info.backing_format = backing_format_from_name(*h.backing_format);
        if (!info.backing_format)
            throw ImageError(f.path(), "unsupported backing file format '" + *h.backing_format + "'");
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// create_qcow2_overlay
// ---------------------------------------------------------------------------------------

namespace {

// Layout of a fresh overlay, as `qemu-img create -f qcow2 -b B -F fmt` writes it:
// cluster 0 header + extensions + backing name, cluster 1 refcount table, cluster 2 the only
// refcount block, cluster 3.. the L1 table (all zero: nothing allocated).
constexpr uint32_t kNewClusterBits = 16;
constexpr uint64_t kNewClusterSize = uint64_t(1) << kNewClusterBits;
constexpr uint64_t kNewRefTableOffset = 1 * kNewClusterSize;
constexpr uint64_t kNewRefBlockOffset = 2 * kNewClusterSize;
constexpr uint64_t kNewL1Offset = 3 * kNewClusterSize;
constexpr uint32_t kNewHeaderLength = 112;

// QEMU's feature name table, so qemu-img info can name feature bits.
struct FeatureName {
    uint8_t type, bit;
    const char* name;
};
constexpr FeatureName kFeatureNames[] = {
    {0, 0, "dirty bit"},           {0, 1, "corrupt bit"},        {0, 2, "external data file"},
    {0, 3, "compression type"},    {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},             {2, 1, "raw external data"},
};

size_t put_ext(uint8_t* p, uint32_t type, const void* data, uint32_t len) {
    io::put_be32(p, type);
    io::put_be32(p + 4, len);
    if (len) std::memcpy(p + 8, data, len);
    return 8 + ((size_t(len) + 7) & ~size_t(7));
}

}  // namespace

void create_qcow2_overlay(const std::string& path, const std::string& backing,
                          std::optional<ImageFormat> backing_format,
                          std::optional<uint64_t> size) {
    if (path.empty()) throw std::invalid_argument("overlay path is empty");
    if (backing.empty()) throw std::invalid_argument("backing file name is empty");
    if (backing.size() > detail::kMaxBackingName)
        throw std::invalid_argument("backing file name is longer than 1023 bytes");
    if (backing.find('\0') != std::string::npos)
        throw std::invalid_argument("backing file name contains a NUL byte");
    if (backing_format == ImageFormat::Vhdx)
        throw std::invalid_argument("a qcow2 overlay cannot have a VHDX backing file");
    if (size && (*size == 0 || *size % 512 != 0))
        throw std::invalid_argument("size must be a positive multiple of 512 bytes, not " +
                                    std::to_string(*size));
    if (io::exists(path)) throw PathError(EEXIST, "destination already exists", path);

    // The backing file: relative names are relative to the overlay's directory.
    const std::string bpath = io::resolve_relative(path, backing);
    io::File bf;
    try {
        bf = io::File::open_read(bpath);
    } catch (const PathError& e) {
        throw PathError(e.code().value(), "cannot open backing file", bpath);
    }
    ImageFormat fmt = detail::sniff_format(bf);
    if (fmt == ImageFormat::Vhdx)
        throw std::invalid_argument("a qcow2 overlay cannot have a VHDX backing file (" + bpath + ")");
    if (backing_format && *backing_format != fmt)
        throw ImageError(bpath, std::string("backing file is a ") + format_name(fmt) +
                                    " image, not " + format_name(*backing_format));
    uint64_t backing_size = bf.size();
    if (fmt == ImageFormat::Qcow2) {
        detail::OpenImage top{std::move(bf), {}};
        detail::qcow2_read_info(top.file, top.info);
        backing_size = top.info.virtual_size;
        if (top.info.backing_file) {
            // The backing file has backing files itself: they must be there and valid too
            // (as `qemu-img create` checks), or the overlay would be unusable.
            top.info.path = bpath;
            top.info.backing_path = io::resolve_relative(bpath, *top.info.backing_file);
            std::vector<detail::OpenImage> chain;
            chain.push_back(std::move(top));
            detail::extend_chain(chain, bpath);
        }
    }
    bf.close();

    uint64_t vsize = size.value_or(backing_size);
    if (vsize < backing_size)
        throw std::invalid_argument("size " + std::to_string(vsize) +
                                    " is smaller than the backing file's virtual size " +
                                    std::to_string(backing_size));
    uint64_t l1_size = detail::l1_entries_for(vsize, kNewClusterBits, 8);
    if (l1_size * 8 > detail::kMaxL1Bytes)
        throw std::invalid_argument("size " + std::to_string(vsize) + " is too large for qcow2");
    uint64_t l1_clusters = (l1_size * 8 + kNewClusterSize - 1) / kNewClusterSize;
    uint64_t used_clusters = 3 + l1_clusters;  // <= 515: one refcount block (32768) suffices

    // Cluster 0: header, extensions, backing name.
    uint8_t hdr[2048] = {};
    std::memcpy(hdr, detail::kQcow2Magic, 4);
    io::put_be32(hdr + 4, 3);
    // backing_file_offset / size at 8 / 16: filled below
    io::put_be32(hdr + 20, kNewClusterBits);
    io::put_be64(hdr + 24, vsize);
    io::put_be32(hdr + 32, 0);  // no encryption
    io::put_be32(hdr + 36, uint32_t(l1_size));
    io::put_be64(hdr + 40, kNewL1Offset);
    io::put_be64(hdr + 48, kNewRefTableOffset);
    io::put_be32(hdr + 56, 1);
    // nb_snapshots, snapshots_offset, feature bits: 0
    io::put_be32(hdr + 96, 4);  // refcount_order: 16-bit refcounts
    io::put_be32(hdr + 100, kNewHeaderLength);
    hdr[104] = 0;  // compression type: zlib
    size_t off = kNewHeaderLength;
    const char* fname = format_name(fmt);
    off += put_ext(hdr + off, detail::kExtBackingFormat, fname, uint32_t(std::strlen(fname)));
    uint8_t table[sizeof kFeatureNames / sizeof kFeatureNames[0] * 48] = {};
    for (size_t i = 0; i < sizeof kFeatureNames / sizeof kFeatureNames[0]; ++i) {
        table[i * 48] = kFeatureNames[i].type;
        table[i * 48 + 1] = kFeatureNames[i].bit;
        std::memcpy(table + i * 48 + 2, kFeatureNames[i].name, std::strlen(kFeatureNames[i].name));
    }
    off += put_ext(hdr + off, detail::kExtFeatureTable, table, sizeof table);
    off += put_ext(hdr + off, detail::kExtEnd, nullptr, 0);
    io::put_be64(hdr + 8, off);
    io::put_be32(hdr + 16, uint32_t(backing.size()));
    std::memcpy(hdr + off, backing.data(), backing.size());
    off += backing.size();

    uint8_t reftable[8];
    io::put_be64(reftable, kNewRefBlockOffset);
    std::vector<uint8_t> refblock(size_t(used_clusters) * 2);
    for (size_t i = 0; i < used_clusters; ++i) io::put_be16(&refblock[i * 2], 1);

    // Not fsynced (see image.hpp): fsync would be ~90% of the cost of this call.
    io::AtomicOutput out(path, /*overwrite=*/false, /*durable=*/false);
    const io::File& o = out.file();
    o.pwrite_all(hdr, off, 0);
    o.pwrite_all(reftable, sizeof reftable, kNewRefTableOffset);
    o.pwrite_all(refblock.data(), refblock.size(), kNewRefBlockOffset);
    o.truncate(kNewL1Offset + l1_size * 8);  // the L1 table: zeros (a hole)
    out.commit();
}

// ---------------------------------------------------------------------------------------
// convert_qcow2_to_raw
// ---------------------------------------------------------------------------------------

namespace {

constexpr uint64_t kChunk = 4u << 20;   // output buffer; >= the largest cluster (2 MiB)
constexpr size_t kZeroBlock = 4096;      // granularity of hole detection in the output

enum class Kind { Unallocated, Zero, Data, Compressed };

struct Layer {
    detail::OpenImage img;
    bool qcow2 = false;
    uint64_t vsize = 0;
    detail::Header h;
    std::vector<uint64_t> l1;
    uint32_t l2_bits = 0;               // log2(entries per L2 table)
    uint64_t cached_l1_index = UINT64_MAX;
    std::vector<uint64_t> l2;           // decoded L2 table for cached_l1_index
    uint64_t cached_compressed = UINT64_MAX;  // L2 entry whose cluster is in `cluster`
    std::vector<uint8_t> cluster;       // decompressed cluster
    std::vector<uint8_t> cbuf;          // compressed bytes
};

struct Entry {
    Kind kind;
    uint64_t value;  // host cluster offset (Data) or the raw L2 entry (Compressed)
};

bool is_zero(const uint8_t* p, size_t n) {
    return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

class Converter {
public:
    explicit Converter(std::vector<detail::OpenImage> chain) {
        for (auto& img : chain) {
            Layer L;
            L.img = std::move(img);
            const std::string& path = L.img.info.path;
            switch (L.img.info.format) {
                case ImageFormat::Raw:
                    L.vsize = L.img.info.virtual_size;
                    break;
                case ImageFormat::Vhdx:
                    throw ImageError(path, "VHDX images cannot be converted to raw here "
                                           "(only qcow2 and raw chains are supported)");
                case ImageFormat::Qcow2:
                    open_qcow2(L);
                    break;
            }
            layers_.push_back(std::move(L));
        }
#ifdef AGENT_SWARM_HAVE_ZLIB
        std::memset(&zs_, 0, sizeof zs_);
        if (inflateInit2(&zs_, -12) != Z_OK) throw std::bad_alloc();
        zlib_ready_ = true;
#endif
    }
    ~Converter() {
#ifdef AGENT_SWARM_HAVE_ZLIB
        if (zlib_ready_) inflateEnd(&zs_);
#endif
    }
    Converter(const Converter&) = delete;
    Converter& operator=(const Converter&) = delete;

    uint64_t virtual_size() const { return layers_[0].vsize; }

    // Fill buf[0, len) with the guest view of layer `li` at `off`. `buf` must be zeroed by
    // the caller; only data is stored. Returns whether any data (possibly zeros) was stored.
    bool fill(size_t li, uint64_t off, uint64_t len, uint8_t* buf) {
        Layer& L = layers_[li];
        if (off >= L.vsize) return false;
        len = std::min<uint64_t>(len, L.vsize - off);
        if (!L.qcow2) return L.img.file.pread(buf, size_t(len), off) > 0;

        const uint64_t cs = L.h.cluster_size;
        const uint64_t end = off + len;
        bool any = false;
        uint64_t pos = off;
        while (pos < end) {
            Entry e = lookup(L, pos);
            uint64_t in = pos & (cs - 1);
            uint64_t run = std::min<uint64_t>(cs - in, end - pos);
            uint8_t* dst = buf + (pos - off);
            switch (e.kind) {
                case Kind::Unallocated:
                case Kind::Zero: {
                    // Extend over following clusters of the same kind.
                    while (pos + run < end) {
                        Entry n = lookup(L, pos + run);
                        if (n.kind != e.kind) break;
                        run += std::min<uint64_t>(cs, end - pos - run);
                    }
                    if (e.kind == Kind::Unallocated && li + 1 < layers_.size())
                        any |= fill(li + 1, pos, run, dst);
                    break;
                }
                case Kind::Data: {
                    uint64_t host = e.value + in;
                    while (pos + run < end) {
                        Entry n = lookup(L, pos + run);
                        if (n.kind != Kind::Data || n.value != host + run) break;
                        run += std::min<uint64_t>(cs, end - pos - run);
                    }
                    // Past the end of the file reads as zeros, as in QEMU.
                    L.img.file.pread(dst, size_t(run), host);
                    any = true;
                    break;
                }
                case Kind::Compressed: {
                    const uint8_t* c = decompress(L, e.value);
                    std::memcpy(dst, c + in, size_t(run));
                    any = true;
                    break;
                }
            }
            pos += run;
        }
        return any;
    }

private:
    void open_qcow2(Layer& L) {
        const io::File& f = L.img.file;
        const std::string& path = f.path();
        L.qcow2 = true;
        L.h = detail::parse_header(f);
        L.vsize = L.h.size;
        if (L.h.crypt_method != 0)
            throw ImageError(path, "encrypted qcow2 images are not supported");
        if ((L.h.incompatible & detail::kIncompatDataFile) || L.h.data_file_ext)
            throw ImageError(path, "qcow2 images with an external data file are not supported");
        if (L.h.incompatible & detail::kIncompatExtL2)
            throw ImageError(path, "qcow2 images with extended L2 entries (subclusters) are not supported");
        L.l2_bits = L.h.cluster_bits - 3;
        L.l1.resize(L.h.l1_size);
        if (L.h.l1_size) {
            std::vector<uint8_t> raw(size_t(L.h.l1_size) * 8);
            f.pread_exact(raw.data(), raw.size(), L.h.l1_offset, "L1 table");
            for (size_t i = 0; i < L.l1.size(); ++i) L.l1[i] = io::be64(&raw[i * 8]);
        }
    }

    Entry lookup(Layer& L, uint64_t pos) {
        const std::string& path = L.img.file.path();
        const uint64_t cmask = L.h.cluster_size - 1;
        uint64_t cluster = pos >> L.h.cluster_bits;
        uint64_t l1i = cluster >> L.l2_bits;
        if (l1i >= L.l1.size()) return {Kind::Unallocated, 0};
        if (l1i != L.cached_l1_index) {
            uint64_t l2off = L.l1[l1i] & detail::kOffsetMask;
            if (l2off == 0) return {Kind::Unallocated, 0};
            if (l2off & cmask)
                throw ImageError(path, "corrupt qcow2 image: L2 table offset " + detail::hex(l2off) +
                                           " not cluster-aligned");
            std::vector<uint8_t> raw(size_t(L.h.cluster_size));
            L.img.file.pread_exact(raw.data(), raw.size(), l2off, "L2 table");
            L.l2.resize(raw.size() / 8);
            for (size_t i = 0; i < L.l2.size(); ++i) L.l2[i] = io::be64(&raw[i * 8]);
            L.cached_l1_index = l1i;
        }
        uint64_t e = L.l2[size_t(cluster & ((uint64_t(1) << L.l2_bits) - 1))];
        if (e & detail::kOflagCompressed) return {Kind::Compressed, e};
        if (e & detail::kOflagZero) {
            if (L.h.version < 3)
                throw ImageError(path, "corrupt qcow2 image: zero cluster in a version 2 image");
            return {Kind::Zero, 0};
        }
        uint64_t host = e & detail::kOffsetMask;
        if (host == 0) return {Kind::Unallocated, 0};
        if (host & cmask)
            throw ImageError(path, "corrupt qcow2 image: data cluster offset " + detail::hex(host) +
                                       " not cluster-aligned");
        return {Kind::Data, host};
    }

    const uint8_t* decompress(Layer& L, uint64_t entry) {
        const std::string& path = L.img.file.path();
        if (L.cached_compressed == entry) return L.cluster.data();
        if (L.h.compression_type != 0)
            throw ImageError(path, "zstd-compressed qcow2 clusters are not supported");
#ifndef AGENT_SWARM_HAVE_ZLIB
        throw ImageError(path, "compressed clusters need zlib (this build has no zlib support)");
#else
        const uint32_t cb = L.h.cluster_bits;
        const uint32_t shift = 62 - (cb - 8);
        const uint64_t coff = entry & ((uint64_t(1) << shift) - 1);
        const uint64_t sectors = ((entry >> shift) & ((uint64_t(1) << (cb - 8)) - 1)) + 1;
        const uint64_t csize = sectors * 512 - (coff & 511);
        if (coff >= L.h.file_size)
            throw ImageError(path, "corrupt qcow2 image: compressed cluster at " + detail::hex(coff) +
                                       " beyond end of file");
        L.cbuf.assign(size_t(csize), 0);
        L.img.file.pread(L.cbuf.data(), L.cbuf.size(), coff);  // short read: zero padding
        L.cluster.resize(size_t(L.h.cluster_size));
        if (inflateReset(&zs_) != Z_OK) throw ImageError(path, "zlib error");
        zs_.next_in = L.cbuf.data();
        zs_.avail_in = uInt(L.cbuf.size());
        zs_.next_out = L.cluster.data();
        zs_.avail_out = uInt(L.cluster.size());
        int r = inflate(&zs_, Z_FINISH);
        // As QEMU: the cluster must be filled; the input may be only partly consumed.
        if (!((r == Z_STREAM_END || r == Z_BUF_ERROR) && zs_.avail_out == 0)) {
            L.cached_compressed = UINT64_MAX;
            throw ImageError(path, "corrupt qcow2 image: cannot decompress cluster at " +
                                       detail::hex(coff));
        }
        L.cached_compressed = entry;
        return L.cluster.data();
#endif
    }

    std::vector<Layer> layers_;
#ifdef AGENT_SWARM_HAVE_ZLIB
    z_stream zs_;
    bool zlib_ready_ = false;
#endif
};

// Write the non-zero kZeroBlock-sized parts of buf[0, n) at `off`.
void write_nonzero(const io::File& out, const uint8_t* buf, size_t n, uint64_t off) {
    size_t i = 0;
    while (i < n) {
        size_t len = std::min(kZeroBlock, n - i);
        if (is_zero(buf + i, len)) {
            i += len;
            continue;
        }
        size_t j = i + len;
        while (j < n) {
            size_t l2 = std::min(kZeroBlock, n - j);
            if (is_zero(buf + j, l2)) break;
            j += l2;
        }
        out.pwrite_all(buf + i, j - i, off + i);
        i = j;
    }
}

}  // namespace

void convert_qcow2_to_raw(const std::string& src, const std::string& dst) {
    if (src.empty() || dst.empty()) throw std::invalid_argument("path is empty");
    if (io::exists(dst)) throw PathError(EEXIST, "destination already exists", dst);
    Converter conv(detail::open_chain(src));
    const uint64_t vsize = conv.virtual_size();

    io::AtomicOutput out(dst);
    std::vector<uint8_t> buf(size_t(std::min<uint64_t>(kChunk, std::max<uint64_t>(vsize, 1))));
    for (uint64_t off = 0; off < vsize; off += kChunk) {
        size_t n = size_t(std::min<uint64_t>(kChunk, vsize - off));
        if (conv.fill(0, off, n, buf.data())) {
            write_nonzero(out.file(), buf.data(), n, off);
            std::memset(buf.data(), 0, n);
        }
    }
    out.file().truncate(vsize);
    out.commit();
}

}  // namespace agent_swarm
