"""Image downloads: HTTPS only (no downgrade by redirect), and a resume only when the server
proves (If-Range) that the file is the one the partial download came from.

Real servers on 127.0.0.1 (HTTPS with a self-signed certificate the client is told to
trust through ``context=``), no mocks.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from agent_swarm.errors import ConfigError, ImageError
from agent_swarm.images import download
from https_support import Served, serve

OLD = os.urandom(3 * download.CHUNK + 4321)
NEW = os.urandom(3 * download.CHUNK + 4321)  # same length: only a validator tells them apart
LM_OLD = "Mon, 01 Jan 2024 00:00:00 GMT"
LM_NEW = "Tue, 02 Jan 2024 00:00:00 GMT"


@dataclass
class File:
    data: bytes
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class Seen:
    path: str
    range: str | None
    if_range: str | None
    status: int


class Handler(http.server.BaseHTTPRequestHandler):
    """GET with Range and If-Range as RFC 9110 says; optional redirects; one cut body."""

    files: ClassVar[dict[str, File]] = {}
    redirects: ClassVar[dict[str, str]] = {}
    seen: ClassVar[list[Seen]] = []
    cut_after: ClassVar[int | None] = None
    ignore_if_range: ClassVar[bool] = False  # a server that honours Range but not If-Range

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if self.path in self.redirects:
            Handler.seen.append(Seen(self.path, rng, if_range, 302))
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        f = self.files.get(self.path)
        if f is None:
            Handler.seen.append(Seen(self.path, rng, if_range, 404))
            self.send_error(404)
            return
        start = 0
        # If-Range: honour the Range only when the validator still matches.
        if rng and (
            self.ignore_if_range or if_range is None or if_range in (f.etag, f.last_modified)
        ):
            start = int(rng.removeprefix("bytes=").split("-")[0])
        status = 206 if start else 200
        Handler.seen.append(Seen(self.path, rng, if_range, status))
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
        if f.etag:
            self.send_header("ETag", f.etag)
        if f.last_modified:
            self.send_header("Last-Modified", f.last_modified)
        body = f.data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.cut_after is not None:
            self.wfile.write(body[: Handler.cut_after])
            Handler.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def _fresh_handler() -> None:
    Handler.files, Handler.redirects, Handler.seen, Handler.cut_after = {}, {}, [], None
    Handler.ignore_if_range = False


@pytest.fixture
def https(tmp_path: Path) -> Iterator[Served]:
    certs = tmp_path / "certs"
    certs.mkdir()
    with serve(Handler, certs) as srv:
        yield srv


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Served]:
    """A plain-http server sharing the handler: any request it gets shows up in `seen`."""
    with serve(Handler, tmp_path, tls=False) as srv:
        yield srv


def get(srv: Served, path: str, dest: Path, sha256: str | None = None) -> Path:
    return download.download(f"{srv.url}{path}", dest, sha256=sha256, context=srv.client_context)


def interrupted(srv: Served, path: str, dest: Path, cut: int) -> None:
    """A first download that dies after `cut` bytes, leaving dest.part behind."""
    Handler.cut_after = cut
    with pytest.raises(ImageError, match="ended early"):
        get(srv, path, dest)
    assert dest.with_name(dest.name + ".part").stat().st_size == cut


def test_plain_http_is_refused(plain: Served, tmp_path: Path) -> None:
    Handler.files["/img.qcow2"] = File(OLD)
    out = tmp_path / "out"
    for call in (
        lambda: download.download(f"{plain.url}/img.qcow2", out / "img.qcow2", sha256=None),
        lambda: download.sha256sums(f"{plain.url}/SHA256SUMS"),
    ):
        with pytest.raises(ConfigError, match="refusing plain http") as ei:
            call()
        assert "https" in (ei.value.hint or "") and "path" in (ei.value.hint or "")
    assert Handler.seen == []  # not even contacted
    assert not out.exists() or os.listdir(out) == []


def test_redirect_to_plain_http_is_refused(https: Served, plain: Served, tmp_path: Path) -> None:
    Handler.files["/img.qcow2"] = File(OLD)
    Handler.redirects["/moved.qcow2"] = f"{plain.url}/img.qcow2"
    Handler.redirects["/elsewhere.qcow2"] = f"{https.url}/img.qcow2"  # https -> https is fine
    with pytest.raises(ConfigError, match="refusing plain http") as ei:
        get(https, "/moved.qcow2", tmp_path / "a.qcow2")
    assert "https" in (ei.value.hint or "")
    assert [s.path for s in Handler.seen] == ["/moved.qcow2"]  # the http URL was never fetched
    assert sorted(os.listdir(tmp_path)) == ["certs"]
    assert get(https, "/elsewhere.qcow2", tmp_path / "b.qcow2").read_bytes() == OLD


@pytest.mark.parametrize(
    ("old", "validator"),
    [(File(OLD, etag='"v1"'), '"v1"'), (File(OLD, last_modified=LM_OLD), LM_OLD)],
    ids=["etag", "last-modified"],
)
def test_resume_when_unchanged(https: Served, tmp_path: Path, old: File, validator: str) -> None:
    Handler.files["/img.qcow2"] = old
    dest = tmp_path / "img.qcow2"
    interrupted(https, "/img.qcow2", dest, download.CHUNK + 7)
    get(https, "/img.qcow2", dest, sha256=hashlib.sha256(OLD).hexdigest())
    assert dest.read_bytes() == OLD
    last = Handler.seen[-1]
    assert (last.range, last.if_range, last.status) == (
        f"bytes={download.CHUNK + 7}-",
        validator,
        206,
    )
    assert sorted(os.listdir(tmp_path)) == ["certs", "img.qcow2"]  # no .part, no .part.meta


@pytest.mark.parametrize(
    ("old", "new", "sent"),
    [
        (File(OLD, etag='"v1"'), File(NEW, etag='"v2"'), '"v1"'),
        (File(OLD, last_modified=LM_OLD), File(NEW, last_modified=LM_NEW), LM_OLD),
    ],
    ids=["etag", "last-modified"],
)
@pytest.mark.parametrize("with_sha", [False, True], ids=["no-sha", "sha"])
def test_changed_file_restarts_from_zero(
    https: Served, tmp_path: Path, old: File, new: File, sent: str, with_sha: bool
) -> None:
    Handler.files["/img.qcow2"] = old
    dest = tmp_path / "img.qcow2"
    interrupted(https, "/img.qcow2", dest, download.CHUNK + 7)
    Handler.files["/img.qcow2"] = new  # the file changed on the server meanwhile
    get(https, "/img.qcow2", dest, sha256=hashlib.sha256(NEW).hexdigest() if with_sha else None)
    assert dest.read_bytes() == NEW  # not OLD's first MiB glued to NEW's tail
    last = Handler.seen[-1]
    assert (last.if_range, last.status) == (sent, 200)


def test_range_of_another_version_is_not_glued_on(https: Served, tmp_path: Path) -> None:
    """A server that ignores If-Range sends a 206 of the new file: its ETag gives it away."""
    Handler.files["/img.qcow2"] = File(OLD, etag='"v1"')
    dest = tmp_path / "img.qcow2"
    interrupted(https, "/img.qcow2", dest, download.CHUNK + 7)
    Handler.files["/img.qcow2"] = File(NEW, etag='"v2"')
    Handler.ignore_if_range = True
    get(https, "/img.qcow2", dest)
    assert dest.read_bytes() == NEW
    assert [(s.range is not None, s.status) for s in Handler.seen[-2:]] == [
        (True, 206),
        (False, 200),
    ]


def test_no_validator_no_resume(https: Served, tmp_path: Path) -> None:
    """A server that gave neither ETag nor Last-Modified cannot prove anything: start over."""
    Handler.files["/img.qcow2"] = File(OLD)
    dest = tmp_path / "img.qcow2"
    interrupted(https, "/img.qcow2", dest, download.CHUNK + 7)
    Handler.files["/img.qcow2"] = File(NEW)
    get(https, "/img.qcow2", dest)
    assert dest.read_bytes() == NEW
    assert (Handler.seen[-1].range, Handler.seen[-1].status) == (None, 200)


def test_part_without_metadata_is_not_resumed(https: Served, tmp_path: Path) -> None:
    """A .part of unknown origin (say, an older agent-swarm) is never trusted as a prefix."""
    Handler.files["/img.qcow2"] = File(NEW, etag='"v2"')
    dest = tmp_path / "img.qcow2"
    dest.with_name("img.qcow2.part").write_bytes(OLD[: download.CHUNK])
    get(https, "/img.qcow2", dest)
    assert dest.read_bytes() == NEW
    assert Handler.seen[-1].range is None


def test_metadata_of_another_url_is_not_resumed(https: Served, tmp_path: Path) -> None:
    Handler.files["/a/img.qcow2"] = File(OLD, etag='"same"')
    Handler.files["/b/img.qcow2"] = File(NEW, etag='"same"')
    dest = tmp_path / "img.qcow2"
    interrupted(https, "/a/img.qcow2", dest, download.CHUNK + 7)
    meta = json.loads(dest.with_name("img.qcow2.part.meta").read_text())
    assert meta["url"].endswith("/a/img.qcow2")
    get(https, "/b/img.qcow2", dest)
    assert dest.read_bytes() == NEW
    assert Handler.seen[-1].range is None


def test_complete_part_is_finished_without_a_request(https: Served, tmp_path: Path) -> None:
    """A .part that is already complete (the run stopped before the rename) is verified and
    renamed; a wrong checksum removes it and its metadata."""
    dest = tmp_path / "img.qcow2"
    url = f"{https.url}/img.qcow2"
    for sha, ok in ((hashlib.sha256(OLD).hexdigest(), True), ("0" * 64, False)):
        dest.with_name("img.qcow2.part").write_bytes(OLD)
        meta = {"url": url, "validator": '"v1"', "length": len(OLD)}
        dest.with_name("img.qcow2.part.meta").write_text(json.dumps(meta))
        if ok:
            assert get(https, "/img.qcow2", dest, sha256=sha).read_bytes() == OLD
        else:
            with pytest.raises(ImageError, match="checksum mismatch"):
                get(https, "/img.qcow2", dest, sha256=sha)
        assert sorted(os.listdir(tmp_path)) == (["certs", "img.qcow2"] if ok else ["certs"])
        dest.unlink(missing_ok=True)
    assert Handler.seen == []


def test_cli_refuses_plain_http(
    cli: Callable[..., subprocess.CompletedProcess[str]], plain: Served, tmp_path: Path
) -> None:
    r = cli(
        "init-base",
        "--image",
        f"{plain.url}/img.qcow2",
        "--name",
        "x",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert r.returncode == ConfigError.exit_code == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and "refusing plain http" in errors[0], r.stderr
    assert Handler.seen == []
