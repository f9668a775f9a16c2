"""Journaled operations: intent recorded before acting, so a crash can be settled later.

Each operation that changes a VM (create, delete, seal, restore, gc) is a subclass of
:class:`Operation`: it names its journal ``kind``, declares its ``steps`` and says how an
interrupted run of it is settled (:meth:`Operation.recover`). ``doctor`` dispatches to that
method by the journal entry's op name; it never re-derives step names itself.

A step is *durable* (written to the registry, one small write transaction) only where
recovery depends on it; the other steps are crash points for tests only. So a ``create``
costs the journal two writes in all: begin (together with the VM's row) and end.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from agent_swarm.errors import AgentSwarmError
from agent_swarm.models import JournalEntry

if TYPE_CHECKING:
    from agent_swarm.core import Core
    from agent_swarm.registry import Registry

# Test hook for crash safety: `AGENT_SWARM_TEST_CRASH_AT=create:disk` makes the process
# SIGKILL itself at that step (see tests/integration/test_ops.py and tests/workflows).
CRASH_ENV = "AGENT_SWARM_TEST_CRASH_AT"


def crash_point(op: str, step: str) -> None:
    if os.environ.get(CRASH_ENV) == f"{op}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


class Op:
    """One running operation; :meth:`step` marks progress."""

    def __init__(self, reg: Registry, entry: int, op: str, durable: frozenset[str]) -> None:
        self.reg, self.entry, self.op, self.durable = reg, entry, op, durable
        # Set once the operation is past the point where giving up would leave the VM in a
        # state only `doctor --fix` can finish (then a failure keeps the entry).
        self.keep_on_error: str | None = None

    def step(self, step: str, detail: str | None = None) -> None:
        if step in self.durable:
            self.reg.journal_step(self.entry, step, detail)
        crash_point(self.op, step)


@dataclass
class Recovery:
    """How doctor settles an interrupted operation."""

    detail: str  # what is found, appended to "<op> interrupted at step …"
    fix: str | None  # what --fix does
    action: Callable[[], None] | None


class Operation:
    """Base of the journaled operations."""

    op: ClassVar[str]
    steps: ClassVar[tuple[str, ...]]  # in order; crash points all
    durable: ClassVar[frozenset[str]] = frozenset()  # steps recovery needs to know

    def __init__(self, core: Core) -> None:
        self.core = core
        self.reg = core.reg

    @contextlib.contextmanager
    def run(
        self,
        kind: str,
        name: str,
        detail: str = "",
        *,
        entry: int | None = None,
        provider: str = "",
    ) -> Iterator[Op]:
        """Record the operation on a VM before acting (``entry``: already begun, e.g. in
        the same transaction as the VM's row); the entry is removed when the body finishes
        (normally, or by an exception it cleaned up after). A killed process leaves it."""
        if entry is None:
            entry = self.reg.journal_begin(self.op, kind, name, detail, provider)
        o = Op(self.reg, entry, self.op, self.durable)
        crash_point(self.op, "begin")
        try:
            yield o
        except BaseException as exc:
            if o.keep_on_error is None:
                with contextlib.suppress(Exception):
                    self.reg.journal_end(entry)
            elif isinstance(exc, AgentSwarmError):
                exc.hint = o.keep_on_error
            raise
        else:
            self.reg.journal_end(entry)

    def recover(self, e: JournalEntry) -> Recovery:
        """How to settle ``e``, an interrupted run of this operation (its process is gone).
        By default: nothing to undo, clear the entry."""
        return Recovery("", "clear it", lambda: self.reg.journal_end(e.id))
