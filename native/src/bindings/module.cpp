// agent_swarm._native: the compiled module. Private; use agent_swarm.native.
#include "common.hpp"

PYBIND11_MODULE(_native, m) {
    m.doc() = "agent-swarm native core (private; import agent_swarm.native instead)";
    agent_swarm::bindings::register_errors(m);
    agent_swarm::bindings::register_clone(m);
    agent_swarm::bindings::register_image(m);
#ifdef AGENT_SWARM_VERSION
    m.attr("__version__") = AGENT_SWARM_VERSION;
#endif
}
