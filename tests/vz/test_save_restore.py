"""agent-swarm-vz: save/restore, watch, init and check-config, over the real socket and CLI
(portable core + fake backend; the fake refuses a state made for another configuration the
way VZ does)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vz_support import write_config

Spawn = Callable[..., Any]


def run_cli(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_init_makes_the_vm_files_once(vz_helper_bin: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "vm")
    r = run_cli(vz_helper_bin, "init", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {
        "efi_vars": str(tmp_path / "vm" / "efi.vars"),
        "machine_id": str(tmp_path / "vm" / "machine-id.bin"),
    }
    ident = Path(out["machine_id"]).read_bytes()
    assert len(ident) == 16
    # Again: the identifier is kept (a saved state is bound to it).
    assert run_cli(vz_helper_bin, "init", "--config", str(cfg)).returncode == 0
    assert Path(out["machine_id"]).read_bytes() == ident


def test_check_config(vz_helper_bin: Path, tmp_path: Path) -> None:
    ok = run_cli(vz_helper_bin, "check-config", "--config", str(write_config(tmp_path / "a")))
    assert ok.returncode == 0
    assert json.loads(ok.stdout) == {"valid": True, "save_restore": True, "reason": None}
    old = write_config(tmp_path / "b", no_save=True)
    r = run_cli(vz_helper_bin, "check-config", "--config", str(old))
    assert (r.returncode, json.loads(r.stdout)["save_restore"]) == (0, False)
    bad = write_config(tmp_path / "c", fail_check="too many CPUs")
    r = run_cli(vz_helper_bin, "check-config", "--config", str(bad))
    assert r.returncode == 1
    assert json.loads(r.stdout) == {
        "valid": False,
        "save_restore": False,
        "reason": "too many CPUs",
    }


def test_bad_config_and_usage_are_one_line_errors(vz_helper_bin: Path, tmp_path: Path) -> None:
    vm = tmp_path / "vm"
    vm.mkdir()
    cfg = vm / "vm.json"
    cfg.write_text(json.dumps({"name": "t", "dir": str(vm), "mac": "52:54:00:zz:00:01"}))
    r = run_cli(vz_helper_bin, "run", "--config", str(cfg))
    assert r.returncode == 2
    err = json.loads(r.stderr)
    assert err["error"] == "bad_config" and "mac" in err["message"]
    # --restore needs an absolute path; --paused needs --restore
    good = write_config(tmp_path / "vm2")
    assert run_cli(vz_helper_bin, "run", "--config", str(good), "--restore", "rel").returncode == 2
    assert run_cli(vz_helper_bin, "run", "--config", str(good), "--paused").returncode == 2


def test_save_then_pause_restore_resumes(
    spawn_helper: Spawn, vz_helper_bin: Path, tmp_path: Path
) -> None:
    vm = tmp_path / "vm"
    write_config(vm)
    assert run_cli(vz_helper_bin, "init", "--config", str(vm / "vm.json")).returncode == 0
    h = spawn_helper(vm)
    h.wait_state("running")
    c = h.client()
    state = tmp_path / "ckpt.state"
    reply = c.call("save", path=str(state), then="pause")
    assert reply["ok"], reply
    assert reply["result"]["state"] == "paused"
    assert h.state()["state"] == "paused"
    assert json.loads(state.read_text())["identity"]["mac"] == "52:54:00:12:34:56"
    # then=stop: the helper powers off (without asking the paused guest) and exits 0
    reply = c.call("save", path=str(state), then="stop")
    assert reply["result"] == {"state": "stopped", "forced": True}
    assert h.wait_exit() == 0

    h2 = spawn_helper(vm, args=["--restore", str(state)])
    st = h2.wait_state("running")
    assert st["last_error"] is None
    assert "restored from" in (vm / "console.log").read_text()
    h2.client().call("force_stop")
    assert h2.wait_exit() == 0

    h3 = spawn_helper(vm, args=["--restore", str(state), "--paused"])
    h3.wait_state("paused")
    assert h3.client().call("resume")["result"]["state"] == "running"


def test_save_of_a_running_vm_resumes_it_by_default(spawn_helper: Spawn, tmp_path: Path) -> None:
    h = spawn_helper()
    h.wait_state("running")
    w = h.client()
    assert w.call("watch")["result"]["state"] == "running"
    reply = h.client().call("save", path=str(tmp_path / "s"))
    assert reply["result"]["state"] == "running"
    events = [w.read_line() for _ in range(5)]
    assert [e["state"] for e in events] == ["pausing", "paused", "saving", "paused", "resuming"]
    assert all(e["event"] == "state" and "id" not in e for e in events)
    assert w.read_line()["state"] == "running"


def test_restore_refuses_another_configuration(
    spawn_helper: Spawn, vz_helper_bin: Path, tmp_path: Path
) -> None:
    a = tmp_path / "a"
    write_config(a)
    run_cli(vz_helper_bin, "init", "--config", str(a / "vm.json"))
    h = spawn_helper(a)
    h.wait_state("running")
    state = tmp_path / "a.state"
    assert h.client().call("save", path=str(state), then="stop")["ok"]
    h.wait_exit()
    # Another VM (its own machine identifier) cannot take this state: VZ's rule.
    b = tmp_path / "b"
    write_config(b)
    run_cli(vz_helper_bin, "init", "--config", str(b / "vm.json"))
    h2 = spawn_helper(b, args=["--restore", str(state)], wait=False)
    assert h2.wait_exit() == 3
    st = json.loads((b / "state.json").read_text())
    assert st["state"] == "error"
    assert "machine_id differs" in st["last_error"]


def test_save_unsupported_and_bad_requests(spawn_helper: Spawn, tmp_path: Path) -> None:
    h = spawn_helper(no_save=True)
    h.wait_state("running")
    c = h.client()
    reply = c.call("save", path=str(tmp_path / "s"))
    assert reply["error"]["code"] == "unsupported"
    assert "macOS 14" in reply["error"]["message"]
    assert h.state()["state"] == "running"  # resumed after the failed save
    assert c.call("save", path="relative")["error"]["code"] == "bad_request"
    assert (
        c.call("save", path=str(tmp_path / "s"), then="explode")["error"]["code"] == "bad_request"
    )
    assert not (tmp_path / "s").exists()
