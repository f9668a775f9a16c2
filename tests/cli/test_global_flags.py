from __future__ import annotations

import json

from agent_swarm.cli import _hoist_global_flags as hoist


def test_global_flags_are_accepted_after_the_command() -> None:
    assert hoist(["list", "--json"]) == ["--json", "list"]
    assert hoist(["project", "list", "--json", "--debug"]) == [
        "--json",
        "--debug",
        "project",
        "list",
    ]
    assert hoist(["bulk", "create", "p", "a", "--json", "--", "--json"]) == [
        "--json",
        "bulk",
        "create",
        "p",
        "a",
        "--",
        "--json",
    ]


def test_a_guest_command_keeps_its_flags() -> None:
    assert hoist(["run", "t", "jq", "--json"]) == ["run", "t", "jq", "--json"]
    assert hoist(["project", "ssh", "p", "x", "--json"]) == ["project", "ssh", "p", "x", "--json"]
    assert hoist(["--json", "run", "t", "x"]) == ["--json", "run", "t", "x"]


def test_list_json_after_the_command(cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
