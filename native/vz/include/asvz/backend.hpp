// The interface between the portable core and a VM backend (fake on Linux, VZ on macOS).
// Pure C++: no Objective-C types appear here.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "asvz/config.hpp"

namespace asvz {

struct Result {
  bool ok = true;
  std::string code;     // error code when !ok (protocol error codes, e.g. "backend")
  std::string message;  // human-readable detail when !ok
  static Result success() { return {}; }
  static Result failure(std::string code, std::string message) {
    return Result{false, std::move(code), std::move(message)};
  }
};

// Completion callback. Backends must deliver it through EventSink::post, so that it runs on
// the server thread.
using Done = std::function<void(Result)>;

// Implemented by the server. All methods are thread-safe (a backend may call them from its
// own queue/thread); the work they describe runs later on the server thread.
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void post(std::function<void()> fn) = 0;
  virtual void guest_stopped() = 0;                    // the guest powered off by itself
  virtual void backend_error(std::string message) = 0;  // the VM died (didStopWithError)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void start(Done done) = 0;
  // Asks the guest to power off (ACPI-like). Returns at once: ok means the request was
  // delivered, and the guest may (or may not) stop later via EventSink::guest_stopped.
  virtual Result request_stop() = 0;
  virtual void force_stop(Done done) = 0;
  virtual void pause(Done done) = 0;
  virtual void resume(Done done) = 0;
  // Writes the paused VM's full state (devices + RAM) to `path`. Called only while paused;
  // the VM stays paused. Backends without it (VZ before macOS 14) fail with "unsupported".
  virtual void save(const std::string& path, Done done) {
    (void)path;
    done(Result::failure("unsupported",
                         "saving a VM's state is not supported here (VZ: macOS 14 or newer, Apple silicon)"));
  }
  // Restores a configured, never started VM from `path`; on success the VM is paused.
  // The configuration must match the saved one (VZ: same MAC, machine identifier, devices).
  virtual void restore(const std::string& path, Done done) {
    (void)path;
    done(Result::failure("unsupported",
                         "restoring a VM's state is not supported here (VZ: macOS 14 or newer, Apple silicon)"));
  }
  // The guest's IPv4 address (for VZ: from the NAT's DHCP leases of config.mac), or nullopt
  // when not known yet.
  virtual std::optional<std::string> address() = 0;
};

// Provided by exactly one backend source file, chosen at link time.
std::unique_ptr<Backend> make_backend(const VmConfig& config, EventSink& sink);

// `agent-swarm-vz init`: creates the VM's persistent files that are missing (VZ: the EFI
// variable store at config.efi_vars and the machine identifier at config.machine_id) and
// leaves existing ones alone. Synchronous.
Result backend_init(const VmConfig& config);

// `agent-swarm-vz check-config`: builds the configuration without starting anything and
// validates it (VZ: validateWithError:, and validateSaveRestoreSupportWithError: on 14+).
// Fills `info` with what was found: {"valid":bool, "save_restore":bool|null, "reason":...}
// (VZ adds "supported": VZVirtualMachine.isSupported, false without hypervisor support).
Result backend_check(const VmConfig& config, Json& info);

// The backend's name as `--version` and `hello` report it ("vz" or "fake").
const char* backend_name();

}  // namespace asvz
