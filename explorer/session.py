"""A live session with the agent inside a target: the frame stream, requests, evals, ``detach()``.

explorer.attach makes a ``Session`` once the agent has said hello; from then on one asyncio task
reads the stream and turns it into explorer.model objects, requests wait for their responses and
an ``EvalHandle`` follows one running eval. A module of its own, apart from attaching: it knows
nothing of remote exec, staging or the compiled-agent cache, only the connection it is given.

No Textual here: the CLI commands and the tests use this module directly.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from explorer import switch, wire
from explorer.errors import PeriscopeError, ProtocolError
from explorer.model import (
    AgentError,
    Bye,
    Children,
    Completions,
    EvalResult,
    Frame,
    Hello,
    OutOfStep,
    Output,
    Response,
    StackFrame,
    Value,
)

if TYPE_CHECKING:
    import asyncio
# asyncio is imported where it is used, not here: the one-shot commands (explorer.oneshot) use this
# module's errors and helpers without an event loop, and importing asyncio alone costs them a third
# of their start-up.


class RequestFailed(PeriscopeError):
    """The agent refused or could not carry out a request (an expired ref, an unknown thread...)."""


class SessionClosed(PeriscopeError):
    """The connection to the agent is gone (detached, or the target exited)."""


def _decode(decoder: wire.Decoder, data: bytes) -> tuple[list[Any], ProtocolError | None]:
    """Feed ``data`` and decode every whole message (runs in a worker thread, one batch at a time, so
    the decoder is never used by two threads at once); the messages, and the error that stopped it."""
    messages: list[Any] = []
    try:
        if data:
            decoder.feed(data)
        for message in decoder:
            messages.append(message)
    except ProtocolError as error:
        return messages, error
    return messages, None


def why_closed(pid: int, what: str) -> tuple[str, str | None]:
    """Why a session's stream ended (the target exited, or what happened to the connection), and the fix."""
    from explorer.memory import process_exited, process_start_time

    if process_exited(pid, process_start_time(pid)):
        return f"process {pid} exited; the session is over", None
    return f"{what} in process {pid}", "attach again"


def _ignore_result(job: asyncio.Future[Any]) -> None:
    """Take a result nobody waits for any more (no 'exception was never retrieved' at exit)."""
    if not job.cancelled():
        job.exception()


class EvalHandle:
    """A running eval: await it for the EvalResult; ``interrupt()`` raises KeyboardInterrupt in it."""

    def __init__(self, session: Session, eval_id: int, future: asyncio.Future[Any], on_output: Callable[[Output], None] | None) -> None:
        self.session = session
        self.id = eval_id
        self._future = future
        self._on_output = on_output
        self._output: list[str] = []

    def _add_output(self, output: Output) -> None:
        self._output.append(output.text)
        if self._on_output is not None:
            self._on_output(output)

    async def result(self) -> EvalResult:
        """Wait for the eval to finish."""
        raw = await self._future
        return wire.decode_eval_result(raw, "".join(self._output))

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.result().__await__()

    async def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the eval's thread; whether it was still running."""
        if self._future.done():
            return False
        result = await self.session.request("interrupt", eval_id=self.id)
        return bool(result.get("sent")) if isinstance(result, dict) else False


def _scope_arguments(
    module: str | None,
    thread: int | None,
    task: int | None,
    frame: int,
    frame_name: str | None,
    frame_from_bottom: int | None,
    frame_id: int | None = None,
) -> dict[str, Any]:
    """The request fields that say where code runs (a module, a thread's frame, a task's frame)."""
    arguments: dict[str, Any] = {}
    if task is not None:
        arguments.update(task=task, frame=frame)
    elif thread is not None:
        arguments.update(thread=thread, frame=frame)
        if frame_name is not None:
            arguments["frame_name"] = frame_name
        if frame_from_bottom is not None:
            arguments["frame_from_bottom"] = frame_from_bottom
        if frame_id is not None:
            arguments["frame_id"] = frame_id
    elif module is not None:
        arguments["module"] = module
    return arguments


class Session:
    """A connection to the agent in one target process (made by ``attach()``)."""

    def __init__(
        self,
        pid: int,
        hello: Hello,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: wire.Decoder,
        script_dir: Any,
        injected_via: int | None,
    ) -> None:
        import asyncio
        self.pid = pid
        self.hello = hello
        self.injected_via = injected_via
        """The native id of the thread that ran the agent script."""
        self.agent_code = "compiled"
        """How the agent's code got into the target: ``precompiled`` (marshal data from an
        interpreter of its version), ``compiled`` (the target compiled the source) or ``rejected``
        (precompiled code was offered but its magic number was not the target's)."""
        self.latest: Frame | None = None
        """The newest frame received (deltas applied as they come: this is always the whole picture)."""
        self.bytes_received = 0
        """Bytes read from the agent's socket so far, the handshake included (for a data rate)."""
        self.frames_dropped = 0
        """Frames that ``next_frame`` passed over because a newer one had come meanwhile."""
        self.agent_errors: list[str] = []
        self.error: PeriscopeError | None = None
        """Why the session ended, when it ended abnormally."""
        self._reader = reader
        self._writer = writer
        self._decoder = decoder
        self._script_dir = script_dir
        self._frame_came = asyncio.Event()
        self._handed_seq = -1  # seq of the last frame next_frame() returned
        self._arrived = 0  # frames received since then
        self._resyncing = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._evals: dict[int, EvalHandle] = {}
        self._ids = itertools.count(1)
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.switch: switch.Booster | None = None
        """Shortens the target's switch interval for each request while the target is busy (set by attach)."""

    # -- the stream -------------------------------------------------------------------------

    def _start(self) -> None:
        import asyncio

        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Read the stream; decode it off the event loop (a frame of a hundred threads takes
        milliseconds, a big one over a hundred), then dispatch the messages in order on the loop."""
        try:
            await self._dispatch_decoded(b"")  # what arrived together with hello (often the first frame)
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    if self.error is None and not self._closing:
                        self.error = SessionClosed(*self._why_closed("the agent closed the connection"))
                    break
                self.bytes_received += len(data)
                await self._dispatch_decoded(data)
        except ProtocolError as error:
            self.error = error
        except (ConnectionError, OSError) as error:
            self.error = SessionClosed(*self._why_closed(f"lost the connection to the agent ({error})"))
        finally:
            self._shut()

    async def _dispatch_decoded(self, data: bytes) -> None:
        """Decode ``data`` (after what the decoder holds) in a worker thread, then dispatch every whole
        message in order; a ProtocolError comes after the messages decoded before it."""
        import asyncio
        messages, error = await asyncio.to_thread(_decode, self._decoder, data)
        for message in messages:
            self._dispatch(message)
        if error is not None:
            raise error

    def _why_closed(self, what: str) -> tuple[str, str | None]:
        return why_closed(self.pid, what)

    _closing = False

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Frame):
            self.latest = message
            self._arrived += 1
            self._resyncing = False
            self._frame_came.set()
        elif isinstance(message, OutOfStep):
            # A delta on a frame this side does not hold: ask once for a full one.
            if not self._resyncing and not self.closed:
                self._resyncing = True
                _request_id, future = self._send("resync", {})
                future.add_done_callback(_ignore_result)
        elif isinstance(message, Response):
            future = self._pending.pop(message.request_id, None)
            self._evals.pop(message.request_id, None)
            if future is not None and not future.done():
                if message.ok:
                    future.set_result(message.result)
                else:
                    future.set_exception(RequestFailed(f"the agent could not do that: {message.error}"))
        elif isinstance(message, Output):
            handle = self._evals.get(message.eval_id)
            if handle is not None:
                handle._add_output(message)
        elif isinstance(message, AgentError):
            self.agent_errors.append(message.message)
            if message.fatal:
                raise ProtocolError(f"the agent ended the session: {message.message}")
        elif isinstance(message, Bye):
            self._closing = True
        elif isinstance(message, Hello):
            raise ProtocolError("the agent said hello twice")

    def _shut(self) -> None:
        error = self.error or SessionClosed(f"the session with process {self.pid} is closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._closed.set()
        self._frame_came.set()
        self._writer.close()

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed.is_set()

    async def next_frame(self, timeout: float | None = None, *, after: int | None = None) -> Frame:
        """The latest frame, once it is newer than the last one this returned (or than seq ``after``):
        frames that came meanwhile are passed over, never queued. SessionClosed when the session
        ends first, TimeoutError after ``timeout``."""
        import asyncio
        floor = self._handed_seq if after is None else after

        async def newer() -> Frame:
            while True:
                latest = self.latest
                if latest is not None and latest.seq > floor:
                    return latest
                if self.closed:
                    raise self.error or SessionClosed(f"the session with process {self.pid} is closed")
                self._frame_came.clear()
                await self._frame_came.wait()

        frame = await asyncio.wait_for(newer(), timeout)
        if frame.seq > self._handed_seq:
            self.frames_dropped += max(0, self._arrived - 1)
            self._arrived = 0
            self._handed_seq = frame.seq
        return frame

    async def frames(self) -> AsyncIterator[Frame]:
        """Every streamed frame until the session ends (frames nobody consumed in time are dropped)."""
        while True:
            try:
                yield await self.next_frame()
            except SessionClosed:
                return

    # -- requests ---------------------------------------------------------------------------

    async def request(self, op: str, *, timeout: float | None = 30.0, **arguments: Any) -> Any:
        """Send one request and wait for its result (RequestFailed when the agent refuses it)."""
        import asyncio
        request_id, future = self._send(op, arguments)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    def _send(self, op: str, arguments: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        import asyncio
        if self.closed:
            raise self.error or SessionClosed(f"the session with process {self.pid} is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        target_switch = self.switch.before_request() if self.switch is not None else None
        if target_switch is not None:
            arguments = {**arguments, "switch": target_switch}
        self._writer.write(wire.encode({"t": "req", "id": request_id, "op": op, **arguments}))
        return request_id, future

    async def sample(self, timeout: float = 30.0) -> Frame:
        """One frame taken now, whatever the rate."""
        return wire.decode_frame(await self.request("sample", timeout=timeout))

    async def expand(self, ref: int, kind: str = "auto", offset: int = 0, limit: int = 100) -> Children:
        """One page of the children of the object behind ``ref`` (items or attributes)."""
        return wire.decode_children(await self.request("expand", ref=ref, kind=kind, offset=offset, limit=limit))

    async def set_rate(self, hz: float) -> None:
        """Frames per second (0 pauses the stream; ``sample()`` still works)."""
        await self.request("set_rate", hz=float(hz))

    async def set_view(
        self, focus: int | None = None, frame: int = 0, refs: tuple[int, ...] | list[int] = (), modules: tuple[str, ...] | list[str] | None = None
    ) -> None:
        """What periscope looks at (PROTOCOL.md, *Deltas and the view*): the thread ``focus``
        (native id as the target sees it; None: every thread) gets its whole stack with locals,
        the others their innermost frame; ``refs`` stay valid; ``modules`` are watched."""
        arguments: dict[str, Any] = {"focus": focus, "frame": frame, "refs": list(refs)[:1000]}
        if modules is not None:
            arguments["modules"] = list(modules)
        await self.request("view", **arguments)

    async def set_modules(self, names: list[str] | tuple[str, ...]) -> None:
        """Which modules' variables frames carry."""
        await self.request("set_modules", modules=list(names))

    async def configure(self, **limits: Any) -> dict[str, Any]:
        """Change preview limits (see PROTOCOL.md); returns the limits now in force."""
        return wire.decode_limits(await self.request("configure", limits=limits))

    async def task_frames(self, task: int, timeout: float = 30.0) -> tuple[StackFrame, ...]:
        """The coroutine frames of the asyncio task ``task`` (its id), with their locals, innermost first."""
        return wire.decode_task_frames(await self.request("task_frames", task=task, timeout=timeout))

    def start_eval(
        self,
        code: str,
        *,
        module: str | None = None,
        thread: int | None = None,
        task: int | None = None,
        frame: int = 0,
        frame_name: str | None = None,
        frame_from_bottom: int | None = None,
        frame_id: int | None = None,
        repr_chars: int | None = None,
        on_output: Callable[[Output], None] | None = None,
    ) -> EvalHandle:
        """Start evaluating ``code`` in a module's globals (default ``__main__``), in a frame of a
        thread (``thread`` = native id as the target sees it, ``frame`` = 0 for the innermost), or
        in a coroutine frame of an asyncio task (``task`` = its id). Where an event loop runs, code
        that awaits, names asyncio or runs in a task's frame runs in the loop's thread, stoppable
        by :meth:`EvalHandle.interrupt` and ``await_timeout`` (payloads/PROTOCOL.md).

        In a thread, ``frame_name`` picks the innermost frame running that function (by name or
        qualified name) instead of an index; with ``frame_from_bottom`` (its position counted
        from the outermost frame) it pins one frame: the eval fails if that frame returned.
        ``frame_id`` (a ``StackFrame.frame_id`` from the stream) pins that very call, and fails
        once it returned, whatever runs in its place now. ``EvalResult.frame`` says which frame
        ran the code. Names the code defines stay the session's (layered over the module or the
        frame), except names the scope already has."""
        arguments = _scope_arguments(module, thread, task, frame, frame_name, frame_from_bottom, frame_id)
        arguments["code"] = code
        if repr_chars is not None:
            arguments["repr_chars"] = repr_chars
        request_id, future = self._send("eval", arguments)
        handle = EvalHandle(self, request_id, future, on_output)
        self._evals[request_id] = handle
        return handle

    async def complete(
        self,
        text: str,
        *,
        module: str | None = None,
        thread: int | None = None,
        task: int | None = None,
        frame: int = 0,
        frame_name: str | None = None,
        frame_from_bottom: int | None = None,
        frame_id: int | None = None,
        timeout: float = 10.0,
    ) -> Completions:
        """Completions of the name or attribute path ``text`` ends with, in the scope an eval with
        the same arguments runs in; the agent reads them without running any of the target's code."""
        arguments = _scope_arguments(module, thread, task, frame, frame_name, frame_from_bottom, frame_id)
        return wire.decode_completions(await self.request("complete", timeout=timeout, text=text, **arguments))

    async def inspect_value(self, ref: int, repr_chars: int = 1 << 20, timeout: float = 30.0) -> Value:
        """The whole repr of the object behind ``ref`` (up to ``repr_chars`` characters; ``dropped``
        counts the rest), under the same watchdog as every repr."""
        return wire.decode_full_value(await self.request("eval_repr", timeout=timeout, ref=ref, repr_chars=repr_chars))

    async def eval(self, code: str, **options: Any) -> EvalResult:
        """Evaluate ``code`` in the target and wait for the result (see ``start_eval``)."""
        return await self.start_eval(code, **options).result()

    # -- the end ----------------------------------------------------------------------------

    async def detach(self, timeout: float = 5.0) -> None:
        """Ask the agent to remove itself, wait until it has, and remove the session directory."""
        import asyncio
        try:
            if not self.closed:
                self._closing = True
                with contextlib.suppress(PeriscopeError, asyncio.TimeoutError, ConnectionError):
                    await self.request("detach", timeout=timeout)
                # The agent closes the connection as its very last step.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout)
        finally:
            await self.close()

    async def close(self) -> None:
        """Drop the connection without asking (the agent notices and removes itself)."""
        import asyncio
        self._closing = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        if self._script_dir is not None:
            script_dir, self._script_dir = self._script_dir, None
            await asyncio.to_thread(script_dir.cleanup)
        if self.switch is not None:
            booster, self.switch = self.switch, None
            booster.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.detach()
