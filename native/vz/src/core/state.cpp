#include "asvz/state.hpp"

#include <cstring>

namespace asvz {

const char* state_name(State s) {
  switch (s) {
    case State::Init: return "init";
    case State::Starting: return "starting";
    case State::Running: return "running";
    case State::Pausing: return "pausing";
    case State::Paused: return "paused";
    case State::Resuming: return "resuming";
    case State::Stopping: return "stopping";
    case State::Stopped: return "stopped";
    case State::Error: return "error";
    case State::Restoring: return "restoring";
    case State::Saving: return "saving";
  }
  return "?";
}

bool is_terminal(State s) { return s == State::Stopped || s == State::Error; }

namespace {

struct Edge {
  State from, to;
};

// The transition table (plan §2). Error is reachable from every non-terminal state.
constexpr Edge kEdges[] = {
    {State::Init, State::Starting},      {State::Starting, State::Running},
    {State::Running, State::Pausing},    {State::Pausing, State::Paused},
    {State::Pausing, State::Running},    {State::Paused, State::Resuming},
    {State::Resuming, State::Running},   {State::Resuming, State::Paused},
    {State::Running, State::Stopping},   {State::Paused, State::Stopping},
    {State::Running, State::Stopped},    {State::Stopping, State::Stopped},
    {State::Init, State::Restoring},     {State::Restoring, State::Paused},
    {State::Paused, State::Saving},      {State::Saving, State::Paused},
};

struct CommandRule {
  const char* cmd;
  unsigned states;  // bit mask of State values; ~0u = any
};

constexpr unsigned bit(State s) { return 1u << static_cast<unsigned>(s); }

constexpr CommandRule kCommands[] = {
    {"hello", ~0u},
    {"status", ~0u},
    {"console", ~0u},
    {"address", ~0u},
    {"stop", bit(State::Running) | bit(State::Paused) | bit(State::Stopping)},
    {"force_stop", bit(State::Running) | bit(State::Paused) | bit(State::Stopping)},
    {"pause", bit(State::Running)},
    {"resume", bit(State::Paused)},
    {"save", bit(State::Running) | bit(State::Paused)},
    {"watch", ~0u},
};

}  // namespace

bool transition_allowed(State from, State to) {
  if (is_terminal(from)) return false;
  if (to == State::Error) return true;
  for (const auto& e : kEdges)
    if (e.from == from && e.to == to) return true;
  return false;
}

bool is_known_command(const std::string& cmd) {
  for (const auto& r : kCommands)
    if (cmd == r.cmd) return true;
  return false;
}

bool command_allowed(const std::string& cmd, State s) {
  for (const auto& r : kCommands)
    if (cmd == r.cmd) return (r.states & bit(s)) != 0;
  return false;
}

}  // namespace asvz
