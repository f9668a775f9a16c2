"""Validation of every user-supplied name that becomes a path, domain name or shell word."""

from __future__ import annotations

import re

from agent_swarm.errors import InvalidName

# An RFC 1123 host name label: the name becomes the VM's hostname and part of its SSH alias.
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Names agent-swarm accepted before it required a letter or digit at the end ("fix-"): still
# accepted for VMs, projects and images that already exist, so their owners can reach and
# delete them; never for new ones.
EXISTING_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_RULE = (
    "1-63 characters: lowercase letters, digits and '-', starting and ending with a letter or digit"
)

# Environment variable names the guest's shell owns. The injected file is sourced by the
# guest's login shell (bash; sh where bash is absent), so such a name would make the
# injection fail, be silently lost, or change how the shell runs the user's command.
# Refused at `env set`; `env rm` still accepts them (``reserved_ok``) for old entries.
_READONLY = frozenset({"BASHOPTS", "BASH_VERSINFO", "EUID", "PPID", "SHELLOPTS", "UID"})
_BASH_OWNED = frozenset(
    {
        "BASH", "BASHPID", "COMP_CWORD", "COMP_KEY", "COMP_LINE", "COMP_POINT", "COMP_TYPE",
        "COMP_WORDBREAKS", "COMP_WORDS", "COMPREPLY", "DIRSTACK", "EPOCHREALTIME",
        "EPOCHSECONDS", "FUNCNAME", "GROUPS", "HISTCMD", "LINENO", "OPTARG", "OPTERR",
        "OPTIND", "PIPESTATUS", "RANDOM", "SECONDS", "SRANDOM",
    }
)  # fmt: skip
_BEHAVIOUR = frozenset(
    {
        "CDPATH", "ENV", "GLOBIGNORE", "HOME", "IFS", "OLDPWD", "PATH", "POSIXLY_CORRECT",
        "PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4", "PWD", "SHELL", "TMOUT",
    }
)  # fmt: skip


def reserved_env_name(name: str) -> str | None:
    """Why the guest's shell owns ``name`` (None when it is free to use)."""
    if name in _READONLY:
        return "read-only in bash: injecting it would fail"
    if name in _BASH_OWNED or name.startswith("BASH_"):
        return "set by bash itself: the value would be lost or misread"
    if name in _BEHAVIOUR:
        return "it changes how the guest's shell or login session behaves"
    return None


def validate_name(name: str, kind: str = "name") -> str:
    """Return ``name`` if it is a valid VM/project/image name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}…"
        raise InvalidName(
            f"invalid {kind} {shown!r}",
            hint=f"a {kind} must be {NAME_RULE}, e.g. 'fix-login'",
        )
    return name


def validate_existing_name(name: str, kind: str = "name") -> str:
    """Like :func:`validate_name`, but also accepts names of the older, looser rule (for
    looking up what already exists)."""
    if isinstance(name, str) and EXISTING_NAME_RE.fullmatch(name) is not None:
        return name
    return validate_name(name, kind)


def validate_env_name(name: str, *, reserved_ok: bool = False) -> str:
    """Return ``name`` if it can be an injected environment variable, else raise
    :class:`InvalidName`. ``reserved_ok`` skips the reserved-name check (for removing a
    variable an older version stored)."""
    if not isinstance(name, str) or ENV_NAME_RE.fullmatch(name) is None or len(name) > 255:
        raise InvalidName(
            f"invalid environment variable name {name!r}",
            hint="names must match [A-Za-z_][A-Za-z0-9_]*, e.g. GITHUB_TOKEN",
        )
    why = None if reserved_ok else reserved_env_name(name)
    if why is not None:
        raise InvalidName(
            f"environment variable name {name} is reserved for the guest's shell ({why})",
            hint=f"choose another name, e.g. MY_{name}",
        )
    return name
