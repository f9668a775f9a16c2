"""`init-base --image` refuses images a VM must not boot from (real qemu-img images, real CLI).

A qcow2 with an external data file would give the VM a host file as its disk; encrypted
images can only fail at boot; backing files, dirty/corrupt images and feature bits nobody
here understands are refused too. Each refusal: exit code 1 (ImageError), one `Error:` line
(and a `Hint:`), no traceback, nothing registered, nothing copied into the state directory.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from agent_swarm.errors import ImageError
from https_support import serve

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img")

MiB = 1 << 20
TiB = 1 << 40
Cli = Callable[..., subprocess.CompletedProcess[str]]


def qemu_img(*args: str | Path) -> None:
    # QEMU's LUKS set-up times its PBKDF with the thread's CPU clock and now and then reads a
    # zero interval ("Unable to get accurate CPU usage": about 1 run in 12 here): try again.
    for _ in range(5):
        r = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
        if r.returncode == 0 or "Unable to get accurate CPU usage" not in r.stderr:
            break
    if r.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(map(str, args))}: {r.stderr.strip()}")


def qcow2(path: Path, *opts: str | Path, size: str = "64M") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", *opts, path, size)
    return path


def set_incompatible_bit(path: Path, bit: int) -> Path:
    """Set a bit of the qcow2 v3 incompatible-features field (header bytes 72..79)."""
    with open(path, "r+b") as f:
        f.seek(72)
        v = int.from_bytes(f.read(8), "big") | (1 << bit)
        f.seek(72)
        f.write(v.to_bytes(8, "big"))
    return path


# name -> (make(tmp) -> image, regex the error must match, text the hint must contain)
BAD: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "external-data-file": (
        lambda t: qcow2(t / "bad.qcow2", "-o", f"data_file={host_file(t)}"),
        r"external data file .*secret\.txt",
        "qemu-img convert",
    ),
    "data-file-bit-only": (
        lambda t: set_incompatible_bit(qcow2(t / "bad.qcow2"), 2),
        "external data file",
        "qemu-img convert",
    ),
    "luks": (
        lambda t: qcow2(
            t / "bad.qcow2",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
        ),
        "LUKS-encrypted",
        "qemu-img convert",
    ),
    "legacy-aes": (
        lambda t: qcow2(
            t / "bad.qcow2",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
        ),
        "AES-encrypted",
        "qemu-img convert",
    ),
    "backing-file": (
        lambda t: qcow2(t / "bad.qcow2", "-b", qcow2(t / "parent.qcow2"), "-F", "qcow2"),
        "has a backing file",
        "qemu-img convert",
    ),
    "backing-host-file": (
        lambda t: qcow2(t / "bad.qcow2", "-u", "-b", host_file(t), "-F", "raw"),
        r"has a backing file .*secret\.txt",
        "qemu-img convert",
    ),
    "unknown-incompatible-bit": (
        lambda t: set_incompatible_bit(qcow2(t / "bad.qcow2"), 40),
        "unsupported qcow2 incompatible feature",
        "qemu-img convert",
    ),
    "corrupt-bit": (
        lambda t: set_incompatible_bit(qcow2(t / "bad.qcow2"), 1),
        "marked corrupt",
        "qemu-img check -r all",
    ),
    "dirty-bit": (
        lambda t: set_incompatible_bit(qcow2(t / "bad.qcow2", "-o", "lazy_refcounts=on"), 0),
        "dirty",
        "qemu-img check -r all",
    ),
    "absurd-virtual-size": (
        lambda t: qcow2(t / "bad.qcow2", size="17T"),
        r"virtual size of 17\.0 TiB",
        "16 TiB",
    ),
}


def host_file(tmp: Path) -> Path:
    """A host file an attacker would like a VM to see as its disk."""
    p = tmp / "secret.txt"
    if not p.exists():
        p.write_bytes(b"host secret\n" * 4096)
    return p


def base_images(cli: Cli) -> list[dict[str, object]]:
    r = cli("--json", "init-base", "--list")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out, list)
    return out


def images_dir(home: Path) -> list[str]:
    d = home / "base-images"
    return sorted(os.listdir(d)) if d.exists() else []


def assert_refused(r: subprocess.CompletedProcess[str], match: str, hint: str) -> None:
    import re

    assert r.returncode == ImageError.exit_code == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("Error: "), r.stderr
    assert re.search(match, lines[0]), lines[0]
    assert all(ln.startswith(("Error: ", "Hint: ")) for ln in lines), r.stderr
    assert sum(ln.startswith("Error: ") for ln in lines) == 1, r.stderr
    hints = [ln for ln in lines if ln.startswith("Hint: ")]
    assert len(hints) == 1 and hint in hints[0], r.stderr


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_is_refused(cli: Cli, swarm_home: Path, tmp_path: Path, case: str) -> None:
    make, match, hint = BAD[case]
    src = tmp_path / "src"
    src.mkdir()
    img = make(src)
    before = img.read_bytes()
    r = cli("init-base", "--image", str(img), "--name", "x")
    assert_refused(r, match, hint)
    assert base_images(cli) == []
    assert images_dir(swarm_home) == []
    assert img.read_bytes() == before  # never "repaired" or touched


@pytest.mark.parametrize(
    "make",
    [
        lambda t: qcow2(t / "good.qcow2"),
        lambda t: qcow2(t / "good.qcow2", "-o", "compat=0.10"),
        # QEMU >= 5.2 boots these (subclusters, zstd); nothing unsafe about them.
        lambda t: qcow2(t / "good.qcow2", "-o", "extended_l2=on,compression_type=zstd"),
        lambda t: qcow2(t / "good.qcow2", size="16T"),  # the limit itself is fine
    ],
    ids=["qcow2-v3", "qcow2-v2", "qcow2-extl2-zstd", "qcow2-16TiB"],
)
def test_good_qcow2_registers(
    cli: Cli, swarm_home: Path, tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    img = make(tmp_path)
    r = cli("init-base", "--image", str(img), "--name", "good")
    assert r.returncode == 0, r.stderr
    [b] = base_images(cli)
    assert b["name"] == "good" and b["format"] == "qcow2"
    assert images_dir(swarm_home) == ["good.qcow2"]


def test_good_raw_registers(cli: Cli, swarm_home: Path, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    r = cli("init-base", "--image", str(img), "--name", "rawbase")
    assert r.returncode == 0, r.stderr
    [b] = base_images(cli)
    assert b["format"] == "raw" and b["virtual_size"] == 64 * MiB
    assert images_dir(swarm_home) == ["rawbase.raw"]


class ImageHandler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_bad_image_from_url_is_refused(cli: Cli, swarm_home: Path, tmp_path: Path) -> None:
    """`init-base --image https://…` ends in the same checks as a local path."""
    bad = qcow2(tmp_path / "bad.qcow2", "-o", f"data_file={host_file(tmp_path)}")
    ImageHandler.files = {"/img/bad.qcow2": bad.read_bytes()}
    certs = tmp_path / "certs"
    certs.mkdir()
    with serve(ImageHandler, certs) as srv:
        # SSL_CERT_FILE: OpenSSL's own way to replace the default trust store (not ours).
        env = {"SSL_CERT_FILE": str(srv.cafile), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        r = cli("init-base", "--image", f"{srv.url}/img/bad.qcow2", "--name", "x", env=env)
    # The download itself prints a notice (no SHA256SUMS next to it): keep the error lines.
    r.stderr = "\n".join(ln for ln in r.stderr.splitlines() if ln.startswith(("Error", "Hint")))
    assert_refused(r, "external data file", "qemu-img convert")
    assert base_images(cli) == []
    assert images_dir(swarm_home) == []


def test_image_info_reports_the_header_facts(tmp_path: Path) -> None:
    """The facts check_base_image decides on, as `agent_swarm.native.image_info` exposes them."""
    from agent_swarm import native

    df = qcow2(tmp_path / "df.qcow2", "-o", f"data_file={host_file(tmp_path)}")
    info = native.image_info(df, chain=False)
    assert info.data_file == str(host_file(tmp_path))
    assert info.incompatible_features == ("data_file",)
    assert info.encryption is None
    secret = ("--object", "secret,id=s0,data=pw")
    for fmt in ("luks", "aes"):
        img = qcow2(
            tmp_path / f"{fmt}.qcow2", *secret, "-o", f"encrypt.format={fmt},encrypt.key-secret=s0"
        )
        assert native.image_info(img).encryption == fmt
    flags = set_incompatible_bit(set_incompatible_bit(qcow2(tmp_path / "f.qcow2"), 0), 1)
    assert native.image_info(flags).incompatible_features == ("dirty", "corrupt")
    x = qcow2(tmp_path / "x.qcow2", "-o", "extended_l2=on,compression_type=zstd")
    assert native.image_info(x).incompatible_features == ("compression_type", "extended_l2")
    raw = tmp_path / "raw.img"
    raw.write_bytes(bytes(4096))
    r = native.image_info(raw)
    assert (r.encryption, r.data_file, r.incompatible_features) == (None, None, ())
    with pytest.raises(native.InvalidImageError, match="incompatible feature bits 0x10000000000"):
        native.image_info(set_incompatible_bit(qcow2(tmp_path / "u.qcow2"), 40))
