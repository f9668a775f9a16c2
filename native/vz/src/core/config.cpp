#include "asvz/config.hpp"

#include <cctype>
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

bool get_bool(const Json& j, const char* key, bool dflt) {
  const Json* v = j.find(key);
  if (!v || v->is_null()) return dflt;
  if (!v->is_bool()) throw ConfigError(std::string("\"") + key + "\" must be true or false");
  return v->as_bool();
}

}  // namespace

bool valid_mac(const std::string& mac) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < mac.size(); ++i) {
    char ch = mac[i];
    if (i % 3 == 2) {
      if (ch != ':') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(ch))) {
      return false;
    }
  }
  return true;
}

VmConfig config_from_json(const Json& j) {
  if (!j.is_object()) throw ConfigError("config must be a JSON object");
  VmConfig c;
  c.name = get_string(j, "name", true);
  c.dir = get_string(j, "dir", true);
  if (c.dir.empty()) throw ConfigError("\"dir\" must not be empty");
  c.cpus = static_cast<int>(get_int(j, "cpus", 1, 1));
  c.memory_mib = get_int(j, "memory_mib", 512, 1);
  c.disk = get_string(j, "disk", false);
  c.seed = get_string(j, "seed", false);
  c.efi_vars = get_string(j, "efi_vars", false);
  if (c.efi_vars.empty()) c.efi_vars = c.dir + "/efi.vars";
  c.machine_id = get_string(j, "machine_id", false);
  if (c.machine_id.empty()) c.machine_id = c.dir + "/machine-id.bin";
  c.mac = get_string(j, "mac", false);
  if (!c.mac.empty() && !valid_mac(c.mac))
    throw ConfigError("\"mac\" must look like 52:54:00:12:34:56");
  c.console_log = get_string(j, "console_log", false);
  std::string leases = get_string(j, "leases_file", false);
  if (!leases.empty()) c.leases_file = leases;
  c.entropy = get_bool(j, "entropy", true);
  c.balloon = get_bool(j, "balloon", true);
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
