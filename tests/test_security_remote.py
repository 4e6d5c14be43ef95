"""What the far side of ``--host``/``--exec`` sends is hostile input: a lying far side
(tests/hostile_far_side.py) cannot put terminal escapes on this terminal, cannot pass
fields of the wrong type into the model, and cannot make periscope buffer gigabytes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

HOSTILE = Path(__file__).with_name("hostile_far_side.py")


def periscope(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "PERISCOPE_REMOTE_COMMAND": f"{shlex.quote(sys.executable)} {shlex.quote(str(HOSTILE))} {mode}"}
    return subprocess.run(
        [sys.executable, "-m", "explorer", "--exec", "env", *args],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("args", [("ps",), ("ps", "--json"), ("stack", "4242"), ("eval", "4242", "1")])
def test_escapes_from_the_far_side_are_written_out(args):
    result = periscope("escapes", *args)
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr and "\x07" not in result.stdout + result.stderr
    shown = result.stdout + result.stderr
    assert "\\x1b" in shown or "\\u001b" in shown, shown


def test_fields_of_the_wrong_type_are_refused():
    result = periscope("types", "ps")
    assert result.returncode == 1
    assert "sent a process whose 'pid' is malformed" in result.stderr


def test_a_huge_message_header_is_refused_without_buffering_it():
    result = periscope("huge", "ps")
    assert result.returncode == 1
    assert "sent a message larger than" in result.stderr, result.stderr
