"""A synchronous agent client for the one-shot commands (``snapshot``, ``eval``, ``watch``).

The same attach as :func:`explorer.attach.attach` (the same staging, compiled-agent cache,
thread choice, remote exec, socket connect, peer check and token auth: the blocking functions of
explorer.attach, explorer.compiled_agent and explorer.handshake), without an event loop: importing asyncio alone (with ssl, concurrent.futures
and logging) costs some 25 ms, more than the rest of an attach to an idle target. Work that may block for long (a remote-exec pickup, the wait for the
agent's socket) runs in a worker thread through explorer.attach's ``_AttachWork``, so that
Ctrl+C (and SIGTERM or SIGHUP, see explorer.signals) in the main thread withdraws a pending
request, and the session directory goes once that worker has returned.

For this machine only: through ``--host`` or ``--exec`` the commands keep the async session
relayed by explorer.hosts.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from explorer import session as _session
from explorer import switch, wire
from explorer.attach import (
    BLOCKED_FIX,
    SCRIPT_DIR_FIT,
    STAGED_GRACE,
    ThreadChoice,
    _AttachWork,
    _candidates,
    _code_rejected,
    _exec_on,
    _stage,
    no_thread_ran,
)
from explorer.compiled_agent import AGENT_CODE_WAIT, agent_code
from explorer.errors import PeriscopeError, ProtocolError
from explorer.handshake import _connect_counted
from explorer.model import AgentError, Bye, Frame, Hello, OutOfStep, Output, Response
from explorer.session import RequestFailed, SessionClosed, why_closed

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from explorer.model import EvalResult

POLL = 0.1
"""Seconds a blocking wait in the main thread lasts before it looks again (a Ctrl+C, a deadline)."""


def on_remote_host() -> bool:
    """Whether the commands go through ``--host`` or ``--exec`` (explorer.hosts), without importing it."""
    hosts = sys.modules.get("explorer.hosts")
    return hosts is not None and hosts.current() is not None


INTERRUPT_GRACE = 2.0
"""Seconds an eval has, after Ctrl+C sent it KeyboardInterrupt, to end before periscope stops
waiting: code blocked in a C call (a sleep, a lock, I/O) takes it only when that call returns."""


class InterruptPending(PeriscopeError):
    """Ctrl+C sent the eval KeyboardInterrupt, but it is in a C call that has not returned."""

    @classmethod
    def of(cls, pid: int) -> InterruptPending:
        """The error for the eval in process ``pid``."""
        return cls(
            f"KeyboardInterrupt sent to the eval in process {pid}, which is blocked in a C call (a sleep, a lock, I/O): "
            "it is raised there when that call returns; detached, the target runs on"
        )


class NotTaken(PeriscopeError):
    """No thread took the agent's request within ``attach(taken_within=...)``; it was withdrawn."""


def _in_worker(
    work: _AttachWork,
    function: Callable[..., Any],
    *args: Any,
    discard: Callable[[Any], None] | None = None,
    give_up: Callable[[], bool] | None = None,
) -> Any:
    """``function(*args)`` in a worker thread (through ``work``), waited for here.

    A KeyboardInterrupt here (Ctrl+C) or ``give_up()`` turning true stops ``work``: the worker's
    wait ends, a request it wrote is withdrawn, and ``work``'s clean-up runs once it has returned.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append((True, work._call(function, args, discard)))
        except BaseException as error:  # handed to the main thread below
            outcome.append((False, error))
        finally:
            done.set()

    # Waited for on an Event, not with Thread.join: a join that Ctrl+C interrupts can mark a
    # thread that still runs as finished (CPython 3.11), and the withdrawal would be missed.
    worker = threading.Thread(target=call, name="periscope-attach")
    worker.start()
    try:
        while not done.wait(POLL):
            if give_up is not None and give_up():
                work.cancel.set()
    except BaseException:
        # Ctrl+C (or SIGTERM, SIGHUP): end the worker's wait and see it withdraw what it wrote
        # before going on; never leave that to the interpreter's exit.
        work.cancel.set()
        while not done.is_set():
            try:
                done.wait(POLL)
            except KeyboardInterrupt:
                continue  # pressed again: the withdrawal is bounded, wait for it all the same
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def attach(
    pid: int,
    *,
    thread: ThreadChoice = "auto",
    timeout: float = 10.0,
    rate: float = 0.0,
    modules: tuple[str, ...] = ("__main__",),
    limits: dict[str, Any] | None = None,
    blocked_fix: str = BLOCKED_FIX,
    taken_within: float | None = None,
) -> OneShotSession:
    """Inject the agent into ``pid`` and connect to it, as :func:`explorer.attach.attach` does.

    With ``taken_within``, a request that no thread took within that many seconds of being
    written is withdrawn and NotTaken raised (``snapshot`` then reads the frame from outside).
    Raises the same typed errors as the async attach.
    """
    from explorer.staging import prepare_script_dir
    from explorer.remote import RemoteProcess

    started = time.monotonic()
    deadline = started + timeout
    work = _AttachWork(RemoteProcess.open(pid))
    cleanup: list[Callable[[], None]] = []  # what to undo if attaching fails or is interrupted
    try:
        version_hex = work.process.offsets.version_hex
        compiled: list[Any] = []
        ready = threading.Event()

        def compile_agent() -> None:
            try:
                compiled.append(agent_code(pid, version_hex))
            finally:
                ready.set()

        # A compile that takes longer goes on (for next time); periscope's exit waits for it.
        threading.Thread(target=compile_agent, name="periscope-agent-code").start()
        script_dir = prepare_script_dir(pid, **SCRIPT_DIR_FIT)
        cleanup.append(script_dir.cleanup)
        candidates = _candidates(work.process, thread)
        ready.wait(min(AGENT_CODE_WAIT, max(0.0, deadline - time.monotonic()) / 2))  # not a join: see _in_worker
        code = compiled[0] if compiled else None
        not_after = time.time() + max(0.0, deadline - time.monotonic()) + STAGED_GRACE
        switch_us = work.shorten_switch(cleanup)
        staged = _stage(pid, rate, tuple(modules), limits, code, script_dir, not_after, switch_us)
        spread = thread in ("any", "auto")
        injected_at = time.monotonic()

        def give_up() -> bool:
            return taken_within is not None and time.monotonic() - injected_at >= min(taken_within, timeout)

        picked = _inject(work, staged, candidates, deadline, spread, blocked_fix, give_up)
        if picked is _NOT_TAKEN:
            raise NotTaken(f"no thread of process {pid} took the agent's request within {taken_within:g} s")
        sock, decoder, hello, received = _in_worker(
            work, _connect_counted, staged, deadline, work.cancel, discard=lambda connected: connected[0].close()
        )
        cleanup.append(sock.close)
        code_used = "compiled" if code is None else "precompiled"
        if code is not None and _code_rejected(staged):
            code_used = "rejected"
        cleanup.clear()  # attached: the session owns the directory and the socket from here on
        booster = work.booster(switch_us)
    finally:
        work.stop(*cleanup)
    client = OneShotSession(pid, hello, sock, decoder, staged.script_dir, picked)
    client.switch = booster
    client.agent_code = code_used
    client.bytes_received = received
    return client


_NOT_TAKEN = object()


def _inject(
    work: _AttachWork,
    staged: Any,
    candidates: list[int | None],
    deadline: float,
    spread: bool,
    blocked_fix: str,
    give_up: Callable[[], bool],
) -> Any:
    """Ask the candidate threads in turn to run the script (as explorer.attach's ``_inject``); the
    native id of the one that did, or _NOT_TAKEN when ``give_up()`` withdrew the request."""
    from explorer.remote_exec import MainThreadFinished, NoSuchThread

    slice_ = 0.25
    first_round = True
    while True:
        for index, native_id in enumerate(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise no_thread_ran(staged.pid, candidates, blocked_fix)
            wait = min(remaining, slice_) if spread and len(candidates) > 1 else remaining
            fresh = spread and index == 0 and first_round
            arguments = (work.process, staged.pid, staged.script_target_path, native_id, wait, fresh, work.cancel)
            try:
                result = _in_worker(work, _exec_on, *arguments, give_up=give_up)
            except (NoSuchThread, MainThreadFinished):
                if not spread:
                    raise
                continue  # that thread exited (or finished its script): try the next one
            if result.picked_up:
                work.cancel.clear()  # if give_up() fired as the thread took it: the agent starts, connect after all
                return result.native_id
            if work.cancel.is_set():
                return _NOT_TAKEN
        first_round = False
        slice_ = min(slice_ * 2, 2.0)


class OneShotSession:
    """A blocking connection to the agent in one target (made by :func:`attach`): requests, frames, detach."""

    def __init__(
        self, pid: int, hello: Hello, sock: socket.socket, decoder: wire.Decoder, script_dir: Any, injected_via: int | None
    ) -> None:
        self.pid = pid
        self.hello = hello
        self.injected_via = injected_via
        """The native id of the thread that ran the agent script."""
        self.agent_code = "compiled"
        """As ``Session.agent_code``: precompiled, compiled or rejected."""
        self.latest: Frame | None = None
        """The newest frame received."""
        self.bytes_received = 0
        self.agent_errors: list[str] = []
        self.error: PeriscopeError | None = None
        """Why the session ended, when it ended abnormally."""
        self._sock = sock
        self._decoder = decoder
        self._script_dir = script_dir
        self._ids = 0
        self._results: dict[int, Response] = {}
        self._on_output: dict[int, Callable[[Output], None]] = {}
        self._output: dict[int, list[str]] = {}
        self._new_frame = False
        self._resyncing = False
        self._closing = False
        self.closed = False
        self.switch: switch.Booster | None = None
        """As ``Session.switch``."""

    # -- the stream -------------------------------------------------------------------------

    def _send(self, op: str, arguments: dict[str, Any]) -> int:
        if self.closed:
            raise self.error or SessionClosed(f"the session with process {self.pid} is closed")
        self._ids += 1
        target_switch = self.switch.before_request() if self.switch is not None else None
        if target_switch is not None:
            arguments = {**arguments, "switch": target_switch}
        try:
            self._sock.settimeout(5.0)
            self._sock.sendall(wire.encode({"t": "req", "id": self._ids, "op": op, **arguments}))
        except TimeoutError:
            raise self._lost("the agent did not take periscope's request in time") from None
        except OSError as error:
            raise self._lost(f"lost the connection to the agent ({error})") from None
        return self._ids

    def _lost(self, what: str) -> PeriscopeError:
        self.closed = True
        if self.error is None:
            self.error = SessionClosed(*why_closed(self.pid, what))
        return self.error

    def _pump(self, until: float | None) -> bool:
        """Read and dispatch what the agent sent, waiting at most until ``until`` (POLL at a time);
        whether anything came. SessionClosed (or ProtocolError) when the stream ends."""
        messages: list[Any] = []
        try:
            messages.extend(self._decoder)  # what arrived with an earlier read (hello's, often a frame)
            if not messages:
                wait = POLL if until is None else max(0.0, min(POLL, until - time.monotonic()))
                self._sock.settimeout(wait)
                try:
                    data = self._sock.recv(1 << 20)
                except TimeoutError:
                    return False
                if not data:
                    raise self._lost("the agent closed the connection")
                self.bytes_received += len(data)
                self._decoder.feed(data)
                messages.extend(self._decoder)
        except ProtocolError as error:
            self.closed = True
            self.error = error
            for message in messages:
                self._dispatch(message)
            raise
        except OSError as error:
            raise self._lost(f"lost the connection to the agent ({error})") from None
        for message in messages:
            self._dispatch(message)
        return bool(messages)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Frame):
            self.latest = message
            self._new_frame = True
            self._resyncing = False
        elif isinstance(message, OutOfStep):
            if not self._resyncing and not self.closed:  # a delta on a frame this side does not hold
                self._resyncing = True
                self._send("resync", {})
        elif isinstance(message, Response):
            self._results[message.request_id] = message
        elif isinstance(message, Output):
            self._output.setdefault(message.eval_id, []).append(message.text)
            on_output = self._on_output.get(message.eval_id)
            if on_output is not None:
                on_output(message)
        elif isinstance(message, AgentError):
            self.agent_errors.append(message.message)
            if message.fatal:
                self.closed = True
                self.error = ProtocolError(f"the agent ended the session: {message.message}")
                raise self.error
        elif isinstance(message, Bye):
            self._closing = True
        elif isinstance(message, Hello):
            self.closed = True
            self.error = ProtocolError("the agent said hello twice")
            raise self.error

    def _wait_for(self, request_id: int, timeout: float | None, between: Callable[[], None] | None = None) -> Any:
        until = None if timeout is None else time.monotonic() + timeout
        while request_id not in self._results:
            if until is not None and time.monotonic() >= until:
                raise TimeoutError(f"the agent in process {self.pid} did not answer within {timeout:g} s")
            self._pump(until)
            if between is not None:
                between()
        response = self._results.pop(request_id)
        if not response.ok:
            raise RequestFailed(f"the agent could not do that: {response.error}")
        return response.result

    # -- requests ---------------------------------------------------------------------------

    def request(self, op: str, *, timeout: float | None = 30.0, **arguments: Any) -> Any:
        """Send one request and wait for its result (RequestFailed when the agent refuses it)."""
        return self._wait_for(self._send(op, arguments), timeout)

    def sample(self, timeout: float = 30.0) -> Frame:
        """One frame taken now, whatever the rate."""
        return wire.decode_frame(self.request("sample", timeout=timeout))

    def frames(self) -> Iterator[Frame]:
        """Every streamed frame (the newest of those that came together) until the session ends."""
        while True:
            try:
                self._pump(None)
            except SessionClosed:
                return
            if self._new_frame and self.latest is not None:
                self._new_frame = False
                yield self.latest

    def eval(
        self,
        code: str,
        *,
        module: str | None = None,
        thread: int | None = None,
        frame: int = 0,
        frame_name: str | None = None,
        repr_chars: int | None = None,
        on_output: Callable[[Output], None] | None = None,
    ) -> EvalResult:
        """Evaluate ``code`` as ``Session.start_eval`` does and wait for its result.

        A first Ctrl+C (or SIGTERM, SIGHUP) asks the agent to interrupt the code and goes on
        waiting for its result, up to INTERRUPT_GRACE seconds (then InterruptPending: the code is
        blocked in C); a second one raises KeyboardInterrupt here.
        """
        import _signal as signal

        arguments = _session._scope_arguments(module, thread, None, frame, frame_name, None)
        arguments["code"] = code
        if repr_chars is not None:
            arguments["repr_chars"] = repr_chars
        wanted: list[bool] = []
        sent_at: list[float] = []

        def on_sigint(signum: int, frame: Any) -> None:
            if wanted:
                raise KeyboardInterrupt
            wanted.append(True)

        def interrupt_if_wanted() -> None:
            if wanted and len(wanted) == 1:
                wanted.append(True)  # asked once
                self._send("interrupt", {"eval_id": eval_id})
                sent_at.append(time.monotonic())
            elif sent_at and time.monotonic() - sent_at[0] > INTERRUPT_GRACE:
                raise InterruptPending.of(self.pid)

        eval_id = self._send("eval", arguments)
        if on_output is not None:
            self._on_output[eval_id] = on_output
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            raw = self._wait_for(eval_id, None, interrupt_if_wanted)
        finally:
            signal.signal(signal.SIGINT, previous)
            self._on_output.pop(eval_id, None)
        return wire.decode_eval_result(raw, "".join(self._output.pop(eval_id, [])))

    # -- the end ----------------------------------------------------------------------------

    def detach(self, timeout: float = 5.0) -> None:
        """Ask the agent to remove itself, wait until it has, and remove the session directory."""
        try:
            if not self.closed:
                self._closing = True
                until = time.monotonic() + timeout
                try:
                    request_id = self._send("detach", {})
                    # The agent closes the connection as its very last step.
                    while time.monotonic() < until:
                        self._pump(until)
                        self._results.pop(request_id, None)
                except (PeriscopeError, OSError):
                    pass  # the connection ended: that is what detaching waits for
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without asking (the agent notices and removes itself); remove the directory."""
        self._closing = True
        self.closed = True
        try:
            self._sock.close()
        finally:
            if self._script_dir is not None:
                script_dir, self._script_dir = self._script_dir, None
                script_dir.cleanup()
            if self.switch is not None:
                booster, self.switch = self.switch, None
                booster.close()
