"""Values from outside: ``periscope stack --locals`` against ``py-spy dump --locals``.

Figures, not assertions (``python -m tests.bench values``):

* whole commands, interleaved in one run, on a single-thread idle target (its main thread asleep
  in a function with a dozen locals of the builtin types), on a 100-thread target (every thread
  parked in a function with a few locals, 6 frames a thread) and on 100 threads x 20 frames with
  locals: ``periscope stack --locals`` installed from a wheel as a user installs it and editable,
  ``py-spy dump --locals`` (which pauses the target by default) and ``--nonblocking``, and
  ``python -c pass`` of both environments (the start-up floor no Python command goes below);
  median and min-max of each, ratios to py-spy and to the floor. Goals: within 1.5x of py-spy on
  the first, faster on the others;
* in-process: reading every frame's locals of the 100-thread targets with a new ValueReader
  (``stacks_locals``, as ``stack --locals`` reads them);
* ``periscope snapshot`` of a blocked single-thread target, which reads from outside (goal: 1 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from explorer.values import ValueReader
from tests import targets
from tests.bench import command_environment, describe, load_average, median_ms, time_calls, time_command
from tests.bench.bench_stack import _installed_environment, _installed_periscope, _interleaved, _periscope_command, _ratio, _tool

COMMAND_RUNS = 21
SNAPSHOT_RUNS = 7
IN_PROCESS_RUNS = 50

IDLE = '''
import time

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def handle(request, retries=3):
    name = "periscope"
    count = 12345
    ratio = 0.75
    items = [1, 2, 3, "four", (5, 6)]
    table = {"a": 1, "b": [2, 3], "c": {"d": None}}
    tags = {"x", "y"}
    blob = b"\\x00\\x01bytes"
    big = 2 ** 100
    point = Point(1, 2)
    print("ready", flush=True)
    time.sleep(3600)

handle({"path": "/"})
'''

MANY = '''
import sys, threading

THREADS = int(sys.argv[1])
DEPTH = int(sys.argv[2]) if len(sys.argv) > 2 else 1
stop = threading.Event()
started = threading.Barrier(THREADS)

def level(depth, index, main):
    step = depth * 10 + index % 7
    if depth <= 1:
        worker(index, main)
    else:
        level(depth - 1, index, main)

def worker(index, main=False):
    label = f"worker-{index}"
    numbers = list(range(index % 10))
    settings = {"index": index, "name": label}
    started.wait()
    if main:
        print("ready", flush=True)
    stop.wait()

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH, i, False), name=f"worker-{i}", daemon=True).start()
level(DEPTH, THREADS - 1, True)
'''

BLOCKED = '''
def wait_here():
    note = "blocked"
    data = {"a": [1, 2]}
    print("ready", flush=True)
    input()

wait_here()
'''


FLOORS = {
    "periscope stack --locals (installed)": "python -c pass (installed venv)",
    "periscope stack --locals (editable)": "python -c pass (this venv)",
}
"""Each periscope command and the ``python -c pass`` of its environment."""


def _whole_commands(
    label: str, pid: int, installed: list[str] | None, installed_env: dict[str, str], editable_env: dict[str, str]
) -> dict[str, float]:
    """Time the commands on one target, interleaved; print and return their medians (ms)."""
    print(f"\nWhole command on the {label} (pid {pid}), {COMMAND_RUNS} runs each, interleaved, load {load_average()}:")
    plain_env = command_environment()
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    if installed:
        commands["periscope stack --locals (installed)"] = ([*installed, "stack", "--locals", str(pid)], installed_env)
        commands["python -c pass (installed venv)"] = ([str(Path(installed[0]).with_name("python")), "-c", "pass"], installed_env)
    commands["periscope stack --locals (editable)"] = ([*_periscope_command(), "stack", "--locals", str(pid)], editable_env)
    commands["python -c pass (this venv)"] = ([sys.executable, "-c", "pass"], editable_env)
    spy = _tool("py-spy")
    if spy:
        commands["py-spy dump --locals"] = ([spy, "dump", "--locals", "--pid", str(pid)], plain_env)
        commands["py-spy dump --locals --nonblocking"] = ([spy, "dump", "--locals", "--nonblocking", "--pid", str(pid)], plain_env)
    else:
        print("  py-spy: not installed (pip install '.[bench]')")
    results = _interleaved(commands, COMMAND_RUNS)
    for name, timings in results.items():
        print(f"  {name:<46} {timings if isinstance(timings, str) else describe(timings)}")
    medians = {name: median_ms(timings) for name, timings in results.items() if not isinstance(timings, str)}
    for ours_name, floor_name in FLOORS.items():
        ours = medians.get(ours_name)
        if ours is None:
            continue
        print(f"  {ours_name}:")
        for name in ("py-spy dump --locals", "py-spy dump --locals --nonblocking"):
            print(_ratio(ours, medians.get(name), name))
        floor = medians.get(floor_name)
        if floor is not None:
            print(f"    periscope / {floor_name} = {ours / floor:.2f}  ({ours - floor:.1f} ms above it)")
    return medians


def _goal(label: str, medians: dict[str, float], within: float) -> None:
    """The goal line: the installed command against py-spy dump --locals, from one run."""
    ours = medians.get("periscope stack --locals (installed)") or medians.get("periscope stack --locals (editable)")
    spy = medians.get("py-spy dump --locals")
    if ours is None or spy is None:
        print(f"  goal on the {label}: not measured")
        return
    verdict = "met" if ours <= spy * within else "not met"
    print(f"  goal on the {label}: periscope / py-spy = {ours / spy:.2f}, goal at most {within:.2f}: {verdict}")


def _in_process(pid: int, label: str) -> None:
    with RemoteProcess.open(pid) as process:
        stacks = StackReader(process).read()
        frames = sum(len(stack.frame_refs) for stack in stacks)

        def read_all() -> int:
            reader = ValueReader(process)
            every_thread = reader.stacks_locals([stack.frame_refs for stack in stacks])  # as stack --locals reads them
            return sum(len(found or ()) for per_frame in every_thread for found in per_frame)

        count = read_all()
        timings = time_calls(read_all, IN_PROCESS_RUNS, warmup=2)
    print(f"  ValueReader, every frame's locals   {label:<22} {describe(timings)}  [{frames} frames, {count} locals]")


def _snapshot_blocked(editable_env: dict[str, str]) -> None:
    target = targets.spawn(BLOCKED, stdin=subprocess.PIPE)
    try:
        target.wait_for_line("ready", timeout=60)
        timings = time_command(
            [*_periscope_command(), "snapshot", str(target.pid)], SNAPSHOT_RUNS, warmup=1, env=editable_env
        )
        print(f"\nperiscope snapshot of a blocked single-thread target (read from outside): {describe(timings)}")
        print(f"  goal: within 1 s -> {median_ms(timings) / 1000:.2f} s")
    finally:
        target.stop()


def main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {targets.target_python()}")
    try:
        with tempfile.TemporaryDirectory(prefix="periscope-bench-values-") as workdir:
            cache_home = Path(workdir, "cache")
            installed_env = _installed_environment(cache_home)
            editable_env = {**command_environment(), "XDG_CACHE_HOME": str(cache_home)}
            try:
                installed: list[str] | None = _installed_periscope(Path(workdir))
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
                print(f"  installed periscope: not measured, the wheel could not be built or installed: {error}")
                installed = None
            print("(the machine is shared: figures are under whatever load the others put on it)")
            idle = targets.spawn(IDLE)
            idle.wait_for_line("ready", timeout=60)
            one = _whole_commands("single-thread idle target", idle.pid, installed, installed_env, editable_env)
            idle.stop()
            many = targets.spawn(MANY, args=["100"])
            many.wait_for_line("ready", timeout=120)
            print("\nIn-process (reader already attached):")
            _in_process(many.pid, "100 threads, idle")
            hundred = _whole_commands("100-thread target", many.pid, installed, installed_env, editable_env)
            many.stop()
            deep = targets.spawn(MANY, args=["100", "15"])
            deep.wait_for_line("ready", timeout=120)
            print("\nIn-process (reader already attached):")
            _in_process(deep.pid, "100 threads x 20")
            deeper = _whole_commands("100-thread target, 20 frames a thread", deep.pid, installed, installed_env, editable_env)
            deep.stop()
            print("\nGoals (installed periscope, medians of the runs above):")
            _goal("single-thread idle target", one, 1.5)
            _goal("100-thread target", hundred, 1.0)
            _goal("100-thread target, 20 frames a thread", deeper, 1.0)
            _snapshot_blocked(editable_env)
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
