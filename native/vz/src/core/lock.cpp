#include "asvz/lock.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace asvz {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

std::string read_all(int fd) {
  std::string out;
  char buf[64];
  off_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

void write_all(int fd, const std::string& s, const std::string& what) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = write(fd, s.data() + done, s.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(what);
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace

int acquire_instance_lock(const std::string& dir, pid_t* holder_pid) {
  std::string path = dir + "/vz.lock";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("open " + path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err != EWOULDBLOCK) {
      close(fd);
      errno = err;
      throw_errno("flock " + path);
    }
    std::string text = read_all(fd);
    close(fd);
    *holder_pid = static_cast<pid_t>(std::strtol(text.c_str(), nullptr, 10));
    return -1;
  }
  if (ftruncate(fd, 0) != 0) throw_errno("truncate " + path);
  std::string pid = std::to_string(getpid()) + "\n";
  if (pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    throw_errno("write " + path);
  return fd;
}

std::string socket_path_for(const std::string& dir) {
  std::string direct = dir + "/vz.sock";
  if (direct.size() <= kMaxSocketPath) return direct;
  // FNV-1a 64 over the VM dir: stable, short, and distinct per VM dir.
  unsigned long long h = 1469598103934665603ull;
  for (unsigned char c : dir) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", h);
  const char* tmp = std::getenv("TMPDIR");
  std::string base = (tmp && *tmp) ? tmp : "/tmp";
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  return base + "/asvz-" + hex + ".sock";
}

void write_file_atomic(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("open " + tmp);
  try {
    write_all(fd, content, "write " + tmp);
    if (fsync(fd) != 0) throw_errno("fsync " + tmp);
  } catch (...) {
    close(fd);
    unlink(tmp.c_str());
    throw;
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    errno = err;
    throw_errno("rename " + tmp);
  }
}

int listen_unix(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);  // macOS has no SOCK_CLOEXEC
  if (fd < 0) return -1;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
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

}  // namespace asvz
