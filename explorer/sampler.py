"""Sample a target's stacks from outside at a steady rate, in a thread of periscope's own process.

The sampler never stops the target (no ptrace, no signal): each tick it reads, through
``/proc/PID/mem``, what it needs and no more, with :class:`explorer.stacks.StackReader`:

* the GIL holder of each interpreter (two words);
* for the CPU and wall modes, each thread's ``/proc/PID/task/TID/schedstat`` (a kept-open file,
  under a microsecond to read): when it has not changed since the last tick, the thread has not
  been on a CPU since, so it is not on one now and its stack is the one read last time (reused,
  not walked again); only when it has changed is the task state read (``R``: on a CPU);
* the stacks of the threads the mode wants: every thread for *wall* (the unchanged ones reused),
  the threads on a CPU for *cpu*, the GIL holder for *gil*.

The thread list is read again every :data:`LIST_INTERVAL` seconds (and at once when the GIL
holder is a thread it does not know yet). Ticks are scheduled on the clock; a tick that comes too
late (the sampler thread was not scheduled in time) is still taken, and the ones behind it too
up to :data:`CATCH_UP` slots; beyond that slots are counted as *missed*. Each tick falls at a
random moment of its slot (see ``Sampler._run``). Torn reads are retried by the
stack reader and counted here.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from dataclasses import dataclass

from explorer.errors import TargetNotReady
from explorer.memory import MemoryFault
from explorer.profile import FLAG_CPU, FLAG_GIL, MODES, Profile, ProfileFrame, ThreadMeta
from explorer.remote import InterpreterRef, RemoteProcess, ThreadRef
from explorer.stacks import FrameInfo, StackReader

DEFAULT_RATE = 100.0
"""Samples per second when none is asked for."""
MAX_RATE = 1000.0
"""The highest rate the sampler accepts."""
LIST_INTERVAL = 0.2
"""Seconds between two reads of the thread list."""
CATCH_UP = 2
"""Slots a late sampler may still catch up on (taking their ticks at once) before it counts them missed."""
STOP_TIMEOUT = 5.0
"""Seconds :meth:`Sampler.stop` waits for the sampling thread."""


@dataclass(frozen=True)
class SamplerStats:
    """How sampling went so far."""

    rate: float
    """The rate asked for (ticks per second)."""
    ticks: int
    """Ticks taken."""
    missed: int
    """Ticks skipped because the previous ones ran late (a loaded machine, a slow read)."""
    samples: int
    """Thread samples recorded (a tick gives one per thread the mode wants)."""
    walks: int
    """Stacks read from the target."""
    reused: int
    """Stacks of threads that had not run since the last tick, reused instead of read again."""
    retries: int
    """Thread reads repeated because the stack changed while it was read (torn reads)."""
    torn: int
    """Stacks that never read clean and were kept with the frames that did."""
    elapsed: float
    """Seconds since sampling started."""

    @property
    def achieved_rate(self) -> float:
        """Ticks per second actually taken."""
        return self.ticks / self.elapsed if self.elapsed > 0 else 0.0


class _Thread:
    """What the sampler keeps about one thread between ticks."""

    __slots__ = ("interp", "ref", "meta", "sched_fd", "stat_fd", "sched", "running", "stack_id")

    def __init__(self, interp: InterpreterRef, ref: ThreadRef, meta: ThreadMeta) -> None:
        self.interp = interp
        self.ref = ref
        self.meta = meta
        self.sched_fd: int | None = None
        self.stat_fd: int | None = None
        self.sched = b""
        self.running = False
        """The thread was on a CPU at the last tick."""
        self.stack_id: int | None = None
        """The stack read at the last tick, valid while the thread does not run."""

    def close(self) -> None:
        for name in ("sched_fd", "stat_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


class _ThreadGone(Exception):
    """The thread exited between two ticks."""


class Sampler:
    """Samples one process into a :class:`~explorer.profile.Profile` until stopped or the process exits.

    ``start()`` runs it in a daemon thread; ``stop()`` ends it. After the thread ends, ``error``
    holds why, when it was not a stop (``ProcessGone`` when the target exited).
    """

    def __init__(
        self,
        pid: int,
        *,
        rate: float = DEFAULT_RATE,
        mode: str = "wall",
        profile: Profile | None = None,
        process: RemoteProcess | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if not 0 < rate <= MAX_RATE:
            raise ValueError(f"rate {rate} is out of range: use 1 to {MAX_RATE:.0f} samples per second")
        self.pid = pid
        self.rate = rate
        self.mode = mode
        """Which threads are read each tick: 'wall' every one, 'cpu' those on a CPU, 'gil' the GIL holder."""
        self.profile = profile if profile is not None else Profile()
        self._own_process = process is None
        self.process = process if process is not None else RemoteProcess.open(pid)
        self.reader = StackReader(self.process)
        self.error: BaseException | None = None
        """Why sampling ended, when it was not :meth:`stop` (ProcessGone: the target exited)."""
        self.done = threading.Event()
        """Set when the sampling thread has ended."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads: dict[int, _Thread] = {}
        self._interpreters: list[InterpreterRef] = []
        self._next_listing = 0.0
        self._stack_ids: dict[tuple[FrameInfo, ...], int] = {}
        self._frames: dict[FrameInfo, ProfileFrame] = {}  # one ProfileFrame per frame, shared by its stacks
        self._started = 0.0
        self._last_tick = 0.0
        self._ticks = 0
        self._missed = 0
        self._samples = 0
        self._walks = 0
        self._reused = 0
        self._base_retries = self.reader.retries
        self._base_torn = self.reader.torn_threads

    # --- control -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="periscope-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and release the target (idempotent; waits up to STOP_TIMEOUT seconds)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT)
        if self._thread is None or not self._thread.is_alive():
            self._close()

    def reset(self) -> None:
        """Forget the samples so far (the counters of :meth:`stats` start again too)."""
        self.profile.reset()
        self._started = time.monotonic()
        self._ticks = self._missed = self._samples = self._walks = self._reused = 0
        self._base_retries = self.reader.retries
        self._base_torn = self.reader.torn_threads

    def stats(self) -> SamplerStats:
        """The figures so far."""
        end = self._last_tick if self.done.is_set() else time.monotonic()
        return SamplerStats(
            rate=self.rate,
            ticks=self._ticks,
            missed=self._missed,
            samples=self._samples,
            walks=self._walks,
            reused=self._reused,
            retries=self.reader.retries - self._base_retries,
            torn=self.reader.torn_threads - self._base_torn,
            elapsed=max(0.0, end - self._started) if self._started else 0.0,
        )

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        # Each tick falls at a random moment of its own slot of 1/rate seconds: the rate holds on
        # average, and a program whose work repeats at the sampling period (a 10 ms loop sampled
        # at 100 Hz) is not seen always at the same phase of it.
        interval = 1.0 / self.rate
        slot = self._started
        chance = random.Random()
        try:
            while not self._stop.is_set():
                due = slot + chance.random() * interval
                now = time.monotonic()
                if now < due and self._stop.wait(due - now):
                    break
                now = time.monotonic()
                # A tick woken late (a loaded machine) is still taken, and so are the ones of the
                # next CATCH_UP slots, back to back; slots further behind are missed.
                behind = int((now - slot) / interval) - CATCH_UP
                if behind > 0:
                    self._missed += behind
                    slot += behind * interval
                self.tick(now)
                self._last_tick = now
                slot += interval
        except Exception as error:  # ProcessGone and the like; handed to the front end, which shows it
            self.error = error
        finally:
            self._last_tick = time.monotonic()
            self._close()
            self.done.set()

    def tick(self, now: float) -> None:
        """Take one sample of every thread the mode wants and count it in the profile."""
        try:
            self._tick(now)
        except MemoryFault:
            # Something was freed under a read outside the stack reader's retries (a thread
            # state, an interpreter): the target may be exiting; otherwise the next tick reads anew.
            self.process.memory.ensure_alive()
            self._next_listing = 0.0
            self._missed += 1
        except TargetNotReady:
            self.process.memory.ensure_alive()
            self._next_listing = 0.0
            self._missed += 1

    def _tick(self, now: float) -> None:
        if now >= self._next_listing or not self._threads:
            self._list(now)
        else:
            self.reader.check_code_cache(self._interpreters)
        holders = {holder for holder in (self.process.gil_holder(interp) for interp in self._interpreters) if holder}
        if self.mode == "gil" and any(holder not in self._threads for holder in holders):
            self._list(now)  # the holder is a thread started since the last listing
        mode = self.mode
        samples: list[tuple[ThreadMeta, int, int]] = []
        gone: list[int] = []
        for address, state in self._threads.items():
            tags = FLAG_GIL if address in holders else 0
            ran = True
            if mode != "gil":
                try:
                    ran, running = self._kernel_state(state)
                except _ThreadGone:
                    gone.append(address)
                    continue
                if running:
                    tags |= FLAG_CPU
            if mode == "cpu" and not tags & FLAG_CPU or mode == "gil" and not tags & FLAG_GIL:
                if ran:
                    state.stack_id = None  # it ran: what was read before may be stale now
                continue
            if not ran and state.stack_id is not None:
                self._reused += 1  # not on a CPU since the last tick: the stack cannot have changed
            else:
                stack_id = self._read_stack(state)
                if stack_id is None:
                    gone.append(address)
                    continue
                state.stack_id = stack_id
            samples.append((state.meta, state.stack_id, tags))
        for address in gone:
            self._threads.pop(address).close()
        self._ticks += 1
        self._samples += len(samples)
        self.profile.add_tick(now, samples)

    def _task_file(self, state: _Thread, slot: str, name: str, size: int) -> bytes:
        """Up to ``size`` bytes of /proc/PID/task/TID/``name``, through a descriptor kept in ``state.<slot>``;
        _ThreadGone when the thread (or the process: ProcessGone) is gone."""
        try:
            fd = getattr(state, slot)
            if fd is None:
                fd = os.open(f"/proc/{self.pid}/task/{state.ref.native_id}/{name}", os.O_RDONLY | os.O_CLOEXEC)
                setattr(state, slot, fd)
            return os.pread(fd, size, 0)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ESRCH):
                self.process.memory.ensure_alive()
                raise _ThreadGone from None
            raise

    def _kernel_state(self, state: _Thread) -> tuple[bool, bool]:
        """(the thread ran since the last tick, it is on a CPU now), from /proc/PID/task/TID."""
        sched = self._task_file(state, "sched_fd", "schedstat", 128)
        if not sched:
            self.process.memory.ensure_alive()
            raise _ThreadGone
        # Unchanged run time and run count: not scheduled since the last tick. A thread that was
        # on a CPU then may still be on it (the kernel updates a running task's figures only at
        # its ticks), so its state is read again whatever the figures say.
        ran = sched != state.sched or state.running
        state.sched = sched
        running = False
        if ran:
            stat = self._task_file(state, "stat_fd", "stat", 512)
            # The command name (field 2) may hold spaces and parentheses: the state follows the last ')'.
            close = stat.rfind(b")")
            running = close >= 0 and stat[close + 2 : close + 3] == b"R"
        state.running = running
        return ran, running

    def _read_stack(self, state: _Thread) -> int | None:
        """Read the thread's stack and intern it; None when the thread is gone."""
        stack = self.reader.read_thread(state.interp, state.ref)
        self._walks += 1
        if stack is None:
            return None
        name = None if stack.is_main else stack.name
        if name != state.meta.name:
            state.meta = ThreadMeta(state.ref.native_id, name, state.meta.is_main)
        stack_id = self._stack_ids.get(stack.frames)
        if stack_id is None:
            known = self._frames
            frames: list[ProfileFrame] = []
            for frame in stack.frames:
                converted = known.get(frame)
                if converted is None:
                    converted = known[frame] = ProfileFrame(frame.function, frame.filename, frame.lineno or 0)
                frames.append(converted)
            stack_id = self._stack_ids[stack.frames] = self.profile.intern(tuple(frames))
        return stack_id

    def _list(self, now: float) -> None:
        """Read the thread list again: new threads get a state, vanished ones are dropped."""
        listing = self.reader.list_threads()
        self._next_listing = now + LIST_INTERVAL
        interpreters: dict[int, InterpreterRef] = {}
        seen: set[int] = set()
        for interp, ref in listing:
            interpreters[interp.address] = interp
            seen.add(ref.address)
            state = self._threads.get(ref.address)
            if state is not None and state.ref.native_id == ref.native_id and state.ref.thread_id == ref.thread_id:
                state.ref = ref
                continue
            if state is not None:
                state.close()  # the thread state was reused by a new thread
            is_main = ref.is_main or (interp.is_main and ref.native_id == self.pid)
            self._threads[ref.address] = _Thread(interp, ref, ThreadMeta(ref.native_id, None, is_main))
        for address in [address for address in self._threads if address not in seen]:
            self._threads.pop(address).close()
        self._interpreters = list(interpreters.values())
        if len(self._stack_ids) > 100_000 or len(self._frames) > 100_000:
            self._stack_ids.clear()  # the profile keeps its own interning; these are only shortcuts
            self._frames.clear()

    def _close(self) -> None:
        for state in self._threads.values():
            state.close()
        self._threads.clear()
        if self._own_process:
            self.process.close()


def sample_for(pid: int, seconds: float, *, rate: float = DEFAULT_RATE, mode: str = "wall") -> tuple[Profile, SamplerStats]:
    """Sample ``pid`` for ``seconds`` (or until it exits) and return the profile and the figures."""
    sampler = Sampler(pid, rate=rate, mode=mode, profile=Profile(keep_timeline=True))
    sampler.start()
    try:
        sampler.done.wait(seconds)
    finally:
        sampler.stop()
    return sampler.profile, sampler.stats()
