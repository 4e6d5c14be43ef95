"""Benchmarks (``make bench`` / ``python -m tests.bench``): figures, not assertions.

Each ``bench_*.py`` module here has a ``main()`` that starts its own targets (with
``tests.targets.spawn``, stopped at the end), measures, and prints its figures. The helpers below
keep the measurements and the printing alike across modules.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence


def time_calls(function: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``function`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return timings


def command_environment() -> dict[str, str]:
    """The environment for timed commands: bytecode caching on, as on a user's machine.

    Python tools would otherwise recompile every module on each run when the developer's
    environment sets PYTHONDONTWRITEBYTECODE; the cache goes to a temporary prefix, not the tree.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "periscope-bench-pycache")
    return env


def time_command(
    argv: Sequence[str], repeat: int, warmup: int = 2, timeout: float = 60, env: dict[str, str] | None = None
) -> list[float]:
    """Wall-clock seconds of ``repeat`` runs of a whole command (bytecode cached); raises if it fails."""
    environment = command_environment() if env is None else env

    def run() -> None:
        result = subprocess.run(
            list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, env=environment
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited with {result.returncode}: {result.stderr.decode(errors='replace')[-500:]}")

    return time_calls(run, repeat, warmup)


def median_ms(timings: Sequence[float]) -> float:
    """The median in milliseconds."""
    return statistics.median(timings) * 1000


def describe(timings: Sequence[float]) -> str:
    """``median 1.23 ms (min 1.10, p90 1.50, max 1.90, n=50)``."""
    ordered = sorted(timings)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"median {median_ms(ordered):8.2f} ms (min {ordered[0] * 1000:.2f}, "
        f"p90 {p90 * 1000:.2f}, max {ordered[-1] * 1000:.2f}, n={len(ordered)})"
    )


def load_average() -> str:
    """The 1-minute load average, printed with figures because the machine is shared."""
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[0]
    except OSError:
        return "?"
