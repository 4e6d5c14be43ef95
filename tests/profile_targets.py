"""Target programs for the profiler's tests and benchmarks, and how to ask them for their own counts."""

from __future__ import annotations

import subprocess

from tests.targets import Target

SHARES = {"share_sixty": 60.0, "share_thirty": 30.0, "share_ten": 10.0}
"""The three functions of SHARES_TARGET and the share of its main thread's time each should take."""

SHARES_TARGET = '''
import random, sys, threading, time

spent = {"share_sixty": 0.0, "share_thirty": 0.0, "share_ten": 0.0}
work = [0]  # loop iterations done since the last reset: the target's throughput
lock = threading.Lock()
chance = random.Random(1)


def share_sixty(n):
    x = 0
    for _ in range(n):
        x += 1
    return x


def share_thirty(n):
    x = 0
    for _ in range(n):
        x += 1
    return x


def share_ten(n):
    x = 0
    for _ in range(n):
        x += 1
    return x


def commands():
    """Answer on stdin: 'reset' zeroes the counters, 'report' prints each function's share of them."""
    for line in sys.stdin:
        with lock:
            if line.strip() == "reset":
                for name in spent:
                    spent[name] = 0.0
                work[0] = 0
                print("reset done", flush=True)
            elif line.strip() == "report":
                total = sum(spent.values()) or 1.0
                shares = " ".join(f"{name}={100 * value / total:.3f}" for name, value in spent.items())
                print(f"shares {shares} work={work[0]}", flush=True)


threading.Thread(target=commands, name="commands", daemon=True).start()
print("ready", flush=True)
calls = ((share_sixty, 6), (share_thirty, 3), (share_ten, 1))
clock = time.perf_counter
while True:
    # Chunks of random length: the work never repeats at a period the sampler could lock onto.
    unit = chance.randint(1000, 6000)
    for function, weight in calls:
        start = clock()
        function(unit * weight)
        elapsed = clock() - start
        with lock:
            spent[function.__name__] += elapsed
            work[0] += unit * weight
'''
"""A CPU-bound main thread that spends known shares of its time (SHARES) in three functions,
timed by its own counters; answers 'reset' and 'report' on stdin."""


def start_shares_target(spawn) -> Target:
    """Start SHARES_TARGET (with ``spawn``, the fixture or tests.targets.spawn) and wait until it runs."""
    target = spawn(SHARES_TARGET, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    return target


def reset_counts(target: Target) -> None:
    """Zero the target's counters and wait until it has."""
    _send(target, "reset")
    target.lines.clear()
    target.wait_for_line("reset done")


def reported_shares(target: Target) -> dict[str, float]:
    """The target's own share of time (percent) per function since the last reset, and ``work``:
    the loop iterations it did since then."""
    target.lines.clear()
    _send(target, "report")
    line = target.wait_for_line("shares ")
    return {name: float(value) for name, value in (item.split("=") for item in line.split()[1:])}


def _send(target: Target, command: str) -> None:
    assert target.proc.stdin is not None
    target.proc.stdin.write(command.encode() + b"\n")
    target.proc.stdin.flush()


HOT_TARGET = '''
import threading, time

def hot_loop():
    x = 0
    for _ in range(200_000):
        x += 1
    return x

def cold_path():
    x = 0
    for _ in range(10_000):
        x += 1
    return x

def housekeeping():
    while True:
        time.sleep(0.05)

threading.Thread(target=housekeeping, name="housekeeping", daemon=True).start()
print("ready", flush=True)
while True:
    hot_loop()
    cold_path()
'''
"""A busy main thread where ``hot_loop`` takes about 95% of the time, beside an idle thread."""
