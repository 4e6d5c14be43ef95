"""Every supported minor side by side: periscope's ``stack`` and ``snapshot`` beside the peers.

Figures, not assertions (``python -m tests.bench minors``). For each minor periscope supports
(3.14 and 3.15), one target of 50 threads parked 10 frames deep, whose main thread wakes every
millisecond (so that an injected agent is picked up at once), and in the same run, interleaved:

* ``periscope stack`` and ``periscope snapshot --json`` (this environment's editable install);
* ``py-spy dump`` (pauses the target by default; also ``--nonblocking``) and ``pystack remote``
  (pauses it too), from the ``bench`` extra;
* the minor's own tool where it has one: 3.15's ``python3.15 -m profiling.sampling dump -a``
  (Tachyon), and for every minor a one-liner driving ``_remote_debugging.RemoteUnwinder``;
* periscope's in-process reader (``StackReader.read()``, warm caches) on the same target.

A tool that cannot read a minor is listed with its error, which is a figure too.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from explorer.versions import SUPPORTED_MINORS, minor_name
from tests import targets
from tests.bench import command_environment, describe, load_average, median_ms, time_calls
from tests.bench.bench_stack import UNWINDER_COMMAND, _interleaved, _periscope_command, _ratio, _tool

COMMAND_RUNS = 11
SNAPSHOTS = 200

TARGET = '''
import sys, threading, time
THREADS, DEPTH = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()
started = threading.Barrier(THREADS)

def level(depth, main=False):
    if depth <= 1:
        started.wait()
        if main:
            print("ready", flush=True)
            while True:
                time.sleep(0.001)
        stop.wait()
    else:
        level(depth - 1, main)

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH,), name=f"worker-{i}", daemon=True).start()
level(DEPTH, main=True)
'''


def _has_tachyon(python: str) -> bool:
    """Whether this interpreter ships ``profiling.sampling`` (CPython 3.15's sampling profiler)."""
    done = subprocess.run([python, "-c", "import profiling.sampling"], capture_output=True, timeout=60)
    return done.returncode == 0


def _in_process(pid: int) -> float:
    with RemoteProcess.open(pid) as process:
        reader = StackReader(process)
        stacks = reader.read()
        frames = sum(len(stack.frames) for stack in stacks)
        timings = time_calls(reader.read, SNAPSHOTS, warmup=5)
    torn = f", {reader.torn_threads} torn thread reads" if reader.torn_threads else ""
    print(f"  periscope StackReader.read(), warm caches   {describe(timings)}  [{len(stacks)} threads, {frames} frames{torn}]")
    return median_ms(timings)


def _one_minor(minor: tuple[int, int]) -> None:
    name = minor_name(minor)
    previous = targets.current_minor()
    targets.use_minor(minor)
    try:
        _measure_minor(minor, name)
    finally:
        targets.use_minor(previous)  # the benchmarks that follow start their targets under the default minor


def _measure_minor(minor: tuple[int, int], name: str) -> None:
    python = targets.target_python()
    print(f"\nCPython {name} ({python}), target: 50 threads x 10 frames, {COMMAND_RUNS} runs each, interleaved:")
    target = targets.spawn(TARGET, args=["50", "10"])
    try:
        target.wait_for_line("ready", timeout=60)
        pid = str(target.pid)
        _in_process(target.pid)
        with tempfile.TemporaryDirectory(prefix="periscope-bench-") as workdir:
            env = {**command_environment(), "XDG_CACHE_HOME": str(Path(workdir, "cache"))}
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                "periscope stack": ([*_periscope_command(), "stack", pid], env),
                "periscope snapshot --json": ([*_periscope_command(), "snapshot", "--json", pid], env),
            }
            missing = []
            for label, tool, argv in (
                ("py-spy dump", "py-spy", ["dump", "--pid", pid]),
                ("py-spy dump --nonblocking", "py-spy", ["dump", "--nonblocking", "--pid", pid]),
                ("pystack remote", "pystack", ["remote", pid]),
            ):
                path = _tool(tool)
                if path:
                    commands[label] = ([path, *argv], env)
                else:
                    missing.append(label)
            if _has_tachyon(python):
                commands[f"python{name} -m profiling.sampling dump -a"] = ([python, "-m", "profiling.sampling", "dump", "-a", pid], env)
            commands[f"python{name} RemoteUnwinder"] = ([python, "-c", UNWINDER_COMMAND, pid], env)
            results = _interleaved(commands, COMMAND_RUNS)
        for label in missing:
            print(f"  {label:<44} not installed (pip install '.[bench]')")
        for label, timings in results.items():
            print(f"  {label:<44} {timings if isinstance(timings, str) else describe(timings)}")
        medians = {label: median_ms(timings) for label, timings in results.items() if not isinstance(timings, str)}
        for ours in ("periscope stack", "periscope snapshot --json"):
            if ours in medians:
                print(f"  {ours}:")
                for label in commands:
                    if not label.startswith("periscope"):
                        print(_ratio(medians[ours], medians.get(label), label))
    finally:
        target.stop()


def main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, minors {', '.join(map(minor_name, SUPPORTED_MINORS))}")
    try:
        for minor in SUPPORTED_MINORS:
            _one_minor(minor)
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
