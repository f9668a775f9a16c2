"""config.toml: every bad file ends in one clear ConfigError (never an internal error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_swarm import settings
from agent_swarm.errors import ConfigError


def _write(home: Path, data: bytes | str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_bytes(data.encode() if isinstance(data, str) else data)


def test_defaults_are_safe_without_a_file(swarm_home: Path) -> None:
    eff = settings.for_project("myapp")
    assert eff == settings.Effective(
        forward_agent=False, host_access=False, authorize_user_keys=False
    )


def test_global_values_and_per_project_overrides(swarm_home: Path) -> None:
    _write(
        swarm_home,
        "[ssh]\nforward_agent = true\n[network]\nhost_access = false\n"
        "[project.web]\nhost_access = true\nforward_agent = false\n",
    )
    assert settings.for_project("other") == settings.Effective(forward_agent=True)
    assert settings.for_project("web") == settings.Effective(host_access=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("capacity = 5\n", r"\[capacity\] must be a table"),
        (b"[ssh]\nforward_agent = tru\xff\n", "not UTF-8"),
        ("[ssh\n", "not valid TOML"),
        ("[ssh]\nforward_agnet = true\n", "unknown setting ssh.forward_agnet"),
        ("[ssh]\nforward_agent = 'yes'\n", "must be true or false"),
        ("[network]\nhost_access = 1\n", "must be true or false"),
        ("[capacity]\ncpu_ratio = true\n", "must be a number"),
        ("[firewall]\nx = 1\n", r"unknown section \[firewall\]"),
        ("[project.Bad_Name]\nhost_access = true\n", "not a valid project name"),
        ("project = 3\n", r"\[project\] must hold"),
    ],
)
def test_bad_files_are_one_clear_error(
    swarm_home: Path, content: str | bytes, message: str
) -> None:
    _write(swarm_home, content)
    with pytest.raises(ConfigError, match=message) as e:
        settings.load()
    assert "config.toml" in e.value.message and "\n" not in e.value.message
    assert e.value.hint


def test_cli_reports_a_bad_config_in_one_line(swarm_home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _write(swarm_home, "capacity = 5\n")
    r = cli("status")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Internal error" not in r.stderr
    assert r.stderr.startswith("Error: ") and "[capacity] must be a table" in r.stderr
