"""Where agent-swarm keeps its state, and the fixed names of per-VM files.

The state directory is ``~/.agent-swarm`` unless ``AGENT_SWARM_HOME`` is set. It is kept
short on purpose: macOS limits Unix socket paths to 104 bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "AGENT_SWARM_HOME"

REGISTRY_DB = "registry.db"
BASE_IMAGES_DIR = "base-images"
PROJECTS_DIR = "projects"
TASKS_DIR = "tasks"
KEYS_DIR = "keys"
SETUP_SCRIPT = "setup.sh"

# Per-VM files inside <home>/{projects,tasks}/<name>/ (the disk's name: agent_swarm.layout)
SEED_ISO = "cidata.iso"
SERIAL_LOG = "serial.log"


def home() -> Path:
    """The state directory (not created)."""
    env = os.environ.get(ENV_HOME)
    # Resolved: providers name VMs with a hash of this path, so one directory reached
    # through two paths (a symlink) must still be one state directory.
    if env:
        return Path(env).expanduser().resolve()
    return (Path.home() / ".agent-swarm").resolve()


def ensure_home() -> Path:
    """The state directory, created with mode 0700 if missing."""
    h = home()
    try:
        h.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        from agent_swarm.errors import ConfigError

        raise ConfigError(
            f"cannot create the state directory {h}: {exc.strerror}",
            hint=f"set {ENV_HOME} to a writable directory",
        ) from exc
    return h


def registry_path() -> Path:
    return home() / REGISTRY_DB
