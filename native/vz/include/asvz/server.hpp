// The control server: one thread, poll() over the listening socket, the clients and a
// self-pipe that backend events arrive on.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "asvz/backend.hpp"
#include "asvz/config.hpp"
#include "asvz/json.hpp"
#include "asvz/state.hpp"

namespace asvz {

constexpr int kProtocolVersion = 1;
constexpr size_t kMaxLine = 64 * 1024;
extern const char* const kHelperVersion;

class Server : public EventSink {
 public:
  // `listen_fd` is a bound, listening Unix socket at `socket_path`.
  Server(VmConfig config, std::string socket_path, int listen_fd);
  ~Server() override;

  // Runs until the VM is stopped (returns 0) or failed (returns 3).
  int run();

  // EventSink (thread-safe)
  void post(std::function<void()> fn) override;
  void guest_stopped() override;
  void backend_error(std::string message) override;

  // Async-signal-safe: asks for a force stop (SIGTERM/SIGINT handler).
  static void on_signal(int sig);
  // Async-signal-safe: asks to bind the control socket again (SIGUSR1).
  static void on_rebind_signal(int sig);

 private:
  using Clock = std::chrono::steady_clock;
  struct Client {
    int fd = -1;
    std::uint64_t serial = 0;  // unique per connection: a reused fd number is another client
    std::string in;
    std::string out;
    bool closing = false;  // close once `out` is flushed
  };
  struct Waiter {
    int client_fd;
    Json id;
  };
  // Who asked, for a reply that comes later (pause, resume, save): the descriptor number alone
  // would name the next client that accept() gives the same number once this one has gone.
  struct Peer {
    int fd;
    std::uint64_t serial;
  };
  Peer peer_of(int fd) const;
  int live_fd(const Peer& p) const;  // p.fd while that connection is open, else -1

  void set_state(State s, const std::string& error = "");
  void write_state_file();
  Json status_json() const;

  void accept_clients();
  void read_client(Client& c);
  void flush_client(Client& c);
  void close_client(int fd);
  void handle_line(int fd, const std::string& line);
  void handle_request(int fd, const Json& id, const std::string& cmd, const Json& req);
  void reply_ok(int fd, const Json& id, Json result);
  void reply_err(int fd, const Json& id, const std::string& code, const std::string& message);
  void send_line(int fd, const std::string& line);

  void begin_save(Peer who, const Json& id, const std::string& path, const std::string& then);
  void after_save(Peer who, const Json& id, const std::string& then, Result r);
  void settle_guest_stop();
  void begin_stop(double timeout_s);
  void begin_force_stop();
  void finish_stop(bool forced);
  void fail(const std::string& message);
  void drain_events();
  void rebind_socket();
  void drain_output(std::chrono::milliseconds budget);

  VmConfig config_;
  std::string socket_path_;
  int listen_fd_;
  int pipe_r_ = -1, pipe_w_ = -1;
  std::mutex mu_;
  std::deque<std::function<void()>> events_;

  State state_ = State::Init;
  double since_ = 0;
  std::string last_error_;
  std::map<int, Client> clients_;
  std::vector<Waiter> stop_waiters_;
  std::vector<int> watchers_;  // clients that asked for state events (`watch`)
  bool stop_forced_ = false;
  bool force_in_flight_ = false;
  bool guest_gone_ = false;  // the guest powered off while a pause/resume/save was in flight
  std::uint64_t next_serial_ = 1;
  std::unique_ptr<Clock::time_point> stop_deadline_;
  std::unique_ptr<Backend> backend_;  // last member: destroyed first
};

}  // namespace asvz
