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
  // The guest's address, or nullopt when not known yet.
  virtual std::optional<std::string> address() = 0;
  virtual bool supports_save() const { return false; }
};

// Provided by exactly one backend source file, chosen at link time.
std::unique_ptr<Backend> make_backend(const VmConfig& config, EventSink& sink);

}  // namespace asvz
