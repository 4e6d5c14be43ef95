"""periscope's demo target: a small, busy CPython 3.14 program with something for every pane.

Standard library only: it runs under the target interpreter, which has none of periscope's
dependencies. The main thread is a number adder (in the spirit of the PEP 768 walkthrough):
it keeps adding the numbers a feeder thread produces. Two named worker threads, a class
instance, nested data and a function that sleeps give the thread, stack and variable panes
something to show. Run: ``python3.14 demo_target.py [--verbose]``.
"""

import collections
import dataclasses
import math
import queue
import sys
import threading
import time

APP_NAME = "number-adder"
settings = {
    "batch_size": 5,
    "limits": {"max_total": 10**12, "warn_at": [100, 1_000, 10_000]},
    "tags": ("demo", "periscope", "pep-768"),
}
numbers: "queue.Queue[int]" = queue.Queue(maxsize=100)
recent_totals = collections.deque(maxlen=10)
stop = threading.Event()


@dataclasses.dataclass
class Stats:
    """Running statistics of the adder; the variables pane shows it as an expandable object."""

    added: int = 0
    total: int = 0
    largest: int = 0
    history: list = dataclasses.field(default_factory=list)

    def record(self, value: int) -> None:
        self.added += 1
        self.total += value
        self.largest = max(self.largest, value)
        self.history = (self.history + [value])[-8:]


stats = Stats()


def slow_source(delay: float) -> int:
    """Pretend to fetch a number from somewhere slow: this is the function that sleeps."""
    time.sleep(delay)
    return int(time.monotonic() * 1000) % 97


def feeder() -> None:
    """Worker thread 'feeder': produce numbers for the adder."""
    produced = 0
    while not stop.is_set():
        value = slow_source(delay=0.2)
        produced += 1
        try:
            numbers.put(value, timeout=1)
        except queue.Full:
            continue


def is_prime(candidate: int) -> bool:
    """Trial division: the CPU-bound part of the 'cruncher' worker."""
    if candidate < 2:
        return False
    for divisor in range(2, math.isqrt(candidate) + 1):
        if candidate % divisor == 0:
            return False
    return True


def cruncher() -> None:
    """Worker thread 'cruncher': count primes, resting between batches so the demo stays light."""
    primes_found = 0
    candidate = 1_000_000
    while not stop.is_set():
        for _ in range(400):
            candidate += 1
            if is_prime(candidate):
                primes_found += 1
        time.sleep(0.1)


def add_numbers(batch: list) -> int:
    """Add a batch of numbers to the running total."""
    subtotal = 0
    for value in batch:
        subtotal += value
        stats.record(value)
    return subtotal


def next_batch(size: int) -> list:
    """Wait for the next ``size`` numbers from the feeder."""
    batch = []
    while len(batch) < size and not stop.is_set():
        try:
            batch.append(numbers.get(timeout=0.5))
        except queue.Empty:
            continue
    return batch


def main(verbose: bool = False) -> None:
    """The number adder: the main thread's loop."""
    workers = [
        threading.Thread(target=feeder, name="feeder", daemon=True),
        threading.Thread(target=cruncher, name="cruncher", daemon=True),
    ]
    for worker in workers:
        worker.start()
    total = 0
    rounds = 0
    while not stop.is_set():
        batch = next_batch(settings["batch_size"])
        total += add_numbers(batch)
        rounds += 1
        recent_totals.append(total)
        if verbose:
            print(f"round {rounds}: total {total}", flush=True)


if __name__ == "__main__":
    try:
        main(verbose="--verbose" in sys.argv)
    except KeyboardInterrupt:
        stop.set()
