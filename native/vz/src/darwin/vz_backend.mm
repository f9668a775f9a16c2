// The Virtualization.framework (VZ) backend of agent-swarm-vz: the only Objective-C++ in the
// helper (ARC, deployment target macOS 13.0). It implements the pure C++ interface of
// asvz/backend.hpp; no Objective-C type leaves this file.
//
// Threading: a VZVirtualMachine belongs to the serial queue it was created with
// (initWithConfiguration:queue:) and may only be used on that queue; VZ also runs its
// completion handlers and delegate callbacks there. So each Backend method dispatches a block
// onto the queue, and each result goes back to the server thread through EventSink::post. No
// run loop or NSApplication is needed.
//
// The configuration follows docs/macos-plan.md §1 (how tart @5287b597 and lima @183a60d7 set up
// Linux guests). On Linux this file is compile-checked for arm64 and x86_64 against
// declarations generated from pyobjc's scan of the SDK (tests/vz/test_macos_compile.py); it
// runs only on a Mac (ci/macos.sh).
#import <Foundation/Foundation.h>
#import <Virtualization/Virtualization.h>

#include <dispatch/dispatch.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include "asvz/backend.hpp"
#include "asvz/leases.hpp"
#include "asvz/lock.hpp"

// VZ declares save/restore (macOS 14) for Apple silicon only: the x86_64 SDK has neither
// saveMachineStateToURL:completionHandler: nor validateSaveRestoreSupportWithError: (pyobjc's
// x86_64 scan of the macOS 26.5 SDK lacks them, its arm64 scan has them).
#if defined(__arm64__) || defined(__aarch64__)
#define ASVZ_SAVE_RESTORE 1
#else
#define ASVZ_SAVE_RESTORE 0
#endif

namespace asvz {
namespace {

#if ASVZ_SAVE_RESTORE
constexpr const char* kSaveRestoreNeeds = "needs macOS 14 or newer";
#else
constexpr const char* kSaveRestoreNeeds = "needs a Mac with Apple silicon (VZ cannot on Intel)";
#endif

// ---- Foundation <-> C++ ----------------------------------------------------------------------

NSString* ns_string(const std::string& s) {
  NSString* out = [NSString stringWithUTF8String:s.c_str()];
  return out ? out : @"";  // nil only for invalid UTF-8
}

NSURL* file_url(const std::string& path) { return [NSURL fileURLWithPath:ns_string(path)]; }

std::string std_string(NSString* s) {
  const char* text = s ? s.UTF8String : nullptr;
  return text ? std::string(text) : std::string();
}

bool file_exists(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0;
}

// NSError -> text. VZ's localizedDescription is often generic ("Invalid virtual machine
// configuration.") while the failure reason says what is wrong, so both are kept, plus the
// domain and code to search for.
std::string describe(NSError* error) {
  if (!error) return "unknown error (VZ gave no NSError)";
  if ([error.domain isEqualToString:VZErrorDomain] &&
      error.code == VZErrorVirtualMachineLimitExceeded) {
    // The host caps the VMs running at once (documented for macOS guests: 2); tart maps this
    // error to its own message too (Sources/tart/Commands/Run.swift:474-496).
    return "the host's limit of running virtual machines is reached "
           "(VZErrorVirtualMachineLimitExceeded): stop another VM and try again";
  }
  std::string text = std_string(error.localizedDescription);
  std::string reason = std_string(error.localizedFailureReason);
  if (!reason.empty() && text.find(reason) == std::string::npos) text += " " + reason;
  return text + " (" + std_string(error.domain) + " " +
         std::to_string(static_cast<long>(error.code)) + ")";
}

Result vz_failure(const std::string& what, NSError* error) {
  return Result::failure("backend", what + ": " + describe(error));
}

const char* state_name(VZVirtualMachineState state) {
  switch (state) {
    case VZVirtualMachineStateStopped: return "stopped";
    case VZVirtualMachineStateRunning: return "running";
    case VZVirtualMachineStatePaused: return "paused";
    case VZVirtualMachineStateError: return "error";
    case VZVirtualMachineStateStarting: return "starting";
    case VZVirtualMachineStatePausing: return "pausing";
    case VZVirtualMachineStateResuming: return "resuming";
    case VZVirtualMachineStateStopping: return "stopping";
    case VZVirtualMachineStateSaving: return "saving";
    case VZVirtualMachineStateRestoring: return "restoring";
  }
  return "unknown";
}

// ---- results back to the server ----------------------------------------------------------------

// What the queue's blocks share with the backend. Touched only on the VM's queue: the
// destructor clears `alive` there, so a completion that VZ delivers after the backend is gone
// (and the server, the EventSink, with it) is dropped instead of posted to freed memory.
struct Shared {
  EventSink* sink = nullptr;
  bool alive = true;
};

// On the queue: hands a result to the server thread, unless the backend is gone. Completion
// handlers reach this through their own reference to `shared`, never through the backend's
// `this`, which may be freed by the time a slow operation completes.
void finish(const std::shared_ptr<Shared>& shared, const Done& done, Result result) {
  if (!shared->alive) return;
  shared->sink->post([done, result] { done(result); });
}

}  // namespace
}  // namespace asvz

// Receives VZ's callbacks (on the VM's queue). It declares no methods of its own, so the object
// sends no selector that the SDK does not know (the compile check relies on that): the backend
// sets the ivar directly.
@interface ASVZDelegate : NSObject <VZVirtualMachineDelegate> {
 @public
  std::shared_ptr<asvz::Shared> _shared;
}
@end

@implementation ASVZDelegate

// The guest powered itself off (`poweroff` in the guest, or after requestStopWithError:).
- (void)guestDidStopVirtualMachine:(VZVirtualMachine*)virtualMachine {
  (void)virtualMachine;
  if (_shared && _shared->alive) _shared->sink->guest_stopped();
}

// The VM stopped because of an error (its VZ process died, a device failed...).
- (void)virtualMachine:(VZVirtualMachine*)virtualMachine didStopWithError:(NSError*)error {
  (void)virtualMachine;
  if (_shared && _shared->alive)
    _shared->sink->backend_error("the VM stopped with an error: " + asvz::describe(error));
}

// The NAT attachment went away (vmnet failed); the VM keeps running without network. Only
// logged (stderr is the VM directory's helper.log): the provider notices an unreachable guest.
- (void)virtualMachine:(VZVirtualMachine*)virtualMachine
                 networkDevice:(VZNetworkDevice*)networkDevice
    attachmentWasDisconnectedWithError:(NSError*)error {
  (void)virtualMachine;
  (void)networkDevice;
  std::fprintf(stderr, "asvz: the network attachment was disconnected: %s\n",
               asvz::describe(error).c_str());
}

@end

namespace asvz {
namespace {

// ---- the VM's configuration --------------------------------------------------------------------

// Builds and validates the configuration; on failure returns nil and sets `why`. It must come
// out the same for a save and its restore: VZ restores a saved state only into a configuration
// with the same devices, MAC and machine identifier.
VZVirtualMachineConfiguration* build_configuration(const VmConfig& c, std::string& why) {
  VZVirtualMachineConfiguration* vm = [[VZVirtualMachineConfiguration alloc] init];
  NSError* error = nil;

  // Platform: generic, with the identifier kept by `init`. A new identifier on every boot
  // would look like another machine to the guest, and a restore needs the saved one
  // (lima: pkg/driver/vz/vm_darwin.go:322-339, 864-881).
  NSData* id_bytes = [NSData dataWithContentsOfFile:ns_string(c.machine_id) options:0 error:&error];
  if (!id_bytes) {
    why = "machine identifier " + c.machine_id + ": " + describe(error) +
          " (run `agent-swarm-vz init`)";
    return nil;
  }
  VZGenericMachineIdentifier* machine_id =
      [[VZGenericMachineIdentifier alloc] initWithDataRepresentation:id_bytes];
  if (!machine_id) {
    why = c.machine_id + " does not hold a VZGenericMachineIdentifier";
    return nil;
  }
  VZGenericPlatformConfiguration* platform = [[VZGenericPlatformConfiguration alloc] init];
  platform.machineIdentifier = machine_id;
  vm.platform = platform;

  // EFI boot (cloud images boot from their EFI partition) with the variable store made by
  // `init` (tart: Sources/tart/Platform/Linux.swift:9-15). initWithURL: does not check the
  // file, so a missing one is reported here rather than as a vague validation error.
  if (!file_exists(c.efi_vars)) {
    why = "EFI variable store " + c.efi_vars + " is missing (run `agent-swarm-vz init`)";
    return nil;
  }
  VZEFIBootLoader* boot = [[VZEFIBootLoader alloc] init];
  boot.variableStore = [[VZEFIVariableStore alloc] initWithURL:file_url(c.efi_vars)];
  vm.bootLoader = boot;

  // CPUs and memory, clamped to what this host allows (validateWithError: rejects the rest).
  NSUInteger min_cpus = VZVirtualMachineConfiguration.minimumAllowedCPUCount;
  NSUInteger max_cpus = VZVirtualMachineConfiguration.maximumAllowedCPUCount;
  NSUInteger cpus = c.cpus > 0 ? static_cast<NSUInteger>(c.cpus) : min_cpus;
  vm.CPUCount = cpus < min_cpus ? min_cpus : (cpus > max_cpus ? max_cpus : cpus);
  uint64_t min_memory = VZVirtualMachineConfiguration.minimumAllowedMemorySize;
  uint64_t max_memory = VZVirtualMachineConfiguration.maximumAllowedMemorySize;
  uint64_t mib = c.memory_mib > 0 ? static_cast<uint64_t>(c.memory_mib) : 0;
  uint64_t memory = mib > (max_memory >> 20) ? max_memory : mib << 20;  // no overflow
  vm.memorySize = memory < min_memory ? min_memory : memory;

  // Disks. The raw root disk is Cached + Fsync: tart moved Linux guests to the cached mode
  // after file corruption with the default (Sources/tart/VM.swift:402-409, tart PR 675), and
  // lima uses the same pair (pkg/driver/vz/vm_darwin.go:42-47, 557). The seed ISO is read-only
  // with the default modes, as lima attaches its cidata (vm_darwin.go:616).
  VZDiskImageStorageDeviceAttachment* disk =
      [[VZDiskImageStorageDeviceAttachment alloc] initWithURL:file_url(c.disk)
                                                     readOnly:NO
                                                  cachingMode:VZDiskImageCachingModeCached
                                          synchronizationMode:VZDiskImageSynchronizationModeFsync
                                                        error:&error];
  if (!disk) {
    why = "disk " + c.disk + ": " + describe(error);
    return nil;
  }
  NSMutableArray<VZStorageDeviceConfiguration*>* storage = [NSMutableArray array];
  [storage addObject:[[VZVirtioBlockDeviceConfiguration alloc] initWithAttachment:disk]];
  if (!c.seed.empty()) {
    VZDiskImageStorageDeviceAttachment* seed =
        [[VZDiskImageStorageDeviceAttachment alloc] initWithURL:file_url(c.seed)
                                                       readOnly:YES
                                                          error:&error];
    if (!seed) {
      why = "seed " + c.seed + ": " + describe(error);
      return nil;
    }
    [storage addObject:[[VZVirtioBlockDeviceConfiguration alloc] initWithAttachment:seed]];
  }
  vm.storageDevices = storage;

  // Network: VZ's NAT (vmnet, whose bootpd hands out the leases) with our MAC, so that
  // address() finds this VM's lease in the leases file again.
  if (c.mac.empty()) {
    why = "\"mac\" is required: the guest's address is looked up by its MAC in the DHCP leases";
    return nil;
  }
  VZMACAddress* mac = [[VZMACAddress alloc] initWithString:ns_string(c.mac)];
  if (!mac) {
    why = "\"mac\" " + c.mac + " is not a MAC address";
    return nil;
  }
  VZVirtioNetworkDeviceConfiguration* net = [[VZVirtioNetworkDeviceConfiguration alloc] init];
  net.attachment = [[VZNATNetworkDeviceAttachment alloc] init];
  net.MACAddress = mac;
  vm.networkDevices = @[ net ];

  // Console: the guest's hvc0 (kernel `console=hvc0`) written to a file, as lima writes
  // serialv.log (vm_darwin.go:376-388); appended, so that a restart keeps the earlier boots.
  if (!c.console_log.empty()) {
    VZFileSerialPortAttachment* log =
        [[VZFileSerialPortAttachment alloc] initWithURL:file_url(c.console_log)
                                                 append:YES
                                                  error:&error];
    if (!log) {
      why = "console log " + c.console_log + ": " + describe(error);
      return nil;
    }
    VZVirtioConsoleDeviceSerialPortConfiguration* console =
        [[VZVirtioConsoleDeviceSerialPortConfiguration alloc] init];
    console.attachment = log;
    vm.serialPorts = @[ console ];
  }

  // Entropy and balloon, as lima adds them (vm_darwin.go:805-825). tart leaves entropy out of
  // the VMs it saves (Sources/tart/VM.swift:416-419); vm.json can turn either off when
  // validateSaveRestoreSupportWithError: rejects it (`check-config` reports that).
  if (c.entropy) vm.entropyDevices = @[ [[VZVirtioEntropyDeviceConfiguration alloc] init] ];
  if (c.balloon)
    vm.memoryBalloonDevices =
        @[ [[VZVirtioTraditionalMemoryBalloonDeviceConfiguration alloc] init] ];

  if (![vm validateWithError:&error]) {
    why = "invalid VM configuration: " + describe(error);
    return nil;
  }
  return vm;
}

// ---- the backend ---------------------------------------------------------------------------

class VzBackend final : public Backend {
 public:
  VzBackend(const VmConfig& config, EventSink& sink)
      : config_(config),
        queue_(dispatch_queue_create("dev.agent-swarm.vz.vm", DISPATCH_QUEUE_SERIAL)),
        shared_(std::make_shared<Shared>()),
        delegate_([[ASVZDelegate alloc] init]) {
    shared_->sink = &sink;
    delegate_->_shared = shared_;
  }

  ~VzBackend() override {
    // The queue is serial: the blocks queued before this one have run when it runs, and after
    // it no VZ callback reaches the sink (see Shared). The VM is released on its queue too.
    dispatch_sync(queue_, ^{
      shared_->alive = false;
      vm_.delegate = nil;
      vm_ = nil;
    });
  }

  std::string name() const override { return backend_name(); }

  // Each method queues a block on the VM's queue. Those blocks may use `this` (they run before
  // the destructor's block); the completion handlers VZ calls later use only `shared`.

  void start(Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    dispatch_async(queue_, ^{
      Result made = make_vm();
      if (!made.ok) {
        finish(shared, done, made);
        return;
      }
      [vm_ startWithCompletionHandler:^(NSError* error) {
        finish(shared, done, error ? vz_failure("start", error) : Result::success());
      }];
    });
  }

  Result request_stop() override {
    // Synchronous on the queue: the answer is whether VZ accepted the request. The guest then
    // powers off (guestDidStopVirtualMachine:) or ignores it (the server's timeout forces).
    // No deadlock: blocks on the queue never wait for the server thread (post() only queues).
    __block Result result;
    dispatch_sync(queue_, ^{
      if (!vm_) {
        result = Result::failure("bad_state", "the VM is not running");
        return;
      }
      // NO unless running: VZ delivers the request to a running guest only.
      if (!vm_.canRequestStop) {
        std::string state = state_name(vm_.state);
        result = Result::failure("bad_state", "the VM cannot take a stop request while " + state);
        return;
      }
      NSError* error = nil;
      if (![vm_ requestStopWithError:&error]) result = vz_failure("request stop", error);
    });
    return result;
  }

  void force_stop(Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    dispatch_async(queue_, ^{
      // Nothing to stop: never made, or already down (stopWithCompletionHandler: would fail).
      if (!vm_ || vm_.state == VZVirtualMachineStateStopped ||
          vm_.state == VZVirtualMachineStateError) {
        finish(shared, done, Result::success());
        return;
      }
      if (!vm_.canStop) {
        finish(shared, done,
               Result::failure("bad_state", std::string("the VM cannot be stopped while ") +
                                                state_name(vm_.state)));
        return;
      }
      // A hard stop, like pulling the power: the guest gets no chance to flush its caches.
      [vm_ stopWithCompletionHandler:^(NSError* error) {
        finish(shared, done, error ? vz_failure("stop", error) : Result::success());
      }];
    });
  }

  void pause(Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    dispatch_async(queue_, ^{
      if (!vm_) {
        finish(shared, done, Result::failure("bad_state", "the VM is not running"));
        return;
      }
      [vm_ pauseWithCompletionHandler:^(NSError* error) {
        finish(shared, done, error ? vz_failure("pause", error) : Result::success());
      }];
    });
  }

  void resume(Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    dispatch_async(queue_, ^{
      if (!vm_) {
        finish(shared, done, Result::failure("bad_state", "the VM is not running"));
        return;
      }
      [vm_ resumeWithCompletionHandler:^(NSError* error) {
        finish(shared, done, error ? vz_failure("resume", error) : Result::success());
      }];
    });
  }

  void save(const std::string& path, Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    auto deliver = [shared, done](Result r) { finish(shared, done, r); };
#if ASVZ_SAVE_RESTORE
    if (@available(macOS 14, *)) {
      // Written next to `path` and renamed on success, so a failed or interrupted save never
      // leaves a partial state under the name the provider trusts.
      std::string tmp = path + ".tmp." + std::to_string(getpid());
      dispatch_async(queue_, ^{
        if (!vm_) {
          deliver(Result::failure("bad_state", "the VM is not running"));
          return;
        }
        unlink(tmp.c_str());
        [vm_ saveMachineStateToURL:file_url(tmp)
                 completionHandler:^(NSError* error) {
                   if (error) {
                     unlink(tmp.c_str());
                     deliver(vz_failure("save", error));
                   } else if (rename(tmp.c_str(), path.c_str()) != 0) {
                     std::string why = std::strerror(errno);
                     unlink(tmp.c_str());
                     deliver(Result::failure("backend", "save: rename " + tmp + ": " + why));
                   } else {
                     deliver(Result::success());
                   }
                 }];
      });
      return;
    }
#else
    (void)path;
#endif
    dispatch_async(queue_, ^{
      deliver(Result::failure("unsupported",
                              std::string("saving a VM's state ") + kSaveRestoreNeeds));
    });
  }

  void restore(const std::string& path, Done done) override {
    std::shared_ptr<Shared> shared = shared_;
    auto deliver = [shared, done](Result r) { finish(shared, done, r); };
#if ASVZ_SAVE_RESTORE
    if (@available(macOS 14, *)) {
      dispatch_async(queue_, ^{
        // VZ restores into a configured VM that has never started; it comes back paused.
        Result made = make_vm();
        if (!made.ok) {
          deliver(made);
          return;
        }
        [vm_ restoreMachineStateFromURL:file_url(path)
                      completionHandler:^(NSError* error) {
                        deliver(error ? vz_failure("restore " + path, error) : Result::success());
                      }];
      });
      return;
    }
#else
    (void)path;
#endif
    dispatch_async(queue_, ^{
      deliver(Result::failure("unsupported",
                              std::string("restoring a VM's state ") + kSaveRestoreNeeds));
    });
  }

  std::optional<std::string> address() override {
    // vmnet's bootpd writes a lease per MAC; the portable core parses them (asvz/leases.hpp).
    std::optional<std::string> leases = read_leases_file(config_.leases_file);
    if (!leases) return std::nullopt;  // no lease file yet: the NAT has leased nothing so far
    return lease_address(*leases, config_.mac, static_cast<long long>(std::time(nullptr)));
  }

 private:
  // On the queue: creates the VZVirtualMachine (start and restore both need one, once).
  Result make_vm() {
    if (vm_) return Result::failure("bad_state", "the VM was already started");
    std::string why;
    VZVirtualMachineConfiguration* configuration = build_configuration(config_, why);
    if (!configuration) return Result::failure("backend", why);
    vm_ = [[VZVirtualMachine alloc] initWithConfiguration:configuration queue:queue_];
    vm_.delegate = delegate_;
    return Result::success();
  }

  VmConfig config_;
  dispatch_queue_t queue_;
  std::shared_ptr<Shared> shared_;
  ASVZDelegate* delegate_;      // strong: VZVirtualMachine.delegate is weak
  VZVirtualMachine* vm_ = nil;  // made on the queue by start/restore, used only there
};

}  // namespace

std::unique_ptr<Backend> make_backend(const VmConfig& config, EventSink& sink) {
  return std::make_unique<VzBackend>(config, sink);
}

const char* backend_name() { return "vz"; }

Result backend_init(const VmConfig& config) {
  @autoreleasepool {
    // The EFI variable store: VZ writes it under a temporary name that is then renamed, so an
    // interrupted `init` never leaves a half-made store that later runs would trust.
    if (!file_exists(config.efi_vars)) {
      std::string tmp = config.efi_vars + ".tmp." + std::to_string(getpid());
      unlink(tmp.c_str());
      NSError* error = nil;
      VZEFIVariableStore* store =
          [[VZEFIVariableStore alloc] initCreatingVariableStoreAtURL:file_url(tmp)
                                                             options:0
                                                               error:&error];
      if (!store) return vz_failure("create EFI variable store " + config.efi_vars, error);
      int fd = open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        fsync(fd);  // the content reaches the disk before the rename does
        close(fd);
      }
      if (rename(tmp.c_str(), config.efi_vars.c_str()) != 0) {
        std::string why = std::strerror(errno);
        unlink(tmp.c_str());
        return Result::failure("backend", "rename " + tmp + ": " + why);
      }
    }
    // The machine identifier: VZ makes a random one, whose opaque bytes are kept so that every
    // boot (and a restore) presents the same machine (lima: vm_darwin.go:322-339).
    if (!file_exists(config.machine_id)) {
      NSData* bytes = [[VZGenericMachineIdentifier alloc] init].dataRepresentation;
      if (!bytes || bytes.length == 0)
        return Result::failure("backend", "VZ made an empty machine identifier");
      try {
        write_file_atomic(config.machine_id, std::string(static_cast<const char*>(bytes.bytes),
                                                         static_cast<size_t>(bytes.length)));
      } catch (const std::exception& e) {
        return Result::failure("backend", e.what());
      }
    }
    return Result::success();
  }
}

Result backend_check(const VmConfig& config, Json& info) {
  @autoreleasepool {
    info.set("valid", false);
    info.set("save_restore", Json());
    info.set("reason", Json());
    // NO in a VM without nested virtualization (GitHub's macOS runners) and on hardware
    // without the hypervisor: nothing boots there, whatever the configuration.
    bool supported = [VZVirtualMachine isSupported];
    info.set("supported", supported);
    if (!supported) {
      std::string why = "this Mac cannot run virtual machines (VZVirtualMachine.isSupported is NO)";
      info.set("reason", why);
      return Result::failure("unsupported", why);
    }
    std::string why;
    VZVirtualMachineConfiguration* configuration = build_configuration(config, why);
    if (!configuration) {
      info.set("reason", why);
      return Result::failure("invalid", why);
    }
    info.set("valid", true);
    // save_restore: true/false as VZ answers on macOS 14+ (Apple silicon), null on macOS 13
    // where it cannot be asked, false on Intel; "reason" says why it is not true.
#if ASVZ_SAVE_RESTORE
    if (@available(macOS 14, *)) {
      // Which devices can be saved differs by release (tart: entropy, console ports); the
      // answer decides whether the provider offers memory snapshots on this host.
      NSError* error = nil;
      bool ok = [configuration validateSaveRestoreSupportWithError:&error];
      info.set("save_restore", ok);
      if (!ok) info.set("reason", "save/restore: " + describe(error));
    } else {
      info.set("reason", std::string("save/restore ") + kSaveRestoreNeeds);
    }
#else
    info.set("save_restore", false);
    info.set("reason", std::string("save/restore ") + kSaveRestoreNeeds);
#endif
    return Result::success();
  }
}

}  // namespace asvz
