"""The one function that makes a target's strings safe to show in a terminal."""

from __future__ import annotations

from hypothesis import given, strategies as st

from explorer.text import is_visible, visible

ATTACKS = [
    "\x1b]0;owned\x07",  # retitle the terminal
    "\x1b[2J\x1b[H",  # clear the screen and home the cursor
    "\x1b]52;c;aGVsbG8=\x07",  # OSC 52: write the clipboard
    "\x9b31m",  # CSI as one C1 byte
    "fake\rreal",  # carriage return overwrites the line
    "abc\u202edcba",  # right-to-left override
    "\ud800",  # lone surrogate
    "\x7f\x00",
]


def test_every_attack_is_written_out_not_obeyed() -> None:
    for attack in ATTACKS:
        shown = visible(attack)
        assert is_visible(shown), (attack, shown)
        assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert visible("\x1b]0;t\x07") == "\\x1b]0;t\\x07"
    assert visible("a\u202eb") == "a\\u202eb"
    assert visible("a\nb\tc") == "a\\nb\\tc"


def test_keep_lines_keeps_newlines_and_tabs_only() -> None:
    assert visible("one\ntwo\tthree", keep_lines=True) == "one\ntwo\tthree"
    assert visible("one\n\x1b[2Jtwo", keep_lines=True) == "one\n\\x1b[2Jtwo"


def test_ordinary_text_is_unchanged() -> None:
    for text in ["", "Thread-1 (_run_loop)", "é ü 漢字 🐍", "a\u200db", "<function f at 0x7f>"]:
        assert visible(text) == text


@given(st.text())
def test_the_result_is_always_safe(text: str) -> None:
    assert is_visible(visible(text))
    assert is_visible(visible(text, keep_lines=True).replace("\n", "").replace("\t", ""))
