"""`code PATH` inside a VM opens PATH in the host's VS Code (Remote-SSH on the VM's alias).

During `agent-swarm ssh`, the OpenSSH client reverse-forwards a Unix socket in the guest
(:data:`GUEST_SOCKET`, mode 0600, owned by the VM user) to a socket in a private 0700
directory on the host, served by :class:`CodeBridge`. The guest's ``/usr/local/bin/code``
(:data:`GUEST_SCRIPT`, installed by cloud-init) sends one JSON line naming absolute paths;
the bridge checks them and runs the host's ``code --folder-uri/--file-uri
vscode-remote://ssh-remote+ALIAS/PATH`` (an argv list, never a shell) and answers one JSON line.
Nothing but paths crosses the socket, and only paths go into the host command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from agent_swarm.models import GUEST_USER

log = logging.getLogger(__name__)

GUEST_DIR = f"/home/{GUEST_USER}/.agent-swarm"
GUEST_SOCKET = f"{GUEST_DIR}/code.sock"
GUEST_SCRIPT_PATH = "/usr/local/bin/code"
MAX_REQUEST = 64 * 1024
MAX_PATHS = 16
MAX_DEPTH = 3  # {"open": [{...}]}: a request is never nested deeper
MAX_CONNECTIONS = 4  # at once; more are closed unanswered (a guest cannot flood the host)
REQUEST_DEADLINE = 30.0  # seconds for a whole request, however slowly it trickles in

GUEST_SCRIPT = r'''#!/usr/bin/python3
"""code PATH... : open PATH in the host's VS Code (agent-swarm; works during `agent-swarm ssh`)."""
import json, os, socket, sys

SOCK = os.environ.get("AGENT_SWARM_CODE_SOCK", "@SOCK@")
args = sys.argv[1:]
if any(a in ("-h", "--help") for a in args):
    print("usage: code [PATH...]  open PATH (default: .) in the host's VS Code")
    sys.exit(0)
if any(a.startswith("-") for a in args):
    sys.exit("code: options are not supported here; usage: code [PATH...]")
items = [{"path": os.path.abspath(p), "dir": os.path.isdir(p)} for p in (args or ["."])]
for it in items:
    if not os.path.exists(it["path"]):
        sys.exit("code: %s: no such file or directory" % it["path"])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
try:
    s.connect(SOCK)
except OSError:
    sys.exit("code: not connected to the host's VS Code; this works in a session opened "
             "with `agent-swarm ssh NAME` on the host")
s.sendall((json.dumps({"open": items}) + "\n").encode())
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
try:
    reply = json.loads(buf.decode() or "{}")
except ValueError:
    reply = {}
if not reply.get("ok"):
    sys.exit("code: " + str(reply.get("error") or "no answer from the host"))
'''.replace("@SOCK@", GUEST_SOCKET)


def code_executable() -> str | None:
    """The host's VS Code CLI: $AGENT_SWARM_VSCODE (e.g. codium), else ``code`` on PATH."""
    return shutil.which(os.environ.get("AGENT_SWARM_VSCODE") or "code")


def _valid_path(p: Any) -> bool:
    if not (isinstance(p, str) and p.startswith("/") and 0 < len(p) <= 4096):
        return False
    if any(c in p for c in "\x00\n\r"):
        return False
    try:
        p.encode("utf-8")  # a lone surrogate ("\ud800" in the JSON) cannot go into a URI
    except UnicodeEncodeError:
        return False
    return True


def _no_numbers(text: str) -> Any:
    raise ValueError("a request holds no numbers")


def _depth_within(text: str, limit: int) -> bool:
    """Is every [ and { (outside strings) nested at most ``limit`` deep? Checked before
    json.loads, whose recursion a deeply nested request would exhaust."""
    depth = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return False
        elif c in "]}":
            depth -= 1
    return True


def parse_request(raw: bytes) -> list[tuple[str, bool]]:
    """The ``(path, is_dir)`` pairs of one request, ``{"open": [{"path": str, "dir": bool},
    ...]}`` and nothing else; raises ValueError for anything else (explicit checks, not
    ``assert``, which ``python -O`` removes)."""
    if len(raw) > MAX_REQUEST:
        raise ValueError("request too large")
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not _depth_within(text, MAX_DEPTH):
        raise ValueError("nested too deeply")
    try:
        req = json.loads(
            text, parse_int=_no_numbers, parse_float=_no_numbers, parse_constant=_no_numbers
        )
    except RecursionError:  # not reached after the depth check; kept as a backstop
        raise ValueError("nested too deeply") from None
    if not isinstance(req, dict) or set(req) != {"open"}:
        raise ValueError("not a request")
    items = req["open"]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_PATHS:
        raise ValueError("bad list of paths")
    out = []
    for it in items:
        if not isinstance(it, dict) or set(it) != {"path", "dir"}:
            raise ValueError("bad item")
        path, is_dir = it["path"], it["dir"]
        if not _valid_path(path) or not isinstance(is_dir, bool):
            raise ValueError("bad item")
        out.append((path, is_dir))
    return out


def code_argv(exe: str, alias: str, path: str, *, is_dir: bool) -> list[str]:
    uri = f"vscode-remote://ssh-remote+{alias}{quote(path)}"
    return [exe, "--folder-uri" if is_dir else "--file-uri", uri]


class CodeBridge:
    """Serves the host end of the reverse-forwarded socket for one VM alias."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._dir = Path(tempfile.mkdtemp(prefix="agent-swarm-code-"))  # 0700
        self.socket_path = self._dir / "code.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.socket_path))
        self._sock.listen(8)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._run_lock = threading.Lock()  # one VS Code launch at a time
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def forward_args(self) -> list[str]:
        """OpenSSH options forwarding the guest socket to this bridge (the caller removes a
        stale guest socket first: sshd does not replace it unless StreamLocalBindUnlink)."""
        return ["-R", f"{GUEST_SOCKET}:{self.socket_path}"]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        import time

        try:
            with conn, contextlib.suppress(OSError):
                deadline = time.monotonic() + REQUEST_DEADLINE
                buf = b""
                while not buf.endswith(b"\n") and len(buf) <= MAX_REQUEST:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    conn.settimeout(left)
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                with self._run_lock:
                    try:
                        reply = self.handle_request(buf)
                    except Exception:  # a guest must never crash or print on the host
                        log.debug("code bridge: request failed", exc_info=True)
                        reply = {"ok": False, "error": "internal error on the host"}
                conn.settimeout(10)
                conn.sendall((json.dumps(reply) + "\n").encode())
        finally:
            self._slots.release()

    def handle_request(self, raw: bytes) -> dict[str, Any]:
        """Check one request and open its paths; returns the reply."""
        if len(raw) > MAX_REQUEST:
            return {"ok": False, "error": "request too large"}
        try:
            items = parse_request(raw)
        except ValueError:
            return {"ok": False, "error": "malformed request"}
        exe = code_executable()
        if exe is None:
            return {
                "ok": False,
                "error": "VS Code's `code` command is not on the host's PATH "
                "(set AGENT_SWARM_VSCODE to use another one, e.g. codium)",
            }
        for path, is_dir in items:
            argv = code_argv(exe, self.alias, path, is_dir=is_dir)
            try:
                r = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return {"ok": False, "error": f"running VS Code on the host failed: {exc}"}
            if r.returncode != 0:
                msg = r.stderr.decode(errors="replace").strip().splitlines()
                tail = f": {msg[-1]}" if msg else ""
                return {"ok": False, "error": f"VS Code exited with {r.returncode}{tail}"}
        return {"ok": True}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> CodeBridge:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
