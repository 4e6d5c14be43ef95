"""Remote exec (PEP 768) in pure Python: ask one thread of a target to run a staged script.

:func:`remote_exec` writes into one thread state, in this order: the path with its NUL, the
``pending`` flag, then the ``_PY_EVAL_PLEASE_STOP_BIT`` in the low byte of ``eval_breaker``. It
then polls ``pending``: the target clears it when the thread *picks up* the request, which is
before the audit hook runs and before the file is opened. Pickup is not completion; a script that
must be known to have run has to report back itself. The script is staged beforehand where the
target can read it (explorer.staging).

A request that is not picked up within the wait is **withdrawn** (``pending`` is set back to 0 if
it still holds our path). Otherwise the thread would run it whenever it next checks its eval
breaker, which could be hours later (a thread blocked in ``input()``), after the caller removed the
file or put something else at that path. The one remaining race: if the thread picks the request
up in the microseconds between our last check and the withdrawal, it runs although we report
``picked_up=False``.

Separate from explorer.staging: this is the only module that writes into a target's memory.
"""

from __future__ import annotations

import os
import threading
import time

from msgspec import Struct

from explorer.errors import (
    InjectionTimeout,
    PeriscopeError,
    ProcessGone,
    RemoteDebuggingDisabled,
    ScriptPathTooLong,
    TargetNotReady,
)
from explorer.memory import MemoryFault
from explorer.remote import InterpreterRef, RemoteProcess, ThreadRef, disabled_reason

STATUS_BOUND_GILSTATE = 1 << 3  # _status.bound_gilstate: the thread state its OS thread uses now
PLEASE_STOP_BIT = 0x20  # _PY_EVAL_PLEASE_STOP_BIT (bit 5 of eval_breaker): "check for pending work"
FIRST_POLL_PAUSE = 0.00005  # first sleep between reads of the pending flag (it grows 1.5x to 10 ms)


class MainThreadFinished(TargetNotReady):
    """The target's main thread has finished its main module (it waits for other threads to exit)."""


class NoSuchThread(PeriscopeError):
    """The target has no Python thread with the requested native id (or it exited)."""


class ExecResult(Struct, frozen=True):
    """What happened to one remote-exec request."""

    picked_up: bool
    """The thread cleared the pending flag: it took the request (NOT that the script ran or finished)."""
    native_id: int
    """The thread written to (host pid namespace)."""
    elapsed: float
    """Seconds from the last write until periscope saw the pickup (polled every 50 µs at first,
    backing off to 10 ms), or until the wait ended."""
    pid: int = 0
    thread_address: int = 0
    """The PyThreadState written to."""
    withdrawn: bool = False
    """Not picked up in time, and the request was cleared so that it will not run later."""
    waited: float | None = None
    """The wait that was given (None: not waited for)."""
    cancelled: bool = False
    """The caller's ``cancel`` event ended the wait (or came before anything was written)."""

    def explain(self, threads: str | None = None) -> tuple[str, str]:
        """A request that was not picked up: why and what became of it (the reason), and the fix.

        ``threads`` is an optional list of candidate threads to name in the fix.
        """
        within = f" within {self.waited:g} s" if self.waited is not None else ""
        candidates = f" (threads: {threads})" if threads else ""
        outcome = (
            "the request was withdrawn"
            if self.withdrawn
            else "the request could not be withdrawn and may still run later"
        )
        return (
            f"thread {self.native_id} of process {self.pid} did not pick up the script{within}: it is blocked "
            f"(sleeping, in a C call, or in input()); {outcome}",
            f"choose a thread that runs Python with --thread NATIVE_ID{candidates}, or retry with a longer --wait",
        )

    def raise_if_not_picked_up(self, threads: str | None = None) -> None:
        """Raise InjectionTimeout (with :meth:`explain`) unless the request was picked up."""
        if not self.picked_up:
            raise InjectionTimeout(*self.explain(threads))


def _thread_list(process: RemoteProcess, interp: InterpreterRef) -> list[ThreadRef]:
    """The interpreter's threads; a torn read (the list changed under us) is retried a few times."""
    for attempt in range(5):
        try:
            return process.threads(interp)
        except MemoryFault:
            process.memory.ensure_alive()
            if attempt == 4:
                raise TargetNotReady(
                    f"process {process.pid}: its thread list kept changing while being read", "try again"
                ) from None
    raise AssertionError("unreachable")


def describe_threads(threads: list[ThreadRef]) -> str:
    """A short list of native ids for messages: "101 (main), 102 (running Python), 103"."""
    names = [f"{t.native_id}{' (main)' if t.is_main else ''}{' (running Python)' if t.holds_gil else ''}" for t in threads]
    return ", ".join(names) or "none"


def select_thread(process: RemoteProcess, native_id: int | None = None) -> tuple[InterpreterRef, ThreadRef]:
    """The thread a request would go to: the main thread, or the one with this native id (host or target namespace).

    Checks everything that makes a request pointless first: the runtime is not finalizing, and
    remote debugging is enabled in the thread's interpreter. Raises TargetNotReady,
    MainThreadFinished, NoSuchThread or RemoteDebuggingDisabled.
    """
    try:
        if process.is_finalizing():
            raise TargetNotReady(f"process {process.pid} is shutting down: nothing can be injected any more")
        main = process.main_interpreter()
        if not process.remote_debugging_enabled(main):
            raise RemoteDebuggingDisabled(*disabled_reason(process.pid))
        threads = _thread_list(process, main)
        if native_id is None:
            for thread in threads:
                if thread.is_main:
                    return main, thread
            raise MainThreadFinished(
                f"process {process.pid}: the main thread has finished its script and waits for other threads",
                f"choose a thread that runs Python with --thread NATIVE_ID (threads: {describe_threads(threads)})",
            )
        # An OS thread that entered a subinterpreter (concurrent.interpreters) has a thread state
        # in each interpreter; the one in the main interpreter is blocked in the call that entered
        # the other. Take the state the thread uses now: it holds the thread's GILState binding.
        matches: list[tuple[InterpreterRef, ThreadRef]] = []
        for interp in process.interpreters():
            listed = threads if interp.is_main else _thread_list(process, interp)
            matches.extend((interp, t) for t in listed if native_id in (t.native_id, t.target_native_id))
        if matches:
            interp, thread = max(
                matches, key=lambda match: (bool(match[1].status & STATUS_BOUND_GILSTATE), not match[0].is_main)
            )
            if not interp.is_main and not process.remote_debugging_enabled(interp):
                raise RemoteDebuggingDisabled(*disabled_reason(process.pid))
            return interp, thread
        raise NoSuchThread(
            f"process {process.pid} has no Python thread with native id {native_id}; "
            f"its Python threads are: {describe_threads(threads)}"
        )
    except MemoryFault:
        process.memory.ensure_alive()
        raise TargetNotReady(f"process {process.pid}: its state changed while being read", "try again") from None


def remote_exec(
    pid_or_process: int | RemoteProcess,
    target_script_path: str,
    *,
    native_id: int | None = None,
    wait: float | None = 5.0,
    cancel: threading.Event | None = None,
) -> ExecResult:
    """Ask a thread of a CPython 3.14+ process to run the script at ``target_script_path`` (the target's view).

    The main thread by default, or the thread with ``native_id``. Waits up to ``wait`` seconds for
    the thread to pick the request up; a request not picked up in time is withdrawn (see the module
    docstring). ``wait=None`` returns right after writing, without waiting or withdrawing
    (``picked_up`` is then False; poll with :func:`wait_for_pickup`). Setting ``cancel`` (from
    another thread) ends the wait early: the request is withdrawn as on a timeout and the result
    says ``cancelled``; set before anything was written, nothing is.

    Raises ScriptPathTooLong (512 bytes or more, checked before touching the process),
    ProcessGone, NotAPythonProcess, UnsupportedPython, PermissionDenied, RemoteDebuggingDisabled,
    TargetNotReady, MainThreadFinished or NoSuchThread. Nothing is written unless every check passed.
    """
    encoded = os.fsencode(target_script_path)
    if b"\0" in encoded:
        raise ValueError("script path contains a NUL byte")
    if not encoded:
        raise ValueError("empty script path")
    if len(encoded) >= 512:
        raise ScriptPathTooLong(
            f"script path is {len(encoded)} bytes; the remote debugging protocol takes at most 511",
            "use a shorter path (for example under /tmp)",
        )
    if isinstance(pid_or_process, RemoteProcess):
        return _remote_exec(pid_or_process, encoded, native_id, wait, cancel)
    with RemoteProcess.open(pid_or_process) as process:
        return _remote_exec(process, encoded, native_id, wait, cancel)


def _remote_exec(
    process: RemoteProcess, encoded: bytes, native_id: int | None, wait: float | None, cancel: threading.Event | None
) -> ExecResult:
    debugger = process.offsets.debugger_support
    if len(encoded) >= debugger.debugger_script_path_size:
        raise ScriptPathTooLong(
            f"script path is {len(encoded)} bytes; this target takes at most {debugger.debugger_script_path_size - 1}"
        )
    interp, thread = select_thread(process, native_id)
    memory = process.memory
    support = thread.address + debugger.remote_debugger_support
    pending_address = support + debugger.debugger_pending_call
    path_address = support + debugger.debugger_script_path
    breaker_address = thread.address + debugger.eval_breaker
    try:
        # Re-walk the list right before writing: a thread state other than the main one is freed
        # when its thread exits, and 512 bytes written into freed memory corrupt the target's heap.
        # (A window of microseconds remains between this walk and the writes.)
        if not any(
            t.address == thread.address and t.target_native_id == thread.target_native_id
            for t in _thread_list(process, interp)
        ):
            raise NoSuchThread(f"thread {thread.native_id} of process {process.pid} exited", "choose another with --thread")
        if memory.read_i32(pending_address) != 0:
            raise TargetNotReady(
                f"thread {thread.native_id} of process {process.pid} already has a remote-exec request pending "
                "(another debugger's, not yet picked up)",
                "wait for it, or choose another thread with --thread",
            )
        if cancel is not None and cancel.is_set():
            return ExecResult(False, thread.native_id, 0.0, process.pid, thread.address, waited=wait, cancelled=True)
        # The documented order: the whole path with its NUL, then pending, then the eval-breaker
        # bit. The target clears pending before it copies the path, so it never sees a half path.
        memory.write(path_address, encoded + b"\0")
        memory.write(pending_address, (1).to_bytes(4, "little"))
        # Read-modify-write of the LOW BYTE only (event bits 0-7; bits 8+ hold the
        # instrumentation version): the smallest window in which we could undo a flag the target
        # sets or clears at the same moment.
        low = memory.read(breaker_address, 1)[0]
        memory.write(breaker_address, bytes([low | PLEASE_STOP_BIT]))
        written_at = time.perf_counter()
    except MemoryFault:
        memory.ensure_alive()
        raise TargetNotReady(
            f"process {process.pid}: thread {thread.native_id} changed while being written to", "try again"
        ) from None
    result = ExecResult(
        picked_up=False,
        native_id=thread.native_id,
        elapsed=0.0,
        pid=process.pid,
        thread_address=thread.address,
    )
    if wait is None:
        return result
    try:
        elapsed = wait_for_pickup(process, thread.address, max(0.0, wait), started=written_at, cancel=cancel)
    except BaseException:
        # Interrupted (Ctrl-C) or the target vanished: do not leave a request behind.
        _withdraw(process, pending_address, path_address, encoded, thread.address)
        raise
    if elapsed is not None:
        return ExecResult(True, thread.native_id, elapsed, process.pid, thread.address, waited=wait)
    withdrawn = _withdraw(process, pending_address, path_address, encoded, thread.address)
    return ExecResult(
        False,
        thread.native_id,
        time.perf_counter() - written_at,
        process.pid,
        thread.address,
        withdrawn,
        wait,
        cancelled=cancel is not None and cancel.is_set(),
    )


def wait_for_pickup(
    process: RemoteProcess,
    thread_address: int,
    timeout: float,
    *,
    started: float | None = None,
    cancel: threading.Event | None = None,
) -> float | None:
    """Poll a thread's pending flag until the target clears it; seconds since ``started``, or None on
    timeout or as soon as ``cancel`` is set.

    Raises NoSuchThread when the thread exits while its request is pending.
    """
    debugger = process.offsets.debugger_support
    pending_address = thread_address + debugger.remote_debugger_support + debugger.debugger_pending_call
    breaker_address = thread_address + debugger.eval_breaker
    start = time.perf_counter() if started is None else started
    deadline = start + timeout
    pause = 0.0
    reasserted = start
    while True:
        try:
            pending = process.memory.read_i32(pending_address)
        except MemoryFault:
            process.memory.ensure_alive()
            pending = -1  # unreadable: the thread state may have been freed
        if pending == 0:
            return time.perf_counter() - start
        now = time.perf_counter()
        if now >= deadline:
            return None
        listed = None
        if pending != 1 or pause >= 0.001:
            listed = _is_listed(process, thread_address)
            if not listed:
                process.memory.ensure_alive()  # the whole process going away is ProcessGone
                raise NoSuchThread(f"the chosen thread of process {process.pid} exited before it picked the request up")
        if pending == 1 and listed and now - reasserted >= REASSERT_INTERVAL:
            # The eval-breaker bit can be lost: the target updates that word itself (taking the
            # GIL, handling other events) and our write is not atomic with its updates. A request
            # whose bit is gone waits for nothing: set it again while the request is pending.
            reasserted = now
            _reassert_breaker(process, breaker_address)
        # Never spin: on a machine with few cores the target may share ours and can only pick
        # the request up while we sleep. Start with short sleeps (a busy thread picks up within
        # tens of µs on its own core) and back off to 10 ms.
        pause = min(0.01, max(FIRST_POLL_PAUSE, pause * 1.5))
        if cancel is None:
            time.sleep(min(pause, max(0.0, deadline - now)))
        elif cancel.wait(min(pause, max(0.0, deadline - now))):
            return None


REASSERT_INTERVAL = 0.05
"""Seconds between two checks of a pending request's eval-breaker bit (see wait_for_pickup)."""


def _reassert_breaker(process: RemoteProcess, breaker_address: int) -> None:
    """Set PLEASE_STOP in a listed thread's eval breaker again if it is not set (low byte only, as
    remote_exec writes it). A spurious bit costs the thread one suspend and resume."""
    try:
        low = process.memory.read(breaker_address, 1)[0]
        if not low & PLEASE_STOP_BIT:
            process.memory.write(breaker_address, bytes([low | PLEASE_STOP_BIT]))
    except MemoryFault:
        process.memory.ensure_alive()


def _is_listed(process: RemoteProcess, thread_address: int) -> bool:
    """Whether a thread state with this address is in any interpreter's thread list right now."""
    for attempt in range(5):
        try:
            return any(t.address == thread_address for t in process.threads())
        except MemoryFault:
            process.memory.ensure_alive()
            time.sleep(0.001 * attempt)
    return False


def _withdraw(process: RemoteProcess, pending_address: int, path_address: int, encoded: bytes, thread_address: int) -> bool:
    """Clear a request that was not picked up, if it is still ours and its thread still lives; whether it was cleared."""
    try:
        if not _is_listed(process, thread_address):
            return False  # never write into a thread state that may have been freed
        if process.memory.read_i32(pending_address) != 1:
            return False  # picked up after all
        if process.memory.read(path_address, len(encoded) + 1) != encoded + b"\0":
            return False  # another debugger has replaced it: theirs now, leave it
        process.memory.write(pending_address, (0).to_bytes(4, "little"))
        return True
    except (MemoryFault, ProcessGone):
        return False


__all__ = [
    "ExecResult",
    "MainThreadFinished",
    "NoSuchThread",
    "describe_threads",
    "remote_exec",
    "select_thread",
    "wait_for_pickup",
]
