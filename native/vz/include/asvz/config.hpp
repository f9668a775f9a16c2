// The VM description the helper is started with (`run --config vm.json`).
#pragma once

#include <string>

#include "asvz/json.hpp"

namespace asvz {

struct VmConfig {
  std::string name;
  std::string dir;  // VM directory: vz.lock, vz.sock, state.json live here
  int cpus = 1;
  long long memory_mib = 512;
  std::string disk;
  std::string mac;
  std::string console_log;
  Json fake;  // knobs of the fake backend ("fake": {...}); ignored by real backends
};

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Validates types and required fields; throws ConfigError.
VmConfig config_from_json(const Json& j);
VmConfig load_config(const std::string& path);

}  // namespace asvz
