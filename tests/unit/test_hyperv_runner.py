"""The Hyper-V provider's PowerShell runner: what it passes (checked values only), what it
reads (one framed answer, tolerated noise, refused garbage) and how it runs a process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from agent_swarm.errors import ProviderError, ProviderUnavailable
from agent_swarm.providers.hyperv import runner as rn
from agent_swarm.providers.hyperv.runner import FRAME_END, FRAME_START, Completed, PowerShell

SCRIPT = rn.SCRIPTS_DIR / "status.ps1"
ABS = PureWindowsPath("C:/Users/me/.agent-swarm") if os.name == "nt" else PurePosixPath("/abs")


def frame(doc: object) -> str:
    return f"{FRAME_START}\n{json.dumps(doc)}\n{FRAME_END}\n"


# ---- arguments ----


def test_argv_is_flags_file_and_parameters() -> None:
    argv = rn.build_argv(
        "powershell.exe",
        SCRIPT,
        {"Name": "agent-swarm-abcdef-task-t1", "Cpus": 2, "Force": True, "Pause": False,
         "Disk": ABS / "my disks" / "d.vhdx"},
    )  # fmt: skip
    assert argv == [
        "powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass",
        "-File", str(SCRIPT), "-Name", "agent-swarm-abcdef-task-t1", "-Cpus", "2", "-Force",
        "-Disk", str(ABS / "my disks" / "d.vhdx"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"Name": "-Command"}, "may not start with '-'"),
        ({"Name": "\u2013Command"}, "may not start with"),  # PowerShell takes an en dash too
        ({"Name": "a\nb"}, "may not contain"),
        ({"Name": "a\x00b"}, "may not contain"),
        ({"Name": 'a"b'}, "may not contain"),
        ({"Name": ""}, "empty value"),
        ({"Name": "x" * 5000}, "longer than"),
        ({"Disk": PurePosixPath("relative/d.vhdx")}, "not an absolute path"),
        ({"Cpus": -1}, "not an integer"),
        ({"Cpus": 2**31}, "not an integer"),
        ({"name": "x"}, "invalid PowerShell parameter name"),
        ({"Na me": "x"}, "invalid PowerShell parameter name"),
    ],
)
def test_values_that_could_be_read_otherwise_are_refused(
    params: dict[str, rn.ParamValue], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        rn.build_argv("powershell.exe", SCRIPT, params)


def test_other_types_are_refused() -> None:
    with pytest.raises(TypeError):
        rn.build_argv("powershell.exe", SCRIPT, {"Cpus": 1.5})  # type: ignore[dict-item]


# ---- answers ----


def test_the_answer_is_found_among_noise() -> None:
    out = (
        "\ufeffWARNING: something the host says\r\n"
        f"  {FRAME_START}  \r\n"
        '{"ok": true, "result": {"state": "Running", "name": "caf\\u00e9"}}\r\n'
        f"{FRAME_END}\r\n"
        "trailing words\r\n"
    ).encode()
    assert rn.parse_answer(out) == {"ok": True, "result": {"state": "Running", "name": "café"}}
    assert rn.parse_answer(b"no frame here") is None


@pytest.mark.parametrize(
    ("out", "error"),
    [
        (frame({"ok": True, "result": 1}) * 2, "2 frame starts"),
        (f"{FRAME_END}\n{{}}\n{FRAME_START}\n", "frame"),
        (f"{FRAME_START}\n{FRAME_END}\n", "frame"),
        (f"{FRAME_START}\n{{\n", "0 frame ends"),
        (f"{FRAME_START}\n{{not json\n{FRAME_END}\n", "invalid JSON"),
        (frame([1, 2]), "not an object"),
        (frame({"result": 1}), "boolean 'ok'"),
        (frame({"ok": True}), "without a 'result'"),
        (frame({"ok": False, "error": "x"}), "without an 'error' object"),
    ],
)
def test_malformed_answers(out: str, error: str) -> None:
    with pytest.raises(rn.AnswerError, match=error):
        rn.parse_answer(out.encode())


def test_oversized_output_and_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(rn.AnswerError, match="bytes of output"):
        rn.parse_answer(b"x" * (rn.MAX_OUTPUT + 1))
    monkeypatch.setattr(rn, "MAX_DOCUMENT", 100)
    with pytest.raises(rn.AnswerError, match="answer \\(at most 100\\)"):
        rn.parse_answer(frame({"ok": True, "result": "y" * 200}).encode())


def test_run_errors(tmp_path: Path) -> None:
    def answer(rc: int, out: str, err: str = "") -> PowerShell:
        return PowerShell("pwsh", execute=lambda argv, t: Completed(rc, out.encode(), err.encode()))

    ok = answer(0, frame({"ok": True, "result": {"found": False}}))
    assert ok.run("status.ps1", {"Name": "x"}, timeout=5, what="look up x") == {"found": False}
    with pytest.raises(ProviderError, match="invalid script name"):
        ok.run("../evil.ps1", {}, timeout=5, what="x")
    with pytest.raises(ProviderError, match="missing") as exc:
        PowerShell("pwsh", execute=ok.execute, scripts=tmp_path).run(
            "status.ps1", {"Name": "x"}, timeout=5, what="x"
        )
    assert exc.value.hint == "reinstall agent-swarm"
    with pytest.raises(ProviderError, match="exited with status 3"):
        answer(3, frame({"ok": True, "result": {}})).run("status.ps1", {}, timeout=5, what="x")
    stderr = (
        "#< CLIXML\r\n"
        "C:\\x\\status.ps1 : Cannot process command because of one or more missing "
        "mandatory parameters: Name.\r\n+ CategoryInfo : InvalidArgument\r\n"
    )
    with pytest.raises(ProviderError, match="missing mandatory parameters: Name"):
        answer(1, "", stderr).run("status.ps1", {}, timeout=5, what="look up x")

    def gone(argv: object, t: float) -> Completed:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ProviderUnavailable, match="cannot run pwsh: No such file"):
        PowerShell("pwsh", execute=gone).run("status.ps1", {"Name": "x"}, timeout=5, what="x")
    with pytest.raises(ProviderError, match="cannot be passed to PowerShell safely"):
        ok.run("status.ps1", {"Name": "-x"}, timeout=5, what="x")


# ---- finding and running PowerShell ----


def test_find_powershell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(rn.POWERSHELL_ENV, "relative/pwsh")
    with pytest.raises(ProviderUnavailable, match="not an absolute path"):
        rn.find_powershell()
    exe = tmp_path / "pwsh.exe"
    exe.write_text("")
    monkeypatch.setenv(rn.POWERSHELL_ENV, str(exe))
    assert rn.find_powershell() == str(exe)
    if sys.platform != "win32":
        monkeypatch.delenv(rn.POWERSHELL_ENV)
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(ProviderUnavailable, match="PowerShell was not found") as exc:
            rn.find_powershell()
        assert "winget install Microsoft.PowerShell" in (exc.value.hint or "")


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX stand-in for powershell.exe")
def test_a_real_process_gets_every_argument_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real process path (subprocess, no shell): a stand-in "powershell.exe" answers with
    the arguments it received and whether it saw PSModulePath (Windows PowerShell must not
    inherit PowerShell 7's)."""
    exe = tmp_path / "bin dir" / "powershell.exe"
    exe.parent.mkdir()
    exe.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"print('noise'); print({FRAME_START!r})\n"
        "print(json.dumps({'ok': True, 'result': {'argv': sys.argv[1:],"
        " 'psmodulepath': 'PSModulePath' in os.environ}}))\n"
        f"print({FRAME_END!r})\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PSModulePath", "C:\\pwsh7\\Modules")
    disk = tmp_path / "dir with spaces; and $(dollar) 'quotes' é" / "d.vhdx"
    res = PowerShell(str(exe)).run(
        "status.ps1", {"Name": "agent-swarm-abcdef-task-t1", "Disk": disk}, timeout=30, what="x"
    )
    assert res["argv"] == [
        *rn.FLAGS, "-File", str(rn.SCRIPTS_DIR / "status.ps1"),
        "-Name", "agent-swarm-abcdef-task-t1", "-Disk", str(disk),
    ]  # fmt: skip
    assert res["psmodulepath"] is False


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX stand-in for powershell.exe")
def test_a_process_that_hangs_is_killed(tmp_path: Path) -> None:
    from agent_swarm.errors import Timeout

    exe = tmp_path / "pwsh"
    exe.write_text("#!/bin/sh\nexec sleep 30\n")
    exe.chmod(0o755)
    with pytest.raises(subprocess.TimeoutExpired):
        rn._execute([str(exe)], 0.3)
    with pytest.raises(Timeout, match="did not look up x within 0 s"):
        PowerShell(str(exe)).run("status.ps1", {"Name": "x"}, timeout=0.3, what="look up x")
