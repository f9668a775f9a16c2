// Format names, detection by magic bytes, single-image inspection and backing-chain walks.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "formats.hpp"

namespace agent_swarm {

const char* format_name(ImageFormat f) noexcept {
    switch (f) {
        case ImageFormat::Raw: return "raw";
        case ImageFormat::Qcow2: return "qcow2";
        case ImageFormat::Vhdx: return "vhdx";
    }
    return "raw";
}

ImageFormat parse_format(const std::string& n) {
    if (n == "raw") return ImageFormat::Raw;
    if (n == "qcow2") return ImageFormat::Qcow2;
    if (n == "vhdx") return ImageFormat::Vhdx;
    throw std::invalid_argument("unknown image format '" + n + "' (expected raw, qcow2 or vhdx)");
}

namespace detail {

namespace {

bool starts_with(const uint8_t* b, size_t n, const char* magic, size_t len) {
    return n >= len && std::memcmp(b, magic, len) == 0;
}

// Name of a known image format we do not support, or nullptr.
const char* unsupported_magic(const uint8_t* b, size_t n) {
    if (starts_with(b, n, "KDMV", 4)) return "VMDK";
    if (starts_with(b, n, "COWD", 4)) return "VMDK (ESX COW)";
    if (starts_with(b, n, "# Disk DescriptorFile", 21)) return "VMDK (descriptor)";
    if (n >= 68 && io::le32(b + 64) == 0xbeda107fu) return "VDI";
    if (starts_with(b, n, "conectix", 8)) return "VHD (vpc)";
    if (starts_with(b, n, "QED\0", 4)) return "QED";
    if (starts_with(b, n, "LUKS\xba\xbe", 6)) return "LUKS";
    if (starts_with(b, n, "WithoutFreeSpace", 16) || starts_with(b, n, "WithouFreSpacExt", 16))
        return "Parallels";
    return nullptr;
}

}  // namespace

ImageFormat sniff_format(const io::File& f) {
    uint8_t b[512];
    size_t n = f.pread(b, sizeof b, 0);
    if (starts_with(b, n, reinterpret_cast<const char*>(kQcow2Magic), 4)) {
        if (n >= 8 && io::be32(b + 4) == 1)
            throw ImageError(f.path(), "unsupported image format QCOW (version 1)");
        return ImageFormat::Qcow2;
    }
    if (starts_with(b, n, kVhdxMagic, 8)) return ImageFormat::Vhdx;
    if (const char* other = unsupported_magic(b, n))
        throw ImageError(f.path(), std::string("unsupported image format ") + other);
    uint64_t size = f.size();
    // Fixed VHDs carry their "conectix" footer only in the last 512 (old: 511) bytes.
    if (size > 512) {
        uint8_t tail[512];
        size_t t = f.pread(tail, sizeof tail, size - 512);
        if (t == sizeof tail && (std::memcmp(tail, "conectix", 8) == 0 ||
                                 std::memcmp(tail + 1, "conectix", 8) == 0))
            throw ImageError(f.path(), "unsupported image format VHD (vpc)");
    }
    if (size == 0 || size % 512 != 0)
        throw ImageError(f.path(), "does not look like a disk image (no known format, and " +
                                       std::to_string(size) +
                                       " bytes is not a non-zero multiple of 512 for a raw disk)");
    return ImageFormat::Raw;
}

std::optional<ImageFormat> backing_format_from_name(const std::string& name) {
    // "file" and "host_device" are QEMU protocol drivers: the bytes are the disk (raw).
    if (name == "raw" || name == "file" || name == "host_device") return ImageFormat::Raw;
    if (name == "qcow2") return ImageFormat::Qcow2;
    if (name == "vhdx") return ImageFormat::Vhdx;
    return std::nullopt;
}

OpenImage open_image(const std::string& path, std::optional<ImageFormat> expected) {
    OpenImage r{io::File::open_read(path), {}};
    ImageFormat fmt = sniff_format(r.file);
    if (expected && *expected != fmt)
        throw ImageError(path, std::string("is a ") + format_name(fmt) +
                                   " image, but its overlay records the backing format as " +
                                   format_name(*expected));
    r.info.path = path;
    r.info.format = fmt;
    switch (fmt) {
        case ImageFormat::Raw: r.info.virtual_size = r.file.size(); break;
        case ImageFormat::Qcow2: qcow2_read_info(r.file, r.info); break;
        case ImageFormat::Vhdx: vhdx_read_info(r.file, r.info); break;
    }
    r.info.path = path;
    r.info.actual_size = r.file.allocated_bytes();
    // Readers may resolve the path themselves (VHDX parent locators hold Windows paths).
    if (r.info.backing_file && !r.info.backing_path)
        r.info.backing_path = io::resolve_relative(path, *r.info.backing_file);
    return r;
}

std::vector<OpenImage> open_chain(const std::string& path) {
    std::vector<OpenImage> chain;
    chain.push_back(open_image(path));
    extend_chain(chain, path);
    return chain;
}

void extend_chain(std::vector<OpenImage>& chain, const std::string& path) {
    std::vector<io::FileId> seen;
    for (const auto& img : chain) seen.push_back(img.file.id());
    for (;;) {
        const ImageInfo& cur = chain.back().info;
        if (!cur.backing_path) break;
        if (chain.size() > kMaxChainDepth)
            throw ImageError(path, "backing chain is deeper than " +
                                       std::to_string(kMaxChainDepth) + " images");
        std::string above = cur.path;
        std::string bpath = *cur.backing_path;
        std::optional<ImageFormat> bfmt = cur.backing_format;
        OpenImage next;
        try {
            next = open_image(bpath, bfmt);
        } catch (const PathError& e) {
            if (e.path() != bpath) throw;
            throw PathError(e.code().value(), "cannot open backing file of " + above, bpath);
        }
        io::FileId id = next.file.id();
        if (std::find(seen.begin(), seen.end(), id) != seen.end())
            throw ImageError(path, "backing chain has a cycle: " + above + " is backed by " +
                                       bpath + ", which is already in the chain");
        seen.push_back(id);
        chain.back().info.backing_format = next.info.format;
        chain.push_back(std::move(next));
    }
}

}  // namespace detail

ImageFormat detect_format(const std::string& path) {
    detail::OpenImage img = detail::open_image(path);  // validates the header
    return img.info.format;
}

ImageInfo image_info(const std::string& path) {
    detail::OpenImage img = detail::open_image(path);
    ImageInfo& info = img.info;
    if (info.backing_path && !info.backing_format) {
        // Cheap: one open and a header read. A missing or unreadable backing file is not an
        // error here (only image_chain needs it), so the format just stays unknown.
        try {
            io::File bf = io::File::open_read(*info.backing_path);
            ImageFormat f = detail::sniff_format(bf);
            info.backing_format = f;
        } catch (const std::exception&) {
        }
    }
    return std::move(info);
}

std::vector<ImageInfo> image_chain(const std::string& path) {
    std::vector<detail::OpenImage> chain = detail::open_chain(path);
    std::vector<ImageInfo> out;
    out.reserve(chain.size());
    for (auto& img : chain) out.push_back(std::move(img.info));
    return out;
}

}  // namespace agent_swarm
