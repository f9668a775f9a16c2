// STUB (to be replaced): format dispatch, detection, info, chain.
#include <stdexcept>
#include "formats.hpp"
namespace agent_swarm {
const char* format_name(ImageFormat f) noexcept {
    switch (f) { case ImageFormat::Raw: return "raw"; case ImageFormat::Qcow2: return "qcow2"; case ImageFormat::Vhdx: return "vhdx"; }
    return "raw";
}
ImageFormat parse_format(const std::string& n) {
    if (n == "raw") return ImageFormat::Raw;
    if (n == "qcow2") return ImageFormat::Qcow2;
    if (n == "vhdx") return ImageFormat::Vhdx;
    throw std::invalid_argument("unknown image format '" + n + "' (expected raw, qcow2 or vhdx)");
}
ImageFormat detect_format(const std::string&) { throw std::logic_error("not implemented"); }
ImageInfo image_info(const std::string&) { throw std::logic_error("not implemented"); }
std::vector<ImageInfo> image_chain(const std::string&) { throw std::logic_error("not implemented"); }
}  // namespace agent_swarm
