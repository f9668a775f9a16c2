#include "asvz/config.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

namespace asvz {

namespace {

std::string get_string(const Json& j, const char* key, bool required) {
  const Json* v = j.find(key);
  if (!v || v->is_null()) {
    if (required) throw ConfigError(std::string("missing \"") + key + "\"");
    return {};
  }
  if (!v->is_string()) throw ConfigError(std::string("\"") + key + "\" must be a string");
  return v->as_string();
}

long long get_int(const Json& j, const char* key, long long dflt, long long min) {
  const Json* v = j.find(key);
  if (!v || v->is_null()) return dflt;
  if (!v->is_number() || v->as_number() != std::floor(v->as_number()))
    throw ConfigError(std::string("\"") + key + "\" must be an integer");
  if (v->as_number() < static_cast<double>(min))
    throw ConfigError(std::string("\"") + key + "\" must be >= " + std::to_string(min));
  return static_cast<long long>(v->as_number());
}

}  // namespace

VmConfig config_from_json(const Json& j) {
  if (!j.is_object()) throw ConfigError("config must be a JSON object");
  VmConfig c;
  c.name = get_string(j, "name", true);
  c.dir = get_string(j, "dir", true);
  if (c.dir.empty()) throw ConfigError("\"dir\" must not be empty");
  c.cpus = static_cast<int>(get_int(j, "cpus", 1, 1));
  c.memory_mib = get_int(j, "memory_mib", 512, 1);
  c.disk = get_string(j, "disk", false);
  c.mac = get_string(j, "mac", false);
  c.console_log = get_string(j, "console_log", false);
  if (const Json* f = j.find("fake")) {
    if (!f->is_null() && !f->is_object()) throw ConfigError("\"fake\" must be an object");
    c.fake = *f;
  }
  return c;
}

VmConfig load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return config_from_json(parse_json(ss.str()));
  } catch (const JsonError& e) {
    throw ConfigError(path + ": " + e.what());
  }
}

}  // namespace asvz
