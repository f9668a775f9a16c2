"""`agent-swarm cp` against a guest whose SFTP server lies (a real SSH server on 127.0.0.1).

The guest is untrusted: it can list names that are paths, send setuid modes, files that never
end or are larger than announced, directory trees without end, listings without end and
malformed replies. Each download test asserts the safe outcome and, through ``confined``,
that nothing was written anywhere but under ``dst`` and that no temp file was left behind.
Uploads (to a guest backed by a local directory) copy symlinks as symlinks, or follow them
with ``dereference`` without looping, and skip special files with a notice.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
from click.testing import CliRunner
from paramiko.sftp import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK

from agent_swarm.errors import AgentSwarmError
from agent_swarm.ssh import transfer

pytestmark = pytest.mark.timeout(60)  # a regression that loops fails fast

Client = Callable[..., paramiko.SFTPClient]
Confined = Any  # conftest.Confinement


# ---------------------------------------------------------------- a lying guest


@dataclass
class F:
    """A file. ``size``: what stat says (default: the real length); ``endless``: reads never
    end; ``oversize``: each read reply carries 4x the bytes asked for."""

    data: bytes = b""
    mode: int = 0o644
    size: int | str | None = "real"
    endless: bool = False
    oversize: bool = False


@dataclass
class D:
    """A directory. ``endless``: a name pattern (``%d``: a counter) its never-ending listing
    repeats; ``bad_attrs``: its entries' attributes claim 2**32-1 extended attributes that are
    not there."""

    entries: dict[Any, Any] = field(default_factory=dict)
    mode: int = 0o755
    endless: str = ""
    bad_attrs: bool = False


@dataclass
class L:
    target: str


@dataclass
class S:
    """A special file (fifo by default)."""

    mode: int = stat.S_IFIFO | 0o644


class _BadAttrs(paramiko.SFTPAttributes):
    def _pack(self, msg: paramiko.Message) -> None:
        msg.add_int(self.FLAG_PERMISSIONS | self.FLAG_EXTENDED)
        msg.add_int(self.st_mode or 0)
        msg.add_int(0xFFFFFFFF)  # extended attribute pairs that never come


class _Endless(list):  # type: ignore[type-arg]
    """What paramiko's SFTPServer slices 16 names at a time from: here, 500 new ones forever."""

    def __init__(self, guest: FakeGuest, name: str) -> None:
        super().__init__()
        self.guest, self.name = guest, name
        self.n = 0

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice) and i.start:
            return self
        batch = []
        for _ in range(500):
            self.n += 1
            name = self.name % self.n if "%" in self.name else self.name
            batch.append(self.guest.attrs(F(b"x"), name))
        return batch


class FakeGuest(paramiko.SFTPServerInterface):
    """An SFTP server serving ``root`` at ``at``; names are matched verbatim (they may hold /)."""

    def __init__(self, server: Any, root: D, at: str = "/src", realpath: str | None = None) -> None:
        super().__init__(server)
        self.root, self.at, self.realpath = root, at, realpath
        self.reads = 0

    def resolve(self, path: str) -> Any:
        """The node at ``path`` as the client built it (names verbatim), else as normalized."""
        node = self._walk(path)
        return node if node is not None else self._walk(posixpath.normpath(path))

    def _walk(self, path: str) -> Any:
        if path == self.at:
            return self.root
        if not path.startswith(self.at + "/"):
            return None
        rest, node = path[len(self.at) + 1 :], self.root
        while isinstance(node, D):
            for name, child in node.entries.items():
                if rest == name:
                    return child
                if isinstance(name, str) and rest.startswith(name + "/"):
                    node, rest = child, rest[len(name) + 1 :]
                    break
            else:
                return None
        return None

    def attrs(self, node: Any, name: Any = "", bad: bool = False) -> paramiko.SFTPAttributes:
        a = _BadAttrs() if bad else paramiko.SFTPAttributes()
        a.filename = name
        if isinstance(node, F):
            a.st_mode = stat.S_IFREG | node.mode
            a.st_size = len(node.data) if node.size == "real" else node.size  # type: ignore[assignment]
        elif isinstance(node, D):
            a.st_mode, a.st_size = stat.S_IFDIR | node.mode, 4096
        elif isinstance(node, L):
            a.st_mode, a.st_size = stat.S_IFLNK | 0o777, len(node.target)
        else:
            a.st_mode, a.st_size = node.mode, 0
        return a

    def stat(self, path: str) -> Any:
        node = self.resolve(path)
        if node is None:
            return SFTP_NO_SUCH_FILE
        return self.attrs(node, posixpath.basename(path))

    lstat = stat

    def list_folder(self, path: str) -> Any:
        node = self.resolve(path)
        if not isinstance(node, D):
            return SFTP_NO_SUCH_FILE
        if node.endless:
            return _Endless(self, node.endless)
        return [self.attrs(c, n, node.bad_attrs) for n, c in node.entries.items()]

    def open(self, path: str, flags: int, attr: Any) -> Any:
        node = self.resolve(path)
        if not isinstance(node, F):
            return SFTP_NO_SUCH_FILE
        guest = self

        class H(paramiko.SFTPHandle):
            def read(self, offset: int, length: int) -> bytes:
                guest.reads += 1
                if node.endless:
                    return b"x" * length
                data = node.data[offset : offset + length]
                return bytes(data * 4 if node.oversize else data)

            def stat(self) -> Any:
                return guest.attrs(node)

        return H(flags)

    def canonicalize(self, path: str) -> str:
        return self.realpath or posixpath.normpath(path)


@pytest.fixture
def guest(sftp_client: Client) -> Callable[..., tuple[paramiko.SFTPClient, FakeGuest]]:
    def start(root: D, **kw: Any) -> tuple[paramiko.SFTPClient, FakeGuest]:
        made: list[FakeGuest] = []

        def make(server: Any) -> FakeGuest:
            made.append(FakeGuest(server, root, **kw))
            return made[0]

        sftp = sftp_client(make)
        sftp.normalize("/")  # the server has made its interface by now
        return sftp, made[0]

    return start


@pytest.fixture
def dst(tmp_path: Path) -> Path:
    d = tmp_path / "dst"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "../../escaped.sh",
        "../../../escaped.sh",
        "a/b",
        "",
        "evil\n.sh",
        "\x1b]0;owned\x07",
        "nul\x00byte",
        b"latin1-\xe9",
        "x" * 300,
    ],
    ids=["dotdot2", "dotdot3", "slash", "empty", "newline", "escape", "nul", "not-utf8", "long"],
)
def test_a_name_that_is_not_a_plain_file_name_is_refused(
    guest: Any, dst: Path, confined: Confined, name: str | bytes
) -> None:
    sftp, _ = guest(D({"aaa.txt": F(b"ok"), name: F(b"#!/bin/sh\necho owned\n", 0o755)}))
    with pytest.raises(AgentSwarmError) as e:
        transfer.download(sftp, "/src", dst, recursive=True)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg and "\x00" not in msg
    assert "refused the entry" in msg and "/src in the VM" in msg
    if isinstance(name, str) and len(name) < 100:
        assert repr(name) in msg
    written = confined()
    assert set(written) <= {"src", "src/aaa.txt"}  # the good entry may be there; nothing else


def test_dot_and_dotdot_entries_are_ignored(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({".": F(b"dot"), "..": F(b"dotdot", 0o4755), "ok": F(b"fine")}))
    assert transfer.download(sftp, "/src", dst, recursive=True) == 1
    assert confined() == {"src": ("dir", 0o755), "src/ok": ("file", 0o644, b"fine")}


def test_source_dotdot_is_named_by_its_real_path(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"sub": D(), "f": F(b"1")}))
    assert transfer.download(sftp, "/src/sub/..", dst, recursive=True) == 1
    assert set(confined()) == {"src", "src/sub", "src/f"}


def test_a_lying_realpath_is_refused(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"f": F(b"1")}), realpath="/x/..")
    with pytest.raises(AgentSwarmError, match=r"refused the entry '\.\.'"):
        transfer.download(sftp, "/src/.", dst, recursive=True)
    assert confined() == {}


# ---------------------------------------------------------------- modes


def test_setuid_setgid_sticky_bits_are_dropped_and_the_umask_applied(
    guest: Any, dst: Path, confined: Confined
) -> None:
    tree = D(
        {
            "suid": F(b"a", 0o6755),
            "world": F(b"b", 0o666),
            "tmp": D({"f": F(b"c", 0o4777)}, 0o1777),
            "ro": D({"f": F(b"d", 0o444)}, 0o555),  # filled although not writable
        },
        0o2775,
    )
    sftp, _ = guest(tree)
    assert transfer.download(sftp, "/src", dst, recursive=True) == 4
    got = {k: v[1] for k, v in confined().items()}
    assert got == {
        "src": 0o755,
        "src/suid": 0o755,
        "src/world": 0o644,
        "src/tmp": 0o755,
        "src/tmp/f": 0o755,
        "src/ro": 0o555,
        "src/ro/f": 0o444,
    }


def test_preserve_keeps_permission_bits_but_never_setuid(
    guest: Any, dst: Path, confined: Confined
) -> None:
    sftp, _ = guest(D({"suid": F(b"a", 0o6777), "tmp": D({}, 0o1777)}))
    transfer.download(sftp, "/src", dst, recursive=True, preserve=True)
    got = {k: v[1] for k, v in confined().items()}
    assert got == {"src": 0o755, "src/suid": 0o777, "src/tmp": 0o777}


def test_single_file_mode_is_masked(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"tool": F(b"elf", 0o4755)}))
    assert transfer.download(sftp, "/src/tool", dst / "tool", recursive=False) == 1
    assert confined() == {"tool": ("file", 0o755, b"elf")}


# ---------------------------------------------------------------- sizes and data


def test_a_file_larger_than_announced_is_cut_off(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"big": F(b"y" * 100_000, size=10)}))
    with pytest.raises(AgentSwarmError, match=r"sent more than the 10 bytes it announced"):
        transfer.download(sftp, "/src", dst, recursive=True)
    assert confined() == {"src": ("dir", 0o700)}  # no file under its final name, no temp file


def test_a_file_whose_data_never_ends_is_cut_off(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, g = guest(D({"endless": F(endless=True, size=1 << 20)}))
    with pytest.raises(AgentSwarmError, match="sent more than the 1,048,576 bytes"):
        transfer.download(sftp, "/src/endless", dst / "out", recursive=False)
    assert g.reads <= (1 << 20) // transfer.CHUNK + 1
    assert confined() == {}


def test_a_file_shorter_than_announced_is_not_kept(
    guest: Any, dst: Path, confined: Confined
) -> None:
    sftp, _ = guest(D({"short": F(b"z" * 1000, size=5000)}))
    with pytest.raises(AgentSwarmError, match="ended after 1,000 of the 5,000 bytes"):
        transfer.download(sftp, "/src/short", dst / "out", recursive=False)
    assert confined() == {}


def test_read_replies_larger_than_asked_are_refused(
    guest: Any, dst: Path, confined: Confined
) -> None:
    sftp, _ = guest(D({"f": F(b"q" * 100_000, oversize=True)}))
    with pytest.raises(AgentSwarmError, match="bytes for a read of"):
        transfer.download(sftp, "/src/f", dst / "out", recursive=False)
    assert confined() == {}


def test_a_file_without_a_size_is_refused(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"f": F(b"data", size=None)}))
    with pytest.raises(AgentSwarmError, match="did not say how large"):
        transfer.download(sftp, "/src/f", dst / "out", recursive=False)
    assert confined() == {}


def test_an_announced_size_beyond_free_space_is_refused_before_reading(
    guest: Any, dst: Path, confined: Confined
) -> None:
    sftp, g = guest(D({"huge": F(endless=True, size=1 << 50)}))
    with pytest.raises(AgentSwarmError, match="less than 1024 MiB free"):
        transfer.download(sftp, "/src", dst, recursive=True)
    assert g.reads == 0
    assert confined() == {"src": ("dir", 0o700)}


def test_max_size_caps_the_total(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"a": F(b"1" * 4096), "b": F(b"2" * 4096), "c": F(b"3" * 4096)}))
    with pytest.raises(AgentSwarmError, match=r"stopped at /src/c .*--max-size \(10,240 bytes\)"):
        transfer.download(sftp, "/src", dst, recursive=True, max_size=10 << 10)
    assert set(confined()) == {"src", "src/a", "src/b"}


def test_a_normal_tree_arrives_intact_with_progress(
    guest: Any, dst: Path, confined: Confined
) -> None:
    big = os.urandom(9 << 20)  # pipelined reads, progress lines
    tree = D({"big.bin": F(big), "sub": D({"a.txt": F(b"alpha\n")}), "empty": F(b"")})
    sftp, _ = guest(tree)
    lines: list[str] = []
    assert transfer.download(sftp, "/src", dst, recursive=True, progress=lines.append) == 3
    got = confined()
    assert got["src/big.bin"][2] == big
    assert got["src/sub/a.txt"] == ("file", 0o644, b"alpha\n")
    assert got["src/empty"] == ("file", 0o644, b"")
    assert lines[-1] == "copying big.bin: 100% of 9 MiB"


# ---------------------------------------------------------------- endless trees and listings


@pytest.mark.parametrize("pattern", ["f%09d", "."], ids=["names", "dots"])
def test_an_endless_listing_stops_at_the_entry_limit(
    guest: Any, dst: Path, confined: Confined, pattern: str
) -> None:
    sftp, _ = guest(D(endless=pattern))
    with pytest.raises(AgentSwarmError, match="more than 5,000 entries"):
        transfer.download(sftp, "/src", dst, recursive=True, max_entries=5000)
    assert confined() == {"src": ("dir", 0o700)}


def test_empty_listing_replies_without_end_are_refused(
    guest: Any, dst: Path, confined: Confined, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest answering every READDIR with zero names (never EOF) would add no entry to
    count: such a reply is malformed and stops the copy."""
    from paramiko.message import Message
    from paramiko.sftp import CMD_NAME

    def empty(self: Any, request_number: int, folder: Any) -> None:
        msg = Message()
        msg.add_int(request_number)
        msg.add_int(0)
        self._send_packet(CMD_NAME, msg)

    monkeypatch.setattr(paramiko.SFTPServer, "_read_folder", empty)
    sftp, _ = guest(D({"a": F(b"x")}))
    with pytest.raises(AgentSwarmError, match="listing with no names"):
        transfer.download(sftp, "/src", dst, recursive=True)
    assert confined() == {"src": ("dir", 0o700)}


def test_an_endless_directory_tree_stops_at_the_depth_limit(
    guest: Any, dst: Path, confined: Confined
) -> None:
    loop = D()
    loop.entries["d"] = loop  # every directory lists a subdirectory
    sftp, _ = guest(loop)
    with pytest.raises(AgentSwarmError, match=f"more than {transfer.MAX_DEPTH} directory levels"):
        transfer.download(sftp, "/src", dst, recursive=True)
    depth = max(k.count("/") + 1 for k in confined())
    assert depth == transfer.MAX_DEPTH


def test_malformed_attributes_fail_fast(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"f": F(b"1")}, bad_attrs=True))
    with pytest.raises(AgentSwarmError, match="malformed SFTP reply"):
        transfer.download(sftp, "/src", dst, recursive=True)
    assert confined() == {"src": ("dir", 0o700)}


# ---------------------------------------------------------------- symlinks, specials


def test_a_symlink_in_the_destination_is_not_followed_for_a_file(
    guest: Any, tmp_path: Path, dst: Path, confined: Confined
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    (dst / "src").mkdir()
    (dst / "src" / "evil").symlink_to(outside)
    confined.rebase()
    before = confined()
    sftp, _ = guest(D({"evil": F(b"from the guest")}))
    assert transfer.download(sftp, "/src", dst, recursive=True) == 1
    assert outside.read_text() == "original"
    assert before["src/evil"][0] == "link"
    assert confined()["src/evil"] == ("file", 0o644, b"from the guest")  # link replaced


@pytest.mark.parametrize("where", ["evil", "."], ids=["inside", "top"])
def test_a_symlink_in_the_destination_is_not_followed_for_a_directory(
    guest: Any, tmp_path: Path, dst: Path, confined: Confined, where: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if where == ".":
        (dst / "src").symlink_to(outside)
    else:
        (dst / "src").mkdir()
        (dst / "src" / "evil").symlink_to(outside)
    confined.rebase()
    before = confined()
    sftp, _ = guest(D({"evil": D({"payload": F(b"x")})}))
    with pytest.raises(AgentSwarmError, match="it is a symlink"):
        transfer.download(sftp, "/src", dst, recursive=True)
    assert list(outside.iterdir()) == []
    assert confined() == before


def test_guest_symlinks_and_special_files_are_skipped_with_a_notice(
    guest: Any, dst: Path, confined: Confined
) -> None:
    tree = D({"link": L("/etc/shadow"), "fifo": S(), "dev": S(stat.S_IFCHR | 0o666), "f": F(b"1")})
    sftp, _ = guest(tree)
    notes: list[str] = []
    assert transfer.download(sftp, "/src", dst, recursive=True, notice=notes.append) == 1
    assert set(confined()) == {"src", "src/f"}
    assert sorted(notes) == [
        "skipped /src/dev in the VM: a character device",
        "skipped /src/fifo in the VM: a fifo",
        "skipped /src/link in the VM: a symlink (never copied out)",
    ]


def test_a_special_file_as_source_is_refused(guest: Any, dst: Path, confined: Confined) -> None:
    sftp, _ = guest(D({"fifo": S()}))
    with pytest.raises(AgentSwarmError, match="is a fifo: only files are copied"):
        transfer.download(sftp, "/src/fifo", dst / "x", recursive=False)
    assert confined() == {}


# ---------------------------------------------------------------- uploads


class LocalGuest(paramiko.SFTPServerInterface):
    """An honest SFTP server on a local directory (paramiko's StubSFTPServer pattern)."""

    def __init__(self, server: Any, root: Path) -> None:
        super().__init__(server)
        self.root = str(root)

    def _p(self, path: str) -> str:
        return self.root + posixpath.normpath("/" + path)

    def _attrs(self, p: str, follow: bool) -> Any:
        try:
            st = os.stat(p) if follow else os.lstat(p)
        except OSError as e:
            return _errno(e)
        return paramiko.SFTPAttributes.from_stat(st, os.path.basename(p))

    def stat(self, path: str) -> Any:
        return self._attrs(self._p(path), True)

    def lstat(self, path: str) -> Any:
        return self._attrs(self._p(path), False)

    def list_folder(self, path: str) -> Any:
        p = self._p(path)
        try:
            return [self._attrs(os.path.join(p, n), False) for n in os.listdir(p)]
        except OSError as e:
            return _errno(e)

    def open(self, path: str, flags: int, attr: Any) -> Any:
        p = self._p(path)
        try:
            fd = os.open(p, flags, 0o600)
        except OSError as e:
            return _errno(e)
        h = paramiko.SFTPHandle(flags)
        f = os.fdopen(fd, "r+b" if flags & os.O_RDWR else "wb" if flags & os.O_WRONLY else "rb")
        h.readfile = h.writefile = f  # type: ignore[attr-defined]
        return h

    def _do(self, fn: Callable[[], object]) -> int:
        try:
            fn()
        except OSError as e:
            return _errno(e)
        return SFTP_OK

    def remove(self, path: str) -> int:
        return self._do(lambda: os.remove(self._p(path)))

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._do(lambda: os.rename(self._p(oldpath), self._p(newpath)))

    rename = posix_rename

    def mkdir(self, path: str, attr: Any) -> int:
        return self._do(lambda: os.mkdir(self._p(path), attr.st_mode or 0o755))

    def chattr(self, path: str, attr: Any) -> int:
        return self._do(lambda: os.chmod(self._p(path), attr.st_mode))

    def symlink(self, target_path: str, path: str) -> int:
        return self._do(lambda: os.symlink(target_path, self._p(path)))


def _errno(e: OSError) -> int:
    return int(paramiko.SFTPServer.convert_errno(e.errno)) if e.errno else SFTP_FAILURE


@pytest.fixture
def vm(sftp_client: Client, tmp_path: Path) -> tuple[paramiko.SFTPClient, Path]:
    root = tmp_path / "guest"
    root.mkdir()
    return sftp_client(lambda server: LocalGuest(server, root)), root


def test_upload_copies_symlinks_as_symlinks_and_skips_special_files(
    vm: tuple[paramiko.SFTPClient, Path], tmp_path: Path
) -> None:
    sftp, root = vm
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "link").symlink_to("a.txt")
    (src / "dirlink").symlink_to("sub")
    (src / "dangling").symlink_to("/nowhere")
    (src / "sub" / "up").symlink_to("..")  # a loop if it were followed
    os.mkfifo(src / "fifo")
    notes: list[str] = []
    n = transfer.upload(sftp, src, "/", recursive=True, notice=notes.append)
    assert n == 5
    g = root / "proj"
    assert (g / "a.txt").read_text() == "alpha"
    assert {p: os.readlink(g / p) for p in ("link", "dirlink", "dangling", "sub/up")} == {
        "link": "a.txt",
        "dirlink": "sub",
        "dangling": "/nowhere",
        "sub/up": "..",
    }
    assert not (g / "fifo").exists()
    assert notes == [f"skipped {src / 'fifo'}: a fifo (not copied)"]
    assert not [p for p in snapshot_names(root) if ".agent-swarm-" in p]


def test_upload_dereference_follows_each_directory_once_and_ends_loops(
    vm: tuple[paramiko.SFTPClient, Path], tmp_path: Path
) -> None:
    sftp, root = vm
    src = tmp_path / "proj"
    (src / "real").mkdir(parents=True)
    (src / "real" / "f").write_text("f")
    (src / "real" / "loop").symlink_to("..")  # directory loop
    (src / "zlink").symlink_to("real")  # second link to a directory
    (src / "x").symlink_to("y")  # symlink loop
    (src / "y").symlink_to("x")
    (src / "dangling").symlink_to("/nowhere")
    (src / "file-link").symlink_to("real/f")
    notes: list[str] = []
    n = transfer.upload(sftp, src, "/", recursive=True, dereference=True, notice=notes.append)
    assert n == 2  # real/f and file-link (as a file)
    g = root / "proj"
    assert sorted(snapshot_names(g)) == ["file-link", "real", "real/f"]
    assert not any(p.is_symlink() for p in g.rglob("*"))
    assert len(notes) == 5 and all(n.startswith("skipped ") for n in notes)
    assert any("loop" in n and "real/loop" in n for n in notes)
    assert any("Too many levels of symbolic links" in n for n in notes)


def test_upload_masks_modes_and_fills_read_only_directories(
    vm: tuple[paramiko.SFTPClient, Path], tmp_path: Path
) -> None:
    sftp, root = vm
    src = tmp_path / "proj"
    (src / "ro").mkdir(parents=True)
    (src / "suid").write_text("s")
    (src / "suid").chmod(0o6755)
    (src / "ro" / "f").write_text("f")
    (src / "ro").chmod(0o555)
    try:
        transfer.upload(sftp, src, "/", recursive=True)
    finally:
        (src / "ro").chmod(0o755)
    g = root / "proj"
    assert stat.S_IMODE((g / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((g / "ro").stat().st_mode) == 0o555
    assert (g / "ro" / "f").read_text() == "f"
    (g / "ro").chmod(0o755)


def test_upload_refuses_a_special_file_as_source(
    vm: tuple[paramiko.SFTPClient, Path], tmp_path: Path
) -> None:
    sftp, root = vm
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(AgentSwarmError, match="is a fifo"):
        transfer.upload(sftp, tmp_path / "fifo", "/", recursive=False)
    assert os.listdir(root) == []


def snapshot_names(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")]


# ---------------------------------------------------------------- documented limits


def test_cp_help_states_the_limits() -> None:
    from agent_swarm.cli import cli

    out = CliRunner().invoke(cli, ["cp", "--help"]).output
    flat = " ".join(out.split())
    assert f"{transfer.MAX_ENTRIES:,} entries" in flat
    assert f"{transfer.MAX_DEPTH} directory levels" in flat
    assert f"less than {transfer.MIN_FREE >> 30} GiB free" in flat
    for opt in ("--preserve", "--dereference", "--max-size"):
        assert opt in flat
