#include "asvz/server.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "asvz/lock.hpp"

#ifndef MSG_NOSIGNAL  // macOS: SIGPIPE is ignored process-wide instead (main)
#define MSG_NOSIGNAL 0
#endif

namespace asvz {

const char* const kHelperVersion = "0.1.0";

namespace {

int g_signal_pipe = -1;
volatile sig_atomic_t g_signalled = 0;
volatile sig_atomic_t g_rebind = 0;

double wall_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec / 1000000) / 1000.0;
}

void set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void wake(int fd) {
  char b = 1;
  // A full pipe already guarantees a wakeup, so EAGAIN is fine.
  ssize_t n = write(fd, &b, 1);
  (void)n;
}

std::string os_version() {
  utsname u{};
  if (uname(&u) != 0) return "unknown";
  return std::string(u.sysname) + " " + u.release;
}

}  // namespace

void Server::on_rebind_signal(int) {
  g_rebind = 1;
  if (g_signal_pipe >= 0) wake(g_signal_pipe);
}

void Server::rebind_socket() {
  // Only ever our own path: unlink whatever is there (we hold the instance lock) and bind
  // anew. Connected clients keep their connections.
  unlink(socket_path_.c_str());
  int fd = listen_unix(socket_path_);
  if (fd < 0) {
    std::fprintf(stderr, "asvz: cannot bind %s again: %s\n", socket_path_.c_str(), std::strerror(errno));
    return;
  }
  set_nonblocking(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = fd;
}

void Server::on_signal(int) {
  g_signalled = 1;
  if (g_signal_pipe >= 0) wake(g_signal_pipe);
}

Server::Server(VmConfig config, std::string socket_path, int listen_fd)
    : config_(std::move(config)), socket_path_(std::move(socket_path)), listen_fd_(listen_fd) {
  int p[2];
  if (pipe(p) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  pipe_r_ = p[0];
  pipe_w_ = p[1];
  for (int fd : p) {
    set_nonblocking(fd);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  set_nonblocking(listen_fd_);
  g_signal_pipe = pipe_w_;
}

Server::~Server() {
  backend_.reset();  // joins backend threads before the pipe goes away
  g_signal_pipe = -1;
  for (auto& kv : clients_) close(kv.first);
  if (pipe_r_ >= 0) close(pipe_r_);
  if (pipe_w_ >= 0) close(pipe_w_);
}

// ---- EventSink (any thread) ----

void Server::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(std::move(fn));
  }
  wake(pipe_w_);
}

void Server::guest_stopped() {
  post([this] {
    if (state_ == State::Running || state_ == State::Stopping) finish_stop(false);
    // Mid-transition (pausing, resuming, saving, starting, restoring): remembered, and acted
    // on once the operation in flight settles (settle_guest_stop), rather than lost.
    else if (!is_terminal(state_)) guest_gone_ = true;
  });
}

void Server::settle_guest_stop() {
  if (!guest_gone_) return;
  if (state_ == State::Running || state_ == State::Stopping) {
    guest_gone_ = false;
    finish_stop(false);
  } else if (state_ == State::Paused) {
    guest_gone_ = false;
    begin_force_stop();  // Paused -> Stopped is not an edge; nothing is left to stop anyway
  } else if (is_terminal(state_)) {
    guest_gone_ = false;
  }
}

Server::Peer Server::peer_of(int fd) const {
  auto it = clients_.find(fd);
  return Peer{fd, it == clients_.end() ? 0 : it->second.serial};
}

int Server::live_fd(const Peer& p) const {
  auto it = clients_.find(p.fd);
  return (it != clients_.end() && it->second.serial == p.serial) ? p.fd : -1;
}

void Server::backend_error(std::string message) {
  post([this, message] { fail(message); });
}

// ---- state ----

void Server::set_state(State s, const std::string& error) {
  if (state_ == s) return;
  if (!transition_allowed(state_, s)) {
    std::fprintf(stderr, "asvz: internal: transition %s -> %s not in the table\n",
                 state_name(state_), state_name(s));
    s = State::Error;
  }
  state_ = s;
  since_ = wall_now();
  if (!error.empty()) last_error_ = error;
  write_state_file();
  if (!watchers_.empty()) {
    Json ev = Json::object();
    ev.set("event", "state");
    ev.set("state", state_name(state_));
    ev.set("since", since_);
    if (state_ == State::Error) ev.set("error", last_error_);
    std::string line = ev.dump();
    std::vector<int> fds = watchers_;  // send_line never closes, but be safe
    for (int fd : fds) send_line(fd, line);
  }
}

Json Server::status_json() const {
  Json j = Json::object();
  j.set("name", config_.name);
  j.set("state", state_name(state_));
  j.set("pid", static_cast<long long>(getpid()));
  j.set("socket", socket_path_);
  j.set("mac", config_.mac);
  j.set("console_log", config_.console_log);
  j.set("backend", backend_name());
  j.set("since", since_);
  j.set("last_error", last_error_.empty() ? Json() : Json(last_error_));
  return j;
}

void Server::write_state_file() {
  try {
    write_file_atomic(config_.dir + "/state.json", status_json().dump() + "\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "asvz: cannot write state.json: %s\n", e.what());
  }
}

void Server::fail(const std::string& message) {
  if (is_terminal(state_)) return;
  stop_deadline_.reset();
  set_state(State::Error, message.empty() ? "backend error" : message);
  for (const auto& w : stop_waiters_) reply_err(w.client_fd, w.id, "backend", last_error_);
  stop_waiters_.clear();
}

// ---- save ----

// save: (pause if running) -> saving -> paused -> `then` (pause | resume | stop). The reply
// comes once `then` is done; the state file is the backend's, written while paused.
void Server::begin_save(Peer who, const Json& id, const std::string& path, const std::string& then) {
  auto do_save = [this, who, id, path, then]() {
    set_state(State::Saving);
    backend_->save(path, [this, who, id, then](Result r) {
      if (state_ != State::Saving) {
        reply_err(live_fd(who), id, "bad_state", std::string("interrupted; now ") + state_name(state_));
        return;
      }
      set_state(State::Paused);
      after_save(who, id, then, r);
    });
  };
  if (state_ == State::Paused) {
    do_save();
    return;
  }
  set_state(State::Pausing);
  backend_->pause([this, who, id, do_save](Result r) {
    if (state_ != State::Pausing) {
      reply_err(live_fd(who), id, "bad_state", std::string("interrupted; now ") + state_name(state_));
      return;
    }
    if (!r.ok) {
      set_state(State::Running);
      reply_err(live_fd(who), id, r.code.empty() ? "backend" : r.code, "pause before save: " + r.message);
      return;
    }
    set_state(State::Paused);
    do_save();
  });
}

void Server::after_save(Peer who, const Json& id, const std::string& then, Result r) {
  auto reply = [this, who, id, r](const std::string& final_state) {
    if (!r.ok) {
      reply_err(live_fd(who), id, r.code.empty() ? "backend" : r.code, r.message);
      return;
    }
    Json res = Json::object();
    res.set("state", final_state);
    reply_ok(live_fd(who), id, res);
  };
  if (then == "stop" && r.ok) {
    // The saved state is the VM now: power off without asking the (paused) guest. The
    // reply ({"state":"stopped","forced":true}) comes from finish_stop, then the helper exits.
    if (live_fd(who) >= 0) stop_waiters_.push_back({who.fd, id});
    begin_force_stop();
    return;
  }
  if (then == "resume" || (then == "stop" && !r.ok)) {
    // A failed save with then=stop leaves the VM running rather than losing it.
    set_state(State::Resuming);
    backend_->resume([this, reply](Result rr) {
      if (state_ != State::Resuming) return;
      set_state(rr.ok ? State::Running : State::Paused);
      reply(state_name(state_));
    });
    return;
  }
  reply("paused");
}

// ---- stop ----

void Server::begin_stop(double timeout_s) {
  if (state_ == State::Stopping) return;  // joins the stop in flight
  set_state(State::Stopping);
  Result r = backend_->request_stop();
  if (!r.ok) {  // e.g. paused: the guest cannot be asked, so stop it outright
    begin_force_stop();
    return;
  }
  auto ms = std::chrono::milliseconds(static_cast<long long>(std::max(0.0, timeout_s) * 1000.0));
  stop_deadline_ = std::make_unique<Clock::time_point>(Clock::now() + ms);
}

void Server::begin_force_stop() {
  stop_deadline_.reset();
  if (state_ != State::Stopping) set_state(State::Stopping);
  if (force_in_flight_) return;
  force_in_flight_ = true;
  stop_forced_ = true;
  backend_->force_stop([this](Result r) {
    force_in_flight_ = false;
    if (r.ok) finish_stop(true);
    else fail("force stop failed: " + r.message);
  });
}

void Server::finish_stop(bool forced) {
  if (is_terminal(state_)) return;
  stop_deadline_.reset();
  set_state(State::Stopped);
  for (const auto& w : stop_waiters_) {
    Json res = Json::object();
    res.set("state", "stopped");
    res.set("forced", forced || stop_forced_);
    reply_ok(w.client_fd, w.id, res);
  }
  stop_waiters_.clear();
}

// ---- protocol ----

void Server::send_line(int fd, const std::string& line) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;  // client went away; drop the reply
  it->second.out += line;
  it->second.out += '\n';
  flush_client(it->second);
}

void Server::reply_ok(int fd, const Json& id, Json result) {
  Json r = Json::object();
  r.set("id", id);
  r.set("ok", true);
  r.set("result", std::move(result));
  send_line(fd, r.dump());
}

void Server::reply_err(int fd, const Json& id, const std::string& code, const std::string& message) {
  Json e = Json::object();
  e.set("code", code);
  e.set("message", message);
  Json r = Json::object();
  r.set("id", id);
  r.set("ok", false);
  r.set("error", e);
  send_line(fd, r.dump());
}

void Server::handle_line(int fd, const std::string& line) {
  Json req;
  try {
    req = parse_json(line);
  } catch (const JsonError& e) {
    reply_err(fd, Json(), "bad_request", std::string("bad JSON: ") + e.what());
    return;
  }
  if (!req.is_object()) {
    reply_err(fd, Json(), "bad_request", "a request must be a JSON object");
    return;
  }
  Json id = req.find("id") ? *req.find("id") : Json();
  const Json* cmd = req.find("cmd");
  if (!cmd || !cmd->is_string()) {
    reply_err(fd, id, "bad_request", "\"cmd\" (a string) is required");
    return;
  }
  handle_request(fd, id, cmd->as_string(), req);
}

void Server::handle_request(int fd, const Json& id, const std::string& cmd, const Json& req) {
  if (!is_known_command(cmd)) {
    reply_err(fd, id, "unknown_command", "unknown command: " + cmd);
    return;
  }
  if (!command_allowed(cmd, state_)) {
    reply_err(fd, id, "bad_state", cmd + " is not allowed while " + state_name(state_));
    return;
  }
  if (cmd == "hello") {
    Json r = Json::object();
    r.set("protocol", kProtocolVersion);
    r.set("version", kHelperVersion);
    r.set("backend", backend_name());
    r.set("os", os_version());
    reply_ok(fd, id, r);
  } else if (cmd == "status") {
    reply_ok(fd, id, status_json());
  } else if (cmd == "console") {
    Json r = Json::object();
    r.set("path", config_.console_log);
    reply_ok(fd, id, r);
  } else if (cmd == "address") {
    auto addr = backend_->address();
    if (!addr) {
      reply_err(fd, id, "not_yet", "the guest's address is not known yet");
      return;
    }
    Json r = Json::object();
    r.set("address", *addr);
    reply_ok(fd, id, r);
  } else if (cmd == "stop") {
    double timeout = 30;
    if (const Json* t = req.find("timeout")) {
      if (!t->is_number() || t->as_number() < 0) {
        reply_err(fd, id, "bad_request", "\"timeout\" must be a non-negative number of seconds");
        return;
      }
      timeout = t->as_number();
    }
    stop_waiters_.push_back({fd, id});
    begin_stop(timeout);
  } else if (cmd == "force_stop") {
    stop_waiters_.push_back({fd, id});
    begin_force_stop();
  } else if (cmd == "watch") {
    if (std::find(watchers_.begin(), watchers_.end(), fd) == watchers_.end()) watchers_.push_back(fd);
    reply_ok(fd, id, status_json());
  } else if (cmd == "save") {
    const Json* path = req.find("path");
    if (!path || !path->is_string() || path->as_string().empty() || path->as_string()[0] != '/') {
      reply_err(fd, id, "bad_request", "\"path\" (an absolute path) is required");
      return;
    }
    std::string then = state_ == State::Running ? "resume" : "pause";
    if (const Json* t = req.find("then")) {
      if (!t->is_string() ||
          (t->as_string() != "pause" && t->as_string() != "resume" && t->as_string() != "stop")) {
        reply_err(fd, id, "bad_request", "\"then\" must be \"pause\", \"resume\" or \"stop\"");
        return;
      }
      then = t->as_string();
    }
    begin_save(peer_of(fd), id, path->as_string(), then);
  } else if (cmd == "pause" || cmd == "resume") {
    bool pause = cmd == "pause";
    set_state(pause ? State::Pausing : State::Resuming);
    Peer who = peer_of(fd);
    Done done = [this, who, id, pause](Result r) {
      State want = pause ? State::Pausing : State::Resuming;
      if (state_ != want) {  // overtaken (stop, crash): report and leave the state alone
        reply_err(live_fd(who), id, "bad_state", std::string("interrupted; now ") + state_name(state_));
        return;
      }
      if (r.ok) {
        set_state(pause ? State::Paused : State::Running);
        Json res = Json::object();
        res.set("state", state_name(state_));
        reply_ok(live_fd(who), id, res);
      } else {
        set_state(pause ? State::Running : State::Paused);
        reply_err(live_fd(who), id, r.code.empty() ? "backend" : r.code, r.message);
      }
    };
    if (pause) backend_->pause(done);
    else backend_->resume(done);
  }
}

// ---- sockets ----

void Server::accept_clients() {
  for (;;) {
    int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;  // EAGAIN or transient error
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    set_nonblocking(fd);
    Client& c = clients_[fd];
    c.fd = fd;
    c.serial = next_serial_++;
  }
}

void Server::read_client(Client& c) {
  char buf[16384];
  int fd = c.fd;
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) {
      close_client(fd);
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) close_client(fd);
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (;;) {
      size_t nl = c.in.find('\n', start);
      if (nl == std::string::npos) break;
      if (nl - start > kMaxLine) {
        close_client(fd);
        return;
      }
      std::string line = c.in.substr(start, nl - start);
      start = nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      handle_line(fd, line);
      if (clients_.find(fd) == clients_.end()) return;
    }
    c.in.erase(0, start);
    if (c.in.size() > kMaxLine) {  // a line longer than the limit, still unterminated
      close_client(fd);
      return;
    }
  }
}

void Server::flush_client(Client& c) {
  while (!c.out.empty()) {
    ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      c.out.clear();
      c.closing = true;
      return;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
}

void Server::close_client(int fd) {
  close(fd);
  clients_.erase(fd);
  watchers_.erase(std::remove(watchers_.begin(), watchers_.end(), fd), watchers_.end());
  stop_waiters_.erase(std::remove_if(stop_waiters_.begin(), stop_waiters_.end(),
                                     [fd](const Waiter& w) { return w.client_fd == fd; }),
                      stop_waiters_.end());
}

void Server::drain_events() {
  char buf[256];
  while (read(pipe_r_, buf, sizeof buf) > 0) {
  }
  if (g_rebind) {
    g_rebind = 0;
    if (!is_terminal(state_)) rebind_socket();
  }
  if (g_signalled) {
    g_signalled = 0;
    if (state_ == State::Running || state_ == State::Paused || state_ == State::Stopping)
      begin_force_stop();
    else if (!is_terminal(state_))
      fail("terminated by a signal while " + std::string(state_name(state_)));
  }
  for (;;) {
    std::function<void()> fn;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (events_.empty()) break;
      fn = std::move(events_.front());
      events_.pop_front();
    }
    fn();
  }
}

void Server::drain_output(std::chrono::milliseconds budget) {
  auto end = Clock::now() + budget;
  for (;;) {
    std::vector<pollfd> pfds;
    for (auto& kv : clients_)
      if (!kv.second.out.empty() && !kv.second.closing) pfds.push_back({kv.first, POLLOUT, 0});
    if (pfds.empty()) return;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) return;
    if (poll(pfds.data(), pfds.size(), static_cast<int>(left)) < 0 && errno != EINTR) return;
    for (auto& p : pfds)
      if (p.revents) flush_client(clients_[p.fd]);
  }
}

int Server::run() {
  backend_ = make_backend(config_, *this);
  if (!config_.restore.empty()) {
    // Restore mode: the VM is configured but never started; it comes back paused.
    set_state(State::Restoring);
    backend_->restore(config_.restore, [this](Result r) {
      if (state_ != State::Restoring) return;
      if (!r.ok) {
        fail("restore failed: " + r.message);
        return;
      }
      set_state(State::Paused);
      if (config_.restore_paused) return;
      set_state(State::Resuming);
      backend_->resume([this](Result rr) {
        if (state_ != State::Resuming) return;
        if (rr.ok) set_state(State::Running);
        else fail("resume after restore failed: " + rr.message);
      });
    });
  } else {
    set_state(State::Starting);
    backend_->start([this](Result r) {
      if (state_ != State::Starting) return;
      if (r.ok) set_state(State::Running);
      else fail("start failed: " + r.message);
    });
  }

  while (!is_terminal(state_)) {
    std::vector<pollfd> pfds;
    pfds.push_back({pipe_r_, POLLIN, 0});
    pfds.push_back({listen_fd_, POLLIN, 0});
    for (auto& kv : clients_) {
      short ev = POLLIN;
      if (!kv.second.out.empty()) ev |= POLLOUT;
      pfds.push_back({kv.first, ev, 0});
    }
    int timeout = -1;
    if (stop_deadline_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*stop_deadline_ - Clock::now()).count();
      timeout = static_cast<int>(std::max<long long>(0, left + 1));
    }
    int n = poll(pfds.data(), pfds.size(), timeout);
    if (n < 0 && errno != EINTR) {
      fail(std::string("poll: ") + std::strerror(errno));
      break;
    }
    if (stop_deadline_ && Clock::now() >= *stop_deadline_) {
      stop_deadline_.reset();
      begin_force_stop();  // the guest ignored the request: timeout -> force
    }
    if (n <= 0) continue;
    if (pfds[0].revents) drain_events();
    settle_guest_stop();
    if (pfds[1].revents & POLLIN) accept_clients();
    for (size_t i = 2; i < pfds.size(); ++i) {
      auto it = clients_.find(pfds[i].fd);
      if (it == clients_.end()) continue;
      if (pfds[i].revents & POLLOUT) flush_client(it->second);
      if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_client(it->second);
      it = clients_.find(pfds[i].fd);
      if (it != clients_.end() && it->second.closing) close_client(pfds[i].fd);
    }
  }

  // Terminal: state.json is already written; close and unlink the socket, flush replies, exit.
  close(listen_fd_);
  listen_fd_ = -1;
  unlink(socket_path_.c_str());
  drain_output(std::chrono::milliseconds(2000));
  return state_ == State::Stopped ? 0 : 3;
}

}  // namespace asvz
