"""Downloads from a real HTTPS server on 127.0.0.1 (with Range support), no mocks."""

from __future__ import annotations

import hashlib
import http.server
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agent_swarm.errors import ImageError
from agent_swarm.images import download
from https_support import Served, serve

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
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        start = 0
        if_range = self.headers.get("If-Range")
        if rng and rng.startswith("bytes=") and if_range in (None, etag):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.cut_after is not None:
            self.wfile.write(body[: Handler.cut_after])
            Handler.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    Handler.files = {
        "/rel/image.img": PAYLOAD,
        "/rel/SHA256SUMS": (
            f"{hashlib.sha256(PAYLOAD).hexdigest()} *image.img\n{'0' * 64} other.img\n"
        ).encode(),
        "/bad/image.img": PAYLOAD,
        "/bad/SHA256SUMS": f"{'1' * 64} image.img\n".encode(),
    }
    Handler.requests = []
    with serve(Handler, tmp_path_factory.mktemp("certs")) as srv:
        yield srv


def test_download_verified_and_atomic(server: Served, tmp_path: Path) -> None:
    ctx = server.client_context
    sums = download.sha256sums(f"{server.url}/rel/SHA256SUMS", context=ctx)
    assert sums["image.img"] == hashlib.sha256(PAYLOAD).hexdigest()
    seen: list[str] = []
    dest = tmp_path / "image.img"
    download.download(
        f"{server.url}/rel/image.img",
        dest,
        sha256=sums["image.img"],
        progress=seen.append,
        context=ctx,
    )
    assert dest.read_bytes() == PAYLOAD
    assert sorted(os.listdir(tmp_path)) == ["image.img"]
    assert any("verifying" in s for s in seen)


def test_interrupted_download_resumes_with_range(server: Served, tmp_path: Path) -> None:
    Handler.cut_after = download.CHUNK + 7
    ctx = server.client_context
    dest = tmp_path / "image.img"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(ImageError, match="ended early") as ei:
        download.download(f"{server.url}/rel/image.img", dest, sha256=sha, context=ctx)
    assert "again" in (ei.value.hint or "")
    assert not dest.exists()
    part = tmp_path / "image.img.part"
    assert part.stat().st_size == download.CHUNK + 7
    download.download(f"{server.url}/rel/image.img", dest, sha256=sha, context=ctx)
    assert dest.read_bytes() == PAYLOAD
    assert Handler.requests[-1] == ("/rel/image.img", f"bytes={download.CHUNK + 7}-")
    assert not part.exists()


def test_checksum_mismatch_leaves_nothing(server: Served, tmp_path: Path) -> None:
    dest = tmp_path / "image.img"
    ctx = server.client_context
    sha = download.sha256sums(f"{server.url}/bad/SHA256SUMS", context=ctx)["image.img"]
    with pytest.raises(ImageError, match="checksum mismatch"):
        download.download(f"{server.url}/bad/image.img", dest, sha256=sha, context=ctx)
    assert os.listdir(tmp_path) == []


def test_http_errors_are_clear(server: Served, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="HTTP 404"):
        download.download(
            f"{server.url}/nope.img", tmp_path / "x", sha256=None, context=server.client_context
        )
    with pytest.raises(ImageError, match="cannot reach") as ei:
        download.download("https://127.0.0.1:9/x.img", tmp_path / "x", sha256=None)
    assert "--build debian-12" in (ei.value.hint or "")
    assert os.listdir(tmp_path) == []


def test_ubuntu_url_follows_the_host_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SWARM_UBUNTU_URL", "https://127.0.0.1:1/rel/")
    img, sums = download.ubuntu_image()
    assert img.startswith("https://127.0.0.1:1/rel/ubuntu-24.04-server-cloudimg-")
    assert img.endswith(("-amd64.img", "-arm64.img"))
    assert sums == "https://127.0.0.1:1/rel/SHA256SUMS"
