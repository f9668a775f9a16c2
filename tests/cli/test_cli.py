"""The real `agent-swarm` executable: help for every command, exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_swarm.cli import COMMANDS


def _real_commands() -> list[str]:
    """Every command the real `agent-swarm` CLI resolves: top level, each group and its
    subcommands (what click itself dispatches to, not a table kept in this file)."""
    import click

    from agent_swarm.cli import cli

    out: list[str] = []
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        assert cmd is not None, name
        out.append(name)
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, parent=ctx, info_name=name)
            for sub in cmd.list_commands(sub_ctx):
                assert cmd.get_command(sub_ctx, sub) is not None, (name, sub)
                out.append(f"{name} {sub}")
    return out


# Every command of the original tool (seed README) must exist.
SEED_COMMANDS = [
    "init-base",
    "project create",
    "project list",
    "project ssh",
    "project stop",
    "project run",
    "project code",
    "project delete",
    "create",
    "list",
    "ssh",
    "run",
    "code",
    "start",
    "stop",
    "delete",
    "cp",
    "bulk create",
    "bulk delete",
    "env set",
    "env list",
    "env rm",
    "checkpoint",
    "restore",
    "status",
    "providers",
]
ALL = _real_commands()


def test_seed_commands_are_all_present() -> None:
    missing = set(SEED_COMMANDS) - set(ALL)
    assert not missing, f"commands of the original tool the CLI no longer has: {missing}"


@pytest.mark.parametrize("command", ALL)
def test_help(cli, command: str) -> None:  # type: ignore[no-untyped-def]
    r = cli(*command.split(), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Usage: agent-swarm {command}")
    assert r.stderr == ""


def test_top_level_help_lists_every_command(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout
    assert "Exit codes" in r.stdout


def test_version(cli) -> None:  # type: ignore[no-untyped-def]
    from agent_swarm import __version__

    r = cli("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout


def test_usage_errors_exit_2_without_traceback(cli) -> None:  # type: ignore[no-untyped-def]
    for args in (
        ["nope"],
        ["create", "Bad_Name", "x"],
        ["create", "p"],
        ["project", "create"],
        ["project", "create", "p", "--memory", "lots"],
        ["env", "set", "1BAD"],
        ["bulk", "delete"],
        ["init-base", "--image", "x", "--build", "debian-12"],
    ):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.strip(), args


def test_invalid_name_message_names_the_rule(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("create", "myapp", "Fix_Login")
    assert r.returncode == 2
    assert "invalid task name 'Fix_Login'" in r.stderr
    assert "lowercase letters" in r.stderr


def test_provider_needed_but_unavailable(cli) -> None:  # type: ignore[no-untyped-def]
    """A host without QEMU: commands that need VMs say so with a hint and exit 4."""
    import sys

    bare_path = str(Path(sys.executable).parent)  # the venv's bin: no qemu-system here
    # (project create: a task's provider is its project's, so `create` asks the project first)
    r = cli("project", "create", "myapp", env={"PATH": bare_path})
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith("Error: the libvirt provider cannot run on this host")
    assert "\nHint: " in r.stderr
    assert "Traceback" not in r.stderr


def test_json_errors_are_json(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("--json", "env", "rm", "NO_SUCH_VAR")
    assert r.returncode == 3
    err = json.loads(r.stderr)
    assert err["exit_code"] == r.returncode and err["error"]


def test_providers_human_and_json(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("providers")
    assert r.returncode == 0, r.stderr
    assert "libvirt (default):" in r.stdout
    for name in ("vz", "hyperv"):
        assert f"{name}: unavailable" in r.stdout
    r = cli("--json", "providers")
    data = json.loads(r.stdout)
    assert [d["provider"] for d in data] == ["libvirt", "vz", "hyperv"]
    vz = data[1]
    assert vz["available"] is False and "macOS-only" in vz["reason"]
    assert all(isinstance(c["ok"], bool) for d in data for c in d["checks"])


def test_list_on_empty_home(cli, swarm_home: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("list")
    assert r.returncode == 0, r.stderr
    assert "No task VMs" in r.stdout
    assert json.loads(cli("--json", "list").stdout) == []
    assert json.loads(cli("--json", "project", "list").stdout) == []
    # State went to AGENT_SWARM_HOME, privately.
    assert (swarm_home / "registry.db").exists()
    assert (swarm_home.stat().st_mode & 0o777) == 0o700


def test_list_shows_registered_rows(cli, swarm_home: Path) -> None:  # type: ignore[no-untyped-def]
    from agent_swarm.registry import Registry

    swarm_home.mkdir()
    with Registry(swarm_home / "registry.db") as r:
        r.add_base_image(
            "deb", path="/i.qcow2", format="qcow2", virtual_size=1 << 30, source="build:debian-12"
        )
        r.add_project(
            "myapp", base_image="deb", provider="libvirt", cpus=2, memory_mib=2048, disk_gib=10
        )
        r.add_generation("myapp", "/g1.qcow2")
        r.add_task("fix-login", project="myapp", provider="libvirt", cpus=2, memory_mib=2048)
    out = cli("list").stdout
    assert "fix-login" in out and "myapp" in out
    data = json.loads(cli("--json", "list").stdout)
    assert data[0]["name"] == "fix-login" and data[0]["generation"] == 1
    pl = json.loads(cli("--json", "project", "list").stdout)
    assert pl[0]["generation"] == 1
    # Live state comes from the provider, never the registry: no VM exists for these rows.
    assert data[0]["state"] in ("missing", "broken")


def test_corrupt_registry_is_a_user_error(cli, swarm_home: Path) -> None:  # type: ignore[no-untyped-def]
    swarm_home.mkdir()
    (swarm_home / "registry.db").write_bytes(b"garbage" * 1000)
    r = cli("list")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: the registry")
    assert "Traceback" not in r.stderr
    r = cli("--debug", "list")
    assert "Traceback" in r.stderr  # --debug shows it


def test_unwritable_home_is_a_user_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("list", env={"AGENT_SWARM_HOME": str(blocker / "home")})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: cannot create the state directory")
    assert "AGENT_SWARM_HOME" in r.stderr
