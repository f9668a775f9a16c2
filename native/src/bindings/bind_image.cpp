#include "agent_swarm/image.hpp"
#include "common.hpp"

#include <pybind11/stl.h>

namespace agent_swarm::bindings {

namespace {
py::dict to_dict(const ImageInfo& i) {
    py::dict d;
    d["path"] = fs_str(i.path);
    d["format"] = format_name(i.format);
    d["virtual_size"] = i.virtual_size;
    d["actual_size"] = i.actual_size;
    d["cluster_size"] = i.cluster_size;
    d["backing_file"] = i.backing_file ? fs_str(*i.backing_file) : py::none();
    d["backing_path"] = i.backing_path ? fs_str(*i.backing_path) : py::none();
    d["backing_format"] = i.backing_format ? py::object(py::str(format_name(*i.backing_format))) : py::object(py::none());
    d["encryption"] = i.encryption ? py::object(py::str(*i.encryption)) : py::object(py::none());
    d["data_file"] = i.data_file ? fs_str(*i.data_file) : py::none();
    py::tuple features(i.incompatible_features.size());
    for (size_t k = 0; k < i.incompatible_features.size(); ++k)
        features[k] = py::str(i.incompatible_features[k]);
    d["incompatible_features"] = features;
    return d;
}

std::optional<ImageFormat> opt_format(const std::optional<std::string>& s) {
    if (!s) return std::nullopt;
    return parse_format(*s);
}
}  // namespace

void register_image(py::module_& m) {
    m.def(
        "detect_format",
        [](const std::string& path) {
            ImageFormat f;
            {
                py::gil_scoped_release release;
                f = detect_format(path);
            }
            return std::string(format_name(f));
        },
        py::arg("path"));
    m.def(
        "image_info",
        [](const std::string& path) {
            ImageInfo info;
            {
                py::gil_scoped_release release;
                info = image_info(path);
            }
            return to_dict(info);
        },
        py::arg("path"));
    m.def(
        "image_chain",
        [](const std::string& path) {
            std::vector<ImageInfo> chain;
            {
                py::gil_scoped_release release;
                chain = image_chain(path);
            }
            py::list out;
            for (const auto& i : chain) out.append(to_dict(i));
            return out;
        },
        py::arg("path"));
    m.def(
        "create_qcow2_overlay",
        [](const std::string& path, const std::string& backing,
           const std::optional<std::string>& backing_format, std::optional<uint64_t> size) {
            auto fmt = opt_format(backing_format);
            py::gil_scoped_release release;
            create_qcow2_overlay(path, backing, fmt, size);
        },
        py::arg("path"), py::arg("backing"), py::arg("backing_format") = py::none(),
        py::arg("size") = py::none());
    m.def("convert_qcow2_to_raw", &convert_qcow2_to_raw, py::arg("src"), py::arg("dst"),
          py::call_guard<py::gil_scoped_release>());
    m.def("create_vhdx_differencing", &create_vhdx_differencing, py::arg("path"),
          py::arg("parent"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace agent_swarm::bindings
