"""Make untrusted text (anything a guest VM sends) safe to print on the user's terminal.

A guest controls its console, its logs and every byte a command in it writes. Printed raw in
one of our messages, that text could clear the screen, retitle the window, plant a
hyperlink, move the cursor to overwrite earlier lines (CR, backspace, CSI), or reorder what
the user reads (Unicode bidi overrides). :func:`sanitize` is applied to every piece of guest
text that goes into our own messages. It is not applied to a user's own command output in
``run``/``ssh``, which passes through as the user asked.
"""

from __future__ import annotations

import re
import unicodedata

# Complete ANSI sequences carry no meaning in our messages: removed, with what they wrap
# left in place. CSI (colours, cursor moves), OSC up to BEL or ST (titles, hyperlinks), and
# DCS/SOS/PM/APC strings up to ST. Any other ESC is shown escaped below.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
)
# Unicode categories shown escaped: controls (C0, DEL, C1 such as CSI U+009B), format
# characters (bidi overrides and isolates, zero-width characters, BOM), surrogates, private
# use, unassigned, and line/paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ELLIPSIS = "…"


def _escape(c: str) -> str:
    if c == "\r":
        return "\\r"
    if c == "\n":
        return "\\n"
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def sanitize(
    text: str | bytes, *, max_len: int = 2000, keep_newlines: bool = True, tail: bool = False
) -> str:
    """``text`` with nothing a terminal would act on, at most ``max_len`` characters.

    Bytes are decoded as UTF-8 (invalid bytes become U+FFFD). Complete ANSI escape
    sequences are removed; every other control or format character (ESC, BEL, backspace, a
    lone CR, C1 controls, bidi overrides, zero-width characters...) is shown escaped, e.g.
    ``\\x1b`` or ``\\u202e``, so the reader sees that something was there. Tabs are kept;
    newlines (CRLF counts as one) are kept unless ``keep_newlines`` is False, when they are
    shown as ``\\n``. Longer results are cut with "…", keeping the start, or the end when
    ``tail`` is True (for log tails).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    # Every kept character yields at least one: no need to look at more than this.
    budget = 4 * max_len + 64
    if len(text) > budget:
        text = text[-budget:] if tail else text[:budget]
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    out = []
    for c in text:
        if c == "\t" or (c == "\n" and keep_newlines):
            out.append(c)
        elif c == "\n" or c == "\r" or unicodedata.category(c) in _UNSAFE:
            out.append(_escape(c))
        else:
            out.append(c)
    result = "".join(out)
    if len(result) <= max_len:
        return result
    keep = max(max_len - len(_ELLIPSIS), 0)
    return _ELLIPSIS + result[len(result) - keep :] if tail else result[:keep] + _ELLIPSIS
