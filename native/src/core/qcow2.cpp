// STUB (to be replaced): qcow2 reader/writer.
#include <stdexcept>
#include "formats.hpp"
namespace agent_swarm {
namespace detail { void qcow2_read_info(const io::File&, ImageInfo&) { throw std::logic_error("not implemented"); } }
void create_qcow2_overlay(const std::string&, const std::string&, std::optional<ImageFormat>, std::optional<uint64_t>) { throw std::logic_error("not implemented"); }
void convert_qcow2_to_raw(const std::string&, const std::string&) { throw std::logic_error("not implemented"); }
}  // namespace agent_swarm
