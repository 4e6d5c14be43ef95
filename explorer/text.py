"""Strings from a target, made safe to show: every control character is shown, never obeyed.

Thread names, file and function names, variable names, reprs and eval output all come from the
process periscope looks at, which may be hostile. A raw ESC byte in any of them could retitle the
terminal, clear it, forge periscope's own output or write the clipboard (OSC 52). Everything
periscope prints or renders from a target goes through :func:`visible`; JSON output does not
need it (JSON escapes control characters itself).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import re

# Bidirectional controls reorder what is shown around them (the "Trojan Source" trick): shown, not obeyed.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# C0 controls, DEL, C1 controls, lone surrogates, bidi controls, and the line and paragraph separators.
_UNSAFE_CLASS = f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{_BIDI}\u2028\u2029]"
_UNSAFE_KEEP_LINES_CLASS = f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff{_BIDI}\u2028\u2029]"
_patterns: dict[bool, re.Pattern[str]] = {}
"""The compiled classes, by ``keep_lines``: compiled on first use, as most text is printable
and ``periscope stack`` should not pay for importing ``re``."""


def _pattern(keep_lines: bool) -> re.Pattern[str]:
    pattern = _patterns.get(keep_lines)
    if pattern is None:
        import re

        pattern = _patterns[keep_lines] = re.compile(_UNSAFE_KEEP_LINES_CLASS if keep_lines else _UNSAFE_CLASS)
    return pattern


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    if char == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def visible(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with every control character written out (``ESC`` -> ``\\x1b``).

    With ``keep_lines``, newlines and tabs stay as they are (multi-line eval output); otherwise
    they are escaped too, so that one value stays one line.
    """
    if text.isprintable():
        return text
    return _pattern(keep_lines).sub(_escape, text)


def is_visible(text: str) -> bool:
    """Whether ``text`` is already safe to show as one line (nothing :func:`visible` would change)."""
    return text.isprintable() or _pattern(False).search(text) is None

