"""periscope's side of the agent protocol (payloads/PROTOCOL.md): bounded msgpack decoding into
explorer.model objects, and request encoding.

The stream comes from inside another process, so it is untrusted input: every message is size
bounded, every field is type checked, and anything unexpected raises ProtocolError. Nothing in
the stream is ever executed or used to build objects other than plain data and the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import msgspec

from explorer.errors import ProtocolError
from explorer.model import (
    AgentError,
    Bye,
    Children,
    Completions,
    EvalFrame,
    EvalResult,
    Frame,
    Hello,
    Message,
    OutOfStep,
    Output,
    Response,
    StackFrame,
    Value,
    Variable,
    WireFrame,
)

PROTOCOL_VERSION = 2
MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message accepted from an agent (a frame is bounded at a few MiB by the agent)."""
MAX_OBJECTS = 2_000_000
"""Most objects (container elements) one message may decode into. A byte can become a 64-byte
empty list, so without this bound a 64 MiB message could take gigabytes; with it, decoding one
message stays within a few hundred MiB. A default-size frame holds well under 500,000."""
MAX_CONTAINER = 1_000_000
"""Most elements in one array (the agent's largest are bounded by its limits, 1000 by default)."""


def encode(message: dict[str, Any]) -> bytes:
    """Encode one message for the agent."""
    return msgpack.packb(message, use_bin_type=True)


MAX_FRAME = 16 * 1024 * 1024
"""Largest frame decoded by the schema (explorer.model's Structs): its objects are bounded by its
bytes (the smallest valid variable is about 14 bytes and becomes about 250 bytes of objects), so
this keeps one frame within a few hundred MiB. A larger one goes the way of other messages, with
its objects counted (``max_objects``)."""
_FRAME_HEAD = b"\xa1t\xa5frame"
"""How the agent's frames begin after the map header: the key ``t`` first, the value ``frame``."""
_FRAME_DECODER = msgspec.msgpack.Decoder(WireFrame)


def _schema_error(error: Exception) -> ProtocolError:
    return ProtocolError(f"malformed message from the agent: {str(error).splitlines()[0] if str(error) else type(error).__name__}; detached")


class Decoder:
    """Incremental decoder of the agent's stream: ``feed(bytes)``, then iterate for messages.

    Each message is found by skipping over it (msgpack, in C, building nothing); a frame is then
    decoded by its schema straight into model objects (msgspec, checking types and bounds), and
    put together with the frame before by ``frames``. Everything else is unpacked with its objects
    counted (``max_objects``) and checked field by field. Bounded three ways: bytes per message
    (``max_message``), elements per array or map, and objects per message.
    """

    def __init__(self, max_message: int = MAX_MESSAGE, max_objects: int = MAX_OBJECTS) -> None:
        self.frames = FrameAssembler()
        """Puts the stream's delta frames together (only ever used by the thread that iterates)."""
        self._max_message = max_message
        self._max_objects = max_objects
        self._budget = max_objects  # objects left for the message being decoded
        self._limits = {
            "max_str_len": max_message,
            "max_bin_len": max_message,
            "max_array_len": MAX_CONTAINER,
            "max_map_len": 10_000,  # the agent's maps are previews, limits and headers: a few keys
            "max_ext_len": 0,
        }
        self._splitter = msgpack.Unpacker(max_buffer_size=max_message, **self._limits)
        self._buffer = bytearray()
        self._start = 0  # where in the stream self._buffer begins (the splitter's tell() counts from the stream's start)

    def _spend(self, items: Any, objects: int) -> Any:
        self._budget -= objects
        if self._budget < 0:
            raise ProtocolError(f"the agent sent a message of more than {self._max_objects} objects; detached")
        return items

    def feed(self, data: bytes) -> None:
        """Add bytes from the socket; ProtocolError when one message would exceed the bound."""
        try:
            self._splitter.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError(f"the agent sent a message larger than {self._max_message} bytes; detached") from None
        self._buffer += data

    def take_pending(self) -> bytes:
        """The bytes fed but not yet decoded, handed over to whoever reads the stream on (a relay);
        this decoder is empty afterwards."""
        pending = bytes(self._buffer)
        self._buffer.clear()
        self._start = 0
        self._splitter = msgpack.Unpacker(max_buffer_size=self._max_message, **self._limits)
        return pending

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                self._splitter.skip()
            except msgpack.OutOfData:
                return
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
                raise ProtocolError(f"the agent's stream is malformed ({error}); detached") from None
            end = self._splitter.tell()
            size = end - self._start
            self._start = end
            with memoryview(self._buffer) as view, view[:size] as data:
                message = self._message(data)  # decoded in place: no copy of a big frame
            del self._buffer[:size]
            yield message

    def _message(self, data: memoryview) -> Message:
        head = data[0]
        header = 1 if 0x80 <= head <= 0x8F else 3 if head == 0xDE else 5 if head == 0xDF else 0
        if header and len(data) <= MAX_FRAME and data[header : header + len(_FRAME_HEAD)] == _FRAME_HEAD:
            try:
                wire_frame = _FRAME_DECODER.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise _schema_error(error) from None
            return self._frame(wire_frame, len(data))
        self._budget = self._max_objects
        try:
            raw = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                list_hook=lambda items: self._spend(items, len(items) + 1),
                object_hook=lambda items: self._spend(items, 2 * len(items) + 1),
                **self._limits,
            )
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
            raise ProtocolError(f"the agent's stream is malformed ({error}); detached") from None
        if type(raw) is dict and raw.get("t") == "frame":
            return self._frame(_convert(raw, WireFrame), len(data))
        return decode_message(raw)

    def _frame(self, wire_frame: WireFrame, size: int) -> Frame | OutOfStep:
        if wire_frame.t != "frame":
            raise _fail("a frame whose type is not frame")
        frame = self.frames.apply(wire_frame, size)
        return frame if frame is not None else OutOfStep(wire_frame.base or 0)


# -- validation helpers -------------------------------------------------------------------------


def _fail(what: str) -> ProtocolError:
    return ProtocolError(f"malformed message from the agent: {what}; detached")


def _convert(data: Any, kind: Any) -> Any:
    """``data`` (plain unpacked msgpack) as ``kind``, checked by its schema."""
    try:
        return msgspec.convert(data, kind)
    except (msgspec.ValidationError, TypeError) as error:
        raise _schema_error(error) from None


def _get(data: dict[str, Any], key: str, types: type | tuple[type, ...], where: str, *, optional: bool = False, default: Any = None) -> Any:
    if key not in data:
        if optional:
            return default
        raise _fail(f"{where} has no {key!r}")
    value = data[key]
    if optional and value is None:
        return default
    if isinstance(types, tuple) and float in types and type(value) is int:
        return float(value)
    if type(value) is bool and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(f"{where}.{key} has the wrong type")
    if not isinstance(value, types):
        raise _fail(f"{where}.{key} has the wrong type ({type(value).__name__})")
    return value


def _map(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _fail(f"{where} is not a map")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        raise _fail(f"{where} is not an array")
    return value


_NUMBER = (int, float)


def decode_value(data: Any, where: str = "value") -> Value:
    """A preview map (``{"type", "repr", "ref"?, "len"?, "cut"?, "fail"?}``) as a Value."""
    if type(data) is not dict:
        raise _fail(f"{where} is not a map")
    return _convert(data, Value)


def _variables(data: Any, where: str) -> tuple[Variable, ...]:
    return _convert(_list(data, where), tuple[Variable, ...])


def decode_task_frames(data: Any) -> tuple[StackFrame, ...]:
    """The ``task_frames`` result: a task's coroutine frames with their locals, innermost first."""
    data = _map(data, "task frames")
    return _convert(_list(data.get("stack", []), "task frames.stack"), tuple[StackFrame, ...])


def _full(wire_frame: WireFrame, size: int) -> Frame:
    return Frame(
        seq=wire_frame.seq,
        time=wire_frame.time,
        agent_cpu=wire_frame.cpu,
        threads=wire_frame.threads,
        modules=wire_frame.modules,
        truncated=wire_frame.truncated,
        build_ms=wire_frame.build_ms,
        errors=wire_frame.errors,
        error_log=wire_frame.error_log,
        encode_ms=wire_frame.encode_ms,
        paused=wire_frame.paused,
        wire_bytes=size,
    )


def decode_frame(data: Any) -> Frame:
    """A full ``frame`` message (or the result of a ``sample`` request) as a Frame."""
    wire_frame = _convert(_map(data, "frame"), WireFrame)
    if wire_frame.base is not None:
        raise _fail("a delta frame where a full one belongs")
    return _full(wire_frame, 0)


class FrameAssembler:
    """The stream's frames put together (PROTOCOL.md, *Deltas and the view*): a full frame as it
    is, a delta applied to the frame before it. A thread or module that did not change is the very
    object of the previous frame (and the threads tuple too, when none changed), so ``is`` tells
    what changed."""

    def __init__(self) -> None:
        self.frame: Frame | None = None
        """The last frame put together (None before the first full one, and after a delta that did not fit)."""

    def apply(self, data: WireFrame | dict[str, Any], size: int = 0) -> Frame | None:
        """The frame ``data`` makes (``size``: its bytes on the wire); None when it is a delta on a
        frame this assembler does not hold (the client then asks the agent to ``resync``)."""
        wire_frame = data if type(data) is WireFrame else _convert(_map(data, "frame"), WireFrame)
        base = wire_frame.base
        if base is None:
            frame = _full(wire_frame, size)
            if len({t.thread_id for t in frame.threads}) != len(frame.threads) or len({m.name for m in frame.modules}) != len(frame.modules):
                raise _fail("a frame lists a thread or a module twice")
            self.frame = frame
            return frame
        previous = self.frame
        if previous is None or base != previous.seq:
            self.frame = None  # out of step until the next full frame
            return None
        changed = wire_frame.threads
        order = wire_frame.order
        if order is not None and len(set(order)) != len(order):
            raise _fail("a delta's order names a thread twice")
        if not changed and order is None:
            threads = previous.threads
        else:
            by_id = {t.thread_id: t for t in previous.threads}
            new = {t.thread_id: t for t in changed}
            if len(new) != len(changed):
                raise _fail("a delta lists a thread twice")
            if order is None:
                if not new.keys() <= by_id.keys():
                    raise _fail("a delta adds a thread without saying the new order")
                threads = tuple(new.get(t.thread_id, t) for t in previous.threads)
            else:
                by_id.update(new)
                try:
                    threads = tuple(by_id[ident] for ident in order)
                except KeyError:
                    raise _fail("a delta's order names a thread it never sent") from None
                if not new.keys() <= set(order):
                    raise _fail("a delta sends a thread its order leaves out")
        changed_modules = wire_frame.modules
        module_order = wire_frame.module_order
        if module_order is not None and len(set(module_order)) != len(module_order):
            raise _fail("a delta's module order names a module twice")
        if not changed_modules and module_order is None:
            modules = previous.modules
        else:
            by_name = {m.name: m for m in previous.modules}
            new_modules = {m.name: m for m in changed_modules}
            if len(new_modules) != len(changed_modules):
                raise _fail("a delta lists a module twice")
            names = module_order if module_order is not None else [m.name for m in previous.modules]
            if not new_modules.keys() <= set(names):
                raise _fail("a delta sends a module its order leaves out")
            by_name.update(new_modules)
            try:
                modules = tuple(by_name[name] for name in names)
            except KeyError:
                raise _fail("a delta's module order names a module it never sent") from None
        frame = msgspec.structs.replace(_full(wire_frame, size), threads=threads, modules=modules)
        self.frame = frame
        return frame


def decode_hello(data: Any) -> Hello:
    """The ``hello`` message; ProtocolError when the agent speaks another protocol version."""
    data = _map(data, "hello")
    protocol = _get(data, "protocol", int, "hello")
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the agent speaks protocol {protocol}, this periscope speaks {PROTOCOL_VERSION}",
            "use the same periscope version on both sides",
        )
    version = _list(data.get("version", []), "hello.version")
    capabilities = _list(data.get("capabilities", []), "hello.capabilities")
    modules = _list(data.get("modules", []), "hello.modules")
    return Hello(
        protocol=protocol,
        pid=_get(data, "pid", int, "hello"),
        python=_get(data, "python", str, "hello"),
        version=tuple(v for v in version if type(v) is int),
        implementation=_get(data, "implementation", str, "hello", optional=True, default="cpython"),
        capabilities=tuple(c for c in capabilities if type(c) is str),
        codec=_get(data, "codec", str, "hello", optional=True, default="builtin"),
        agent_native_id=_get(data, "agent_native_id", int, "hello", optional=True, default=0),
        rate=_get(data, "rate", _NUMBER, "hello", optional=True, default=0.0),
        modules=tuple(m for m in modules if type(m) is str),
        limits=dict(_map(data.get("limits", {}), "hello.limits")),
    )


def decode_children(data: Any) -> Children:
    """The result of an ``expand`` request."""
    data = _map(data, "expand result")
    kinds = _list(data.get("kinds", []), "expand.kinds")
    return Children(
        ref=_get(data, "ref", int, "expand result"),
        kind=_get(data, "kind", str, "expand result"),
        kinds=tuple(k for k in kinds if type(k) is str),
        offset=_get(data, "offset", int, "expand result"),
        total=_get(data, "total", int, "expand result"),
        children=_variables(data.get("children", []), "expand.children"),
    )


def decode_limits(data: Any) -> dict[str, int | float]:
    """The result of a ``configure`` request: the limits now in force."""
    limits = _map(_map(data, "configure result").get("limits", {}), "configure result.limits")
    if not all(type(value) in (int, float) for value in limits.values()):
        raise _fail("configure result.limits holds something other than numbers")
    return dict(limits)


def decode_full_value(data: Any, where: str = "value") -> Value:
    """A preview with the counts of what was cut (eval results, the value inspector)."""
    value = decode_value(data, where)
    dropped = data.get("dropped", 0)
    more = data.get("dropped_more", False)
    if type(dropped) is not int or dropped < 0 or type(more) is not bool:
        raise _fail(f"{where} has a mistyped dropped count")
    return msgspec.structs.replace(value, dropped=dropped, dropped_more=more) if dropped else value


def _eval_frame(data: Any) -> EvalFrame | None:
    if data is None:
        return None
    data = _map(data, "eval frame")
    return EvalFrame(
        function=_get(data, "func", str, "eval frame"),
        qualname=_get(data, "qualname", str, "eval frame"),
        filename=_get(data, "file", str, "eval frame"),
        lineno=_get(data, "line", int, "eval frame", optional=True),
        index=_get(data, "index", int, "eval frame"),
        new_call=_get(data, "new_call", bool, "eval frame", optional=True) or False,
    )


def decode_completions(data: Any) -> Completions:
    """The result of a ``complete`` request."""
    data = _map(data, "completions")
    matches = _list(data.get("matches"), "completions")
    if not all(type(match) is str for match in matches):
        raise _fail("completions has a match that is not a str")
    return Completions(
        start=_get(data, "start", int, "completions"),
        matches=tuple(matches),
        more=_get(data, "more", bool, "completions", optional=True, default=False),
    )


def decode_eval_result(data: Any, output: str = "") -> EvalResult:
    """The result of an ``eval`` request, with the output collected while it ran."""
    data = _map(data, "eval result")
    status = _get(data, "status", str, "eval result")
    if status not in ("ok", "raised", "interrupted"):
        raise _fail(f"unknown eval status {status!r}")
    raw_value = data.get("value")
    return EvalResult(
        status=status,
        mode=_get(data, "mode", str, "eval result"),
        value=None if raw_value is None else decode_full_value(raw_value, "eval value"),
        traceback=_get(data, "traceback", str, "eval result", optional=True),
        exception=_get(data, "exception", str, "eval result", optional=True),
        elapsed=_get(data, "elapsed", _NUMBER, "eval result", optional=True, default=0.0),
        output=output,
        output_dropped=_get(data, "output_dropped", int, "eval result", optional=True, default=0),
        frame=_eval_frame(data.get("frame")),
        names=_variables(data["names"], "eval names") if data.get("names") is not None else (),
        names_total=_get(data, "names_total", int, "eval result", optional=True, default=0),
    )


def decode_message(raw: Any) -> Message:
    """One decoded msgpack object as a model message (frames and hellos fully checked)."""
    data = _map(raw, "message")
    kind = data.get("t")
    if kind == "frame":
        return decode_frame(data)
    if kind == "resp":
        ok = _get(data, "ok", bool, "response")
        return Response(
            request_id=_get(data, "id", int, "response"),
            ok=ok,
            result=data.get("result"),
            error=None if ok else _get(data, "error", str, "response", optional=True, default="request failed"),
        )
    if kind == "output":
        stream = _get(data, "stream", str, "output")
        if stream not in ("stdout", "stderr"):
            raise _fail(f"unknown output stream {stream!r}")
        return Output(eval_id=_get(data, "id", int, "output"), stream=stream, text=_get(data, "data", str, "output"))
    if kind == "hello":
        return decode_hello(data)
    if kind == "error":
        return AgentError(
            message=_get(data, "message", str, "error"),
            fatal=_get(data, "fatal", bool, "error", optional=True, default=False),
        )
    if kind == "bye":
        return Bye(reason=_get(data, "reason", str, "bye", optional=True, default=""))
    raise _fail(f"unknown message type {kind!r}")
