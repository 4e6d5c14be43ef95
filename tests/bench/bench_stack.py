"""Stack reading: periscope against py-spy, pystack and CPython 3.14's own RemoteUnwinder.

Figures, not assertions (``python -m tests.bench stack``):

* periscope's in-process snapshot (``StackReader.read()``, warm caches) of 8 threads x 30 frames,
  idle and busy (goal: under 5 ms), and of 50 threads;
* ``_remote_debugging.RemoteUnwinder.get_stack_trace()`` timed inside a 3.14 process on the same
  targets (it also stops at interpreter entry frames, so it returns fewer frames);
* whole commands on the 50-thread target, same run: ``periscope stack``, ``py-spy dump`` (which
  pauses the target by default; also ``--nonblocking``), ``pystack remote`` (pauses it too) and a
  3.14 one-liner driving RemoteUnwinder, printed with ratios to periscope.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from tests import targets
from tests.bench import describe, load_average, median_ms, time_calls, time_command

SNAPSHOTS = 200
COMMAND_RUNS = 15

PARKED = '''
import sys, threading
THREADS, DEPTH = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()
started = threading.Barrier(THREADS)

def level(depth, main=False):
    if depth <= 1:
        started.wait()
        if main:
            print("ready", flush=True)
        stop.wait()
    else:
        level(depth - 1, main)

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH,), name=f"worker-{i}", daemon=True).start()
level(DEPTH, main=True)
'''

BUSY = '''
import sys, threading
THREADS, DEPTH = int(sys.argv[1]), int(sys.argv[2])

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def level(depth):
    if depth <= 1:
        while True:
            fib(4)
    else:
        level(depth - 1)

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH,), name=f"busy-{i}", daemon=True).start()
print("ready", flush=True)
level(DEPTH)
'''

# Runs under CPython 3.14: time RemoteUnwinder.get_stack_trace() in-process.
UNWINDER = '''
import json, statistics, sys, time, _remote_debugging
pid, repeat = int(sys.argv[1]), int(sys.argv[2])
unwinder = _remote_debugging.RemoteUnwinder(pid, all_threads=True)
timings, errors, result = [], 0, []
for _ in range(repeat + 1):
    start = time.perf_counter()
    try:
        result = unwinder.get_stack_trace()
    except (RuntimeError, OSError, UnicodeDecodeError):
        errors += 1
        continue
    timings.append(time.perf_counter() - start)
timings = timings[1:]
print(json.dumps({
    "median_ms": statistics.median(timings) * 1000, "n": len(timings), "errors": errors,
    "threads": len(result), "frames": sum(len(t.frame_info) for t in result),
}))
'''

UNWINDER_COMMAND = (
    "import sys, _remote_debugging; "
    "print(_remote_debugging.RemoteUnwinder(int(sys.argv[1]), all_threads=True).get_stack_trace())"
)


def _tool(name: str) -> str | None:
    """A benchmark tool from this virtual environment (the ``bench`` extra) or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _periscope_command() -> list[str]:
    script = _tool("periscope")
    return [script] if script else [sys.executable, "-m", "explorer"]


def _start(source: str, threads: int, depth: int) -> targets.Target:
    target = targets.spawn(source, args=[str(threads), str(depth)])
    target.wait_for_line("ready", timeout=60)
    return target


def _periscope_in_process(pid: int, label: str) -> float:
    with RemoteProcess.open(pid) as process:
        reader = StackReader(process)
        stacks = reader.read()
        frames = sum(len(stack.frames) for stack in stacks)
        timings = time_calls(reader.read, SNAPSHOTS, warmup=5)
        cold = time_calls(lambda: StackReader(process).read(), 30)
    torn = f", {reader.torn_threads} torn thread reads, {reader.retries} retries" if reader.retries else ""
    print(f"  periscope StackReader.read()  {label:<22} {describe(timings)}  [{len(stacks)} threads, {frames} frames{torn}]")
    print(f"  periscope, cold caches        {label:<22} {describe(cold)}")
    return median_ms(timings)


def _unwinder_in_process(pid: int, label: str) -> float | None:
    result = subprocess.run(
        [targets.target_python(), "-c", UNWINDER, str(pid), str(SNAPSHOTS)], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        print(f"  RemoteUnwinder               {label:<22} failed: {result.stderr.strip()[-300:]}")
        return None
    data = json.loads(result.stdout)
    errors = f", {data['errors']} errors" if data["errors"] else ""
    print(
        f"  RemoteUnwinder (in 3.14)      {label:<22} median {data['median_ms']:8.2f} ms (n={data['n']})"
        f"  [{data['threads']} threads, {data['frames']} frames{errors}]"
    )
    return data["median_ms"]


def _ratio(ours: float, theirs: float | None, name: str) -> str:
    if theirs is None:
        return f"    periscope / {name}: not measured"
    ratio = ours / theirs
    verdict = f"periscope {1 / ratio:.1f}x faster" if ratio < 1 else f"periscope {ratio:.1f}x slower"
    return f"    periscope / {name} = {ratio:.2f}  ({verdict})"


def main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {targets.target_python()}")
    try:
        print("\nIn-process snapshot (reader already attached):")
        small = _start(PARKED, 8, 30)
        ours_small = _periscope_in_process(small.pid, "8 threads x 30, idle")
        theirs_small = _unwinder_in_process(small.pid, "8 threads x 30, idle")
        small.stop()
        busy = _start(BUSY, 8, 30)
        _periscope_in_process(busy.pid, "8 threads x 30, busy")
        _unwinder_in_process(busy.pid, "8 threads x 30, busy")
        busy.stop()
        big = _start(PARKED, 50, 10)
        ours_big = _periscope_in_process(big.pid, "50 threads x 10, idle")
        theirs_big = _unwinder_in_process(big.pid, "50 threads x 10, idle")
        print(_ratio(ours_small, theirs_small, "RemoteUnwinder, 8x30"))
        print(_ratio(ours_big, theirs_big, "RemoteUnwinder, 50 threads"))
        print(f"  goal: 8 threads x 30 frames under 5 ms -> {ours_small:.2f} ms")

        print(f"\nWhole command on the 50-thread target (pid {big.pid}), {COMMAND_RUNS} runs each:")
        pid = str(big.pid)
        commands: dict[str, list[str] | None] = {
            "python -c pass (start-up floor)": [sys.executable, "-c", "pass"],
            "periscope stack": [*_periscope_command(), "stack", pid],
            "periscope stack --json": [*_periscope_command(), "stack", "--json", pid],
            "py-spy dump": [_tool("py-spy") or "", "dump", "--pid", pid] if _tool("py-spy") else None,
            "py-spy dump --nonblocking": [_tool("py-spy") or "", "dump", "--nonblocking", "--pid", pid]
            if _tool("py-spy")
            else None,
            "pystack remote": [_tool("pystack") or "", "remote", pid] if _tool("pystack") else None,
            "python3.14 RemoteUnwinder": [targets.target_python(), "-c", UNWINDER_COMMAND, pid],
        }
        medians: dict[str, float | None] = {}
        for name, argv in commands.items():
            if argv is None:
                print(f"  {name:<32} not installed (pip install '.[bench]')")
                medians[name] = None
                continue
            try:
                timings = time_command(argv, COMMAND_RUNS)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"  {name:<32} failed: {error}")
                medians[name] = None
                continue
            medians[name] = median_ms(timings)
            print(f"  {name:<32} {describe(timings)}")
        ours = medians["periscope stack"]
        assert ours is not None
        for name in ("py-spy dump", "py-spy dump --nonblocking", "pystack remote", "python3.14 RemoteUnwinder"):
            print(_ratio(ours, medians[name], name))
        big.stop()
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
