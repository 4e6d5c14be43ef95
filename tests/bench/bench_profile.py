"""The profiler: periscope's sampler beside ``py-spy record`` on the same targets, in the same run.

Figures, not assertions (``python -m tests.bench profile``); each is printed as the median and
the min-max of its runs, with the goal next to it:

* accuracy: on a CPU-bound target whose main thread spends known shares of its time in three
  functions (60/30/10), checked by the target's own counters over the very window sampled, the
  self % of each function from ``periscope record`` and from ``py-spy record`` (both 100 Hz),
  off the truth and off each other (goal: within 3 points of both);
* cost to the target: its throughput while sampled at 100 Hz over its throughput unsampled, in
  alternating windows (goal >= 0.98), beside py-spy's (default, blocking mode); also per CPU
  second the target was given, which other work on a shared machine disturbs far less;
* cost to periscope: the CPU of the ``periscope record`` process at 100 Hz, in steady state
  (after start-up), on a target with 4 busy threads and on one with 100 idle threads, beside
  ``py-spy record``'s (goal: no more than py-spy);
* the rate achieved on both (goal: >= 95 Hz of 100).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psutil

from tests import targets
from tests.bench import load_average
from tests.bench.bench_tui import HUNDRED_THREADS
from tests.profile_targets import SHARES, SHARES_TARGET, reported_shares, reset_counts

RATE = 100
ACCURACY_RUNS = 3
ACCURACY_SECONDS = 15.0
THROUGHPUT_PAIRS = 10
THROUGHPUT_WINDOW = 2.0
CPU_RUNS = 2
CPU_WARMUP = 2.0
CPU_WINDOW = 8.0

FOUR_BUSY = '''
import threading

def spin(n):
    x = 0
    while True:
        for _ in range(n):
            x += 1

for i in range(3):
    threading.Thread(target=spin, args=(1000 + i,), name=f"busy-{i}", daemon=True).start()
print("ready", flush=True)
spin(999)
'''


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _periscope() -> list[str]:
    return [sys.executable, "-m", "explorer"]


def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median X (min-max A-B, n=N)``."""
    if not values:
        return "no figures"
    return (
        f"median {fmt.format(statistics.median(values))} "
        f"(min-max {fmt.format(min(values))}-{fmt.format(max(values))}, n={len(values)})"
    )


def _start(source: str, **kwargs: object) -> targets.Target:
    target = targets.spawn(source, **kwargs)  # type: ignore[arg-type]
    target.wait_for_line("ready")
    return target


# --- accuracy ------------------------------------------------------------------------------------

_LEAF = re.compile(r"^(?P<name>.+) \((?P<where>[^()]*)\)$")


def _self_shares_from_collapsed(text: str, main_only: str | None) -> dict[str, float]:
    """Self % per function (the leaf of each stack) of a collapsed file; ``main_only``: the root to keep."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        if main_only is not None:
            if not frames[0].startswith(main_only):
                continue
            frames = frames[1:]
        if not frames:
            continue
        match = _LEAF.match(frames[-1])
        counts[match.group("name") if match else frames[-1]] += int(count)
    total = sum(counts.values()) or 1
    return {name: 100.0 * value / total for name, value in counts.items()}


def _three_shares(shares: dict[str, float]) -> dict[str, float]:
    """Each of the three functions' share of the three's samples (the target's counters time only them)."""
    total = sum(shares.get(name, 0.0) for name in SHARES) or 1.0
    return {name: 100.0 * shares.get(name, 0.0) / total for name in SHARES}


def _periscope_record(pid: int, seconds: float, output: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*_periscope(), "record", str(pid), "--rate", str(RATE), "--duration", str(seconds), "--format", "collapsed", "-o", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _pyspy_record(pyspy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [pyspy, "record", "-p", str(pid), "-r", str(RATE), "-d", str(int(round(seconds))), "-f", "raw", "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(process: subprocess.Popen[str], what: str, timeout: float) -> str:
    out, err = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed: {(err or out or '')[-500:]}")
    return err or out or ""


def accuracy(pyspy: str | None, workdir: Path) -> None:
    print(
        f"\naccuracy: self % of the 60/30/10 functions, {ACCURACY_RUNS} runs of {ACCURACY_SECONDS:.0f} s at {RATE} Hz; "
        "periscope and py-spy sample the same window, the truth is the target's own counters over it"
    )
    target = _start(SHARES_TARGET, stdin=subprocess.PIPE)
    errors: dict[str, list[float]] = {"periscope vs truth": [], "py-spy vs truth": [], "periscope vs py-spy": []}
    figures: dict[str, dict[str, list[float]]] = {tool: {name: [] for name in SHARES} for tool in ("truth", "periscope", "py-spy")}
    try:
        time.sleep(0.5)
        for run in range(ACCURACY_RUNS):
            ours_file, theirs_file = workdir / f"accuracy-{run}.txt", workdir / f"accuracy-pyspy-{run}.txt"
            reset_counts(target)
            ours = _periscope_record(target.pid, ACCURACY_SECONDS, ours_file)
            theirs = _pyspy_record(pyspy, target.pid, ACCURACY_SECONDS, theirs_file) if pyspy else None
            _finish(ours, "periscope record", ACCURACY_SECONDS + 60)
            if theirs is not None:
                _finish(theirs, "py-spy record", ACCURACY_SECONDS + 60)
            truth = reported_shares(target)
            measured = _three_shares(_self_shares_from_collapsed(ours_file.read_text(), "MainThread"))
            # Without --threads py-spy's stacks have no thread root; the target's other thread is idle.
            spy = _three_shares(_self_shares_from_collapsed(theirs_file.read_text(), None)) if theirs is not None else None
            for name in SHARES:
                figures["truth"][name].append(truth[name])
                figures["periscope"][name].append(measured[name])
                errors["periscope vs truth"].append(abs(measured[name] - truth[name]))
                if spy is not None:
                    figures["py-spy"][name].append(spy[name])
                    errors["py-spy vs truth"].append(abs(spy[name] - truth[name]))
                    errors["periscope vs py-spy"].append(abs(measured[name] - spy[name]))
    finally:
        target.stop()
    for name in SHARES:
        line = f"  {name:13} truth {_spread(figures['truth'][name], '{:.1f}')}; periscope {_spread(figures['periscope'][name], '{:.1f}')}"
        if figures["py-spy"][name]:
            line += f"; py-spy {_spread(figures['py-spy'][name], '{:.1f}')}"
        print(line)
    for label, values in errors.items():
        if values:
            print(f"  |error| {label:20} {_spread(values, '{:.2f}')} points (goal <= 3)")


# --- cost to the target ----------------------------------------------------------------------------


def _throughput(target: targets.Target, seconds: float) -> tuple[float, float]:
    """(work per second, work per CPU second of the target) over one window."""
    process = psutil.Process(target.pid)
    reset_counts(target)
    before = process.cpu_times()
    start = time.monotonic()
    time.sleep(seconds)
    work = reported_shares(target)["work"]
    elapsed = time.monotonic() - start
    after = process.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return work / elapsed, work / cpu if cpu > 0 else 0.0


def _pair_ratios(target: targets.Target, start_sampling, stop_sampling) -> tuple[list[float], list[float]]:
    """Throughput sampled / unsampled in alternating windows (the order flips every pair); the
    same per CPU second the target got, which a machine loaded by others disturbs far less."""
    ratios, per_cpu = [], []
    for pair in range(THROUGHPUT_PAIRS):
        measured: dict[bool, tuple[float, float]] = {}
        for sampled in ((False, True) if pair % 2 == 0 else (True, False)):
            if sampled:
                handle = start_sampling()
                try:
                    measured[True] = _throughput(target, THROUGHPUT_WINDOW)
                finally:
                    stop_sampling(handle)
            else:
                measured[False] = _throughput(target, THROUGHPUT_WINDOW)
        ratios.append(measured[True][0] / measured[False][0])
        if measured[False][1] > 0:
            per_cpu.append(measured[True][1] / measured[False][1])
    return ratios, per_cpu


def cost_to_target(pyspy: str | None, workdir: Path) -> None:
    from explorer.profile import Profile
    from explorer.sampler import Sampler

    print(f"\ncost to the target: throughput sampled at {RATE} Hz / unsampled, {THROUGHPUT_PAIRS} pairs of {THROUGHPUT_WINDOW:.0f} s windows")
    target = _start(SHARES_TARGET, stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)

        def start_periscope() -> Sampler:
            sampler = Sampler(target.pid, rate=RATE, mode="cpu", profile=Profile())
            sampler.start()
            time.sleep(0.3)  # past the first ticks (they read the code objects)
            return sampler

        ratios, per_cpu = _pair_ratios(target, start_periscope, lambda sampler: sampler.stop())
        print(f"  periscope       {_spread(ratios, '{:.3f}')} (goal >= 0.98); per CPU second {_spread(per_cpu, '{:.3f}')}")
        if pyspy is not None:

            def start_pyspy() -> subprocess.Popen[bytes]:
                process = subprocess.Popen(
                    [pyspy, "record", "-p", str(target.pid), "-r", str(RATE), "-f", "raw", "-o", str(workdir / "throughput-pyspy.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # py-spy running
                return process

            def stop_pyspy(process: subprocess.Popen[bytes]) -> None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

            spy, spy_per_cpu = _pair_ratios(target, start_pyspy, stop_pyspy)
            print(f"  py-spy record   {_spread(spy, '{:.3f}')} (default, blocking mode); per CPU second {_spread(spy_per_cpu, '{:.3f}')}")
    finally:
        target.stop()


# --- cost to periscope, rate held -------------------------------------------------------------------


def _steady_cpu(argv: list[str]) -> tuple[float, str]:
    """Percent of a core the command uses between CPU_WARMUP and CPU_WARMUP + CPU_WINDOW; and its output."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        watched = psutil.Process(process.pid)
        time.sleep(CPU_WARMUP)
        before = watched.cpu_times()
        start = time.monotonic()
        time.sleep(CPU_WINDOW)
        after = watched.cpu_times()
        elapsed = time.monotonic() - start
        err, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    used = (after.user + after.system) - (before.user + before.system)
    return 100.0 * used / elapsed, err


def _rate_from(text: str, pattern: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def cost_to_periscope(pyspy: str | None, workdir: Path) -> None:
    seconds = CPU_WARMUP + CPU_WINDOW + 1.0
    print(f"\ncost to periscope: % of a core at {RATE} Hz in steady state ({CPU_WINDOW:.0f} s after {CPU_WARMUP:.0f} s), and the rate held")
    for label, source in (("4 busy threads", FOUR_BUSY), ("100 idle threads", HUNDRED_THREADS)):
        target = _start(source)
        ours: list[float] = []
        rates: list[float] = []
        theirs: list[float] = []
        spy_rates: list[float] = []
        try:
            time.sleep(0.5)
            for run in range(CPU_RUNS):
                cpu, err = _steady_cpu(
                    [*_periscope(), "record", str(target.pid), "--rate", str(RATE), "--duration", str(seconds), "--format", "collapsed", "-o", str(workdir / f"cpu-{run}.txt")]
                )
                ours.append(cpu)
                rate = _rate_from(err, r"at ([\d.]+) Hz")
                if rate is not None:
                    rates.append(rate)
                if pyspy is not None:
                    cpu, err = _steady_cpu(
                        [pyspy, "record", "-p", str(target.pid), "-r", str(RATE), "-d", str(int(seconds)), "-f", "raw", "-o", str(workdir / f"cpu-pyspy-{run}.txt")]
                    )
                    theirs.append(cpu)
                    samples = _rate_from(err, r"Samples: (\d+)")
                    if samples is not None:
                        spy_rates.append(samples / int(seconds))
        finally:
            target.stop()
        print(f"  {label:16} periscope CPU {_spread(ours, '{:.1f}')} %; rate {_spread(rates, '{:.1f}')} Hz (goal >= 95)")
        if theirs:
            print(f"  {label:16} py-spy    CPU {_spread(theirs, '{:.1f}')} %; rate {_spread(spy_rates, '{:.1f}')} Hz (its \"Samples\" / duration: stacks, not ticks)")


def main() -> None:
    pyspy = _tool("py-spy")
    print(f"load average {load_average()} on {os.cpu_count()} cores; py-spy: {pyspy or 'not installed (pip install -e .[bench])'}")
    workdir = Path(tempfile.mkdtemp(prefix="periscope-bench-profile-"))
    try:
        accuracy(pyspy, workdir)
        cost_to_target(pyspy, workdir)
        cost_to_periscope(pyspy, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        targets.stop_all()
    print(f"load average {load_average()} at the end")


if __name__ == "__main__":
    main()
