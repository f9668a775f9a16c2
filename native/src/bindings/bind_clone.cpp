#include "agent_swarm/clone.hpp"
#include "common.hpp"

#include <stdexcept>

namespace agent_swarm::bindings {

void register_clone(py::module_& m) {
    m.def(
        "clone_file",
        [](const std::string& src, const std::string& dst, const std::string& mode,
           bool overwrite) {
            CloneMode cm;
            if (mode == "auto") cm = CloneMode::Auto;
            else if (mode == "reflink") cm = CloneMode::Reflink;
            else if (mode == "copy") cm = CloneMode::Copy;
            else throw std::invalid_argument("mode must be 'auto', 'reflink' or 'copy', not '" + mode + "'");
            CloneMethod r;
            {
                py::gil_scoped_release release;
                r = clone_file(src, dst, cm, overwrite);
            }
            return std::string(r == CloneMethod::Reflink ? "reflink" : "copy");
        },
        py::arg("src"), py::arg("dst"), py::arg("mode") = "auto", py::arg("overwrite") = false);
}

}  // namespace agent_swarm::bindings
