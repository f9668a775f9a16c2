"""agent-swarm-vz (portable core + fake backend) driven over its real Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The fixture returns conftest.Helper; typed loosely to avoid importing conftest.
Spawn = Callable[..., Any]


def test_start_hello_status_console(spawn_helper: Spawn, tmp_path: Path) -> None:
    h = spawn_helper(boot_ms=100)
    assert h.socket_path == str(tmp_path / "vm" / "vz.sock")
    assert stat.S_IMODE(os.stat(h.socket_path).st_mode) == 0o600
    c = h.client()
    hello = c.call("hello")
    assert hello["ok"] is True
    assert hello["result"]["protocol"] == 1
    assert hello["result"]["backend"] == "fake"
    h.wait_state("running")
    st = c.call("status")["result"]
    assert st["state"] == "running"
    assert st["pid"] == h.proc.pid
    assert st["mac"] == "52:54:00:12:34:56"
    assert st["last_error"] is None
    on_disk = h.state()
    assert {"state", "pid", "socket", "mac", "since", "last_error"} <= on_disk.keys()
    assert on_disk["pid"] == h.proc.pid
    assert (h.dir / "vz.lock").read_text().strip() == str(h.proc.pid)
    console = c.call("console")["result"]["path"]
    assert console == str(h.dir / "console.log")
    assert "booting" in Path(console).read_text()
    assert c.call("address")["error"]["code"] == "not_yet"


def test_address_from_fake_config(spawn_helper: Spawn) -> None:
    h = spawn_helper(address="127.0.0.1:2222")
    assert h.client().call("address")["result"]["address"] == "127.0.0.1:2222"


def test_starting_state_refuses_pause(spawn_helper: Spawn) -> None:
    h = spawn_helper(boot_ms=2000)
    reply = h.client().call("pause")
    assert reply["error"]["code"] == "bad_state"
    assert h.state()["state"] == "starting"


def test_two_clients_at_once(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    h.wait_state("running")
    a, b = h.client(), h.client()
    # interleave: both have requests in flight before either reads
    a.send_raw(b'{"id": 7, "cmd": "status"}\n')
    b.send_raw(b'{"id": "b-1", "cmd": "hello"}\n')
    a.send_raw(b'{"id": 8, "cmd": "hello"}\n')
    assert b.read_line()["id"] == "b-1"
    ra1, ra2 = a.read_line(), a.read_line()
    assert (ra1["id"], ra2["id"]) == (7, 8)
    assert ra1["result"]["state"] == "running"
    assert ra2["result"]["backend"] == "fake"


def test_bad_json_then_valid_request_same_connection(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    c = h.client()
    for bad in (b"{not json\n", b'{"id": 1, "cmd": "status"} trailing\n', b"[1,2]\n"):
        c.send_raw(bad)
        reply = c.read_line()
        assert reply["ok"] is False
        assert reply["id"] is None
        assert reply["error"]["code"] == "bad_request"
    reply = c.call("hello")
    assert reply["ok"] is True
    # too deep to parse: refused, not a crash
    c.send_raw(b"[" * 1000 + b"]" * 1000 + b"\n")
    assert c.read_line()["error"]["code"] == "bad_request"
    # numbers are echoed as sent
    for rid in (1.5, -3, 2**53 - 1, 1e-7):
        c.send_raw(json.dumps({"id": rid, "cmd": "hello"}).encode() + b"\n")
        assert c.read_line()["id"] == rid
    assert c.call("status")["ok"] is True


def test_json_escapes_round_trip(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    c = h.client()
    c.send_raw(b'{"id": "\\u00e9\\u00E9\\ud83d\\ude00\\"\\\\\\n\\t", "cmd": "hello"}\n')
    reply = c.read_line()
    assert reply["ok"] is True
    assert reply["id"] == 'éé\U0001f600"\\\n\t'
    c.send_raw(b'{"id": 1, "cmd": "hello", "x": "\\ud800"}\n')  # lone surrogate
    assert c.read_line()["error"]["code"] == "bad_request"


def test_unknown_command(spawn_helper: Spawn) -> None:
    c = spawn_helper().client()
    reply = c.call("frobnicate")
    assert reply["ok"] is False
    assert reply["error"]["code"] == "unknown_command"
    c.send_raw(b'{"id": 3}\n')  # no "cmd"
    reply2 = c.read_line()
    assert reply2["id"] == 3
    assert reply2["error"]["code"] == "bad_request"


def test_pause_resume_and_bad_state(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    h.wait_state("running")
    c = h.client()
    assert c.call("resume")["error"]["code"] == "bad_state"
    assert c.call("pause")["result"]["state"] == "paused"
    assert h.state()["state"] == "paused"
    assert c.call("pause")["error"]["code"] == "bad_state"
    assert c.call("resume")["result"]["state"] == "running"
    assert h.state()["state"] == "running"


def test_stop_graceful(spawn_helper: Spawn) -> None:
    h = spawn_helper(stop_ms=50)
    h.wait_state("running")
    reply = h.client().call("stop", timeout=5)
    assert reply["result"] == {"state": "stopped", "forced": False}
    assert h.wait_exit() == 0
    assert h.state()["state"] == "stopped"
    assert not Path(h.socket_path).exists()


def test_stop_ignored_is_forced_after_timeout(spawn_helper: Spawn) -> None:
    h = spawn_helper(ignore_request_stop=True)
    h.wait_state("running")
    c = h.client()
    timeout = 0.6
    t0 = time.monotonic()
    reply = c.call("stop", timeout=timeout)
    took = time.monotonic() - t0
    assert reply["ok"] is True, reply
    assert reply["result"] == {"state": "stopped", "forced": True}
    assert took >= timeout, took
    assert took < timeout + 3, took
    assert h.wait_exit() == 0
    assert h.state()["state"] == "stopped"


def test_stop_while_paused_forces(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    h.wait_state("running")
    c = h.client()
    c.call("pause")
    assert c.call("stop", timeout=30)["result"]["forced"] is True
    assert h.wait_exit() == 0


def test_force_stop(spawn_helper: Spawn) -> None:
    h = spawn_helper(ignore_request_stop=True)
    h.wait_state("running")
    c, other = h.client(), h.client()
    stop_id = other.send("stop", timeout=60)  # pending; force_stop must complete it too
    time.sleep(0.1)
    assert h.state()["state"] == "stopping"
    reply = c.call("force_stop")
    assert reply["result"] == {"state": "stopped", "forced": True}
    joined = other.read_line()
    assert joined["id"] == stop_id
    assert joined["result"]["state"] == "stopped"
    assert h.wait_exit() == 0
    assert h.state()["state"] == "stopped"
    assert not Path(h.socket_path).exists()


def test_backend_crash_exits_3(spawn_helper: Spawn) -> None:
    h = spawn_helper(crash_after_ms=300)
    h.wait_state("running")
    assert h.wait_exit() == 3
    st = h.state()
    assert st["state"] == "error"
    assert "simulated crash" in st["last_error"]
    assert not Path(h.socket_path).exists()


def test_crash_fails_pending_stop(spawn_helper: Spawn) -> None:
    h = spawn_helper(crash_after_ms=400, ignore_request_stop=True)
    h.wait_state("running")
    reply = h.client().call("stop", timeout=30)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "backend"
    assert h.wait_exit() == 3


def test_second_helper_refused(spawn_helper: Spawn, vz_helper_bin: Path) -> None:
    h = spawn_helper()
    proc = subprocess.run(
        [str(vz_helper_bin), "run", "--config", str(h.dir / "vm.json")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert proc.returncode == 75, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {
        "error": "already_running",
        "pid": h.proc.pid,
    }
    # the first one is untouched and still serving
    assert Path(h.socket_path).exists()
    assert h.client().call("hello")["ok"] is True


def test_stale_socket_removed_under_lock(spawn_helper: Spawn, tmp_path: Path) -> None:
    vm = tmp_path / "vm"
    vm.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(vm / "vz.sock"))
    stale.close()  # leaves a dead socket file behind
    h = spawn_helper(vm_dir=vm)
    assert h.client().call("hello")["ok"] is True


def test_long_socket_path_falls_back_to_tmpdir(spawn_helper: Spawn, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    short_tmp = tmp_path / "t"
    short_tmp.mkdir()
    h = spawn_helper(vm_dir=deep, env={"TMPDIR": str(short_tmp)})
    assert len(str(deep / "vz.sock")) > 100
    sock = Path(h.socket_path)
    assert sock.parent == short_tmp
    assert sock.name.startswith("asvz-") and sock.name.endswith(".sock")
    assert len(sock.name) == len("asvz-") + 16 + len(".sock")
    assert not (deep / "vz.sock").exists()
    assert h.client().call("hello")["ok"] is True
    h.wait_state("running")
    assert h.client().call("force_stop")["ok"] is True
    assert h.wait_exit() == 0
    assert not sock.exists()


def test_overlong_line_closes_only_that_client(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    good, bad = h.client(), h.client()
    bad.send_raw(b'{"id": 1, "cmd": "hello", "pad": "' + b"x" * (70 * 1024))
    with pytest.raises((ConnectionError, OSError)):
        bad.read_line()
    assert good.call("status")["ok"] is True
    assert h.client().call("hello")["ok"] is True
    # a line just under the limit is fine
    ok = h.client()
    ok.send_raw(b'{"id": 2, "cmd": "hello", "pad": "' + b"x" * (60 * 1024) + b'"}\n')
    assert ok.read_line()["ok"] is True


def test_sigterm_force_stops(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    h.wait_state("running")
    h.proc.terminate()
    assert h.wait_exit() == 0
    assert h.state()["state"] == "stopped"


def test_a_late_reply_never_reaches_the_next_client_on_the_same_fd(
    spawn_helper: Spawn, tmp_path: Path
) -> None:
    """A client that leaves while its save runs: the save's reply must not go to the next
    client, which gets the same descriptor number (and, like the provider's one-request
    connections, the same request id)."""
    h = spawn_helper(save_ms=800)
    h.wait_state("running")
    a = h.client()
    a.send("save", path=str(tmp_path / "state"), then="pause")  # id 1
    time.sleep(0.1)
    a.close()
    time.sleep(0.2)  # the helper has seen the close
    b = h.client()  # accept() hands out the lowest free descriptor: a's
    assert b.call("status")["ok"] is True  # id 1 too
    h.wait_state("paused")
    b.sock.settimeout(1.5)
    with pytest.raises(TimeoutError):
        stray = b.read_line()
        raise AssertionError(f"got another client's reply: {stray}")


def test_a_guest_power_off_during_a_pause_is_not_lost(spawn_helper: Spawn) -> None:
    """The guest powers off while a pause is in flight: the helper must not sit in
    "paused"/"running" for ever with a VM that is gone."""
    h = spawn_helper(pause_ms=400, poweroff_after_ms=300, boot_ms=100)
    h.wait_state("running")
    c = h.client()
    c.send("pause")
    assert h.wait_exit(timeout=5) == 0
    assert h.state()["state"] == "stopped"


def test_a_helper_that_exits_leaves_no_pid_in_its_lock(spawn_helper: Spawn) -> None:
    h = spawn_helper()
    h.wait_state("running")
    assert (h.dir / "vz.lock").read_text().strip() == str(h.proc.pid)
    assert h.client().call("force_stop")["ok"] is True
    assert h.wait_exit() == 0
    assert (h.dir / "vz.lock").read_text() == ""
