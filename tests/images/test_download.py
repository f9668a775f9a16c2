"""Downloads from a real HTTP server on 127.0.0.1 (with Range support), no mocks."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agent_swarm.errors import ImageError
from agent_swarm.images import download

PAYLOAD = os.urandom(3 * download.CHUNK + 12345)


class Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[tuple[str, str | None]]] = []
    cut_after: int | None = None  # send a truncated body once (then serve normally)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        Handler.requests.append((self.path, rng))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.cut_after is not None:
            self.wfile.write(body[: Handler.cut_after])
            Handler.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    Handler.files = {
        "/rel/image.img": PAYLOAD,
        "/rel/SHA256SUMS": (
            f"{hashlib.sha256(PAYLOAD).hexdigest()} *image.img\n{'0' * 64} other.img\n"
        ).encode(),
        "/bad/image.img": PAYLOAD,
        "/bad/SHA256SUMS": f"{'1' * 64} image.img\n".encode(),
    }
    Handler.requests = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_verified_and_atomic(server: str, tmp_path: Path) -> None:
    sums = download.sha256sums(f"{server}/rel/SHA256SUMS")
    assert sums["image.img"] == hashlib.sha256(PAYLOAD).hexdigest()
    seen: list[str] = []
    dest = tmp_path / "image.img"
    download.download(
        f"{server}/rel/image.img", dest, sha256=sums["image.img"], progress=seen.append
    )
    assert dest.read_bytes() == PAYLOAD
    assert sorted(os.listdir(tmp_path)) == ["image.img"]
    assert any("verifying" in s for s in seen)


def test_interrupted_download_resumes_with_range(server: str, tmp_path: Path) -> None:
    Handler.cut_after = download.CHUNK + 7
    dest = tmp_path / "image.img"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(ImageError, match="ended early") as ei:
        download.download(f"{server}/rel/image.img", dest, sha256=sha)
    assert "again" in (ei.value.hint or "")
    assert not dest.exists()
    part = tmp_path / "image.img.part"
    assert part.stat().st_size == download.CHUNK + 7
    download.download(f"{server}/rel/image.img", dest, sha256=sha)
    assert dest.read_bytes() == PAYLOAD
    assert Handler.requests[-1] == ("/rel/image.img", f"bytes={download.CHUNK + 7}-")
    assert not part.exists()


def test_checksum_mismatch_leaves_nothing(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "image.img"
    sha = download.sha256sums(f"{server}/bad/SHA256SUMS")["image.img"]
    with pytest.raises(ImageError, match="checksum mismatch"):
        download.download(f"{server}/bad/image.img", dest, sha256=sha)
    assert os.listdir(tmp_path) == []


def test_http_errors_are_clear(server: str, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="HTTP 404"):
        download.download(f"{server}/nope.img", tmp_path / "x", sha256=None)
    with pytest.raises(ImageError, match="cannot reach") as ei:
        download.download("http://127.0.0.1:9/x.img", tmp_path / "x", sha256=None)
    assert "--build debian-12" in (ei.value.hint or "")
    assert os.listdir(tmp_path) == []


def test_ubuntu_url_follows_the_host_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SWARM_UBUNTU_URL", "http://127.0.0.1:1/rel/")
    img, sums = download.ubuntu_image()
    assert img.startswith("http://127.0.0.1:1/rel/ubuntu-24.04-server-cloudimg-")
    assert img.endswith(("-amd64.img", "-arm64.img"))
    assert sums == "http://127.0.0.1:1/rel/SHA256SUMS"
