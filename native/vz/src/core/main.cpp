// agent-swarm-vz: one process per VM; `run --config vm.json` serves the control socket.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <system_error>

#include <limits.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "asvz/config.hpp"
#include "asvz/json.hpp"
#include "asvz/leases.hpp"
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
               "usage: agent-swarm-vz run --config VM.json [--restore STATE [--paused]]\n"
               "       agent-swarm-vz init --config VM.json\n"
               "       agent-swarm-vz check-config --config VM.json\n"
               "       agent-swarm-vz --version\n");
  return kExitUsage;
}

// Loads and validates the config, with `dir` made absolute; false after printing the error.
bool load(const std::string& path, asvz::VmConfig& cfg, int& rc) {
  try {
    cfg = asvz::load_config(path);
  } catch (const std::exception& e) {
    rc = error_exit(kExitUsage, "bad_config", e.what());
    return false;
  }
  char real[PATH_MAX];
  if (!realpath(cfg.dir.c_str(), real)) {
    rc = error_exit(kExitUsage, "bad_config", "dir " + cfg.dir + ": " + std::strerror(errno));
    return false;
  }
  cfg.dir = real;
  return true;
}

int cmd_init(const std::string& config_path) {
  asvz::VmConfig cfg;
  int rc = 0;
  if (!load(config_path, cfg, rc)) return rc;
  asvz::Result r = asvz::backend_init(cfg);
  if (!r.ok) return error_exit(1, r.code.empty() ? "backend" : r.code, r.message);
  asvz::Json j = asvz::Json::object();
  j.set("efi_vars", cfg.efi_vars);
  j.set("machine_id", cfg.machine_id);
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

int cmd_check(const std::string& config_path) {
  asvz::VmConfig cfg;
  int rc = 0;
  if (!load(config_path, cfg, rc)) return rc;
  asvz::Json info = asvz::Json::object();
  asvz::Result r = asvz::backend_check(cfg, info);
  std::printf("%s\n", info.dump().c_str());
  return r.ok ? 0 : 1;
}


int cmd_run(const std::string& config_path, const std::string& restore, bool paused) {
  asvz::VmConfig cfg;
  int bad = 0;
  if (!load(config_path, cfg, bad)) return bad;
  cfg.restore = restore;
  cfg.restore_paused = paused;

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
  int listen_fd = asvz::listen_unix(sock);
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
    // SIGUSR1: make the control socket again (macOS cleans $TMPDIR, where a long VM
    // directory's socket lives; the provider's `start` repairs a VM whose socket is gone).
    struct sigaction su{};
    su.sa_handler = asvz::Server::on_rebind_signal;
    sigemptyset(&su.sa_mask);
    sigaction(SIGUSR1, &su, nullptr);
    rc = server.run();
  }
  // No pid left behind once we are gone: a stale pid would name whatever process gets that
  // number next (the provider checks a holder's identity before signalling it, too).
  if (ftruncate(lock_fd, 0) != 0) std::fprintf(stderr, "asvz: cannot clear vz.lock\n");
  close(lock_fd);  // released by exit anyway; explicit for clarity
  return rc;
}

}  // namespace

// `lease --file PATH --mac MAC [--now EPOCH]`: the IPv4 of MAC's newest unexpired DHCP lease
// in PATH (macOS: /var/db/dhcpd_leases), for tests of the lease parser and for debugging.
// stdout: {"address":"...","expires":N} (exit 0) or {"error":"not_found"} (exit 1; also when
// PATH does not exist yet); an unreadable PATH -> {"error":"unreadable",...} (exit 1).
static int cmd_lease(int argc, char** argv) {
  const char* usage_text = "usage: agent-swarm-vz lease --file PATH --mac MAC [--now EPOCH]";
  std::string file, mac;
  long long now = static_cast<long long>(std::time(nullptr));
  for (int i = 2; i < argc; ++i) {
    std::string opt = argv[i];
    if (i + 1 >= argc) return error_exit(kExitUsage, "usage", usage_text);
    const char* val = argv[++i];
    if (opt == "--file") {
      file = val;
    } else if (opt == "--mac") {
      mac = val;
    } else if (opt == "--now") {
      char* end = nullptr;
      errno = 0;
      now = std::strtoll(val, &end, 10);
      if (errno != 0 || end == val || *end != '\0')
        return error_exit(kExitUsage, "usage", usage_text);
    } else {
      return error_exit(kExitUsage, "usage", usage_text);
    }
  }
  if (file.empty() || mac.empty()) return error_exit(kExitUsage, "usage", usage_text);
  if (!asvz::normalize_mac(mac)) return error_exit(kExitUsage, "bad_mac", "not a MAC: " + mac);
  asvz::Json out = asvz::Json::object();
  int err = 0;
  std::optional<std::string> text = asvz::read_leases_file(file, &err);
  std::optional<asvz::Lease> lease;
  if (text) {
    lease = asvz::find_lease(*text, mac, now);
  } else if (err != ENOENT) {
    out.set("error", "unreadable");
    out.set("message", file + ": " + std::strerror(err));
    std::printf("%s\n", out.dump().c_str());
    return 1;
  }
  if (!lease) {
    out.set("error", "not_found");
    std::printf("%s\n", out.dump().c_str());
    return 1;
  }
  out.set("address", lease->ip);
  out.set("expires", lease->expires);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("agent-swarm-vz %s (backend %s)\n", asvz::kHelperVersion, asvz::backend_name());
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "lease") == 0) return cmd_lease(argc, argv);
  if (argc < 4 || std::strcmp(argv[2], "--config") != 0) return usage();
  std::string sub = argv[1];
  if (sub == "init" && argc == 4) return cmd_init(argv[3]);
  if (sub == "check-config" && argc == 4) return cmd_check(argv[3]);
  if (sub == "run") {
    std::string restore;
    bool paused = false;
    for (int i = 4; i < argc; ++i) {
      if (std::strcmp(argv[i], "--restore") == 0 && i + 1 < argc && argv[i + 1][0] == '/') {
        restore = argv[++i];
      } else if (std::strcmp(argv[i], "--paused") == 0) {
        paused = true;
      } else {
        return usage();
      }
    }
    if (paused && restore.empty()) return usage();
    return cmd_run(argv[3], restore, paused);
  }
  return usage();
}
