// Disk image inspection, creation and conversion (qcow2, raw, VHDX).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace agent_swarm {

enum class ImageFormat { Raw, Qcow2, Vhdx };

const char* format_name(ImageFormat f) noexcept;
// "raw" | "qcow2" | "vhdx" -> format; anything else throws std::invalid_argument.
ImageFormat parse_format(const std::string& name);

struct ImageInfo {
    std::string path;                          // as opened
    ImageFormat format = ImageFormat::Raw;
    uint64_t virtual_size = 0;                 // guest-visible bytes
    uint64_t actual_size = 0;                  // bytes allocated on the host (st_blocks*512)
    uint32_t cluster_size = 0;                 // qcow2 cluster / VHDX block size, 0 for raw
    std::optional<std::string> backing_file;   // as recorded in the image (qcow2 / VHDX parent)
    std::optional<std::string> backing_path;   // backing_file resolved against path's directory
    std::optional<ImageFormat> backing_format; // recorded or detected
    // qcow2 header facts that decide whether an image is safe and usable as a disk:
    std::optional<std::string> encryption;     // "aes" (legacy) or "luks"; nullopt if none
    std::optional<std::string> data_file;      // external data file name (header extension)
    // Names of the set (known) incompatible feature bits, in bit order: "dirty", "corrupt",
    // "data_file", "compression_type", "extended_l2". Unknown bits throw ImageError.
    std::vector<std::string> incompatible_features;
};

// Detect the format of a file from its magic bytes. A file with no known magic is raw.
// Throws PathError when the file cannot be opened/read, ImageError when it carries a
// known magic but the header is invalid or truncated, or when it is a raw file whose
// size is zero or not a multiple of 512.
ImageFormat detect_format(const std::string& path);

// Inspect one image (no backing chain walk).
ImageInfo image_info(const std::string& path);

// Inspect an image and every image below it (result[0] is `path`). Cycles and chains
// deeper than 64 throw ImageError.
std::vector<ImageInfo> image_chain(const std::string& path);

// Write a qcow2 v3 image at `path` whose backing file is `backing` (recorded verbatim,
// resolved relative to `path`'s directory when relative). Format and virtual size are read
// from the backing file unless given. Written to a temp file and renamed; refuses an
// existing `path` (PathError EEXIST). The layout is byte-for-byte what `qemu-img create -f
// qcow2 -b B -F fmt` (QEMU 7.2) writes: 64 KiB clusters, 16-bit refcounts, zlib.
// Throws PathError (backing missing/unreadable), ImageError (backing not a valid raw/qcow2
// image, or not of the given backing_format), std::invalid_argument (VHDX backing, size not
// a positive multiple of 512, smaller than the backing's virtual size, or too large).
// Not fsynced (like `cp`; fsync would be ~90% of the cost): fsync the file and its directory
// if the overlay must survive a host crash.
void create_qcow2_overlay(const std::string& path, const std::string& backing,
                          std::optional<ImageFormat> backing_format,
                          std::optional<uint64_t> size);

// Write `src` (qcow2, with its whole backing chain, or raw) as a sparse raw file `dst`
// (temp file + rename, fsynced; refuses an existing dst). Supports deflate-compressed
// clusters and zero clusters; refuses encrypted images, external data files, extended L2
// entries and zstd-compressed clusters with ImageError. The result is byte-equal to
// `qemu-img convert -O raw`; all-zero 4 KiB blocks are left as holes.
void convert_qcow2_to_raw(const std::string& src, const std::string& dst);

// Write an MS-VHDX differencing disk at `path` whose parent is the VHDX `parent`
// (parent locator holds relative_path, absolute_win32_path/volume_path as available, and
// parent_linkage = parent's DataWriteGuid). Temp file + rename; refuses an existing path.
void create_vhdx_differencing(const std::string& path, const std::string& parent);

}  // namespace agent_swarm
