"""Values from outside: ``periscope stack --locals`` against ``py-spy dump --locals``.

Figures, not assertions (``python -m tests.bench values``):

* whole commands, interleaved in one run, on a single-thread idle target (its main thread asleep
  in a function with a dozen locals of the builtin types) and on a 100-thread target (every
  thread parked in a function with a few locals): ``periscope stack --locals`` installed from a
  wheel as a user installs it and editable, ``py-spy dump --locals`` (which pauses the target by
  default) and ``--nonblocking``; goals: within 1.5x of py-spy on the first, faster on the second;
* in-process: reading every frame's locals of the 100-thread target with a warm ValueReader;
* ``periscope snapshot`` of a blocked single-thread target, which reads from outside (goal: 1 s).
"""

from __future__ import annotations

import os
import subprocess
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
stop = threading.Event()
started = threading.Barrier(THREADS)

def worker(index, main=False):
    label = f"worker-{index}"
    numbers = list(range(index % 10))
    settings = {"index": index, "name": label}
    started.wait()
    if main:
        print("ready", flush=True)
    stop.wait()

for i in range(THREADS - 1):
    threading.Thread(target=worker, args=(i,), name=f"worker-{i}", daemon=True).start()
worker(THREADS - 1, main=True)
'''

BLOCKED = '''
def wait_here():
    note = "blocked"
    data = {"a": [1, 2]}
    print("ready", flush=True)
    input()

wait_here()
'''


def _whole_commands(label: str, pid: int, installed: list[str] | None, installed_env: dict[str, str], editable_env: dict[str, str]) -> None:
    print(f"\nWhole command on the {label} (pid {pid}), {COMMAND_RUNS} runs each, interleaved:")
    plain_env = command_environment()
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    if installed:
        commands["periscope stack --locals (installed)"] = ([*installed, "stack", "--locals", str(pid)], installed_env)
    commands["periscope stack --locals (editable)"] = ([*_periscope_command(), "stack", "--locals", str(pid)], editable_env)
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
    for ours_name in ("periscope stack --locals (installed)", "periscope stack --locals (editable)"):
        ours = medians.get(ours_name)
        if ours is None:
            continue
        print(f"  {ours_name}:")
        for name in ("py-spy dump --locals", "py-spy dump --locals --nonblocking"):
            print(_ratio(ours, medians.get(name), name))


def _in_process(pid: int, label: str) -> None:
    with RemoteProcess.open(pid) as process:
        stacks = StackReader(process).read()
        frames = sum(len(stack.frame_refs) for stack in stacks)

        def read_all() -> int:
            reader = ValueReader(process)
            return sum(len(found or ()) for stack in stacks for found in reader.stack_locals(stack.frame_refs))

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
            idle = targets.spawn(IDLE)
            idle.wait_for_line("ready", timeout=60)
            _whole_commands("single-thread idle target", idle.pid, installed, installed_env, editable_env)
            idle.stop()
            many = targets.spawn(MANY, args=["100"])
            many.wait_for_line("ready", timeout=120)
            print("\nIn-process (reader already attached):")
            _in_process(many.pid, "100 threads, idle")
            _whole_commands("100-thread target", many.pid, installed, installed_env, editable_env)
            many.stop()
            _snapshot_blocked(editable_env)
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
