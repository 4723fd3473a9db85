"""Text from outside (API bodies and headers, channel errors), made safe to print on one line."""

from __future__ import annotations

import unicodedata

# Controls (C0, DEL, C1), format characters (bidi overrides and isolates, zero-width
# marks, BOM, tag characters), line and paragraph separators, and lone surrogates:
# each can move the cursor, reorder what follows, split a log line or fail to encode.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control, format and separator character escaped (\\n, \\xNN,
    \\uNNNN, \\UNNNNNNNN); printable text, backslashes included, is returned unchanged."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE else ch for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
