"""Text from users and file systems made safe to print and render.

Method names, citations and notes come from submitters; file names come from release trees.
Printed raw, an escape sequence (``\\x1b[...``) drives the terminal of whoever reads the
leaderboard, a bidirectional override (U+202E) reorders what a page shows, and a file name
that is not UTF-8 (Python keeps its bytes as lone surrogates) cannot even be written to a
UTF-8 file.  :func:`printable` is the one place where such text is made inert.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\u2028\u2029")


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a non-UTF-8 file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with every control character, bidirectional control, line
    separator and lone surrogate replaced by a visible escape such as ``\\x1b`` or ``\\u202e``;
    printable text, including non-ASCII letters, is unchanged.  Tabs and newlines are escaped
    too: a name is one line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        _escape(char)
        if char in _BIDI_CONTROLS or char in _LINE_BREAKS or unicodedata.category(char) in ("Cc", "Cs")
        else char
        for char in text
    )


def quote(names: Sequence[str], shown: int = 6) -> str:
    """A short list of names for a message: the first ``shown``, then how many more."""
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
