// agent-swarm-vz: one process per VM; `run --config vm.json` serves the control socket.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

#include <limits.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "asvz/config.hpp"
#include "asvz/json.hpp"
#include "asvz/lock.hpp"
#include "asvz/server.hpp"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitAlreadyRunning = 75;  // EX_TEMPFAIL

int error_exit(int code, const std::string& error, const std::string& message) {
  asvz::Json j = asvz::Json::object();
  j.set("error", error);
  j.set("message", message);
  std::fprintf(stderr, "%s\n", j.dump().c_str());
  return code;
}

int usage() {
  std::fprintf(stderr,
               "usage: agent-swarm-vz run --config VM.json\n"
               "       agent-swarm-vz --version\n");
  return kExitUsage;
}

int listen_unix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  mode_t old = umask(0177);  // the socket is created 0600
  int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old);
  if (rc != 0 || chmod(path.c_str(), 0600) != 0 || listen(fd, 16) != 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

int cmd_run(const std::string& config_path) {
  asvz::VmConfig cfg;
  try {
    cfg = asvz::load_config(config_path);
  } catch (const std::exception& e) {
    return error_exit(kExitUsage, "bad_config", e.what());
  }
  char real[PATH_MAX];
  if (!realpath(cfg.dir.c_str(), real)) return error_exit(kExitUsage, "bad_config", "dir " + cfg.dir + ": " + std::strerror(errno));
  cfg.dir = real;

  pid_t holder = 0;
  int lock_fd;
  try {
    lock_fd = asvz::acquire_instance_lock(cfg.dir, &holder);
  } catch (const std::system_error& e) {
    return error_exit(kExitUsage, "lock", e.what());
  }
  if (lock_fd < 0) {
    asvz::Json j = asvz::Json::object();
    j.set("error", "already_running");
    j.set("pid", static_cast<long long>(holder));
    std::fprintf(stderr, "%s\n", j.dump().c_str());
    return kExitAlreadyRunning;
  }

  // We hold the lock, so any socket file left at our path is stale.
  std::string sock = asvz::socket_path_for(cfg.dir);
  unlink(sock.c_str());
  int listen_fd = listen_unix(sock);
  if (listen_fd < 0) return error_exit(1, "socket", sock + ": " + std::strerror(errno));

  std::signal(SIGPIPE, SIG_IGN);
  int rc;
  {
    asvz::Server server(cfg, sock, listen_fd);
    // Installed once the server's self-pipe exists: SIGTERM/SIGINT = force stop.
    struct sigaction sa{};
    sa.sa_handler = asvz::Server::on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    rc = server.run();
  }
  close(lock_fd);  // released by exit anyway; explicit for clarity
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("agent-swarm-vz %s (backend fake)\n", asvz::kHelperVersion);
    return 0;
  }
  if (argc == 4 && std::strcmp(argv[1], "run") == 0 && std::strcmp(argv[2], "--config") == 0)
    return cmd_run(argv[3]);
  return usage();
}
