// Fake backend for Linux and tests: timers stand in for a VM. Knobs come from vm.json "fake":
//   boot_ms (default 50), ignore_request_stop (false), crash_after_ms (0 = never),
//   stop_ms (guest shutdown time after a stop request, default 50), address (string).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "asvz/backend.hpp"

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

  std::string name() const override { return "fake"; }

  void start(Done done) override {
    console("fake: booting " + config_.name + "\n");
    timers_.schedule(boot_ms_, [this, done] {
      console("fake: running\n");
      sink_.post([done] { done(Result::success()); });
    });
    if (crash_after_ms_ > 0)
      timers_.schedule(crash_after_ms_, [this] { sink_.backend_error("fake: simulated crash"); });
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
    timers_.schedule(10, [this, done] {
      paused_ = true;
      sink_.post([done] { done(Result::success()); });
    });
  }

  void resume(Done done) override {
    timers_.schedule(10, [this, done] {
      paused_ = false;
      sink_.post([done] { done(Result::success()); });
    });
  }

  std::optional<std::string> address() override {
    if (address_.empty()) return std::nullopt;
    return address_;
  }

 private:
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

}  // namespace asvz
