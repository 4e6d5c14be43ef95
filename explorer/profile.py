"""A sampled profile: where the target's threads were at each tick, and what that adds up to.

:class:`Profile` is what :mod:`explorer.sampler` fills and what the Profile view, ``periscope
record`` and the file writers (:mod:`explorer.profile_files`) read. Each sample is one thread's
stack at one tick, tagged with what the thread was doing then (on a CPU, holding the GIL), so one
recording answers all three questions: *wall* counts every sample, *CPU* the samples whose thread
was on a CPU, *GIL* the samples whose thread held the GIL.

Stacks are interned (a sample is an int), counted per thread and tag since the start and in
one-second buckets for the recent window, and (when asked) kept in order for the files. Reading
a summary copies the counters under a lock and does the arithmetic outside it, so the sampler
thread never waits for a reader.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

FLAG_CPU = 1
"""The thread was on a CPU (the kernel's task state was R) when sampled."""
FLAG_GIL = 2
"""The thread held its interpreter's GIL when sampled."""

MODES = ("cpu", "wall", "gil")
"""The ways of counting samples: threads on a CPU, every thread, the thread holding the GIL."""

WINDOW = 10.0
"""Seconds in the recent window (the 'last 10 s' of the Profile view)."""

MAX_TIMELINE = 5_000_000
"""Samples kept in order for the files; past this the timeline stops growing (the counts go on)."""


class ProfileFrame(tuple):
    """One frame of a sampled stack: (function, filename, lineno); lineno is 0 when unknown."""

    __slots__ = ()

    def __new__(cls, function: str, filename: str, lineno: int) -> ProfileFrame:
        return tuple.__new__(cls, (function, filename, lineno))

    @property
    def function(self) -> str:
        """The qualified name (``Class.method``)."""
        return self[0]

    @property
    def filename(self) -> str:
        """The code object's file name."""
        return self[1]

    @property
    def lineno(self) -> int:
        """The line running (for callers: the call); 0 when the code has no location."""
        return self[2]


FunctionKey = tuple[str, str]
"""A function: (qualified name, file name)."""

Stack = tuple[ProfileFrame, ...]
"""A stack, innermost frame first."""


def mode_flags(mode: str) -> int:
    """The tag a sample needs to count in ``mode`` (0: every sample counts)."""
    if mode not in MODES:
        raise ValueError(f"unknown profile mode {mode!r}: use one of {', '.join(MODES)}")
    return {"cpu": FLAG_CPU, "gil": FLAG_GIL, "wall": 0}[mode]


@dataclass(frozen=True)
class ThreadMeta:
    """A thread seen in the profile."""

    native_id: int
    name: str | None
    is_main: bool

    @property
    def label(self) -> str:
        """How the thread is named to the user."""
        return "MainThread" if self.is_main else (self.name or f"thread {self.native_id}")


@dataclass(frozen=True)
class FunctionRow:
    """One function of a profile summary."""

    function: str
    filename: str
    line: int
    """The line where it spent most of its own samples (or, with none, the first line seen)."""
    self_samples: int
    """Samples with this function innermost."""
    total_samples: int
    """Samples with this function anywhere on the stack (once per sample, whatever the recursion)."""
    self_percent: float
    total_percent: float

    @property
    def key(self) -> FunctionKey:
        """(qualified name, file name)."""
        return (self.function, self.filename)


@dataclass(frozen=True)
class LineRow:
    """One line of the selected function: its own samples there, and all samples passing through."""

    lineno: int
    self_samples: int
    total_samples: int


@dataclass(frozen=True)
class Neighbour:
    """A caller or a callee of the selected function, with the samples of that call path."""

    function: str
    filename: str
    samples: int


@dataclass(frozen=True)
class FunctionDetail:
    """Callers, callees and hot lines of one function."""

    key: FunctionKey
    callers: list[Neighbour]
    callees: list[Neighbour]
    lines: list[LineRow]


@dataclass
class FlameNode:
    """One node of the icicle: a function at one depth below a given call path."""

    function: str
    filename: str
    samples: int = 0
    children: dict[FunctionKey, FlameNode] = field(default_factory=dict)

    def child(self, function: str, filename: str) -> FlameNode:
        """The child for that function, created when missing."""
        key = (function, filename)
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = FlameNode(function, filename)
        return node


@dataclass(frozen=True)
class StackCounts:
    """Samples by stack for one selection (mode, window, thread): the input of every summary."""

    counts: dict[int, int]
    """Stack id -> samples."""
    stacks: list[Stack]
    """Stack id -> the stack (shared, append-only)."""
    samples: int
    """Samples in the selection."""

    def summary(self, limit: int | None = None) -> list[FunctionRow]:
        """Functions by self samples, then total samples (the Profile table's default order)."""
        return summarize(self, limit)


class Profile:
    """Samples of one target, counted by stack, thread and tag; safe to read while the sampler adds."""

    def __init__(self, *, keep_timeline: bool = False, clock: object = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.keep_timeline = keep_timeline
        """Whether samples are kept in order (for the files of ``periscope record``)."""
        self.stacks: list[Stack] = []
        """Every distinct stack seen, by id."""
        self._stack_ids: dict[Stack, int] = {}
        self.threads: dict[int, ThreadMeta] = {}
        """Every thread seen, by native id."""
        self.reset()

    def reset(self) -> None:
        """Forget every sample (the stacks and threads seen stay interned)."""
        with self._lock:
            self.started = self._now()
            """Clock time of the first sample counted (or of the reset)."""
            self.samples = 0
            """Thread samples counted since the start (every tag)."""
            self.ticks = 0
            """Ticks counted since the start."""
            self._totals: dict[tuple[int, int], Counter[int]] = {}
            self._buckets: deque[tuple[int, dict[tuple[int, int], Counter[int]]]] = deque()
            self.timeline: list[tuple[float, int, int, int]] = []
            """(seconds since the start, native id, stack id, tags) per sample, when kept."""
            self.timeline_full = False
            """Samples were left out of the timeline once it reached MAX_TIMELINE."""

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator]

    # --- the sampler's side ------------------------------------------------------------------

    def intern(self, frames: Stack) -> int:
        """The id of a stack (new stacks get the next id)."""
        stack_id = self._stack_ids.get(frames)
        if stack_id is None:
            stack_id = self._stack_ids[frames] = len(self.stacks)
            self.stacks.append(frames)
        return stack_id

    def add_tick(self, when: float, samples: list[tuple[ThreadMeta, int, int]]) -> None:
        """Count one tick's samples: (thread, stack id from :meth:`intern`, tags) each."""
        second = int(when)
        with self._lock:
            self.ticks += 1
            buckets = self._buckets
            if not buckets or buckets[-1][0] != second:
                buckets.append((second, {}))
                while buckets and buckets[0][0] <= second - WINDOW:
                    buckets.popleft()
            bucket = buckets[-1][1]
            offset = when - self.started
            for thread, stack_id, tags in samples:
                self.samples += 1
                if self.threads.get(thread.native_id) is not thread:
                    self.threads[thread.native_id] = thread
                key = (thread.native_id, tags)
                total = self._totals.get(key)
                if total is None:
                    total = self._totals[key] = Counter()
                total[stack_id] += 1
                recent = bucket.get(key)
                if recent is None:
                    recent = bucket[key] = Counter()
                recent[stack_id] += 1
                if self.keep_timeline:
                    if len(self.timeline) < MAX_TIMELINE:
                        self.timeline.append((offset, thread.native_id, stack_id, tags))
                    else:
                        self.timeline_full = True

    def add_counts(self, second: int, samples: list[tuple[ThreadMeta, int, int, int]]) -> None:
        """Count samples summed elsewhere (the far side of a host): ``n`` samples of each (thread,
        stack id, tags, n) taken in clock second ``second`` (of this Profile's clock)."""
        with self._lock:
            buckets = self._buckets
            newest = max(second, buckets[-1][0] if buckets else second)
            while buckets and buckets[0][0] <= newest - WINDOW:
                buckets.popleft()
            bucket = None
            if second > newest - WINDOW:
                # Mostly the newest second; an update may also carry the one before it.
                index = len(buckets)
                while index > 0 and buckets[index - 1][0] > second:
                    index -= 1
                if index > 0 and buckets[index - 1][0] == second:
                    bucket = buckets[index - 1][1]
                else:
                    bucket = {}
                    buckets.insert(index, (second, bucket))
            for thread, stack_id, tags, n in samples:
                self.samples += n
                if self.threads.get(thread.native_id) is not thread:
                    self.threads[thread.native_id] = thread
                key = (thread.native_id, tags)
                total = self._totals.get(key)
                if total is None:
                    total = self._totals[key] = Counter()
                total[stack_id] += n
                if bucket is not None:
                    recent = bucket.get(key)
                    if recent is None:
                        recent = bucket[key] = Counter()
                    recent[stack_id] += n

    def add_ticks(self, ticks: int) -> None:
        """Count ticks taken elsewhere (their samples come through :meth:`add_counts`)."""
        with self._lock:
            self.ticks += ticks

    # --- the readers' side -------------------------------------------------------------------

    def counts(self, mode: str = "wall", *, window: float | None = None, thread: int | None = None) -> StackCounts:
        """Samples by stack in ``mode``, over the last ``window`` seconds (None: since the start), of one thread or all."""
        need = mode_flags(mode)
        result: Counter[int] = Counter()
        with self._lock:
            if window is None:
                sources = [self._totals]
            else:
                oldest = int(self._now()) - window
                sources = [bucket for second, bucket in self._buckets if second > oldest]
            selected = [
                counter
                for source in sources
                for (native_id, tags), counter in source.items()
                if (thread is None or native_id == thread) and tags & need == need
            ]
            for counter in selected:
                result.update(counter)
            stacks = self.stacks
        return StackCounts(dict(result), stacks, sum(result.values()))

    def thread_list(self) -> list[ThreadMeta]:
        """The threads seen, main first, then by native id."""
        with self._lock:
            threads = list(self.threads.values())
        return sorted(threads, key=lambda meta: (not meta.is_main, meta.native_id))


def summarize(counts: StackCounts, limit: int | None = None) -> list[FunctionRow]:
    """Self and total samples per function, most self samples first."""
    self_counts: Counter[FunctionKey] = Counter()
    total_counts: Counter[FunctionKey] = Counter()
    line_counts: dict[FunctionKey, Counter[int]] = {}
    first_line: dict[FunctionKey, int] = {}
    for stack_id, samples in counts.counts.items():
        frames = counts.stacks[stack_id]
        if not frames:
            continue
        top = frames[0]
        key = (top.function, top.filename)
        self_counts[key] += samples
        line_counts.setdefault(key, Counter())[top.lineno] += samples
        seen: set[FunctionKey] = set()
        for frame in frames:
            key = (frame.function, frame.filename)
            if key not in seen:
                seen.add(key)
                total_counts[key] += samples
                first_line.setdefault(key, frame.lineno)
    denominator = counts.samples or 1
    rows = []
    for key, total in total_counts.items():
        lines = line_counts.get(key)
        line = lines.most_common(1)[0][0] if lines else first_line.get(key, 0)
        own = self_counts.get(key, 0)
        rows.append(FunctionRow(key[0], key[1], line, own, total, 100.0 * own / denominator, 100.0 * total / denominator))
    rows.sort(key=lambda row: (-row.self_samples, -row.total_samples, row.function, row.filename))
    return rows if limit is None else rows[:limit]


def function_detail(counts: StackCounts, key: FunctionKey) -> FunctionDetail:
    """Who called ``key``, whom it called, and its lines, in the samples of ``counts``."""
    callers: Counter[FunctionKey] = Counter()
    callees: Counter[FunctionKey] = Counter()
    self_lines: Counter[int] = Counter()
    total_lines: Counter[int] = Counter()
    for stack_id, samples in counts.counts.items():
        frames = counts.stacks[stack_id]
        seen_callers: set[FunctionKey] = set()
        seen_callees: set[FunctionKey] = set()
        seen_lines: set[int] = set()
        for index, frame in enumerate(frames):
            if (frame.function, frame.filename) != key:
                continue
            if index == 0:
                self_lines[frame.lineno] += samples
            if frame.lineno not in seen_lines:
                seen_lines.add(frame.lineno)
                total_lines[frame.lineno] += samples
            if index + 1 < len(frames):
                outer = frames[index + 1]
                seen_callers.add((outer.function, outer.filename))
            if index > 0:
                inner = frames[index - 1]
                seen_callees.add((inner.function, inner.filename))
        seen_callers.discard(key)  # recursion is not a caller of itself
        seen_callees.discard(key)
        for caller in seen_callers:
            callers[caller] += samples
        for callee in seen_callees:
            callees[callee] += samples

    def neighbours(counter: Counter[FunctionKey]) -> list[Neighbour]:
        return [Neighbour(function, filename, samples) for (function, filename), samples in counter.most_common()]

    lines = [LineRow(lineno, self_lines.get(lineno, 0), total) for lineno, total in total_lines.items()]
    lines.sort(key=lambda row: (-row.self_samples, -row.total_samples, row.lineno))
    return FunctionDetail(key, neighbours(callers), neighbours(callees), lines)


def flame_tree(counts: StackCounts) -> FlameNode:
    """The icicle of ``counts``: the root holds every sample, children are callees (outermost first)."""
    root = FlameNode("all", "", counts.samples)
    for stack_id, samples in counts.counts.items():
        node = root
        for frame in reversed(counts.stacks[stack_id]):
            node = node.child(frame.function, frame.filename)
            node.samples += samples
    return root
