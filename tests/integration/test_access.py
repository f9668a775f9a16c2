"""Access to a real guest: run (streaming, stdin, exit codes), cp, the generated ssh_config,
pinned host keys. One project VM serves the whole module."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_support import Swarm, agent_swarm_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def vm(swarm: Swarm) -> Iterator[str]:
    swarm("init-base", "--build", "debian-12", timeout=1200)
    swarm("project", "create", "acc", "--memory", "768M", "--cpus", "1")
    yield "acc"
    swarm("project", "delete", "acc", check=False)


def test_run_streams_output_stdin_and_exit_codes(swarm: Swarm, vm: str) -> None:
    for code in (0, 1, 42):
        r = swarm("project", "run", vm, f"echo out; echo err >&2; exit {code}", check=False)
        assert r.returncode == code
        assert r.stdout == "out\n" and r.stderr.endswith("err\n")
    r = swarm("project", "run", vm, "--", "wc", "-c", input="x" * 100_000)
    assert r.stdout.strip() == "100000"
    # Arguments keep their boundaries (shell-quoted for the guest).
    r = swarm("project", "run", vm, "--", "printf", "%s|", "a b", "c'd", "$HOME")
    assert r.stdout == "a b|c'd|$HOME|"


def test_run_in_a_stopped_or_unknown_vm(swarm: Swarm, vm: str) -> None:
    r = swarm("run", "nope", "true", check=False)
    assert r.returncode == 3 and "no task named 'nope'" in r.stderr


def test_cp_round_trip_directory(swarm: Swarm, vm: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o750)
    swarm("cp", "-r", str(src), f"{vm}:/home/worker/")
    assert swarm.run(vm, "sh ~/src/run.sh; stat -c %a ~/src/run.sh", project=True).split() == [
        "hi",
        "750",
    ]
    back = tmp_path / "back"
    back.mkdir()
    swarm("cp", "-r", f"{vm}:/home/worker/src", str(back))

    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digest(back / "src") == digest(src)
    assert ((back / "src" / "run.sh").stat().st_mode & 0o777) == 0o750
    # Single file, and no temp files left on either side.
    swarm("cp", str(src / "a.txt"), f"{vm}:/tmp/a.txt")
    assert swarm.run(
        vm, "cat /tmp/a.txt; ls -a /tmp | grep -c agent-swarm || true", project=True
    ).split() == ["alpha", "0"]
    assert not [p for p in back.rglob("*") if "agent-swarm" in p.name]


def test_cp_errors(swarm: Swarm, vm: str, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    r = swarm("cp", str(f), f"{vm}:/no/such/dir/f.txt", check=False)
    assert r.returncode == 1 and "/no/such/dir does not exist in the VM" in r.stderr
    assert "Traceback" not in r.stderr
    r = swarm("cp", str(tmp_path), f"{vm}:/tmp/", check=False)
    assert r.returncode == 2 and "use -r" in r.stderr
    r = swarm("cp", f"{vm}:/etc/nope", str(tmp_path), check=False)
    assert r.returncode == 1 and "no such file in the VM" in r.stderr
    r = swarm("cp", str(f), str(tmp_path / "g"), check=False)
    assert r.returncode == 2


def test_plain_ssh_on_the_generated_config(swarm: Swarm, vm: str) -> None:
    printed = swarm("ssh-config").stdout
    cfg = swarm.home / "ssh_config"
    text = cfg.read_text()
    assert printed.strip() == text.strip()
    assert "Host acc.project.agent-swarm" in text and "StrictHostKeyChecking yes" in text
    r = subprocess.run(
        ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", f"{vm}.project.agent-swarm", "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == vm


def test_ssh_config_install_is_idempotent_and_reversible(
    swarm: Swarm, vm: str, tmp_path: Path
) -> None:
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host example\n  User me\n")
    env = {"HOME": str(home)}
    swarm("ssh-config", "--install", env=env)
    swarm("ssh-config", "--install", env=env)
    text = (home / ".ssh" / "config").read_text()
    assert text.count(f'Include "{swarm.home / "ssh_config"}"') == 1
    assert text.index("Include") < text.index("Host example")
    swarm("ssh-config", "--uninstall", env=env)
    assert (home / ".ssh" / "config").read_text() == "Host example\n  User me\n"


def test_a_changed_host_key_is_refused(swarm: Swarm, vm: str) -> None:
    from agent_swarm.ssh.keys import generate_ed25519

    db = swarm.home / "registry.db"
    con = sqlite3.connect(db)
    (real,) = con.execute("SELECT host_key FROM projects WHERE name = ?", (vm,)).fetchone()
    con.execute(
        "UPDATE projects SET host_key = ? WHERE name = ?",
        (generate_ed25519("impostor").public_openssh, vm),
    )
    con.commit()
    try:
        r = swarm("project", "run", vm, "true", check=False)
        assert r.returncode == 1
        assert "does not match the key pinned for this VM" in r.stderr
        assert "Traceback" not in r.stderr
        swarm("ssh-config")  # regenerates known_hosts from the (wrong) pin
        r = subprocess.run(
            [
                "ssh",
                "-F",
                str(swarm.home / "ssh_config"),
                "-o",
                "BatchMode=yes",
                f"{vm}.project.agent-swarm",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 255 and "host key" in r.stderr.lower()
    finally:
        con.execute("UPDATE projects SET host_key = ? WHERE name = ?", (real, vm))
        con.commit()
        con.close()
        swarm("ssh-config")
    assert swarm.run(vm, "echo ok", project=True).strip() == "ok"


GUEST_SCAN = (
    "python3 -c 'import glob,sys\n"
    "v=bytes.fromhex(sys.argv[1]); n=0\n"
    'for p in glob.glob("/proc/[0-9]*/cmdline"):\n'
    '    try: n += v in open(p,"rb").read()\n'
    "    except OSError: pass\n"
    "print(n)' "
)


def _host_cmdlines_with(value: bytes) -> int:
    n = 0
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            n += value in p.read_bytes()
    return n


def test_env_vars_reach_the_command_but_no_command_line(
    swarm: Swarm, vm: str, tmp_path: Path
) -> None:
    import sys
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from keystore_support import start_keystore

    ks = start_keystore(tmp_path / "keystore")
    try:
        bus = {"DBUS_SESSION_BUS_ADDRESS": ks.env["DBUS_SESSION_BUS_ADDRESS"]}
        secret = f"s3cr3t-{uuid.uuid4().hex}"
        swarm("env", "set", "AS_TOKEN", input=secret + "\n", env=bus)  # stdin: not in argv
        swarm("env", "set", "AS_QUOTED", "--project", vm, input='it\'s "quoted"\n', env=bus)
        proc = subprocess.Popen(
            [
                *agent_swarm_cmd(),
                "project",
                "run",
                vm,
                'echo "$AS_TOKEN|$AS_QUOTED"; ls /dev/shm | grep -c agent-swarm-env; sleep 8',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGENT_SWARM_HOME": str(swarm.home), **bus},
        )
        try:
            import time

            time.sleep(4)  # the command is running in the guest now
            assert _host_cmdlines_with(secret.encode()) == 0
            guest = swarm("project", "run", vm, GUEST_SCAN + secret.encode().hex(), env=bus).stdout
            assert guest.strip() == "0"
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        lines = out.splitlines()
        assert lines[0] == f'{secret}|it\'s "quoted"'
        assert lines[1] == "0"  # the env file was removed before the command ran
        # Without access to the keystore, the VM's variables cannot be injected: a clear error.
        r = swarm(
            "project",
            "run",
            vm,
            "true",
            check=False,
            env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"},
        )
        assert r.returncode != 0 and "keystore" in r.stderr and "Traceback" not in r.stderr
        swarm("env", "rm", "AS_TOKEN", env=bus)
        swarm("env", "rm", "AS_QUOTED", "--project", vm, env=bus)
    finally:
        ks.stop()


def test_code_in_the_guest_opens_the_hosts_vscode(swarm: Swarm, vm: str, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    fake = bindir / "code"  # stands in for VS Code's CLI; records how it was called
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\n')
    fake.chmod(0o755)
    path_env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    r = swarm(
        "project",
        "ssh",
        vm,
        "--",
        "mkdir -p '/home/worker/my proj' && cd '/home/worker/my proj' && code . /etc/hostname",
        env=path_env,
        input="",
    )
    alias = f"{vm}.project.agent-swarm"
    assert record.read_text().splitlines() == [
        "--folder-uri",
        f"vscode-remote://ssh-remote+{alias}/home/worker/my%20proj",
        "--file-uri",
        f"vscode-remote://ssh-remote+{alias}/etc/hostname",
    ], r.stderr
    # A second session binds the guest socket again (the first one left it behind).
    swarm("project", "ssh", vm, "--", "code /tmp", env=path_env, input="")
    assert record.read_text().splitlines()[-1] == f"vscode-remote://ssh-remote+{alias}/tmp"
    # Outside an `agent-swarm ssh` session the guest command says what to do.
    r = swarm("project", "run", vm, "code /tmp", check=False)
    assert r.returncode == 1 and "agent-swarm ssh" in r.stderr
