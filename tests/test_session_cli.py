"""``periscope snapshot``, ``watch`` and ``eval`` run as a user would, against real targets."""

from __future__ import annotations

import json
import subprocess
import sys

from tests import targets

TARGET = '''
import sys, threading, time
GREETING = "hello"
NUMBERS = [1, 2, 3]

def sleeper():
    counter = 41
    sys.stdout.write(f"native {threading.get_native_id()}\\n")
    while True:
        time.sleep(0.05)
        if counter != 41:
            sys.stdout.write(f"counter is now {counter}\\n")
            return

threading.Thread(target=sleeper, name="sleeper", daemon=True).start()
time.sleep(0.05)
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''


def periscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=timeout)


def test_snapshot_json_has_the_documented_shape(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    done = periscope("snapshot", str(target.pid), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pid"] == target.pid and doc["python"].startswith(targets.version_prefix())
    assert doc["source"] == "agent"
    assert doc["modules"]["__main__"]["GREETING"] == {"type": "str", "repr": "'hello'", "source": "agent"}
    assert doc["modules"]["__main__"]["NUMBERS"] == {"type": "list", "repr": "[1, 2, 3]", "source": "agent"}
    threads = {t["native_id"]: t for t in doc["threads"]}
    assert set(threads) == {target.pid, native}
    sleeper = threads[native]
    assert sleeper["name"] == "sleeper" and sleeper["daemon"] is True and isinstance(sleeper["thread_id"], int)
    top = sleeper["frames"][0]
    assert set(top) == {"filename", "function", "lineno", "locals"}
    assert top["function"] == "sleeper" and top["locals"]["counter"] == {"type": "int", "repr": "41", "source": "agent"}
    assert threads[target.pid]["frames"][0]["function"] == "<module>"


def test_snapshot_text(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    done = periscope("snapshot", str(target.pid))
    assert done.returncode == 0, done.stderr
    assert "thread" in done.stdout and "sleeper" in done.stdout and "GREETING = 'hello'" in done.stdout
    # The main thread runs the module's code: its globals are listed once, without the noise.
    assert "(its locals are the globals of module __main__, below)" in done.stdout
    assert done.stdout.count("GREETING = 'hello'") == 1
    assert "__loader__" not in done.stdout and "threading = <module" not in done.stdout
    assert "imports, functions, classes and dunder names left out" in done.stdout


def test_watch_prints_one_json_line_per_frame(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    done = periscope("watch", str(target.pid), "--interval", "0.1", "--count", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    frames = [json.loads(line) for line in lines]
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
    assert all(f["modules"]["__main__"]["GREETING"]["repr"] == "'hello'" for f in frames)


def test_eval_prints_the_repr_and_output(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    done = periscope("eval", str(target.pid), "print('from the target'); NUMBERS + [4]")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the target\n[1, 2, 3, 4]\n"
    done = periscope("eval", str(target.pid), "__name__", "--module", "threading")
    assert done.stdout == "'threading'\n"
    assert not any("from the target" in line for line in target.lines)


def test_eval_that_raises_exits_1_with_the_traceback_on_stderr(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    done = periscope("eval", str(target.pid), "{}['missing']")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" in done.stderr and "KeyError: 'missing'" in done.stderr


def test_eval_in_a_frame_writes_the_local_through(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    done = periscope("eval", str(target.pid), "counter", "--thread", str(native), "--frame", "0")
    assert (done.returncode, done.stdout) == (0, "41\n"), done.stderr
    done = periscope("eval", str(target.pid), "counter = 99", "--thread", str(native))
    assert done.returncode == 0, done.stderr
    target.wait_for_line("counter is now 99")
    done = periscope("eval", str(target.pid), "x", "--thread", "1", "--frame", "0")
    assert done.returncode == 1 and "periscope:" in done.stderr and "Traceback" not in done.stderr


def test_eval_echoes_no_none_honours_max_repr_and_picks_a_frame_by_name(spawn):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    native = int(target.wait_for_line("native ").split()[1])
    pid = str(target.pid)
    done = periscope("eval", pid, "print('hi')")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    done = periscope("eval", pid, "None")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    done = periscope("eval", pid, "list(range(1000))")
    assert done.stdout == repr(list(range(1000))) + "\n"
    full = repr(list(range(1000)))
    done = periscope("eval", pid, "list(range(1000))", "--max-repr", "50")
    assert done.stdout == full[:50] + "…\n"
    assert f"{len(full) - 50} dropped" in done.stderr
    done = periscope("eval", pid, "counter", "--thread", str(native), "--frame", "sleeper")
    assert (done.returncode, done.stdout) == (0, "41\n"), done.stderr
    assert "ran in frame 0 (sleeper() at" in done.stderr
    done = periscope("eval", pid, "print('y' * 600000); print('z' * 600000)")
    assert done.returncode == 0 and done.stdout.count("y") == 600000 and "z" not in done.stdout
    assert "600000 more characters of printed output were dropped" in done.stderr  # the second line, but its newline
    done = periscope("eval", pid, "x = = 1")
    assert done.returncode == 1 and done.stderr.count("SyntaxError") == 1 and "<periscope-agent>" not in done.stderr
    eval_help = " ".join(periscope("eval", "--help").stdout.split())
    assert "no running event loop" in eval_help and "threading.local()" in eval_help
    assert "fresh, empty namespace" in " ".join(periscope("exec", "--help").stdout.split())


def test_errors_are_one_line_without_a_traceback(spawn):
    not_python = spawn(argv=["sleep", "30"])
    done = periscope("snapshot", str(not_python.pid), "--timeout", "3")
    assert done.returncode == 1
    assert done.stderr.startswith("periscope: ") and done.stderr.count("\n") == 1, done.stderr
