"""The profile sampler over a host: the far side samples, this side counts what it streams.

``periscope serve``'s ``profile`` op (payloads/REMOTE.md) runs :class:`explorer.sampler.Sampler`
on the far side into a :class:`ProfileFeed`, a Profile that keeps only what is new since the last
update; every :data:`UPDATE_INTERVAL` seconds it sends the new stacks, the new or renamed threads
and the samples counted since, by clock second. On this side :class:`RemoteSampler` has the
Sampler's interface (``profile``, ``stats()``, ``reset()``, ``stop()``, ``error``, ``done``): it
checks each update as hostile input and counts it into its own Profile, so the Profile view and
its sums work as they do on a local sampler.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from typing import Any

from explorer.errors import PeriscopeError, ProtocolError
from explorer.profile import Profile, ProfileFrame, ThreadMeta
from explorer.sampler import MAX_RATE, SamplerStats

UPDATE_INTERVAL = 0.5
"""Seconds between two updates of the far side (the Profile view sums twice a second)."""
MAX_NEW_STACKS = 5_000
"""Most new stacks in one update; samples of the stacks beyond it wait for the next update."""
MAX_STACKS = 500_000
"""Most distinct stacks this side keeps from one far side; past it the profile stops with an error."""
MAX_DEPTH = 4096
"""Most frames in one stack (the stack reader's own bound)."""
MAX_NAME = 1000
"""Characters kept of a function or file name (a longer one is cut)."""
MAX_THREAD_NAME = 256
MAX_COUNTS = 200_000
"""Most (second, thread, tags, stack) entries in one update."""
MAX_THREADS = 10_000
START_TIMEOUT = 30.0
"""Seconds the far side may take to open the process and start sampling."""
STAT_FIELDS = ("ticks", "missed", "samples", "walks", "reused", "retries", "torn")
"""The counters of :class:`~explorer.sampler.SamplerStats` an update carries (with ``elapsed``)."""


class ProfileFeed(Profile):
    """The far side's Profile: the stacks it interned, and the samples counted since the last update.

    It sums nothing itself (the near side does): :meth:`add_tick` only counts samples by (clock
    second, thread, tags, stack) until :meth:`take_update` hands them over.
    """

    def __init__(self) -> None:
        super().__init__()
        self._feed_lock = threading.Lock()
        self._pending: Counter[tuple[int, int, int, int]] = Counter()
        self._pending_ticks = 0
        self._stacks_sent = 0
        self._threads_sent: dict[int, ThreadMeta] = {}

    def add_tick(self, when: float, samples: list[tuple[ThreadMeta, int, int]]) -> None:
        second = int(when)
        with self._feed_lock:
            self._pending_ticks += 1
            for thread, stack_id, tags in samples:
                self._pending[(second, thread.native_id, tags, stack_id)] += 1
                if self.threads.get(thread.native_id) is not thread:
                    self.threads[thread.native_id] = thread

    def take_update(self, stats: SamplerStats) -> dict[str, Any]:
        """What is new since the last call, as the ``update`` message's fields (payloads/REMOTE.md)."""
        now = int(time.monotonic())
        with self._feed_lock:
            pending, self._pending = self._pending, Counter()
            ticks, self._pending_ticks = self._pending_ticks, 0
            threads = dict(self.threads)
        first = self._stacks_sent
        # Every sample taken so far names a stack interned before it: len() now covers them all.
        end = min(len(self.stacks), first + MAX_NEW_STACKS)
        later = {key: n for key, n in pending.items() if key[3] >= end}
        if later:
            with self._feed_lock:
                self._pending.update(later)  # their stacks go with a later update
        stacks = [[list(frame) for frame in stack] for stack in self.stacks[first:end]]
        self._stacks_sent = end
        changed = [meta for native_id, meta in threads.items() if self._threads_sent.get(native_id) != meta]
        for meta in changed:
            self._threads_sent[meta.native_id] = meta
        return {
            "first": first,
            "stacks": stacks,
            "threads": [[meta.native_id, meta.name, meta.is_main] for meta in changed],
            "counts": [
                [max(0, now - second), native_id, tags, stack_id, n]
                for (second, native_id, tags, stack_id), n in pending.items()
                if stack_id < end
            ],
            "ticks": ticks,
            "stats": {**{name: getattr(stats, name) for name in STAT_FIELDS}, "elapsed": stats.elapsed},
        }


def _count(value: Any, limit: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise ProtocolError(f"the far side's profile update has a malformed {what}")
    return value


def _list(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"the far side's profile update has a malformed {what}")
    return value


def _frame(data: Any) -> ProfileFrame:
    if not (isinstance(data, list) and len(data) == 3 and isinstance(data[0], str) and isinstance(data[1], str)):
        raise ProtocolError("the far side's profile update has a malformed frame")
    return ProfileFrame(data[0][:MAX_NAME], data[1][:MAX_NAME], _count(data[2], (1 << 31) - 1, "line number"))


class RemoteSampler:
    """The Sampler of a process on a host (explorer.sampler.Sampler's interface): the far side
    samples, this side counts each update into :attr:`profile`.

    Creating it asks the far side to open the process and start sampling, and raises what that
    raises (ProcessGone, PermissionDenied, ...) as Sampler's constructor does; sampling runs from
    then on (:meth:`start` is there for the interface). :meth:`stop` cancels the far side's
    sampler; a link that goes down stops it too (the far side cancels it when its stdin closes).
    """

    def __init__(self, link: Any, pid: int, *, rate: float = 100.0, mode: str = "wall", where: str = "") -> None:
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate {rate} is out of range: use 1 to {MAX_RATE:.0f} samples per second")
        self.pid = pid
        self.rate = rate
        self.mode = mode
        """Kept for the interface: the far side samples every thread, tagged (the modes only filter)."""
        self.where = where
        """The host's name (for messages)."""
        self.profile = Profile()
        """The samples counted so far (read by the Profile view as a local sampler's)."""
        self.error: BaseException | None = None
        """Why sampling ended, when it was not :meth:`stop` (ProcessGone: the target exited)."""
        self.done = threading.Event()
        """Set when sampling has ended (stopped, the target exited, the link went down)."""
        self._link = link
        self._lock = threading.Lock()
        self._known: set[int] = set()
        self._threads: dict[int, ThreadMeta] = {}
        self._latest = SamplerStats(rate, 0, 0, 0, 0, 0, 0, 0, 0.0)
        self._base = self._latest
        self._stopped = False
        self._started = threading.Event()
        self._future: concurrent.futures.Future[Any] = link.submit(
            "profile", progress=self._on_update, pid=pid, rate=float(rate), interval=UPDATE_INTERVAL
        )
        self._future.add_done_callback(self._on_end)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._started.is_set() and not self.done.is_set() and time.monotonic() < deadline:
            self._started.wait(0.05)
        if not self._started.is_set():
            self.stop()
            if self.error is not None:
                raise self.error
            raise PeriscopeError(f"the far side{self._on()} did not start sampling process {pid} within {START_TIMEOUT:g} s; try again")

    def _on(self) -> str:
        return f" ({self.where})" if self.where else ""

    # --- the Sampler's interface ----------------------------------------------------------------

    def start(self) -> None:
        """Nothing to do: the far side samples since this object was made."""

    def stop(self) -> None:
        """Stop the far side's sampler (idempotent; does not wait for it)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        request_id = getattr(self._future, "request_id", None)
        if not self._future.done() and request_id is not None:
            try:
                self._link.submit("cancel", request=request_id)
            except PeriscopeError:
                pass  # the link is down: the far side has stopped sampling already
        self.done.set()

    def reset(self) -> None:
        """Forget the samples so far (the counters of :meth:`stats` start again too)."""
        with self._lock:
            self.profile.reset()
            self._base = self._latest

    def stats(self) -> SamplerStats:
        """The far side's figures so far (since the last reset), as of its last update."""
        with self._lock:
            latest, base = self._latest, self._base
        counters = [getattr(latest, name) - getattr(base, name) for name in STAT_FIELDS]
        return SamplerStats(self.rate, *counters, max(0.0, latest.elapsed - base.elapsed))

    @property
    def running(self) -> bool:
        """Whether the far side is still sampling."""
        return self._started.is_set() and not self.done.is_set()

    # --- the far side's messages ------------------------------------------------------------------

    def _on_update(self, message: dict[str, Any]) -> None:
        """One ``update`` (on the link's reader thread): checked whole, then counted."""
        if self.done.is_set():
            return
        try:
            self._apply(message)
        except ProtocolError as error:
            self.error = error
            self.stop()
            return
        self._started.set()

    def _apply(self, message: dict[str, Any]) -> None:
        profile = self.profile
        first = message.get("first")
        if first != len(profile.stacks) or type(first) is not int:
            raise ProtocolError("the far side's profile update skips or repeats stacks")
        stacks = []
        for data in _list(message.get("stacks"), MAX_NEW_STACKS, "stack list"):
            stacks.append(tuple(_frame(frame) for frame in _list(data, MAX_DEPTH, "stack")))
        if len(profile.stacks) + len(stacks) > MAX_STACKS:
            raise ProtocolError(f"the profile has more than {MAX_STACKS} distinct stacks; reset it or profile again")
        threads = dict(self._threads)
        for data in _list(message.get("threads"), MAX_THREADS, "thread list"):
            if not (isinstance(data, list) and len(data) == 3 and (data[1] is None or isinstance(data[1], str)) and type(data[2]) is bool):
                raise ProtocolError("the far side's profile update has a malformed thread")
            native_id = _count(data[0], (1 << 32) - 1, "thread id")
            threads[native_id] = ThreadMeta(native_id, data[1][:MAX_THREAD_NAME] if data[1] is not None else None, data[2])
        if len(threads) > MAX_THREADS:
            raise ProtocolError(f"the far side's profile names more than {MAX_THREADS} threads")
        known = len(profile.stacks) + len(stacks)
        counts: dict[int, list[tuple[ThreadMeta, int, int, int]]] = {}
        for data in _list(message.get("counts"), MAX_COUNTS, "count list"):
            if not (isinstance(data, list) and len(data) == 5):
                raise ProtocolError("the far side's profile update has a malformed count")
            age = _count(data[0], 1 << 20, "age")
            meta = threads.get(data[1]) if type(data[1]) is int else None
            if meta is None:
                raise ProtocolError("the far side's profile update counts a thread it never named")
            tags = _count(data[2], 3, "tag")
            stack_id = data[3]
            if type(stack_id) is not int or not 0 <= stack_id < known:
                raise ProtocolError("the far side's profile update counts a stack it never sent")
            counts.setdefault(age, []).append((meta, stack_id, tags, _count(data[4], 10_000_000, "sample count")))
        ticks = _count(message.get("ticks"), 10_000_000, "tick count")
        stats = message.get("stats")
        if not isinstance(stats, dict):
            raise ProtocolError("the far side's profile update has no figures")
        figures = [_count(stats.get(name), 1 << 53, name) for name in STAT_FIELDS]
        elapsed = stats.get("elapsed")
        if type(elapsed) not in (int, float) or not 0 <= elapsed < 1e9:
            raise ProtocolError("the far side's profile update has a malformed elapsed time")
        # Checked whole: count it.
        for stack in stacks:
            profile.intern(stack)
        self._threads = threads
        now = int(time.monotonic())
        with self._lock:
            for age, samples in counts.items():
                profile.add_counts(now - age, samples)
            profile.add_ticks(ticks)
            self._latest = SamplerStats(self.rate, *figures, float(elapsed))

    def _on_end(self, future: concurrent.futures.Future[Any]) -> None:
        """The far side's response: sampling ended (the target exited, a refusal, a cancel)."""
        error = future.exception() if not future.cancelled() else None
        if error is not None and not self._stopped and self.error is None:
            self.error = error
        self.done.set()
