"""Bulk create/delete: many task VMs in parallel with bounded concurrency.

Each item runs in its own worker thread with its own registry connection and provider
connection, exactly as separate processes would: the registry's constraints and the
operations journal keep them apart, and one item's failure (rolled back by the item itself)
never stops or touches the others.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from agent_swarm import paths
from agent_swarm.errors import AgentSwarmError
from agent_swarm.registry import Registry

if TYPE_CHECKING:
    from agent_swarm.core import Core


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    detail: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "hint": self.hint,
        }


class LiveLines:
    """Per-item progress: on a terminal one line per item, redrawn in place; otherwise one
    prefixed line per message (repeated ticking messages throttled to every 15 s)."""

    def __init__(self, names: list[str], stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.names = names
        self.width = max(len(n) for n in names) if names else 0
        self.lines = dict.fromkeys(names, "waiting")
        self.lock = threading.Lock()
        self._drawn = 0
        self._last: dict[str, tuple[str, float]] = {}

    def __call__(self, name: str, message: str) -> None:
        prefix = f"{name}: "
        if message.startswith(f"task {name}: "):
            message = message[len(f"task {name}: ") :]
        with self.lock:
            self.lines[name] = message
            if self.tty:
                self._redraw()
                return
            key = message.split("(")[0]
            last = self._last.get(name)
            now = time.monotonic()
            if last and last[0] == key and now - last[1] < 15:
                return
            self._last[name] = (key, now)
            self.stream.write(f"{prefix:<{self.width + 2}}{message}\n")
            self.stream.flush()

    def _redraw(self) -> None:
        import shutil

        cols = shutil.get_terminal_size((100, 20)).columns - 1
        if self._drawn:
            self.stream.write(f"\033[{self._drawn}F")
        for n in self.names:
            line = f"{n + ':':<{self.width + 2}}{self.lines[n]}"[:cols]
            self.stream.write(f"\033[K{line}\n")
        self._drawn = len(self.names)
        self.stream.flush()

    def for_item(self, name: str) -> Callable[[str], None]:
        return lambda message: self(name, message)


def run_parallel(
    names: list[str],
    work: Callable[[str, Callable[[str], None]], str],
    *,
    parallel: int,
    live: LiveLines,
) -> list[Result]:
    """Run ``work(name, progress)`` for every name, at most ``parallel`` at a time; returns one
    Result per name, in the order given. Ctrl-C cancels the items not started yet and waits
    for the running ones to finish (or roll back) before re-raising."""

    def one(name: str) -> Result:
        t0 = time.monotonic()
        progress = live.for_item(name)
        try:
            detail = work(name, progress)
        except AgentSwarmError as exc:
            progress(f"failed: {exc.message}")
            return Result(name, False, time.monotonic() - t0, exc.message, exc.hint)
        except Exception as exc:  # a bug in one item must not take the others down
            progress(f"failed: {exc}")
            return Result(name, False, time.monotonic() - t0, f"internal error: {exc!r}")
        progress(f"done: {detail}")
        return Result(name, True, time.monotonic() - t0, detail)

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="bulk")
    futures = [pool.submit(one, n) for n in names]
    try:
        results = [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def worker_core(progress: Callable[[str], None]) -> Core:
    """A core with its own registry and provider connections, for one worker thread. It
    leaves ssh_config to the bulk command (one write for the whole bulk, not one per VM)."""
    from agent_swarm.core import Core

    core = Core(Registry(paths.registry_path()), progress=progress, write_ssh_config=False)
    core.noticed = True  # the provider's notice is printed once, by the bulk command itself
    return core


class SshConfigWriter:
    """ssh_config during a bulk: rewritten at most every ``interval`` seconds as items
    finish (a VM is reachable by its alias soon after it exists) and once at the end. One
    write per VM, each rendering every VM, would make a bulk quadratic."""

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def item_done(self, core: Core) -> None:
        with self._lock:
            if time.monotonic() - self._last < self.interval:
                return
            self._last = time.monotonic()
        with contextlib.suppress(AgentSwarmError, OSError):  # the final write reports it
            core.vms.refresh_ssh_config(force=True)

    def finish(self, core: Core) -> str | None:
        """The final write; an error message instead of an exception (the VMs exist: the
        results must still be shown)."""
        try:
            core.vms.refresh_ssh_config(force=True)
        except (AgentSwarmError, OSError) as exc:
            return f"warning: ssh_config was not updated ({exc}); `agent-swarm ssh-config` retries"
        return None
