// STUB (to be replaced): Linux FICLONE + sparse copy.
#include <stdexcept>
#include "agent_swarm/clone.hpp"
namespace agent_swarm {
CloneMethod clone_file(const std::string&, const std::string&, CloneMode, bool) { throw std::logic_error("not implemented"); }
}  // namespace agent_swarm
