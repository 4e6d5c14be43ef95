"""asyncio tasks read from outside: periscope against CPython's own ``python -m asyncio ps``/``pstree``.

Figures, not assertions (``python -m tests.bench tasks``), on a target with 1,000 sleeping tasks
awaited by one gather:

* periscope's in-process read (``TaskReader.read()``, warm caches) against
  ``_remote_debugging.RemoteUnwinder.get_all_awaited_by()`` timed inside a process of the target's
  interpreter (what ``asyncio ps`` calls);
* whole commands, same run: ``periscope tasks PID`` (text, with source lines), ``--json`` and
  ``--tree``, against ``python -m asyncio ps PID`` and ``pstree PID``.

``periscope`` is this environment's (editable) install, which adds some start-up time of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from explorer.remote import RemoteProcess
from explorer.tasks import TaskReader
from tests import targets
from tests.bench import describe, load_average, median_ms, time_calls, time_command

READS = 50
COMMAND_RUNS = 11

THOUSAND = """
import asyncio

async def sleeper(n):
    await asyncio.sleep(3600 + n)

async def main():
    tasks = [asyncio.create_task(sleeper(n), name=f"sleeper-{n}") for n in range(1000)]
    gathering = asyncio.gather(*tasks)
    await asyncio.sleep(0.1)
    print("ready", len(asyncio.all_tasks()), flush=True)
    await gathering

asyncio.run(main())
"""

UNWINDER = """
import sys, time, statistics
from _remote_debugging import RemoteUnwinder
pid, repeat = int(sys.argv[1]), int(sys.argv[2])
unwinder = RemoteUnwinder(pid)
unwinder.get_all_awaited_by()
timings = []
for _ in range(repeat):
    start = time.perf_counter()
    result = unwinder.get_all_awaited_by()
    timings.append(time.perf_counter() - start)
print(statistics.median(timings) * 1000, min(timings) * 1000, sum(len(info.awaited_by) for info in result))
"""


def _periscope() -> str:
    found = shutil.which("periscope", path=str(Path(sys.executable).parent))
    return found or "periscope"


def main() -> None:
    python = targets.target_python()
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {python}")
    target = targets.spawn(THOUSAND, python=python)
    try:
        count = int(target.wait_for_line("ready").split()[1])
        process = RemoteProcess.open(target.pid)
        try:
            reader = TaskReader(process)
            read = reader.read()
            timings = time_calls(reader.read, READS)
        finally:
            process.close()
        print(f"\nIn-process read of {count} tasks ({len(read.tasks)} read, torn={read.torn}):")
        print(f"  periscope TaskReader.read()               {describe(timings)}")
        ours = median_ms(timings)
        out = subprocess.run(
            [python, "-c", UNWINDER, str(target.pid), str(READS)], capture_output=True, text=True, timeout=300, check=True
        ).stdout.split()
        theirs = float(out[0])
        print(f"  RemoteUnwinder.get_all_awaited_by()        median {theirs:8.2f} ms (min {float(out[1]):.2f}, n={READS}, {out[2]} tasks)")
        print(f"  ratio: periscope takes {ours / theirs:.2f}x the time of CPython's C reader")

        print(f"\nWhole commands on {count} tasks (n={COMMAND_RUNS}):")
        periscope = _periscope()
        commands = {
            "periscope tasks PID": [periscope, "tasks", str(target.pid)],
            "periscope tasks PID --json": [periscope, "tasks", str(target.pid), "--json"],
            "periscope tasks PID --tree": [periscope, "tasks", str(target.pid), "--tree"],
            "python -m asyncio ps PID": [python, "-m", "asyncio", "ps", str(target.pid)],
            "python -m asyncio pstree PID": [python, "-m", "asyncio", "pstree", str(target.pid)],
        }
        medians = {}
        for label, argv in commands.items():
            timings = time_command(argv, COMMAND_RUNS, timeout=120)
            medians[label] = median_ms(timings)
            print(f"  {label:32} {describe(timings)}")
        base = medians["python -m asyncio ps PID"]
        for label in ("periscope tasks PID", "periscope tasks PID --json"):
            print(f"  {label} / asyncio ps: {medians[label] / base:.2f}x")
        print(f"  periscope tasks PID --tree / asyncio pstree: {medians['periscope tasks PID --tree'] / medians['python -m asyncio pstree PID']:.2f}x")
    finally:
        target.stop()
        targets.stop_all()


if __name__ == "__main__":
    main()
