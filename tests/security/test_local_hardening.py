"""Local hardening: the client key pair, the registry's failure modes, the generated OpenSSH
config (quoting, token escaping, symlinked ~/.ssh/config) and agent forwarding off by default.

The OpenSSH checks run the real client (`ssh -G` and `ssh -v` against a loopback listener), so
they assert what ssh actually does with the generated text, not what the text looks like.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization

from agent_swarm.errors import ConfigError, RegistryError
from agent_swarm.registry import SCHEMA_VERSION, Registry
from agent_swarm.ssh import config, keys

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

Cli = Callable[..., subprocess.CompletedProcess[str]]
needs_ssh = pytest.mark.skipif(not shutil.which("ssh"), reason="needs the OpenSSH client")


def _public_of(private_key: Path) -> str:
    """``ssh-ed25519 AAAA…`` derived from an OpenSSH private key file."""
    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _blob(line: str) -> str:
    return " ".join(line.split()[:2])


def _error_lines(stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert lines and lines[0].startswith("Error: "), stderr
    assert all(ln.startswith(("Error: ", "Hint: ")) for ln in lines), stderr
    return lines


# ---- 1. the client key pair --------------------------------------------------------------


def _race_child(home: str, barrier: Barrier, out: object) -> None:
    os.environ["AGENT_SWARM_HOME"] = home
    barrier.wait()
    keys.client_key_path()
    out.put(keys.client_public_key())  # type: ignore[attr-defined]


def test_first_client_key_is_one_consistent_pair(tmp_path: Path) -> None:
    """4 processes create the key at once, 20 times: one pair wins, everyone reads that pair."""
    ctx = multiprocessing.get_context("fork")
    n = 4
    for run in range(20):
        home = tmp_path / f"home{run}"
        barrier, out = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_race_child, args=(str(home), barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        seen = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        priv = home / "keys" / "id_ed25519"
        pub = home / "keys" / "id_ed25519.pub"
        derived = _public_of(priv)
        assert _blob(pub.read_text()) == derived, f"run {run}: .pub does not match the key"
        assert {_blob(s) for s in seen} == {derived}, f"run {run}: a reader saw another pair"
        assert (priv.stat().st_mode & 0o777, pub.stat().st_mode & 0o777) == (0o600, 0o644)


def test_mismatched_pair_is_repaired_from_the_private_key(swarm_home: Path) -> None:
    """A pair left mismatched by an older agent-swarm: the private key is the truth."""
    priv = keys.client_key_path()
    keep = priv.read_bytes()
    (priv.parent / "id_ed25519.pub").write_text(keys.generate_ed25519("x").public_openssh + "\n")
    assert keys.client_key_path() == priv
    assert priv.read_bytes() == keep
    assert _blob(keys.client_public_key()) == _public_of(priv)
    assert keys.client_public_key().endswith(" agent-swarm")


# ---- 2. the registry ---------------------------------------------------------------------


def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a tmpfs / chowns files)")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    _root_only()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(fs: Path) -> Path:
    """Fill the filesystem to the last byte; returns the filler file."""
    filler = fs / "filler"
    with open(filler, "ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def _old_registry(path: Path, version: int) -> None:
    """A registry as an older agent-swarm left it (schema ``version``, WAL mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    migrations = resources.files("agent_swarm.registry.migrations").iterdir()
    mig = sorted((e for e in migrations if e.name.endswith(".sql")), key=lambda e: e.name)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for e in mig[:version]:
        con.executescript(e.read_text(encoding="utf-8"))
    con.execute(f"PRAGMA user_version = {version}")
    con.execute(
        "INSERT INTO base_images (name, path, format, virtual_size, source) "
        "VALUES ('deb', '/i.qcow2', 'qcow2', 1073741824, 'build:debian-12')"
    )
    con.close()
    os.chmod(path, 0o600)


def _integrity(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def _says_full(lines: list[str], mount: Path) -> None:
    text = "\n".join(lines)
    assert "full" in lines[0] or "space" in lines[0], text
    assert "unreadable" not in text and "move it away" not in text, text
    assert any(ln.startswith("Hint: ") and "free some space" in ln for ln in lines), text
    assert str(mount) in text, text


@pytest.mark.root
def test_full_disk_is_reported_as_full_not_corrupt(cli: Cli, small_fs: Path) -> None:
    fresh, old = small_fs / "fresh", small_fs / "old"
    fresh.mkdir(mode=0o700)
    _old_registry(old / "registry.db", SCHEMA_VERSION - 1)  # needs a migration
    before = (old / "registry.db").read_bytes()
    filler = _fill(small_fs)

    r = cli("list", env={"AGENT_SWARM_HOME": str(fresh)})
    assert r.returncode == 1, r.stderr
    _says_full(_error_lines(r.stderr), small_fs)
    assert sorted(p.name for p in fresh.iterdir() if not p.name.startswith(".")) == []

    r = cli("list", env={"AGENT_SWARM_HOME": str(old)})
    assert r.returncode == 1, r.stderr
    _says_full(_error_lines(r.stderr), small_fs)
    assert (old / "registry.db").read_bytes() == before

    filler.unlink()  # the registry was fine all along
    assert _integrity(old / "registry.db") == "ok"
    r = cli("--json", "list", env={"AGENT_SWARM_HOME": str(old)})
    assert r.returncode == 0, r.stderr
    with Registry(old / "registry.db") as reg:
        assert reg.schema_version == SCHEMA_VERSION
        assert [b.name for b in reg.list_base_images()] == ["deb"]


@pytest.mark.root
def test_full_disk_on_a_write_is_reported_as_full(small_fs: Path) -> None:
    db = small_fs / "cur" / "registry.db"
    Registry(db).close()
    filler = _fill(small_fs)
    # Opening may already need space (the -shm file); if not, the writes do.
    with pytest.raises(RegistryError) as ei, Registry(db) as reg:
        for i in range(200):
            reg.add_base_image(
                f"img{i}", path="/x" * 500, format="raw", virtual_size=1, source="x" * 500
            )
    assert "full" in ei.value.message and "free some space" in (ei.value.hint or "")
    filler.unlink()
    assert _integrity(db) == "ok"


@pytest.mark.root
def test_registry_of_another_user_is_refused_clearly(cli: Cli, swarm_home: Path) -> None:
    _root_only()
    Registry(swarm_home / "registry.db").close()
    for p in [swarm_home, *swarm_home.rglob("*")]:
        os.chown(p, 4242, 4242)
    before = {p.name: p.stat() for p in swarm_home.iterdir()}
    r = cli("list")
    assert r.returncode not in (0, 70), r.stderr
    lines = _error_lines(r.stderr)
    assert "owned by uid 4242" in lines[0] and "you are uid 0" in lines[0], lines
    assert len(lines) == 2 and "AGENT_SWARM_HOME" in lines[1], lines
    after = {p.name: p.stat() for p in swarm_home.iterdir()}
    assert after.keys() == before.keys()  # no root-owned -wal/-shm left in their directory
    assert all(after[n].st_mode == before[n].st_mode for n in after)  # no chmod either


@pytest.mark.parametrize("vm_dirs", [True, False])
def test_empty_registry_file_is_refused(cli: Cli, swarm_home: Path, vm_dirs: bool) -> None:
    swarm_home.mkdir()
    (swarm_home / "registry.db").write_bytes(b"")
    if vm_dirs:
        (swarm_home / "projects" / "myapp").mkdir(parents=True)
        (swarm_home / "tasks" / "fix-login").mkdir(parents=True)
    r = cli("list")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = _error_lines(r.stderr)
    assert "empty" in lines[0] and "registry.db" in lines[0], lines
    assert ("2 VM directories" in lines[0]) is vm_dirs, lines
    assert "backup" in lines[1], lines
    assert (swarm_home / "registry.db").stat().st_size == 0  # left as it was


def _open_registry(home: str, barrier: Barrier) -> None:
    barrier.wait()
    with Registry(Path(home) / "registry.db") as reg:
        assert reg.schema_version == SCHEMA_VERSION


def test_fresh_install_still_works_even_concurrently(cli: Cli, swarm_home: Path) -> None:
    r = cli("list")
    assert r.returncode == 0, r.stderr
    assert (swarm_home / "registry.db").stat().st_size > 0
    ctx = multiprocessing.get_context("fork")
    for run in range(5):
        home = swarm_home.parent / f"conc{run}"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_registry, args=(str(home), barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        # one registry and nothing else: no temporary database left behind (SQLite's own
        # -wal/-shm may stay when the last connections close at the same moment, and the
        # creation lock file stays by design)
        names = sorted(p.name for p in home.iterdir())
        sidecars = ("registry.db-wal", "registry.db-shm", ".registry.db.lock")
        assert [n for n in names if n not in sidecars] == ["registry.db"], names


# ---- 3-5. the generated OpenSSH config --------------------------------------------------

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in a temporary directory, so ~/.ssh/config is never the real one."""
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _registry(home: Path, projects: dict[str, list[str]]) -> Registry:
    """A registry with project VMs and their tasks (no real VM behind them)."""
    reg = Registry(home / "registry.db")
    reg.add_base_image("deb", path="/i", format="raw", virtual_size=1 << 30, source="x")
    ports = iter(range(22000, 23000))
    for proj, tasks in projects.items():
        reg.add_project(
            proj,
            base_image="deb",
            provider="libvirt",
            cpus=1,
            memory_mib=512,
            disk_gib=1,
            host_key=HOST_KEY,
        )
        reg.allocate_port("project", proj, ports)
        reg.add_generation(proj, f"/g/{proj}")
        for t in tasks:
            reg.add_task(
                t, project=proj, provider="libvirt", cpus=1, memory_mib=512, host_key=HOST_KEY
            )
            reg.allocate_port("task", t, ports)
    return reg


def ssh_g(cfg: Path, host: str) -> dict[str, str]:
    r = subprocess.run(
        ["ssh", "-G", "-F", str(cfg), host], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)


def _unescape_ssh_log(s: str) -> str:
    """ssh -v writes non-ASCII bytes of paths as \\ooo octal escapes."""
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), s.encode())
    return raw.decode("utf-8", "replace")


def identity_ssh_loads(cfg: Path, host: str) -> list[str]:
    """The identity files the real ssh client opens for ``host`` (it connects to a loopback
    listener that hangs up right away, after ssh has loaded its identities)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            srv.accept()[0].close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        r = subprocess.run(
            [
                "ssh",
                "-v",
                "-F",
                str(cfg),
                "-o",
                f"Port={srv.getsockname()[1]}",
                "-o",
                "BatchMode=yes",
                host,
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        srv.close()
    found = re.findall(r"^debug1: identity file (.*) type (-?\d+)$", r.stderr, re.M)
    return [_unescape_ssh_log(path) for path, kind in found if kind != "-1"]


ODD_DIRS = ["with space", "100%", "%d", "hash#tag", "it's", "ünï©ødé", "a b%d#'é", "st*r?[x]"]


@needs_ssh
@pytest.mark.parametrize("odd", ODD_DIRS)
def test_generated_config_survives_odd_state_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_home: Path, odd: str
) -> None:
    home = tmp_path / odd / "state"
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    with _registry(home, {"p1": ["t1"]}) as reg:
        cfg = config.write(reg)
        port = reg.port_of("task", "t1")
    key = home / "keys" / "id_ed25519"
    config.install()
    for f in (cfg, user_home / ".ssh" / "config"):  # directly, and through the Include line
        got = ssh_g(f, "t1.agent-swarm")
        assert got["port"] == str(port)
        assert got["hostkeyalias"] == "t1.agent-swarm"
        assert got["stricthostkeychecking"] == "true"
        assert got["userknownhostsfile"] == str(home / "keys" / "known_hosts")
        assert got["hostname"] == "127.0.0.1"
        assert identity_ssh_loads(f, "t1.agent-swarm") == [str(key)]
    # The pinned key is where ssh looks for it.
    kh = (home / "keys" / "known_hosts").read_text()
    assert f"t1.agent-swarm {HOST_KEY}\n" in kh


@pytest.mark.parametrize("bad", ['say"hi', "new\nline", "back\\slash", "${HOME}x"])
def test_unrepresentable_state_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_home: Path, bad: str
) -> None:
    home = tmp_path / bad / "state"
    monkeypatch.setenv("AGENT_SWARM_HOME", str(home))
    with _registry(home, {"p1": []}) as reg, pytest.raises(ConfigError) as ei:
        config.write(reg)
    assert "\n" not in ei.value.message and "AGENT_SWARM_HOME" in (ei.value.hint or "")
    assert not (home / config.SSH_CONFIG).exists()
    with pytest.raises(ConfigError):
        config.install()
    assert not (user_home / ".ssh" / "config").exists()


def test_install_writes_through_a_symlinked_user_config(swarm_home: Path, user_home: Path) -> None:
    dot = user_home / "dotfiles" / "ssh_config"
    dot.parent.mkdir()
    original = "Host work\n  User me\n"
    dot.write_text(original)
    dot.chmod(0o640)
    link = user_home / ".ssh" / "config"
    link.parent.mkdir(mode=0o700)
    link.symlink_to("../dotfiles/ssh_config")

    assert config.install() is True
    assert link.is_symlink() and os.readlink(link) == "../dotfiles/ssh_config"
    lines = dot.read_text().splitlines()
    assert lines[:2] == [config.INCLUDE_MARK, config.include_line()]
    assert dot.read_text().endswith(original)
    assert dot.stat().st_mode & 0o777 == 0o640
    assert config.install() is False  # idempotent

    assert config.uninstall() is True
    assert link.is_symlink() and dot.read_text() == original
    assert dot.stat().st_mode & 0o777 == 0o640

    dot.unlink()  # dangling: refused, the link is left alone
    with pytest.raises(ConfigError, match="does not exist"):
        config.install()
    assert link.is_symlink() and not dot.exists()
    assert config.uninstall() is False


def test_install_upgrades_an_old_unquoted_include_line(swarm_home: Path, user_home: Path) -> None:
    cfg = user_home / ".ssh" / "config"
    cfg.parent.mkdir()
    cfg.write_text(f"{config.INCLUDE_MARK}\nInclude {config.config_path()}\n\nHost x\n")
    assert config.install() is True
    assert cfg.read_text() == f"{config.INCLUDE_MARK}\n{config.include_line()}\n\nHost x\n"
    assert config.uninstall() is True
    assert cfg.read_text() == "Host x\n"


ALL_HOSTS = ["p1.project.agent-swarm", "t1.agent-swarm", "p2.project.agent-swarm", "t2.agent-swarm"]


def _forwarding(cfg: Path) -> dict[str, str]:
    return {h: ssh_g(cfg, h)["forwardagent"] for h in ALL_HOSTS}


@needs_ssh
def test_agent_forwarding_is_off_unless_configured(
    cli: Cli, swarm_home: Path, user_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _registry(swarm_home, {"p1": ["t1"], "p2": ["t2"]}) as reg:
        monkeypatch.setenv("AGENT_SWARM_FORWARD_AGENT", "yes")  # no longer read
        cfg = config.write(reg)
        assert set(_forwarding(cfg).values()) == {"no"}
        settings_file = swarm_home / "config.toml"
        settings_file.write_text("[ssh]\nforward_agent = true\n")
        config.write(reg)
        assert set(_forwarding(cfg).values()) == {"yes"}
        settings_file.write_text("[project.p1]\nforward_agent = true\n")
        config.write(reg)
        want = {ALL_HOSTS[0]: "yes", ALL_HOSTS[1]: "yes", ALL_HOSTS[2]: "no", ALL_HOSTS[3]: "no"}
        assert _forwarding(cfg) == want
    # It sticks: the next rewrite (here by the real CLI) keeps the setting.
    r = cli("ssh-config", env={"HOME": str(user_home)})
    assert r.returncode == 0, r.stderr
    assert _forwarding(cfg) == want


def test_user_keys_are_authorized_only_when_configured(swarm_home: Path, user_home: Path) -> None:
    ssh_dir = user_home / ".ssh"
    ssh_dir.mkdir()
    mine = [keys.generate_ed25519("me@laptop").public_openssh for _ in range(2)]
    (ssh_dir / "id_ed25519.pub").write_text(mine[0] + "\n")
    (ssh_dir / "id_rsa.pub").write_text(mine[1] + "\n")
    own = keys.client_public_key()
    swarm_home.mkdir(exist_ok=True)
    assert keys.authorized_keys(None) == [own]
    assert keys.authorized_keys("p1") == [own]
    (swarm_home / "config.toml").write_text("[project.p1]\nauthorize_user_keys = true\n")
    assert keys.authorized_keys("p1") == [own, mine[0], mine[1]]
    assert keys.authorized_keys("p2") == [own]
    assert keys.authorized_keys(None) == [own]
    (swarm_home / "config.toml").write_text("[ssh]\nauthorize_user_keys = true\n")
    assert keys.authorized_keys("p2") == [own, mine[0], mine[1]]
    assert keys.authorized_keys(None) == [own, mine[0], mine[1]]
