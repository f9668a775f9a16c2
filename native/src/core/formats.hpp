// Internal: per-format readers used by image.cpp's dispatcher.
#pragma once

#include "agent_swarm/image.hpp"
#include "io.hpp"

#include <optional>
#include <string>
#include <vector>

namespace agent_swarm::detail {

// Magic bytes.
inline constexpr uint8_t kQcow2Magic[4] = {'Q', 'F', 'I', 0xfb};
inline constexpr char kVhdxMagic[8] = {'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e'};

// Fill format-specific fields (format, virtual_size, cluster_size, backing_*) of `info` from
// an open image; image.cpp fills path and actual_size. Throw ImageError on invalid headers.
void qcow2_read_info(const io::File& f, ImageInfo& info);
void vhdx_read_info(const io::File& f, ImageInfo& info);

// ---- image.cpp: detection and chain walking, shared by the format implementations ----

// Format of an open file from its magic bytes alone (no header validation). Throws
// ImageError for known-but-unsupported formats (VMDK, VDI, VHD, ...) and for files that
// are neither a known format nor plausible raw disks (empty, size not a multiple of 512).
ImageFormat sniff_format(const io::File& f);

// Map a qcow2 backing-format name ("raw", "file", "qcow2", "vhdx") to a format; nullopt for
// names this library does not support.
std::optional<ImageFormat> backing_format_from_name(const std::string& name);

struct OpenImage {
    io::File file;
    ImageInfo info;
};

// Open and parse one image. When `expected` is set (the format recorded by the image above
// it), a file of another format is refused with ImageError.
OpenImage open_image(const std::string& path, std::optional<ImageFormat> expected = {});

// Open `path` and every backing file below it (result[0] is `path`). A missing backing file
// throws PathError naming it; cycles and chains deeper than kMaxChainDepth throw ImageError.
inline constexpr size_t kMaxChainDepth = 64;
std::vector<OpenImage> open_chain(const std::string& path);
// Append the backing files below chain.back() (which must be non-empty) to `chain`, with the
// same checks; `top` names the image the error messages are about.
void extend_chain(std::vector<OpenImage>& chain, const std::string& top);

}  // namespace agent_swarm::detail
