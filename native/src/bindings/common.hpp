#pragma once
#include <pybind11/pybind11.h>
#include <string>

namespace py = pybind11;

namespace agent_swarm::bindings {
void register_errors(py::module_& m);
void register_clone(py::module_& m);
void register_image(py::module_& m);

// Decode a filesystem path the way os.fsdecode does.
inline py::object fs_str(const std::string& s) {
    PyObject* o = PyUnicode_DecodeFSDefaultAndSize(s.data(), Py_ssize_t(s.size()));
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(o);
}
}  // namespace agent_swarm::bindings
