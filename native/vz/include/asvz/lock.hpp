// Single-instance lock (flock on <dir>/vz.lock) and the control socket's path.
#pragma once

#include <string>
#include <sys/types.h>

namespace asvz {

// flock(LOCK_EX|LOCK_NB) on <dir>/vz.lock and writes our pid into it. Returns the fd (kept
// open for the life of the process), or -1 with *holder_pid set (0 if unknown) when another
// process holds it. Throws std::system_error on other failures.
int acquire_instance_lock(const std::string& dir, pid_t* holder_pid);

// <dir>/vz.sock when it is at most kMaxSocketPath bytes, else $TMPDIR/asvz-<hash>.sock.
constexpr size_t kMaxSocketPath = 100;
std::string socket_path_for(const std::string& dir);

// A listening Unix stream socket bound at `path`, mode 0600 (close-on-exec), or -1 with errno.
int listen_unix(const std::string& path);

// Writes `content` to `path` atomically (tmp file + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace asvz
