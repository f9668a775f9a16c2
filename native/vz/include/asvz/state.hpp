// The helper's state machine as data: states, allowed transitions, allowed commands.
#pragma once

#include <string>

namespace asvz {

enum class State {
  Init, Starting, Running, Pausing, Paused, Resuming, Stopping, Stopped, Error, Restoring, Saving
};

const char* state_name(State s);
bool is_terminal(State s);
// Whether the machine may move from `from` to `to` (any non-terminal state may go to Error).
bool transition_allowed(State from, State to);
// Whether protocol command `cmd` is accepted in state `s` (unknown commands: false).
bool command_allowed(const std::string& cmd, State s);
// Whether `cmd` is a command of protocol v1 at all.
bool is_known_command(const std::string& cmd);

}  // namespace asvz
