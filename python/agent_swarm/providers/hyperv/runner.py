"""The one way agent-swarm runs PowerShell: a shipped script, its parameters, one framed answer.

Every Hyper-V operation is a static script in ``scripts/`` (package data) with a ``param()``
block. It runs as::

    powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File <script> -Name value …

so a value is only ever a parameter's value, never part of a script's text (no
``-Command``, no string splicing, nothing for PowerShell to parse). Values are checked before
they are passed: text has no quotes or control characters and cannot be read as a parameter
name, paths are absolute, numbers are non-negative integers, switches are ``True``/``False``
(present or absent). Nothing secret is ever an argument: the scripts take names and paths.

A script answers with one JSON document on stdout between the lines ``<<<AGENT-SWARM-JSON``
and ``AGENT-SWARM-JSON>>>`` (``scripts/_common.ps1``); anything around it is ignored, a
missing, repeated, malformed or oversized frame is an error. An error answer carries a
category, mapped here onto agent-swarm's errors: a host that cannot run VMs
(:class:`ProviderUnavailable`, with the command that fixes it), a VM or checkpoint that does
not exist (:class:`InstanceNotFound`, :class:`NotFound`), a taken name
(:class:`AlreadyExists`), a state that does not allow it (:class:`InvalidState`), anything
else (:class:`ProviderError`, with Hyper-V's own message). A script that runs out of time is
killed: :class:`Timeout`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, NoReturn

from agent_swarm.errors import (
    AlreadyExists,
    InstanceNotFound,
    InvalidState,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Timeout,
)
from agent_swarm.providers.hyperv.probe import (
    ADD_TO_GROUP,
    ENABLE_HYPERV,
    ENABLE_MODULE,
    NO_SWITCH,
)
from agent_swarm.textsafe import sanitize

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
FRAME_START = "<<<AGENT-SWARM-JSON"
FRAME_END = "AGENT-SWARM-JSON>>>"
MAX_OUTPUT = 8 << 20  # bytes of stdout read at all
MAX_DOCUMENT = 4 << 20  # bytes of the framed JSON document
MAX_VALUE = 4096  # characters of one parameter value
POWERSHELL_ENV = "AGENT_SWARM_POWERSHELL"  # an absolute path to powershell.exe or pwsh.exe
# Fixed flags before -File: no profile (a user's profile must not change what runs or
# print into our output), never a prompt, no execution policy in the way of our own files.
FLAGS = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")

SCRIPT_RE = re.compile(r"[a-z][a-z0-9-]*\.ps1")
PARAM_RE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")

ParamValue = str | int | bool | PurePath


@dataclass(frozen=True, slots=True)
class Completed:
    """What a finished process left: its exit status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


# Runs argv and waits at most ``timeout`` seconds (then raises subprocess.TimeoutExpired,
# the process killed). Tests replace it with a fake PowerShell (tests/fakes/hyperv.py).
Execute = Callable[[Sequence[str], float], Completed]


def _execute(argv: Sequence[str], timeout: float) -> Completed:
    env = dict(os.environ)
    if Path(argv[0]).name.lower() == "powershell.exe":
        # Windows PowerShell 5.1 computes its own module path; one inherited from a
        # PowerShell 7 session makes it load 7's modules (and fail to import Hyper-V).
        env.pop("PSModulePath", None)
    p = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
        # No console window flashing up when agent-swarm runs without one.
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )
    return Completed(p.returncode, p.stdout, p.stderr)


def find_powershell() -> str:
    """The PowerShell to run: ``$AGENT_SWARM_POWERSHELL``, else Windows PowerShell 5.1 from
    System32 (always there, and the Hyper-V module's home; by its full path, not PATH), else
    PowerShell 7 (``pwsh``) on PATH."""
    override = os.environ.get(POWERSHELL_ENV)
    if override:
        p = Path(override)
        if not p.is_absolute() or not p.is_file():
            raise ProviderUnavailable(
                f"{POWERSHELL_ENV}={override} is not an absolute path to an existing file",
                hint=f"unset {POWERSHELL_ENV}, or point it at powershell.exe or pwsh.exe",
            )
        return str(p)
    root = os.environ.get("SYSTEMROOT") or r"C:\Windows"  # case-insensitive on Windows
    builtin = Path(root) / "System32" / "WindowsPowerShell" / "v1.0" / "powershell.exe"
    if sys.platform == "win32" and builtin.is_file():
        return str(builtin)
    for name in ("pwsh.exe", "pwsh") if sys.platform == "win32" else ("pwsh",):
        found = shutil.which(name)
        if found:
            return found
    raise ProviderUnavailable(
        "PowerShell was not found (no Windows PowerShell in System32, no pwsh on PATH)",
        hint=f"install PowerShell 7 (winget install Microsoft.PowerShell), or set {POWERSHELL_ENV}",
    )


def _text(name: str, value: str) -> str:
    if not value:
        raise ValueError(f"-{name}: an empty value cannot be passed to PowerShell")
    if len(value) > MAX_VALUE:
        raise ValueError(f"-{name}: the value is longer than {MAX_VALUE} characters")
    if value[0] in "-\u2013\u2014\u2015":
        # PowerShell would read it as a parameter name (it takes en and em dashes too).
        raise ValueError(f"-{name}: a value may not start with {value[0]!r}: {value[:80]!r}")
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127 or c in '"\u201c\u201d'), None)
    if bad is not None:
        raise ValueError(f"-{name}: a value may not contain {bad!r}: {value[:80]!r}")
    return value


def build_argv(executable: str, script: Path, params: Mapping[str, ParamValue]) -> list[str]:
    """``[powershell, flags…, -File, script, -Param, value, …]``; ValueError for any value
    that could be read as something else than that parameter's value."""
    argv = [executable, *FLAGS, "-File", str(script)]
    for name, value in params.items():
        if PARAM_RE.fullmatch(name) is None:
            raise ValueError(f"invalid PowerShell parameter name {name!r}")
        if isinstance(value, bool):
            if value:
                argv.append(f"-{name}")  # a [switch]: present or absent, never -X:$true
            continue
        if isinstance(value, int):
            if not 0 <= value < 2**31:
                raise ValueError(f"-{name}: {value} is not an integer PowerShell takes here")
            argv += [f"-{name}", str(value)]
        elif isinstance(value, PurePath):
            if not value.is_absolute():
                raise ValueError(f"-{name}: {value} is not an absolute path")
            argv += [f"-{name}", _text(name, str(value))]
        elif isinstance(value, str):
            argv += [f"-{name}", _text(name, value)]
        else:
            raise TypeError(f"-{name}: cannot pass a {type(value).__name__} to PowerShell")
    return argv


class AnswerError(ValueError):
    """The output holds no usable answer (none, several, malformed, too large)."""


def parse_answer(stdout: bytes) -> dict[str, Any] | None:
    """The framed answer in a script's stdout; None when there is no frame at all."""
    if len(stdout) > MAX_OUTPUT:
        raise AnswerError(f"{len(stdout)} bytes of output (at most {MAX_OUTPUT})")
    lines = stdout.decode("utf-8", errors="replace").splitlines()
    marks = [ln.strip().lstrip("\ufeff") for ln in lines]
    starts = [i for i, m in enumerate(marks) if m == FRAME_START]
    ends = [i for i, m in enumerate(marks) if m == FRAME_END]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0] + 1:
        raise AnswerError(f"{len(starts)} frame starts and {len(ends)} frame ends")
    body = "\n".join(lines[starts[0] + 1 : ends[0]])
    if len(body.encode()) > MAX_DOCUMENT:
        raise AnswerError(f"a {len(body.encode())}-byte answer (at most {MAX_DOCUMENT})")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise AnswerError(f"invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise AnswerError("the answer is not an object with a boolean 'ok'")
    if doc["ok"] and "result" not in doc:
        raise AnswerError("a successful answer without a 'result'")
    if not doc["ok"] and not isinstance(doc.get("error"), dict):
        raise AnswerError("a failed answer without an 'error' object")
    return doc


def one_line(text: object, limit: int = 300) -> str:
    """Hyper-V's text made safe for one line of ours (it may carry a user's VM notes)."""
    s = " ".join(str(text or "").split())
    return sanitize(s, max_len=limit, keep_newlines=False)


# Hints for the categories that mean "this host cannot run the provider as it is".
UNAVAILABLE_HINTS = {
    "not-elevated": ADD_TO_GROUP,
    "hyperv-missing": ENABLE_HYPERV + " (Windows Home has no Hyper-V)",
    "module-missing": ENABLE_MODULE,
    "service-stopped": "in an elevated PowerShell: Start-Service vmms (or restart Windows)",
    "switch-missing": NO_SWITCH,
}
HINTS = {
    "not-found": "`agent-swarm doctor --fix` defines it again from the registry",
    "ambiguous": "rename or remove the other VMs (or checkpoints) of that name in Hyper-V Manager",
    "access-denied": (
        "Hyper-V could not open a file: keep AGENT_SWARM_HOME on a local NTFS or ReFS volume, "
        "not compressed or encrypted, and let the VM read its disk and the disk's parents"
    ),
}


def raise_for_error(script: str, what: str, error: Mapping[str, Any]) -> NoReturn:
    """The agent-swarm error for a script's error answer."""
    category = str(error.get("category") or "other")
    message = one_line(error.get("message")) or f"{script} failed"
    if category in UNAVAILABLE_HINTS:
        raise ProviderUnavailable(message, hint=UNAVAILABLE_HINTS[category])
    hint = HINTS.get(category)
    if category == "not-found":
        raise InstanceNotFound(message, hint=hint)
    if category == "checkpoint-not-found":
        raise NotFound(message)
    if category == "exists":
        raise AlreadyExists(message)
    if category == "invalid-state":
        raise InvalidState(message)
    detail = one_line(error.get("id"), 120)
    suffix = f" [{detail}]" if detail and category == "other" else ""
    raise ProviderError(f"Hyper-V could not {what}: {message}{suffix}", hint=hint)


def _stderr_line(stderr: bytes) -> str:
    for ln in stderr.decode("utf-8", errors="replace").splitlines():
        s = ln.strip()
        if s and not s.startswith(("#< CLIXML", "<Objs", "At ", "+ ")):
            return one_line(s)
    return "no message"


class PowerShell:
    """Runs the shipped scripts (see the module docstring)."""

    def __init__(
        self,
        executable: str | None = None,
        *,
        execute: Execute | None = None,
        scripts: Path = SCRIPTS_DIR,
    ) -> None:
        self.executable = executable or find_powershell()
        self.execute = execute or _execute
        self.scripts = scripts

    def script_path(self, script: str) -> Path:
        if SCRIPT_RE.fullmatch(script) is None:
            raise ValueError(f"invalid script name {script!r}")
        path = self.scripts / script
        if not path.is_file():
            raise ProviderError(
                f"agent-swarm's Hyper-V script {script} is missing ({path})",
                hint="reinstall agent-swarm",
            )
        return path

    def run(
        self, script: str, params: Mapping[str, ParamValue], *, timeout: float, what: str
    ) -> Any:
        """The ``result`` of ``script`` run with ``params``; ``what`` says what it does, for
        messages ("start task t1")."""
        try:
            argv = build_argv(self.executable, self.script_path(script), params)
        except ValueError as exc:
            raise ProviderError(
                f"cannot {what}: a value cannot be passed to PowerShell safely ({exc})",
                hint="names, paths and values given to Hyper-V may not hold quotes, control "
                "characters or a leading '-'",
            ) from None
        try:
            done = self.execute(argv, timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(
                f"Hyper-V did not {what} within {timeout:.0f} s ({script} was stopped)",
                hint="the host may be busy: see the VM in Hyper-V Manager, then try again",
            ) from None
        except OSError as exc:
            raise ProviderUnavailable(
                f"cannot run {self.executable}: {exc.strerror or exc}",
                hint=f"check the PowerShell installation, or set {POWERSHELL_ENV}",
            ) from exc
        try:
            doc = parse_answer(done.stdout)
        except AnswerError as exc:
            raise ProviderError(
                f"unreadable answer from {script} while trying to {what}: {exc}",
                hint="a bug in agent-swarm's Hyper-V scripts: please report it with --debug",
            ) from None
        if doc is None:
            raise ProviderError(
                f"PowerShell failed to {what}: {script} exited with status "
                f"{done.returncode} and no answer ({_stderr_line(done.stderr)})",
                hint=f"run {self.executable} yourself to see whether it starts",
            )
        if not doc["ok"]:
            raise_for_error(script, what, doc["error"])
        if done.returncode != 0:
            raise ProviderError(
                f"{script} answered but exited with status {done.returncode} while trying to {what}"
            )
        return doc["result"]
