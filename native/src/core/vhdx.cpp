// STUB (to be replaced): VHDX reader and differencing-disk writer.
#include <stdexcept>
#include "formats.hpp"
namespace agent_swarm {
namespace detail { void vhdx_read_info(const io::File&, ImageInfo&) { throw std::logic_error("not implemented"); } }
void create_vhdx_differencing(const std::string&, const std::string&) { throw std::logic_error("not implemented"); }
}  // namespace agent_swarm
