"""Validation of every user-supplied name that becomes a path, domain name or shell word."""

from __future__ import annotations

import re

from agent_swarm.errors import InvalidName

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting with a letter or digit"


def validate_name(name: str, kind: str = "name") -> str:
    """Return ``name`` if it is a valid VM/project/image name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}…"
        raise InvalidName(
            f"invalid {kind} {shown!r}",
            hint=f"a {kind} must be {NAME_RULE}, e.g. 'fix-login'",
        )
    return name


def validate_env_name(name: str) -> str:
    if not isinstance(name, str) or ENV_NAME_RE.fullmatch(name) is None or len(name) > 255:
        raise InvalidName(
            f"invalid environment variable name {name!r}",
            hint="names must match [A-Za-z_][A-Za-z0-9_]*, e.g. GITHUB_TOKEN",
        )
    return name
