"""The one-shot commands (``snapshot``, ``eval``, ``watch``) on this machine use the synchronous
client (explorer.oneshot): no asyncio on their path, their plain forms parsed without argparse,
and Ctrl+C still leaves the target clean."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorer import cli
from explorer.commands import eval as eval_command
from explorer.commands import snapshot as snapshot_command
from tests.agent_helpers import SETTLED, kill, periscope_process, start_watched
from tests.test_security_signals import _check_target_untouched, _wait_until_pending, blocked  # noqa: F401  (the fixture)

TARGET = '''
import sys, time
settings = {"mode": "idle"}
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    time.sleep(0.005)
'''

SHOW_MODULES = (
    "import runpy, sys\n"
    "sys.argv = ['periscope', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('explorer', run_name='__main__')\n"
    "except SystemExit as end:\n"
    "    status = end.code\n"
    "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
    "sys.exit(status)\n"
)
"""Run ``periscope ARGS`` in this interpreter, then print every module it imported on stderr."""


def _modules_of(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-c", SHOW_MODULES, *args], capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, done.stderr
    return done, set(lines[-1].split()[1:])


@pytest.mark.parametrize(
    "command",
    [("snapshot", "{pid}"), ("snapshot", "{pid}", "--json"), ("eval", "{pid}", "settings['mode']"), ("watch", "{pid}", "--count", "2", "--interval", "0.05")],
    ids=["snapshot", "snapshot-json", "eval", "watch"],
)
def test_one_shot_commands_do_not_import_asyncio(spawn, command):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    done, modules = _modules_of(*(part.format(pid=target.pid) for part in command))
    assert done.returncode == 0, done.stderr
    assert "asyncio" not in modules and not any(name.startswith("asyncio.") for name in modules)
    assert "explorer.hosts" not in modules and "explorer.oneshot" in modules
    if command[0] != "watch":  # plain forms: parsed without argparse
        assert "argparse" not in modules
    # Records are Structs, hashes CPython's own, the cache found by explorer.cache: none of
    # dataclasses (and the class-building work per dataclass), hashlib's OpenSSL binding or the
    # interpreter provisioning module on the way.
    assert [name for name in ("dataclasses", "hashlib", "_hashlib", "explorer.pythons") if name in modules] == []
    if command[0] == "eval":
        assert done.stdout == "'idle'\n"
    elif command[0] == "watch":
        frames = [json.loads(line) for line in done.stdout.splitlines()]
        assert [frame["pid"] for frame in frames] == [target.pid, target.pid]
    else:
        assert "settings" in done.stdout


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_during_an_eval_leaves_the_target_clean(spawn, tmp_path, presses):
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    descriptors = watched.descriptors()
    periscope = periscope_process("eval", str(watched.pid), "while True: pass")
    try:
        # The agent's thread, its worker and the eval's thread: the code is running.
        attached = watched.wait_for(lambda state: state["agent"] and state["threads"] == quiet["threads"] + 3)
        for _ in range(presses):
            periscope.send_signal(signal.SIGINT)
        _out, err = periscope.communicate(timeout=30)
    finally:
        kill(periscope)
    assert periscope.returncode == 130, err
    if presses == 1:
        assert "KeyboardInterrupt" in err  # the eval was interrupted in the target and said so
    # Stopping the eval may take ctypes, and loading it makes libffi hold its own library open for
    # good (unless the target had loaded ctypes): the one thing the agent cannot take back.
    fds = {quiet["fds"]} | ({quiet["fds"] + 1} if not any("libffi" in path for path in descriptors) else set())
    back = watched.wait_for(lambda state: {key: state[key] for key in SETTLED} in [{**quiet, "fds": n} for n in fds])
    assert all("libffi" in path for path in watched.descriptors() - descriptors)
    assert list(watched.tmpdir.iterdir()) == []  # the session directory is gone
    watched.wait_for_counter_beyond(max(back["counter"], attached["counter"]))  # the target counts on


def test_ctrl_c_during_an_eval_blocked_in_c_does_not_wait_for_the_call(spawn, tmp_path):
    """Code in a long C call (a sleep) takes KeyboardInterrupt only when the call returns: periscope
    says so and detaches at once (status 130); the eval's thread ends with the call, the target is clean."""
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    descriptors = watched.descriptors()
    periscope = periscope_process("eval", str(watched.pid), "import time; time.sleep(25)")
    try:
        watched.wait_for(lambda state: state["agent"] and state["threads"] == quiet["threads"] + 3)
        periscope.send_signal(signal.SIGINT)
        _out, err = periscope.communicate(timeout=30)
    finally:
        kill(periscope)
    assert periscope.returncode == 130, err
    assert "KeyboardInterrupt sent to the eval" in err and "blocked in a C call" in err, err
    assert watched.state()["threads"] > quiet["threads"]  # the sleep goes on: periscope did not wait for it
    fds = {quiet["fds"]} | ({quiet["fds"] + 1} if not any("libffi" in path for path in descriptors) else set())
    watched.wait_for(lambda state: {key: state[key] for key in SETTLED} in [{**quiet, "fds": n} for n in fds], timeout=60)
    assert list(watched.tmpdir.iterdir()) == []


# -- the quick parsers agree with argparse -----------------------------------------------------

WORDS = ["--json", "--js", "-h", "--help", "--", "-", "-5", "12", "007", "0", "1_0", "+4", " 3", "٣", "x", "", "1+1", "--via", "main"]


def _argparse_result(command: str, argv: list[str]) -> dict[str, object] | None:
    """What the full parser makes of ``periscope COMMAND ARGV``; None when it refuses or prints help."""
    parser = cli.build_parser(cli.command_summaries(), with_options=[command])
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(parser.parse_args([command, *argv]))
    except SystemExit:
        return None


@given(st.sampled_from(["snapshot", "eval"]), st.lists(st.sampled_from(WORDS) | st.from_regex(r"[0-9]{1,25}", fullmatch=True), max_size=3))
def test_quick_parse_agrees_with_argparse(command: str, argv: list[str]) -> None:
    module = snapshot_command if command == "snapshot" else eval_command
    quick = module.parse_quick(argv)
    if quick is not None:
        assert vars(quick) == _argparse_result(command, argv)


def test_quick_parse_takes_the_plain_forms() -> None:
    for command, argv in (("snapshot", ["42"]), ("snapshot", ["--json", "42"]), ("snapshot", ["42", "--json"]), ("eval", ["42", "x + 1"]), ("eval", ["42", "-"])):
        module = snapshot_command if command == "snapshot" else eval_command
        quick = module.parse_quick(argv)
        assert quick is not None and vars(quick) == _argparse_result(command, argv)
        assert quick.pid == 42


@pytest.mark.parametrize("command", ["eval", "watch"])
def test_ctrl_c_while_the_request_waits_withdraws_it(blocked, command):
    """Ctrl+C while the target's only thread is blocked in C, before it took the agent's request."""
    argv = [command, str(blocked.pid), *(["1 + 1"] if command == "eval" else ["--count", "1"]), "--timeout", "120"]
    periscope = subprocess.Popen([sys.executable, "-m", "explorer", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until_pending(blocked.pid, periscope)
        periscope.send_signal(signal.SIGINT)
        periscope.wait(timeout=30)
    finally:
        if periscope.poll() is None:
            periscope.kill()
            periscope.wait()
        stderr = periscope.stderr.read().decode(errors="replace")
        periscope.stdout.close()
        periscope.stderr.close()
    assert periscope.returncode == (130 if command == "eval" else 0), (periscope.returncode, stderr)  # watch ends on Ctrl+C
    assert "Traceback" not in stderr, stderr
    _check_target_untouched(blocked)
