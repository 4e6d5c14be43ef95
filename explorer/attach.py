"""``attach(pid)``: stage the agent in a target, have one of its threads run it, connect to it.

``attach(pid)`` finds the agent's compiled code (explorer.compiled_agent), stages the agent
script in a fresh private directory the target can read (explorer.staging), asks one of the
target's threads to run it (PEP 768 remote exec, explorer.remote_exec), connects to the agent
and authenticates (explorer.handshake), and returns the live explorer.session.Session. It reports
each step as an ``AttachProgress`` for a progress display, and can be cancelled at any point
without leaving a request or a directory behind (``_AttachWork``).

Which thread runs the script matters: a thread only picks the request up at its next
eval-breaker check, so a thread blocked in ``input()`` or a long sleep never does.
``thread="auto"`` (the default) uses the thread holding the GIL when one is running Python
(pickup in well under a millisecond; on a target whose threads compete for the GIL, the one that
has just taken it, see ``_fresh_holder``) and the main thread otherwise; ``"any"`` tries the threads
in turn until one picks the request up; ``"main"`` or a native thread id picks one.

No Textual here: the CLI commands and the tests use this module directly; the one-shot commands
(explorer.oneshot) use its blocking parts without an event loop.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from explorer import switch
from explorer.compiled_agent import AGENT_CODE_WAIT, AgentCode, agent_code
from explorer.errors import InjectionTimeout, PeriscopeError
from explorer.handshake import SCRIPT_NAME, SOCKET_NAME, _connect_counted, _Staged
from explorer.session import Session, SessionClosed, _ignore_result

if TYPE_CHECKING:
    import asyncio
# asyncio is imported where it is used, not here: the one-shot commands (explorer.oneshot) call the
# blocking parts of this module without an event loop, and importing asyncio alone costs them a
# third of their start-up.

SCRIPT_DIR_FIT = {"limit": 107, "room": 1 + len(SOCKET_NAME)}
"""For prepare_script_dir: the agent binds agent.sock in the directory, and the target's path to
it must fit a Unix socket address (107 bytes); a deeper TMPDIR is passed over."""
STAGED_LIFETIME = 60.0
"""Seconds a staged agent script may still start the agent (when attach() does not say; see ``_stage``)."""
STAGED_GRACE = 2.0
"""Seconds after attach()'s deadline that a staged script may still start the agent (clock steps, slow start)."""
CONNECT_TIMEOUT = 20.0
"""Seconds the agent waits for periscope to connect before it removes itself."""
FAST_START = True
"""Whether the agent shortens the target's GIL switch interval until its first frame (PROTOCOL.md)."""

BLOCKED_FIX = "attach through a thread that runs Python, or while the program is busy"
"""What an InjectionTimeout tells when no thread ran Python, unless the caller says it in its own words."""


class AttachState(enum.Enum):
    """Where ``attach()`` is."""

    INJECTED = "injected"
    """The request to run the agent script was written into a thread of the target."""
    WAITING = "waiting"
    """That thread has not run Python since: ``AttachProgress.stacks`` shows where each thread is."""
    STARTING = "starting"
    """The thread took the request; the agent is starting."""
    CONNECTED = "connected"
    """The agent answered; frames are on their way."""


class AttachProgress(Struct, frozen=True):
    """One step of ``attach()``, for a progress display."""

    state: AttachState
    message: str
    elapsed: float
    native_id: int | None = None
    """The thread the request went to (host pid namespace)."""
    stacks: tuple[Any, ...] | None = None
    """While waiting: every thread's stack read from outside (explorer.stacks.ThreadStack)."""


ThreadChoice = str | int
"""``"auto"``, ``"main"``, ``"any"`` or a native thread id."""


def parse_thread_choice(text: str) -> ThreadChoice:
    """``--via`` on the command line: auto, main, any or a native thread id."""
    if text in ("auto", "main", "any"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected auto, main, any or a native thread id, not {text!r}") from None

Progress = Callable[[AttachProgress], None]


CODE_NAME = "agent.code"
"""Beside the script: the agent precompiled (marshal data), which the launcher loads."""
SOURCE_NAME = "agent-source.py"
"""Beside the script: the agent's source, which the target compiles only when it cannot load the code."""


def _stage(
    pid: int,
    rate: float,
    modules: tuple[str, ...],
    limits: dict[str, Any] | None,
    code: AgentCode | None = None,
    script_dir: Any = None,
    not_after: float | None = None,
    switch_us: int | None = None,
) -> _Staged:
    """Write the agent script (config header and bootstrap), and beside it the agent's source and
    compiled ``code``, into a fresh private directory (``script_dir`` from
    explorer.staging.prepare_script_dir, or a new one).

    ``not_after`` (wall-clock time, default STAGED_LIFETIME from now): a thread that picks the
    script up later removes it without starting the agent, so neither the agent nor its token
    outlives the attach that staged it. ``switch_us``: the target's switch interval, which
    periscope is about to shorten from outside (explorer.switch), for the agent to give back."""
    from explorer.staging import prepare_script_dir, write_script
    from payloads.agent import agent_source, build_script

    if script_dir is None:
        script_dir = prepare_script_dir(pid, **SCRIPT_DIR_FIT)
    try:
        token = os.urandom(32).hex()  # secrets.token_hex(32) without importing secrets (random, base64: start-up time)
        target_dir = script_dir.target_path
        config = {
            "directory": target_dir,
            "script_path": f"{target_dir}/{SCRIPT_NAME}",
            "code_path": f"{target_dir}/{CODE_NAME}",
            "source_path": f"{target_dir}/{SOURCE_NAME}",
            "socket_path": f"{target_dir}/{SOCKET_NAME}",
            "token": token,
            "rate": float(rate),
            "modules": list(modules),
            "limits": dict(limits or {}),
            "connect_timeout": CONNECT_TIMEOUT,
            "fast_start": FAST_START,
            "not_after": time.time() + STAGED_LIFETIME if not_after is None else not_after,
        }
        if FAST_START:
            config["start_interval"] = switch.ATTACH_US / 1e6  # what periscope writes, and the agent sets, until the first frame
        if switch_us is not None:
            config["switch_interval"] = switch_us / 1e6
        # The blobs first: the script that names them is the last thing the target could pick up.
        if code is not None:
            write_script(script_dir, CODE_NAME, code.data)
        write_script(script_dir, SOURCE_NAME, agent_source().encode("utf-8"))
        script = build_script(config, None if code is None else code.for_script())
        _, target_path = write_script(script_dir, SCRIPT_NAME, script)
    except BaseException:
        script_dir.cleanup()
        raise
    return _Staged(pid, script_dir, target_path, Path(script_dir.host_path) / SOCKET_NAME, token)


def _code_rejected(staged: _Staged) -> bool:
    """Whether the agent left a ``code-rejected`` note (read as any note: never through a planted link)."""
    try:
        return staged.script_dir.read_note("code-rejected") is not None
    except PeriscopeError:
        return False


def _candidates(process: Any, choice: ThreadChoice) -> list[int | None]:
    """Native ids (host namespace; None = the main thread) to try, best first."""
    process.require_remote_debugging()
    if isinstance(choice, int):
        return [choice]
    if choice == "main":
        return [None]
    if choice not in ("auto", "any"):
        raise ValueError(f"thread must be 'auto', 'main', 'any' or a native thread id, not {choice!r}")
    from explorer.remote_exec import _thread_list

    threads = _thread_list(process, process.main_interpreter())
    holder = [t.native_id for t in threads if t.holds_gil]
    main = [t.native_id for t in threads if t.is_main]
    if choice == "auto":
        return list(dict.fromkeys(holder[:1] + main)) or [None]
    rest = [t.native_id for t in sorted(threads, key=lambda t: not t.attached) if t.native_id not in holder + main]
    return list(dict.fromkeys(holder + main + rest)) or [None]


def _read_stacks(pid: int) -> tuple[Any, ...] | None:
    try:
        from explorer.stacks import read_stacks

        return tuple(read_stacks(pid)[1])
    except PeriscopeError:
        return None


async def attach(
    pid: int,
    *,
    thread: ThreadChoice = "auto",
    timeout: float = 10.0,
    rate: float = 2.0,
    modules: tuple[str, ...] = ("__main__",),
    limits: dict[str, Any] | None = None,
    progress: Progress | None = None,
    blocked_fix: str = BLOCKED_FIX,
) -> Session:
    """Inject the agent into ``pid`` and connect to it; the returned Session streams frames.

    ``rate`` is frames per second (0: only on request, see ``Session.sample``). Raises the typed
    errors of explorer.errors (RemoteDebuggingDisabled, PermissionDenied, InjectionTimeout, ...).
    ``blocked_fix`` is the fix an InjectionTimeout tells when no thread ran Python in time, in the
    caller's words (the CLI names ``--via``, the TUI its keys).
    """
    import asyncio
    started = time.monotonic()
    deadline = started + timeout

    def report(state: AttachState, message: str, native_id: int | None = None, stacks: tuple[Any, ...] | None = None) -> None:
        if progress is not None:
            progress(AttachProgress(state, message, time.monotonic() - started, native_id, stacks))

    from explorer.staging import prepare_script_dir
    from explorer.remote import RemoteProcess

    work = _AttachWork(await _finish_or_dispose(asyncio.to_thread(RemoteProcess.open, pid), lambda process: process.close()))
    cleanup: list[Callable[[], None]] = []  # what to undo if attaching fails or is cancelled
    try:
        # A valid target: make its directory while choosing the thread and finding the code.
        preparing = asyncio.ensure_future(asyncio.to_thread(prepare_script_dir, pid, **SCRIPT_DIR_FIT))
        try:
            version_hex = work.process.offsets.version_hex
            compiling = asyncio.ensure_future(asyncio.to_thread(agent_code, pid, version_hex))
            candidates = await work.run(_candidates, work.process, thread)
            code = await _ready_code(compiling, min(AGENT_CODE_WAIT, max(0.0, deadline - time.monotonic()) / 2))
            script_dir = await preparing
        except BaseException:
            await _discard_directory(preparing)
            raise
        cleanup.append(script_dir.cleanup)
        not_after = time.time() + max(0.0, deadline - time.monotonic()) + STAGED_GRACE
        switch_us = work.shorten_switch(cleanup)
        staged = await work.run(_stage, pid, rate, tuple(modules), limits, code, script_dir, not_after, switch_us)
        spread = thread in ("any", "auto")
        picked = await _inject(
            staged, candidates, deadline, report, spread=spread, holder_first=spread, work=work, blocked_fix=blocked_fix
        )
        report(AttachState.STARTING, f"thread {picked} took the request; the agent is starting", picked)
        sock, decoder, hello, received = await work.run(
            _connect_counted, staged, deadline, work.cancel, discard=lambda connected: connected[0].close()
        )
        cleanup.append(sock.close)
        code_used = "compiled" if code is None else "precompiled"
        # The note only says how this session started; it never touches the cache (see explorer.compiled_agent._compilers).
        if code is not None and await asyncio.to_thread(_code_rejected, staged):
            code_used = "rejected"
        cleanup.clear()  # attached: the session owns the directory and the socket from here on
        booster = work.booster(switch_us)
    finally:
        # Cancelled (Esc, another thread chosen, the app exiting) or failed: a worker thread may
        # still wait for a pickup; it withdraws the request before the directory goes and the
        # process is closed.
        work.stop(*cleanup)
    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    except BaseException:
        sock.close()
        staged.script_dir.cleanup()
        if booster is not None:
            booster.close()
        raise
    session = Session(pid, hello, reader, writer, decoder, staged.script_dir, picked)
    session.agent_code = code_used
    session.bytes_received = received
    session.switch = booster
    session._start()
    report(AttachState.CONNECTED, f"connected to the agent in process {pid}", picked)
    return session


async def _discard_directory(job: asyncio.Future[Any]) -> None:
    """Remove the directory ``job`` (prepare_script_dir in a thread) made, once it has made it."""
    import asyncio
    try:
        script_dir = await asyncio.shield(job)
    except (PeriscopeError, OSError):
        return  # it made none
    await asyncio.to_thread(script_dir.cleanup)


async def _ready_code(job: asyncio.Future[AgentCode | None], wait: float) -> AgentCode | None:
    """The compiled agent if it is ready within ``wait`` seconds (a compile still running goes on, for next time)."""
    import asyncio
    try:
        return await asyncio.wait_for(asyncio.shield(job), wait)
    except TimeoutError:
        return None


FRESH_HOLDER_WINDOW = 0.006
"""Seconds attach() watches the GIL change hands, to ask the thread that has just taken it."""


def _fresh_holder(process: Any, fallback: int | None) -> int | None:
    """The native id of the thread that has just taken the GIL (else the one holding it, else ``fallback``).

    A thread picks a remote-exec request up at its next eval-breaker check, where CPython
    suspends it once. On a target whose threads compete for the GIL, a thread that has held the
    GIL for a switch interval is asked to give it up, so that suspension, and every system call
    the start-up makes, sends it to the back of the queue: tens of milliseconds on a busy target.
    A thread that has just taken the GIL has a whole interval ahead of it.
    """
    from explorer.memory import MemoryFault

    try:
        interp = process.main_interpreter()
        first = process.gil_holder(interp)
        for _ in range(3):  # free for a moment (a hand-over), or nobody runs Python?
            if first:
                break
            time.sleep(0.00005)
            first = process.gil_holder(interp)
        if not first:
            return fallback
        threads = {t.address: t.native_id for t in process.threads(interp)}
        holder = first
        if len(threads) > 1:
            deadline = time.perf_counter() + FRESH_HOLDER_WINDOW
            while time.perf_counter() < deadline:
                time.sleep(0.00005)
                now = process.gil_holder(interp)
                if now and now != first:
                    holder = now
                    break
        if holder not in threads:
            threads = {t.address: t.native_id for t in process.threads(interp)}
        return threads.get(holder, fallback)
    except MemoryFault:
        process.memory.ensure_alive()
        return fallback


def _exec_on(
    process: Any, pid: int, path: str, native_id: int | None, wait: float, fresh: bool, cancel: threading.Event | None = None
) -> Any:
    from explorer.remote_exec import remote_exec

    if fresh and process is not None:
        native_id = _fresh_holder(process, native_id)
    return remote_exec(process or pid, path, native_id=native_id, wait=wait, cancel=cancel)


class _AttachWork:
    """What ``attach()`` shares with its worker threads: the target's RemoteProcess and a stop event.

    ``attach()`` can be cancelled (Esc, another thread chosen, the app exiting) while a worker
    thread still waits for a remote-exec pickup or for the agent's socket, and an asyncio
    cancellation does not stop a thread. ``stop()`` sets ``cancel`` (the waits end; a request not
    picked up is withdrawn, through the process) and runs the clean-up (removing the session
    directory, then closing the process) once the last worker thread has returned: never while
    one still reads through the process or stats the directory.
    """

    def __init__(self, process: Any) -> None:
        self.process = process
        """The target (explorer.remote.RemoteProcess), open until ``stop()`` and the last worker are done."""
        self.cancel = threading.Event()
        """Set by ``stop()``: the worker threads' waits end early."""
        self._lock = threading.Lock()
        self._running = 0
        self._cleanup: list[Callable[[], None]] | None = None
        self.keep_process = False
        """Set once attached when the session takes the process over (see explorer.switch.Booster)."""

    async def run(self, function: Callable[..., Any], *args: Any, discard: Callable[[Any], None] | None = None) -> Any:
        """``function(*args)`` in a worker thread that keeps the process open while it runs.

        ``discard`` disposes of a result that arrives after ``stop()`` (nobody will take it).
        """
        import asyncio
        return await asyncio.to_thread(self._call, function, args, discard)

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...], discard: Callable[[Any], None] | None) -> Any:
        with self._lock:
            if self._cleanup is not None:
                raise SessionClosed("attaching was cancelled")
            self._running += 1
        result: Any = None
        finished = False
        try:
            result = function(*args)
            finished = True
            return result
        finally:
            with self._lock:
                self._running -= 1
                stopped = self._cleanup is not None
                last = stopped and self._running == 0
            if stopped and finished and discard is not None:
                discard(result)
            if last:
                self._finish()

    def shorten_switch(self, cleanup: list[Callable[[], None]]) -> int | None:
        """The target's switch interval (None: not to be touched, or FAST_START off), shortened
        from outside for the pickup if a thread holds the GIL (explorer.switch); ``cleanup`` then
        gives it back should the attach fail (the agent gives it back once it runs)."""
        switch_us = switch.target_interval(self.process) if FAST_START else None
        if switch.shorten(self.process, switch_us, short_us=switch.ATTACH_US):
            assert switch_us is not None
            cleanup.append(functools.partial(switch.give_back, self.process, switch_us, short_us=switch.ATTACH_US))
        return switch_us

    def booster(self, switch_us: int | None) -> switch.Booster | None:
        """Once attached: the session's handle on the interval for its requests, which takes the
        process over (its ``close`` closes it), or None when the interval is not to be touched."""
        if switch_us is None or switch_us <= switch.SHORT_US:
            return None
        self.keep_process = True
        return switch.Booster(self.process, switch_us)

    def stop(self, *cleanup: Callable[[], None]) -> None:
        """Stop the worker threads; run ``cleanup``, then close the process, once none runs any more."""
        self.cancel.set()
        with self._lock:
            if self._cleanup is not None:
                return
            self._cleanup = list(cleanup)
            now = self._running == 0
        if now:
            self._finish()

    def _finish(self) -> None:
        try:
            for step in reversed(self._cleanup or ()):
                with contextlib.suppress(OSError):  # a clean-up that fails must not hide why attaching ended
                    step()
        finally:
            if not self.keep_process:
                self.process.close()


async def _finish_or_dispose(job: Any, dispose: Callable[[Any], None]) -> Any:
    """Await ``job`` (a thread's work); if the caller is cancelled first, ``dispose`` of its result once it comes."""
    import asyncio
    future = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: None if done.cancelled() or done.exception() else dispose(done.result()))
        raise


def no_thread_ran(pid: int, candidates: list[int | None], blocked_fix: str) -> InjectionTimeout:
    """The error of an attach whose request no candidate thread took before the deadline."""
    return InjectionTimeout(
        f"no thread of process {pid} ran Python within the timeout "
        f"(tried {', '.join('main' if c is None else str(c) for c in candidates)}): its threads are "
        "blocked (input(), a sleep, a lock, a long C call)",
        blocked_fix,
        no_thread_ran=True,
    )


async def _inject(
    staged: _Staged,
    candidates: list[int | None],
    deadline: float,
    report: Callable[..., None],
    spread: bool,
    process: Any = None,
    holder_first: bool = False,
    work: _AttachWork | None = None,
    blocked_fix: str = BLOCKED_FIX,
) -> int | None:
    """Ask the candidate threads in turn to run the script; the native id of the one that did.

    With ``holder_first``, the first candidate (the GIL holder when the candidates were chosen)
    is replaced, at the time of writing, by the thread that has just taken the GIL. With
    ``work``, requests go through its process and end early when it is stopped.
    """
    import asyncio
    from explorer.remote_exec import MainThreadFinished, NoSuchThread

    if work is not None:
        process = work.process

    slice_ = 0.25
    first_round = True
    last_stacks = 0.0
    while True:
        for index, native_id in enumerate(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise no_thread_ran(staged.pid, candidates, blocked_fix)
            wait = min(remaining, slice_) if spread and len(candidates) > 1 else remaining
            fresh = holder_first and index == 0 and first_round
            arguments = (process, staged.pid, staged.script_target_path, native_id, wait, fresh)
            job = asyncio.ensure_future(
                work.run(_exec_on, *arguments, work.cancel) if work is not None else asyncio.to_thread(_exec_on, *arguments)
            )
            report(AttachState.INJECTED, f"asked thread {native_id or 'main'} to run the agent", native_id)
            waited_since = time.monotonic()
            try:
                while True:
                    done, _ = await asyncio.wait({job}, timeout=0.25)
                    if done:
                        break
                    if time.monotonic() - last_stacks > 0.5:
                        last_stacks = time.monotonic()
                        stacks = await asyncio.to_thread(_read_stacks, staged.pid)
                        report(
                            AttachState.WAITING,
                            f"waiting {time.monotonic() - waited_since:.1f}s for thread {native_id or 'main'} to run Python",
                            native_id,
                            stacks,
                        )
            except BaseException:
                job.add_done_callback(_ignore_result)  # cancelled: the thread withdraws the request and ends
                raise
            try:
                result = job.result()
            except (NoSuchThread, MainThreadFinished):
                if not spread:
                    raise
                continue  # that thread exited (or finished its script): try the next one
            if result.picked_up:
                return result.native_id
        first_round = False
        slice_ = min(slice_ * 2, 2.0)
