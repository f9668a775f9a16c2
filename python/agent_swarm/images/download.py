"""Download cloud images: resumable, verified against SHA256SUMS, written atomically."""

from __future__ import annotations

import hashlib
import os
import platform
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from agent_swarm.errors import AgentSwarmError, ConfigError, ImageError

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


def _open(url: str, headers: dict[str, str] | None = None, timeout: float = 30):  # type: ignore[no-untyped-def]
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"unsupported URL {url!r}", hint="use an http(s) URL or a local path")
    req = urllib.request.Request(url, headers={"User-Agent": "agent-swarm", **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise ImageError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ImageError(
            f"cannot reach {url}: {reason}",
            hint="check the network, or build an image locally: "
            "`agent-swarm init-base --build debian-12`",
        ) from exc


def sha256sums(url: str) -> dict[str, str]:
    """Parse a SHA256SUMS file: {file name: hex digest}."""
    with _open(url) as r:
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


def download(
    url: str, dest: Path, *, sha256: str | None, progress: Progress = lambda s: None
) -> Path:
    """Download ``url`` to ``dest``; resumes a previous ``dest.part``; verifies ``sha256``."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, headers) as r:
        status = getattr(r, "status", 200)
        if have and status != 206:
            have = 0  # server ignored the range: start over
        if status == 416:  # pragma: no cover - range past the end: the .part is complete
            pass
        length = r.headers.get("Content-Length")
        total = (int(length) + have) if length and length.isdigit() else None
        mode = "ab" if have else "wb"
        t0 = time.monotonic()
        got = have
        last = 0.0
        with open(part, mode) as f:
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
        raise ImageError(
            f"download of {url} ended early ({got} of {total} bytes)",
            hint="run the same command again: it resumes where it stopped",
        )
    if sha256:
        progress("verifying SHA256")
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        if h.hexdigest() != sha256.lower():
            part.unlink(missing_ok=True)
            raise ImageError(
                f"checksum mismatch for {url}: expected {sha256}, got {h.hexdigest()}",
                hint="the partial download was removed; run the command again",
            )
    os.replace(part, dest)
    return dest


def download_ubuntu(dest_dir: Path, progress: Progress = lambda s: None) -> Path:
    url, sums_url = ubuntu_image()
    name = url.rsplit("/", 1)[1]
    sums = sha256sums(sums_url)
    if name not in sums:
        raise AgentSwarmError(f"{sums_url} has no checksum for {name}")
    return download(url, dest_dir / name, sha256=sums[name], progress=progress)
