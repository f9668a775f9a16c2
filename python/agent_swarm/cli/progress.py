"""Live progress on stderr: one rewritten line on a terminal, throttled lines otherwise."""

from __future__ import annotations

import re
import shutil
import sys
import time

_COUNTER = re.compile(r"\(\d+s\).*$")


class Progress:
    def __init__(self, *, quiet: bool = False, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._last_key = ""
        self._last_time = 0.0
        self._dirty = False

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r\033[K" + message[:width])
            self.stream.flush()
            self._dirty = True
            return
        # Not a terminal: repeat a ticking message (same text apart from "(12s) …") at most
        # every 15 s, so logs stay readable.
        key = _COUNTER.sub("", message)
        now = time.monotonic()
        if key == self._last_key and now - self._last_time < 15:
            return
        self._last_key, self._last_time = key, now
        self.stream.write(message + "\n")
        self.stream.flush()

    def done(self, message: str | None = None) -> None:
        if self.tty and self._dirty:
            self.stream.write("\r\033[K")
            self._dirty = False
        if message and not self.quiet:
            self.stream.write(message + "\n")
        self.stream.flush()
