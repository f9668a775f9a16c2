"""Download cloud images over HTTPS: resumable when provably safe, verified against
SHA256SUMS, written atomically.

Only ``https://`` is accepted, and redirects may not leave https. An interrupted download
leaves ``<dest>.part`` and ``<dest>.part.meta`` (the URL, the response's validator and its
length); the next run resumes with ``Range`` + ``If-Range`` and starts over whenever the
server cannot prove that the file is still the same one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import platform
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from agent_swarm.errors import AgentSwarmError, ConfigError, ImageError
from agent_swarm.fsutil import atomic_write

UBUNTU_RELEASE_URL = "https://cloud-images.ubuntu.com/releases/24.04/release"
UBUNTU_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
CHUNK = 1 << 20

Progress = Callable[[str], None]


def ubuntu_image() -> tuple[str, str]:
    """(URL of the Ubuntu 24.04 cloud image for this host, URL of its SHA256SUMS)."""
    base = os.environ.get("AGENT_SWARM_UBUNTU_URL", UBUNTU_RELEASE_URL).rstrip("/")
    arch = UBUNTU_ARCH.get(platform.machine().lower())
    if arch is None:
        raise ConfigError(f"no Ubuntu cloud image for this architecture ({platform.machine()})")
    return f"{base}/ubuntu-24.04-server-cloudimg-{arch}.img", f"{base}/SHA256SUMS"


_HTTPS_HINT = "use an https:// URL, or download the image yourself and pass its path"


def check_url(url: str) -> None:
    """Refuse anything but an ``https://`` URL (ConfigError), before any connection."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "http":
        raise ConfigError(
            f"refusing plain http URL {url}: anyone on the network path could swap the image",
            hint=_HTTPS_HINT,
        )
    if scheme != "https":
        raise ConfigError(f"unsupported URL {url!r}", hint="use an https URL or a local path")


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https: an https URL must not be downgraded on the way."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() != "https":
            fp.close()
            what = "plain http" if urlsplit(newurl).scheme.lower() == "http" else "non-https"
            raise ConfigError(
                f"refusing {what} redirect from {req.full_url} to {newurl}", hint=_HTTPS_HINT
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _RangeNotSatisfiable(Exception):
    pass


def _open(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    context: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> http.client.HTTPResponse:
    check_url(url)
    # context=None: the system trust store (ssl.create_default_context()).
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects()
    )
    req = urllib.request.Request(url, headers={"User-Agent": "agent-swarm", **(headers or {})})
    try:
        r: http.client.HTTPResponse = opener.open(req, timeout=timeout)
        return r
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and headers and "Range" in headers:
            raise _RangeNotSatisfiable from exc
        raise ImageError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(
            f"cannot reach {url}: {reason}",
            hint="check the network, or build an image locally: "
            "`agent-swarm init-base --build debian-12`",
        ) from exc


def sha256sums(url: str, *, context: ssl.SSLContext | None = None) -> dict[str, str]:
    """Parse a SHA256SUMS file: {file name: hex digest}."""
    with _open(url, context=context) as r:
        text = r.read(1 << 20).decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _validator(headers: Message) -> str | None:
    """What If-Range may carry for this response: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def _resume_point(part: Path, meta: Path, url: str) -> tuple[int, dict[str, Any]]:
    """(bytes of ``part`` that may be resumed, its metadata); (0, {}) if it cannot be."""
    try:
        have = part.stat().st_size
        m = json.loads(meta.read_text())
    except (OSError, ValueError):
        return 0, {}
    length = m.get("length") if isinstance(m, dict) else None
    if (
        not isinstance(m, dict)
        or m.get("url") != url
        or not isinstance(m.get("validator"), str)
        or not m["validator"]
        or not (length is None or (isinstance(length, int) and have <= length))
    ):
        return 0, {}
    return have, m


def _content_range(headers: Message) -> tuple[int, int | None] | None:
    """(first byte, complete length or None) from ``Content-Range: bytes a-b/n``."""
    v = headers.get("Content-Range", "")
    unit, _, rest = v.partition(" ")
    span, _, total = rest.partition("/")
    first = span.split("-")[0]
    if unit != "bytes" or not first.isdigit():
        return None
    return int(first), int(total) if total.isdigit() else None


def _length(headers: Message) -> int | None:
    n = headers.get("Content-Length")
    return int(n) if n and n.isdigit() else None


def _resume(
    url: str, have: int, m: dict[str, Any], context: ssl.SSLContext | None
) -> tuple[http.client.HTTPResponse | None, int | None]:
    """Ask for the rest of the file from byte ``have`` if it is still the same file.

    Returns (response, complete length) for a range that continues the .part exactly;
    (200 response, None) when the server sent the whole (changed) file instead; (None, None)
    when a fresh request is needed.
    """
    validator = m["validator"]
    try:
        r = _open(url, {"Range": f"bytes={have}-", "If-Range": validator}, context=context)
    except _RangeNotSatisfiable:
        return None, None
    if r.status == 200:
        return r, None
    cr = _content_range(r.headers) if r.status == 206 else None
    etag = r.headers.get("ETag")
    n = _length(r.headers)
    total = None
    if cr is not None and cr[0] == have:
        total = cr[1] if cr[1] is not None else (have + n if n is not None else None)
    if (
        total is None
        or m.get("length") not in (None, total)
        # A server that ignores If-Range still labels the range it sends.
        or (etag is not None and validator.startswith('"') and etag != validator)
    ):
        r.close()  # never glue a range of something else onto the .part
        return None, None
    return r, total


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: Progress = lambda s: None,
    context: ssl.SSLContext | None = None,
) -> Path:
    """Download ``url`` (https only) to ``dest``; verify ``sha256`` when given.

    A previous ``dest.part`` is resumed only when it is safe: its ``dest.part.meta`` names
    the same URL and the validator (strong ETag, else Last-Modified) of the response it came
    from, and the server honours ``Range`` with ``If-Range: <validator>``. A server that
    answers 200 (the file changed), gave no validator, or sends a range that does not fit
    restarts the download from zero. ``context`` is the TLS context (default: the system
    trust store); redirects to anything but https are refused.
    """
    check_url(url)
    part = dest.with_name(dest.name + ".part")
    meta = dest.with_name(dest.name + ".part.meta")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have, m = _resume_point(part, meta, url)
    r = None
    total: int | None = None
    if have and have == m.get("length"):
        total = have  # complete in an earlier run that stopped before the rename
    elif have:
        r, total = _resume(url, have, m, context)  # (200 response, None) if the file changed
        if total is None:
            have = 0
    if not have:
        if r is None:
            r = _open(url, context=context)
        if r.status != 200:
            r.close()
            raise ImageError(f"download of {url} failed: unexpected HTTP {r.status}")
        total = _length(r.headers)
        # Safe against a crash at any point: the old metadata goes first, the .part is
        # emptied, and only then is the new validator recorded.
        meta.unlink(missing_ok=True)
        part.write_bytes(b"")
        validator = _validator(r.headers)
        if validator:
            atomic_write(meta, json.dumps({"url": url, "validator": validator, "length": total}))
    got = have
    if r is not None:
        with r, open(part, "ab" if have else "wb") as f:
            t0 = time.monotonic()
            last = 0.0
            while True:
                buf = r.read(CHUNK)
                if not buf:
                    break
                f.write(buf)
                got += len(buf)
                now = time.monotonic()
                if now - last > 0.5:
                    last = now
                    rate = (got - have) / max(now - t0, 1e-3)
                    pct = f"{100 * got / total:5.1f}% " if total else ""
                    of = f" of {_human(total)}" if total else ""
                    progress(f"downloading {pct}{_human(got)}{of} ({_human(rate)}/s)")
            f.flush()
            os.fsync(f.fileno())
    if total is not None and got < total:
        resumable = meta.exists()
        raise ImageError(
            f"download of {url} ended early ({got} of {total} bytes)",
            hint="run the same command again: it resumes where it stopped"
            if resumable
            else "run the same command again (this server does not allow a safe resume)",
        )
    if sha256:
        progress("verifying SHA256")
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        if h.hexdigest() != sha256.lower():
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise ImageError(
                f"checksum mismatch for {url}: expected {sha256}, got {h.hexdigest()}",
                hint="the partial download was removed; run the command again",
            )
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    return dest


def download_ubuntu(dest_dir: Path, progress: Progress = lambda s: None) -> Path:
    url, sums_url = ubuntu_image()
    name = url.rsplit("/", 1)[1]
    sums = sha256sums(sums_url)
    if name not in sums:
        raise AgentSwarmError(f"{sums_url} has no checksum for {name}")
    return download(url, dest_dir / name, sha256=sums[name], progress=progress)
