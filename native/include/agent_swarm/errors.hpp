// Error types shared by the native core. Pure C++ (no Python.h).
//
// * PathError    -> Python OSError(errno, strerror, filename, None, filename2)
// * ImageError   -> Python agent_swarm.native.InvalidImageError (a ValueError):
//                   the file exists and is readable but is not a usable image.
// * std::invalid_argument -> Python ValueError (bad arguments).
#pragma once

#include <cerrno>
#include <string>
#include <system_error>
#include <stdexcept>
#include <utility>

namespace agent_swarm {

class PathError : public std::system_error {
public:
    PathError(int err, std::string what, std::string path, std::string path2 = {})
        : std::system_error(err, std::generic_category(), std::move(what)),
          path_(std::move(path)), path2_(std::move(path2)) {}
    const std::string& path() const noexcept { return path_; }
    const std::string& path2() const noexcept { return path2_; }
    // The context given at construction ("opening backing file"), without ": strerror".
    std::string context() const {
        std::string w = what();
        auto pos = w.rfind(": ");
        return pos == std::string::npos ? w : w.substr(0, pos);
    }

private:
    std::string path_;
    std::string path2_;
};

// Throw a PathError for the current errno.
[[noreturn]] inline void throw_errno(const std::string& what, const std::string& path,
                                     const std::string& path2 = {}) {
    throw PathError(errno, what, path, path2);
}

class ImageError : public std::runtime_error {
public:
    ImageError(std::string path, const std::string& what)
        : std::runtime_error(path + ": " + what), path_(std::move(path)) {}
    const std::string& path() const noexcept { return path_; }

private:
    std::string path_;
};

}  // namespace agent_swarm
