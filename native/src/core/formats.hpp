// Internal: per-format readers used by image.cpp's dispatcher.
#pragma once

#include "agent_swarm/image.hpp"
#include "io.hpp"

namespace agent_swarm::detail {

// Magic bytes.
inline constexpr uint8_t kQcow2Magic[4] = {'Q', 'F', 'I', 0xfb};
inline constexpr char kVhdxMagic[8] = {'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e'};

// Fill format-specific fields (format, virtual_size, cluster_size, backing_*) of `info` from
// an open image; image.cpp fills path and actual_size. Throw ImageError on invalid headers.
void qcow2_read_info(const io::File& f, ImageInfo& info);
void vhdx_read_info(const io::File& f, ImageInfo& info);

}  // namespace agent_swarm::detail
