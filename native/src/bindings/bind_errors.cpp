// Map native exceptions to Python:
//   PathError   -> OSError(errno, "strerror (context)", filename, None, filename2)
//   ImageError  -> InvalidImageError (a ValueError subclass) with .filename
//   std::invalid_argument -> ValueError (pybind11 default)
#include "agent_swarm/errors.hpp"
#include "common.hpp"

#include <cstring>

namespace agent_swarm::bindings {

void register_errors(py::module_& m) {
    static py::handle invalid_image;  // kept alive by the module attribute
    py::object cls = py::reinterpret_steal<py::object>(PyErr_NewExceptionWithDoc(
        "agent_swarm._native.InvalidImageError",
        "The file is readable but is not a valid or supported disk image.", PyExc_ValueError,
        nullptr));
    if (!cls) throw py::error_already_set();
    m.attr("InvalidImageError") = cls;
    invalid_image = cls;

    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const PathError& e) {
            int err = e.code().value();
            std::string msg = std::strerror(err);
            msg += " (" + e.context() + ")";
            py::object args;
            if (e.path2().empty())
                args = py::make_tuple(err, msg, fs_str(e.path()));
            else
                args = py::make_tuple(err, msg, fs_str(e.path()), py::none(), fs_str(e.path2()));
            PyErr_SetObject(PyExc_OSError, args.ptr());
        } catch (const ImageError& e) {
            py::object exc = invalid_image(py::str(e.what()));
            exc.attr("filename") = fs_str(e.path());
            PyErr_SetObject(invalid_image.ptr(), exc.ptr());
        }
    });
}

}  // namespace agent_swarm::bindings
