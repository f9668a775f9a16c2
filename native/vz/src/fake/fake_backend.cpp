// Fake backend for Linux and tests: timers stand in for a VM. Knobs come from vm.json "fake":
//   boot_ms (default 50), ignore_request_stop (false), crash_after_ms (0 = never),
//   stop_ms (guest shutdown time after a stop request, default 50), address (string; else
//   the address comes from config.leases_file like VZ's), no_save (true: save/restore are
//   "unsupported", as on macOS 13), save_ms (default 20), fail_check (a reason string).
// save writes a small JSON "state" holding what VZ checks on restore (MAC, machine
// identifier, CPUs, memory); restore refuses a state made for another configuration.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <random>
#include <sstream>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "asvz/backend.hpp"
#include "asvz/leases.hpp"
#include "asvz/lock.hpp"

namespace asvz {

namespace {

// One worker thread running callbacks at deadlines; cancel_all() drops pending ones.
class TimerThread {
 public:
  using Clock = std::chrono::steady_clock;
  TimerThread() : thread_([this] { loop(); }) {}
  ~TimerThread() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void schedule(long long ms, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      jobs_.emplace(Clock::now() + std::chrono::milliseconds(ms), std::move(fn));
    }
    cv_.notify_all();
  }
  void cancel_all() {
    std::lock_guard<std::mutex> lk(mu_);
    jobs_.clear();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!quit_) {
      if (jobs_.empty()) {
        cv_.wait(lk);
        continue;
      }
      auto first = jobs_.begin();
      if (Clock::now() < first->first) {
        cv_.wait_until(lk, first->first);
        continue;
      }
      auto fn = std::move(first->second);
      jobs_.erase(first);
      lk.unlock();
      fn();
      lk.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, std::function<void()>> jobs_;
  bool quit_ = false;
  std::thread thread_;  // last: started after the other members exist
};

long long knob_ms(const Json& fake, const char* key, long long dflt) {
  const Json* v = fake.find(key);
  return (v && v->is_number()) ? static_cast<long long>(v->as_number()) : dflt;
}

bool knob_bool(const Json& fake, const char* key) {
  const Json* v = fake.find(key);
  return v && v->is_bool() && v->as_bool();
}

bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char ch : bytes) {
    out += digits[ch >> 4];
    out += digits[ch & 15];
  }
  return out;
}

// What a saved state must match on restore (VZ refuses another configuration).
Json identity_of(const VmConfig& c) {
  std::string mid;
  read_file(c.machine_id, mid);
  Json j = Json::object();
  j.set("mac", c.mac);
  j.set("machine_id", hex(mid));
  j.set("cpus", c.cpus);
  j.set("memory_mib", c.memory_mib);
  return j;
}

class FakeBackend final : public Backend {
 public:
  FakeBackend(const VmConfig& c, EventSink& sink)
      : config_(c),
        sink_(sink),
        boot_ms_(knob_ms(c.fake, "boot_ms", 50)),
        stop_ms_(knob_ms(c.fake, "stop_ms", 50)),
        crash_after_ms_(knob_ms(c.fake, "crash_after_ms", 0)),
        ignore_request_stop_(knob_bool(c.fake, "ignore_request_stop")) {
    if (const Json* a = c.fake.find("address"); a && a->is_string()) address_ = a->as_string();
  }

  std::string name() const override { return backend_name(); }

  void start(Done done) override {
    console("fake: booting " + config_.name + "\n");
    timers_.schedule(boot_ms_, [this, done] {
      console("fake: running\n");
      sink_.post([done] { done(Result::success()); });
    });
    if (crash_after_ms_ > 0)
      timers_.schedule(crash_after_ms_, [this] { sink_.backend_error("fake: simulated crash"); });
    if (long long off = knob_ms(config_.fake, "poweroff_after_ms", 0); off > 0)
      timers_.schedule(off, [this] {
        console("fake: guest powered off by itself\n");
        sink_.guest_stopped();
      });
  }

  Result request_stop() override {
    if (paused_) return Result::failure("bad_state", "cannot request a stop while paused");
    if (ignore_request_stop_) return Result::success();  // the guest ignores it
    timers_.schedule(stop_ms_, [this] {
      console("fake: guest powered off\n");
      sink_.guest_stopped();
    });
    return Result::success();
  }

  void force_stop(Done done) override {
    timers_.cancel_all();
    timers_.schedule(0, [this, done] { sink_.post([done] { done(Result::success()); }); });
  }

  void pause(Done done) override {
    timers_.schedule(knob_ms(config_.fake, "pause_ms", 10), [this, done] {
      paused_ = true;
      sink_.post([done] { done(Result::success()); });
    });
  }

  void resume(Done done) override {
    timers_.schedule(knob_ms(config_.fake, "pause_ms", 10), [this, done] {
      paused_ = false;
      sink_.post([done] { done(Result::success()); });
    });
  }

  void save(const std::string& path, Done done) override {
    if (knob_bool(config_.fake, "no_save")) {
      Backend::save(path, [this, done](Result r) { sink_.post([done, r] { done(r); }); });
      return;
    }
    timers_.schedule(knob_ms(config_.fake, "save_ms", 20), [this, path, done] {
      Json st = Json::object();
      st.set("fake_state", 1);
      st.set("identity", identity_of(config_));
      Result r = Result::success();
      try {
        write_file_atomic(path, st.dump() + "\n");
      } catch (const std::exception& e) {
        r = Result::failure("backend", std::string("save: ") + e.what());
      }
      sink_.post([done, r] { done(r); });
    });
  }

  void restore(const std::string& path, Done done) override {
    if (knob_bool(config_.fake, "no_save")) {
      Backend::restore(path, [this, done](Result r) { sink_.post([done, r] { done(r); }); });
      return;
    }
    timers_.schedule(knob_ms(config_.fake, "save_ms", 20), [this, path, done] {
      Result r = check_state(path);
      if (r.ok) paused_ = true;
      sink_.post([done, r] { done(r); });
    });
  }

  std::optional<std::string> address() override {
    if (!address_.empty()) return address_;
    // As VZ does it: the NAT's DHCP lease of our MAC (tests write the lease file).
    if (config_.mac.empty()) return std::nullopt;
    auto leases = read_leases_file(config_.leases_file);
    if (!leases) return std::nullopt;
    return lease_address(*leases, config_.mac, static_cast<long long>(std::time(nullptr)));
  }

 private:
  Result check_state(const std::string& path) {
    std::string text;
    if (!read_file(path, text)) return Result::failure("backend", "cannot read " + path + ": " + std::strerror(errno));
    Json st;
    try {
      st = parse_json(text);
    } catch (const JsonError& e) {
      return Result::failure("backend", "not a saved state: " + path);
    }
    const Json* id = st.find("identity");
    if (!id) return Result::failure("backend", "not a saved state: " + path);
    Json want = identity_of(config_);
    for (const char* key : {"mac", "machine_id", "cpus", "memory_mib"}) {
      const Json* a = id->find(key);
      const Json* b = want.find(key);
      if (!a || a->dump() != b->dump())
        return Result::failure("backend", std::string("the saved state belongs to another configuration (") + key +
                                              " differs); VZ restores only into the same MAC, machine identifier and devices");
    }
    console("fake: restored from " + path + "\n");
    return Result::success();
  }

  void console(const std::string& text) {
    if (config_.console_log.empty()) return;
    if (FILE* f = std::fopen(config_.console_log.c_str(), "a")) {
      std::fputs(text.c_str(), f);
      std::fclose(f);
    }
  }

  VmConfig config_;
  EventSink& sink_;
  long long boot_ms_, stop_ms_, crash_after_ms_;
  bool ignore_request_stop_;
  std::string address_;
  std::atomic<bool> paused_{false};
  TimerThread timers_;  // last: its thread is joined before the rest goes away
};

}  // namespace

std::unique_ptr<Backend> make_backend(const VmConfig& config, EventSink& sink) {
  return std::make_unique<FakeBackend>(config, sink);
}

const char* backend_name() { return "fake"; }

Result backend_init(const VmConfig& config) {
  // Stand-ins for VZ's EFI variable store and VZGenericMachineIdentifier: made once, kept.
  try {
    std::string existing;
    if (!read_file(config.efi_vars, existing)) write_file_atomic(config.efi_vars, "fake EFI variable store\n");
    if (!read_file(config.machine_id, existing)) {
      std::random_device rd;
      std::string id;
      for (int i = 0; i < 16; ++i) id += static_cast<char>(rd() & 0xff);
      write_file_atomic(config.machine_id, id);
    }
  } catch (const std::exception& e) {
    return Result::failure("backend", e.what());
  }
  return Result::success();
}

Result backend_check(const VmConfig& config, Json& info) {
  const Json* reason = config.fake.find("fail_check");
  bool valid = !(reason && reason->is_string());
  info.set("valid", valid);
  info.set("save_restore", valid && !knob_bool(config.fake, "no_save"));
  info.set("reason", valid ? Json() : Json(reason->as_string()));
  if (!valid) return Result::failure("invalid", reason->as_string());
  return Result::success();
}

}  // namespace asvz
