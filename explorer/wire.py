"""periscope's side of the agent protocol (payloads/PROTOCOL.md): bounded msgpack decoding into
explorer.model objects, and request encoding.

The stream comes from inside another process, so it is untrusted input: every message is size
bounded, every field is type checked, and anything unexpected raises ProtocolError. Nothing in
the stream is ever executed or used to build objects other than plain data and the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import msgpack

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
    ModuleVariables,
    Output,
    Response,
    StackFrame,
    ThreadInfo,
    Value,
    Variable,
)

PROTOCOL_VERSION = 1
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


class Decoder:
    """Incremental decoder of the agent's stream: ``feed(bytes)``, then iterate for messages.

    Bounded three ways: bytes per message (``max_message``), elements per array or map, and
    objects per message (``max_objects``, counted as each array or map is completed), so that a
    hostile stream cannot make periscope's memory grow without bound.
    """

    def __init__(self, max_message: int = MAX_MESSAGE, max_objects: int = MAX_OBJECTS) -> None:
        self._max_message = max_message
        self._max_objects = max_objects
        self._budget = max_objects  # objects left for the message being decoded
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            use_list=True,
            list_hook=lambda items: self._spend(items, len(items) + 1),
            object_hook=lambda items: self._spend(items, 2 * len(items) + 1),
            max_buffer_size=max_message,
            max_str_len=max_message,
            max_bin_len=max_message,
            max_array_len=MAX_CONTAINER,
            max_map_len=10_000,  # the agent's maps are previews, limits and headers: a few keys
            max_ext_len=0,
        )

    def _spend(self, items: Any, objects: int) -> Any:
        self._budget -= objects
        if self._budget < 0:
            raise ProtocolError(f"the agent sent a message of more than {self._max_objects} objects; detached")
        return items

    def feed(self, data: bytes) -> None:
        """Add bytes from the socket; ProtocolError when one message would exceed the bound."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError(f"the agent sent a message larger than {self._max_message} bytes; detached") from None

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                raw = next(self._unpacker)
            except StopIteration:
                return  # the budget carries over: the unpacker keeps what it built of this message
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
                raise ProtocolError(f"the agent's stream is malformed ({error}); detached") from None
            self._budget = self._max_objects
            yield decode_message(raw)


# -- validation helpers -------------------------------------------------------------------------


def _fail(what: str) -> ProtocolError:
    return ProtocolError(f"malformed message from the agent: {what}; detached")


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
    # The hot path of frame decoding (one call per variable): plain type checks, no helpers.
    if type(data) is not dict:
        raise _fail(f"{where} is not a map")
    type_name = data.get("type")
    text = data.get("repr")
    ref = data.get("ref")
    length = data.get("len")
    cut = data.get("cut", False)
    fail = data.get("fail", False)
    if (
        type(type_name) is not str
        or type(text) is not str
        or (ref is not None and type(ref) is not int)
        or (length is not None and type(length) is not int)
        or type(cut) is not bool
        or type(fail) is not bool
    ):
        raise _fail(f"{where} has a missing or mistyped field")
    return Value(type_name, text, ref, length, cut, fail)


def _variables(data: Any, where: str) -> tuple[Variable, ...]:
    result = []
    for pair in _list(data, where):
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            raise _fail(f"{where} holds something other than [name, value] pairs")
        result.append(Variable(pair[0], decode_value(pair[1], where)))
    return tuple(result)


def _stack_frame(data: Any) -> StackFrame:
    data = _map(data, "stack frame")
    raw_locals = data.get("locals")
    return StackFrame(
        filename=_get(data, "file", str, "stack frame"),
        function=_get(data, "func", str, "stack frame"),
        qualname=_get(data, "qualname", str, "stack frame", optional=True, default="") or data["func"],
        lineno=_get(data, "line", int, "stack frame", optional=True),
        locals=None if raw_locals is None else _variables(raw_locals, "locals"),
        locals_total=_get(data, "nlocals", int, "stack frame", optional=True, default=0),
    )


def decode_task_frames(data: Any) -> tuple[StackFrame, ...]:
    """The ``task_frames`` result: a task's coroutine frames with their locals, innermost first."""
    data = _map(data, "task frames")
    return tuple(_stack_frame(f) for f in _list(data.get("stack", []), "task frames.stack"))


def _thread(data: Any) -> ThreadInfo:
    data = _map(data, "thread")
    return ThreadInfo(
        thread_id=_get(data, "ident", int, "thread"),
        native_id=_get(data, "native_id", int, "thread", optional=True),
        name=_get(data, "name", str, "thread", optional=True),
        daemon=_get(data, "daemon", bool, "thread", optional=True),
        is_main=_get(data, "main", bool, "thread", optional=True, default=False),
        is_agent=_get(data, "agent", bool, "thread", optional=True, default=False),
        frames=tuple(_stack_frame(f) for f in _list(data.get("stack", []), "thread.stack")),
        depth=_get(data, "depth", int, "thread", optional=True, default=0),
        stack_omitted=_get(data, "stack_omitted", bool, "thread", optional=True, default=False),
    )


def _module(data: Any) -> ModuleVariables:
    data = _map(data, "module")
    return ModuleVariables(
        name=_get(data, "name", str, "module"),
        variables=_variables(data.get("vars", []), "module.vars"),
        total=_get(data, "total", int, "module", optional=True, default=0),
        missing=_get(data, "missing", bool, "module", optional=True, default=False),
    )


def decode_frame(data: Any) -> Frame:
    """A ``frame`` message (or the result of a ``sample`` request) as a Frame."""
    data = _map(data, "frame")
    log = _list(data.get("error_log", []), "frame.error_log")
    if not all(type(line) is str for line in log):
        raise _fail("frame.error_log holds something other than strings")
    return Frame(
        seq=_get(data, "seq", int, "frame"),
        time=_get(data, "time", _NUMBER, "frame"),
        agent_cpu=_get(data, "cpu", _NUMBER, "frame", optional=True, default=0.0),
        threads=tuple(_thread(t) for t in _list(data.get("threads", []), "frame.threads")),
        modules=tuple(_module(m) for m in _list(data.get("modules", []), "frame.modules")),
        truncated=_get(data, "truncated", bool, "frame", optional=True, default=False),
        build_ms=_get(data, "build_ms", _NUMBER, "frame", optional=True, default=0.0),
        errors=_get(data, "errors", int, "frame", optional=True, default=0),
        error_log=tuple(log),
        encode_ms=_get(data, "encode_ms", _NUMBER, "frame", optional=True, default=0.0),
        paused=_get(data, "paused", str, "frame", optional=True),
    )


def decode_hello(data: Any) -> Hello:
    """The ``hello`` message; ProtocolError when the agent speaks another protocol version."""
    data = _map(data, "hello")
    protocol = _get(data, "protocol", int, "hello")
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the agent speaks protocol {protocol}, this periscope speaks {PROTOCOL_VERSION}: "
            "use the same periscope version on both sides"
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
    return dataclasses.replace(value, dropped=dropped, dropped_more=more) if dropped else value


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
