"""Options that cannot work are refused in one line before anything is written into the target:
``--count`` below 1, ``--timeout`` that is not a positive finite number, ``--max-repr`` below 1,
eval code that is not valid UTF-8. The target's audit hook tells whether the agent came in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TARGET = '''
import sys, time
def hook(event, args):
    if event == "cpython.remote_debugger_script":
        sys.stdout.write("injected\\n")
sys.addaudithook(hook)
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''

REFUSED = {
    "watch --count 0": (["watch", "{pid}", "--count", "0"], "--count must be at least 1"),
    "watch --count -3": (["watch", "{pid}", "--count", "-3"], "--count must be at least 1"),
    "snapshot --timeout 0": (["snapshot", "{pid}", "--timeout", "0"], "--timeout must be a positive number"),
    "snapshot --timeout -1": (["snapshot", "{pid}", "--timeout", "-1"], "--timeout must be a positive number"),
    "watch --timeout nan": (["watch", "{pid}", "--timeout", "nan"], "--timeout must be a positive number"),
    "eval --timeout inf": (["eval", "{pid}", "1", "--timeout", "inf"], "--timeout must be a positive number"),
    "eval --max-repr 0": (["eval", "{pid}", "1", "--max-repr", "0"], "--max-repr must be at least 1"),
    "eval code not UTF-8 (argv)": (["eval", "{pid}", b"x = '\xff'"], "not valid UTF-8"),
    "eval code not UTF-8 (stdin)": (["eval", "{pid}", "-"], "not valid UTF-8"),
}


def _periscope(argv: list, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [os.fsencode(sys.executable), b"-m", b"explorer", *(a if type(a) is bytes else a.encode() for a in argv)]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=60)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_in_one_line_before_anything_is_injected(spawn, case: str) -> None:
    target = spawn(TARGET)
    target.wait_for_line("ready")
    argv, wanted = REFUSED[case]
    argv = [str(target.pid) if a == "{pid}" else a for a in argv]
    done = _periscope(argv, stdin=b"print('\xff')\n" if "stdin" in case else b"")
    err = done.stderr.decode()
    assert done.returncode == 2, (done.returncode, err)
    assert "Traceback" not in err and err.startswith("periscope: ") and err.count("\n") == 1, err
    assert wanted in err, err
    # The hook works: a valid command right after is seen coming in, and it is the first.
    ok = _periscope(["snapshot", str(target.pid), "--json"])
    assert ok.returncode == 0, ok.stderr.decode()
    target.wait_for_line("injected")
    assert target.lines.count("injected") == 1, target.lines
