"""The user's persistent settings: ``$AGENT_SWARM_HOME/config.toml``.

Every setting has a safe default, so the file is optional::

    [capacity]                  # see agent_swarm.capacity
    cpu_ratio = 4.0
    memory_ratio = 1.0
    disk_reserve_gib = 2.0

    [ssh]
    forward_agent = false       # forward your ssh-agent into VMs (ssh, project ssh, plain ssh)
    authorize_user_keys = false # also authorize ~/.ssh/id_*.pub in new VMs

    [network]
    host_access = false         # new VMs may reach this host's loopback services (and siblings)

    [seal]
    warm = false                # `project stop` also saves a warm template (docs/warm-clones.md)

    [project.myapp]             # per project (its project VM and its tasks)
    forward_agent = true
    host_access = true

Unknown keys and wrong types are errors (a misspelt security setting must not be silently
ignored), each reported in one line that names the key and the file.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_swarm import paths
from agent_swarm.errors import ConfigError
from agent_swarm.names import NAME_RE

CONFIG_FILE = "config.toml"
MAX_SIZE = 1 << 20

# section -> key -> type; "project.<name>" sections take PROJECT_KEYS.
SCHEMA: dict[str, dict[str, type]] = {
    "capacity": {"cpu_ratio": float, "memory_ratio": float, "disk_reserve_gib": float},
    "ssh": {"forward_agent": bool, "authorize_user_keys": bool},
    "network": {"host_access": bool},
    "seal": {"warm": bool},
}
PROJECT_KEYS: dict[str, type] = {
    "forward_agent": bool,
    "host_access": bool,
    "authorize_user_keys": bool,
    "warm": bool,
}


def path() -> Path:
    return paths.home() / CONFIG_FILE


def _fail(msg: str) -> ConfigError:
    return ConfigError(f"{path()}: {msg}", hint="fix or remove that file (see docs/security.md)")


def _check_value(where: str, key: str, value: Any, want: type) -> Any:
    if want is bool:
        if not isinstance(value, bool):
            raise _fail(f"{where}.{key} must be true or false, not {value!r}")
        return value
    # numbers: TOML ints are fine where floats are expected; bools are not numbers here
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(f"{where}.{key} must be a number, not {value!r}")
    return float(value)


def _check_table(where: str, table: Any, keys: dict[str, type]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(f"[{where}] must be a table (a [{where}] section), not {table!r}")
    out = {}
    for k, v in table.items():
        if k not in keys:
            known = ", ".join(sorted(keys))
            raise _fail(f"unknown setting {where}.{k} (known in [{where}]: {known})")
        out[k] = _check_value(where, k, v, keys[k])
    return out


def load() -> dict[str, Any]:
    """The validated settings as nested dicts (missing file: ``{}``)."""
    f = path()
    try:
        with open(f, "rb") as fh:
            raw = fh.read(MAX_SIZE + 1)
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise _fail("is a directory") from None
    except OSError as exc:
        raise _fail(f"cannot read it: {exc.strerror}") from None
    if len(raw) > MAX_SIZE:
        raise _fail(f"larger than {MAX_SIZE >> 10} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(f"not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(f"not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for section, table in data.items():
        if section in SCHEMA:
            out[section] = _check_table(section, table, SCHEMA[section])
        elif section == "project":
            if not isinstance(table, dict):
                raise _fail(f"[project] must hold [project.NAME] tables, not {table!r}")
            projects = {}
            for name, ptable in table.items():
                if NAME_RE.fullmatch(name) is None:
                    raise _fail(f"[project.{name}]: {name!r} is not a valid project name")
                projects[name] = _check_table(f"project.{name}", ptable, PROJECT_KEYS)
            out["project"] = projects
        else:
            known = ", ".join([*sorted(SCHEMA), "project.NAME"])
            raise _fail(f"unknown section [{section}] (known: {known})")
    return out


@dataclass(frozen=True)
class Effective:
    """The settings that apply to one project's VMs (global value, then [project.NAME])."""

    forward_agent: bool = False
    host_access: bool = False
    authorize_user_keys: bool = False
    warm: bool = False  # seal a warm template with each generation


def for_project(project: str | None, data: dict[str, Any] | None = None) -> Effective:
    d = load() if data is None else data
    ssh, net = d.get("ssh", {}), d.get("network", {})
    values = {
        "forward_agent": ssh.get("forward_agent", False),
        "authorize_user_keys": ssh.get("authorize_user_keys", False),
        "host_access": net.get("host_access", False),
        "warm": d.get("seal", {}).get("warm", False),
    }
    if project is not None:
        values.update(d.get("project", {}).get(project, {}))
    return Effective(**values)


def capacity_section() -> dict[str, float]:
    return dict(load().get("capacity", {}))
