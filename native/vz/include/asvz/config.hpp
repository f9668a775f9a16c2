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
  std::string disk;         // raw disk image, read-write (virtio-blk)
  std::string seed;         // cloud-init NoCloud ISO, attached read-only (optional)
  std::string efi_vars;     // EFI variable store, made by `init` (default <dir>/efi.vars)
  std::string machine_id;   // VZGenericMachineIdentifier bytes, made by `init` (<dir>/machine-id.bin)
  std::string mac;          // "52:54:00:12:34:56" form, required for a stable DHCP lease
  std::string console_log;  // the guest's virtio console (hvc0), appended to
  std::string leases_file = "/var/db/dhcpd_leases";  // where the NAT's DHCP server writes leases
  bool entropy = true;      // virtio entropy device (dropped when save/restore rejects it)
  bool balloon = true;      // traditional memory balloon
  // Start mode, from the command line (`run --restore PATH`): restore instead of booting.
  std::string restore;
  bool restore_paused = false;  // `--paused`: stay paused after the restore
  Json fake;  // knobs of the fake backend ("fake": {...}); ignored by real backends
};

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Validates types and required fields; throws ConfigError.
VmConfig config_from_json(const Json& j);
VmConfig load_config(const std::string& path);

// True when `mac` is six two-digit hex octets separated by ':' (case-insensitive).
bool valid_mac(const std::string& mac);

}  // namespace asvz
