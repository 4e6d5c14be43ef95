"""The sampler and ``periscope record`` against real targets: accuracy, the files, exits and Ctrl+C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from explorer import cli
from explorer.profile import FLAG_CPU, Profile, ProfileFrame, ThreadMeta
from explorer.sampler import Sampler
from tests.profile_targets import SHARES, reported_shares, reset_counts, start_shares_target

ACCURACY_BOUND = 8.0
"""Points a self % may be off the target's own figure in a test (the benchmark holds 3)."""

IDLE_THREADS = '''
import threading, time
def parked(n):
    threading.Event().wait()
for i in range(20):
    threading.Thread(target=parked, args=(i,), name=f"parked-{i}", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.2)
'''


def _sample(pid: int, seconds: float, mode: str, rate: float = 100.0) -> Sampler:
    sampler = Sampler(pid, rate=rate, mode=mode, profile=Profile(keep_timeline=True))
    sampler.start()
    try:
        sampler.done.wait(seconds)
    finally:
        sampler.stop()
    return sampler


def _main_thread(sampler: Sampler) -> int:
    return next(meta.native_id for meta in sampler.profile.thread_list() if meta.is_main)


def test_self_shares_match_the_targets_own_counters(spawn):
    target = start_shares_target(spawn)
    time.sleep(0.3)  # past start-up
    reset_counts(target)
    sampler = _sample(target.pid, 4.0, "cpu")
    truth = reported_shares(target)
    counts = sampler.profile.counts("cpu", thread=_main_thread(sampler))
    assert counts.samples >= 150, counts.samples
    own = {row.function: row.self_samples for row in counts.summary()}
    # The target's counters time only the three functions: their shares of the three's samples.
    three = sum(own.get(name, 0) for name in SHARES)
    measured = {name: 100.0 * own.get(name, 0) / three for name in SHARES}
    for name, expected in SHARES.items():
        assert abs(truth[name] - expected) < 10, truth  # the target did what it says
        assert abs(measured.get(name, 0.0) - truth[name]) <= ACCURACY_BOUND, (name, measured, truth)
    stats = sampler.stats()
    assert stats.ticks >= 0.8 * 4.0 * 100, stats
    assert sampler.error is None


def test_idle_threads_are_not_walked_again_and_count_in_wall_mode_only(spawn):
    target = spawn(IDLE_THREADS)
    target.wait_for_line("ready")
    time.sleep(0.2)
    wall = _sample(target.pid, 1.5, "wall")
    stats = wall.stats()
    threads = wall.profile.thread_list()
    assert len(threads) == 21
    assert stats.samples >= 20 * stats.ticks  # every thread, every tick
    assert stats.reused > 10 * stats.walks, stats  # parked threads were read once, then reused
    parked = [row for row in wall.profile.counts("wall").summary() if row.function == "parked"]
    assert parked and parked[0].total_samples >= 19 * stats.ticks * 0.9
    cpu = _sample(target.pid, 1.0, "cpu")
    rows = {row.function for row in cpu.profile.counts("cpu").summary()}
    assert "parked" not in rows  # never on a CPU
    assert cpu.stats().walks <= cpu.stats().ticks  # only threads on a CPU were read


def test_gil_mode_samples_only_the_thread_holding_it(spawn):
    target = start_shares_target(spawn)
    sampler = _sample(target.pid, 1.5, "gil")
    threads = {meta.native_id for meta in sampler.profile.thread_list()}
    assert threads == {target.pid}  # the commands thread waits on stdin without the GIL
    assert sampler.stats().samples >= 0.8 * sampler.stats().ticks


def test_the_window_and_reset(spawn):
    """Samples leave the 10 s window as they age; reset forgets them all."""
    now = [1000.0]
    profile = Profile(clock=lambda: now[0])
    thread = ThreadMeta(1, None, True)
    stack = profile.intern((ProfileFrame("work", "app.py", 3),))
    for tick in range(30):
        now[0] = 1000.0 + tick * 0.5
        profile.add_tick(now[0], [(thread, stack, FLAG_CPU)])
    assert profile.counts("cpu").samples == 30
    recent = profile.counts("cpu", window=10.0).samples
    assert 18 <= recent <= 22  # about the last 10 s of 15
    assert profile.counts("gil").samples == 0
    profile.reset()
    assert profile.counts("wall").samples == 0 and profile.counts("wall", window=10.0).samples == 0


# --- periscope record ----------------------------------------------------------------------------


def _check_speedscope(document: dict) -> None:
    """The fields speedscope's file format requires (src/lib/file-format-spec.ts), with their types."""
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = document["shared"]["frames"]
    assert isinstance(frames, list) and frames
    for frame in frames:
        assert isinstance(frame["name"], str)
        assert isinstance(frame.get("file", ""), str)
        assert isinstance(frame.get("line", 1), int)
    profiles = document["profiles"]
    assert isinstance(profiles, list) and profiles
    for profile in profiles:
        assert profile["type"] == "sampled"
        assert isinstance(profile["name"], str)
        assert profile["unit"] in ("none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes")
        assert isinstance(profile["startValue"], (int, float)) and isinstance(profile["endValue"], (int, float))
        assert profile["endValue"] >= profile["startValue"]
        assert len(profile["samples"]) == len(profile["weights"]) > 0
        for sample in profile["samples"]:
            assert sample and all(isinstance(index, int) and 0 <= index < len(frames) for index in sample)
        assert all(isinstance(weight, (int, float)) and weight > 0 for weight in profile["weights"])
        assert math.isclose(sum(profile["weights"]), profile["endValue"] - profile["startValue"], rel_tol=1e-6)
    index = document.get("activeProfileIndex", 0)
    assert 0 <= index < len(profiles)


def test_record_speedscope(spawn, tmp_path, capsys):
    target = start_shares_target(spawn)
    output = tmp_path / "profile.json"
    status = cli.main(["record", str(target.pid), "--duration", "1.5", "-o", str(output)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "(speedscope)" in err and "wrote" in err
    document = json.loads(output.read_text())
    _check_speedscope(document)
    names = {frame["name"] for frame in document["shared"]["frames"]}
    assert set(SHARES) <= names
    main = document["profiles"][0]
    leaves = [document["shared"]["frames"][sample[-1]]["name"] for sample in main["samples"]]
    assert max(set(leaves), key=leaves.count) == "share_sixty"  # the root-to-leaf order is right


HOSTILE = '''
import time
def work():
    x = 0
    for _ in range(100_000):
        x += 1
work.__code__ = work.__code__.replace(co_qualname="evil;\\x1b]0;pwned\\x07 name")
print("ready", flush=True)
while True:
    work()
'''


def test_record_collapsed_parses_back_and_hostile_names_cannot_break_it(spawn, tmp_path, capsys):
    target = spawn(HOSTILE)
    target.wait_for_line("ready")
    output = tmp_path / "profile.txt"
    status = cli.main(["record", str(target.pid), "--duration", "1", "--mode", "wall", "-o", str(output)])
    err = capsys.readouterr().err
    assert status == 0, err
    written = int(err.split("wrote ")[1].split()[0])
    text = output.read_text()
    assert "\x1b" not in text and "\x07" not in text
    total = 0
    leaves = []
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        frames = stack.split(";")
        assert frames[0].startswith("MainThread (")
        for frame in frames[1:]:
            name, where = frame.rsplit(" (", 1)
            assert where.endswith(")") and ":" in where
        leaves.append(frames[-1])
    assert total == written > 0
    assert any(leaf.startswith("evil\\x3b\\x1b]0\\x3bpwned\\x07 name (") for leaf in leaves), leaves
    # JSON keeps the name exact.
    exact = tmp_path / "profile-exact.json"
    assert cli.main(["record", str(target.pid), "--duration", "0.5", "--format", "json", "-o", str(exact)]) == 0
    capsys.readouterr()
    document = json.loads(exact.read_text())
    names = {frame["function"] for thread in document["threads"] for stack in thread["stacks"] for frame in stack["frames"]}
    assert "evil;\x1b]0;pwned\x07 name" in names
    assert document["mode"] == "cpu" and document["samples"] > 0 and document["exited"] is False


EXITS = '''
import time
def busy_until(deadline):
    x = 0
    while time.monotonic() < deadline:
        x += 1
print("ready", flush=True)
busy_until(time.monotonic() + 1.5)
'''


def test_record_on_a_target_that_exits_writes_what_it_had_and_says_so(spawn, tmp_path, capsys):
    target = spawn(EXITS)
    target.wait_for_line("ready")
    output = tmp_path / "profile.json"
    started = time.monotonic()
    status = cli.main(["record", str(target.pid), "--duration", "60", "--format", "json", "-o", str(output)])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 30  # it did not wait out the duration
    assert status == 0, err
    assert f"process {target.pid} exited after" in err and "gathered until then" in err, err
    document = json.loads(output.read_text())
    assert document["exited"] is True and document["samples"] > 20
    functions = {frame["function"] for thread in document["threads"] for stack in thread["stacks"] for frame in stack["frames"]}
    assert "busy_until" in functions


def test_ctrl_c_writes_what_was_gathered(spawn, tmp_path):
    target = start_shares_target(spawn)
    output = tmp_path / "profile.txt"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "explorer", "record", str(target.pid), "-o", str(output)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        assert recorder.stderr is not None
        first = recorder.stderr.readline()
        assert first.startswith(f"periscope: recording process {target.pid}"), first
        time.sleep(1.0)
        recorder.send_signal(signal.SIGINT)
        _, err = recorder.communicate(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    assert recorder.returncode == 0, err
    assert "stopped by Ctrl+C: wrote" in err, err
    assert "share_sixty" in output.read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--rate", "0"], "--rate must be between 1 and 1000"),
        (["--rate", "nan"], "--rate must be between 1 and 1000"),
        (["--duration", "-1"], "--duration must be a number of seconds above 0"),
        (["-o", "/nonexistent-dir/p.json"], "the directory /nonexistent-dir does not exist"),
    ],
)
def test_record_refuses_bad_arguments_in_one_line(arguments, message, tmp_path, capsys):
    argv = ["record", str(os.getpid()), "-o", str(tmp_path / "p.json"), *arguments]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("periscope: ") and err.count("\n") == 1 and message in err, err


def test_top_refuses_what_it_cannot_profile_in_one_line(spawn, capsys):
    """``periscope top`` checks the process before it opens the TUI."""
    not_python = spawn(argv=["sleep", "60"])
    for argv, status, message in (
        (["top", str(not_python.pid)], 1, "is not a Python program"),
        (["top", "0"], 2, "0 is not a process id"),
        (["top", str(not_python.pid), "--rate", "5000"], 2, "--rate must be between 1 and 1000"),
    ):
        assert cli.main(argv) == status
        err = capsys.readouterr().err
        assert err.startswith("periscope: ") and err.count("\n") == 1 and message in err, err


def test_sampling_never_stops_the_target(spawn):
    """At the highest rate, no thread of the target is ever traced or stopped, and it keeps working."""
    target = start_shares_target(spawn)
    reset_counts(target)
    sampler = Sampler(target.pid, rate=1000, mode="wall", profile=Profile())
    sampler.start()
    states: set[bytes] = set()
    tracers: set[bytes] = set()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for task in os.listdir(f"/proc/{target.pid}/task"):
                try:
                    with open(f"/proc/{target.pid}/task/{task}/stat", "rb") as handle:
                        stat = handle.read()
                    with open(f"/proc/{target.pid}/task/{task}/status", "rb") as handle:
                        tracer = next(line for line in handle if line.startswith(b"TracerPid:"))
                except (FileNotFoundError, ProcessLookupError):
                    continue
                states.add(stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3])
                tracers.add(tracer.split()[1])
    finally:
        sampler.stop()
    assert sampler.stats().ticks > 500
    assert not states & {b"t", b"T"}, states
    assert tracers == {b"0"}
    assert reported_shares(target)["work"] > 0
