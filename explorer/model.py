"""The live picture of a target as the agent streams it: frozen value objects, no I/O.

explorer.wire turns the agent's msgpack messages into these; the TUI and the CLI render them.
Field meanings follow payloads/PROTOCOL.md. The parts a frame is made of (``Value``,
``Variable``, ``StackFrame``, ``ThreadInfo``, ``ModuleVariables``) are msgspec Structs whose
field names on the wire are the protocol's: they are the schema, and msgspec decodes the agent's
bytes straight into them at C speed, checking every type and bound as it goes (measured against
plain msgpack and per-field checks: ``python -m tests.bench stream``). The rest are frozen Structs
too, built by explorer.wire: a Struct class costs a hundredth of a dataclass to define, which the
one-shot commands pay at every start.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct
from msgspec import field as wire_name

MAX_ITEMS = 1_000_000
"""Most elements of one array in a frame (the agent's are bounded by its limits, 1000 by default)."""
Text = Annotated[str, Meta(max_length=64 * 1024 * 1024)]
Many = Meta(max_length=MAX_ITEMS)


class Value(Struct, frozen=True):
    """A bounded preview of one object in the target."""

    type_name: Text = wire_name(name="type")
    """``module.QualName`` of the object's class (``int``, ``collections.OrderedDict``)."""
    repr: Text
    """``repr()`` of the object, cut to the agent's limit (``truncated`` then says so)."""
    ref: int | None = None
    """Handle for ``Session.expand``; None when there is nothing to expand (ints, strings)."""
    length: int | None = wire_name(default=None, name="len")
    """``len()`` of builtin containers and strings."""
    truncated: bool = wire_name(default=False, name="cut")
    """The repr was cut (length, item count, depth or time budget)."""
    failed: bool = wire_name(default=False, name="fail")
    """The object's ``__repr__`` raised or hung; ``repr`` says which."""
    dropped: int = 0
    """Characters cut off the end of ``repr`` (eval results and the value inspector only)."""
    dropped_more: bool = False
    """More than ``dropped`` characters were cut (the whole repr was past the agent's bound)."""

    @property
    def expandable(self) -> bool:
        """Whether ``Session.expand`` can list children of this object."""
        return self.ref is not None


_DEFINITION_TYPES = frozenset({"module", "type", "function", "builtin_function_or_method", "abc.ABCMeta", "enum.EnumType"})
_DEFINITION_REPRS = ("<module '", "<class '", "<function ", "<built-in function ")


def is_definition(name: str, type_name: str, text: str) -> bool:
    """Whether a module variable (or a ``<module>`` frame's local, the same thing) is an import, a
    class, a function or a dunder name rather than the program's data: what the module pane and
    ``snapshot`` leave out unless asked."""
    if name.startswith("__") and name.endswith("__"):
        return True
    return type_name in _DEFINITION_TYPES or text.startswith(_DEFINITION_REPRS)


class Variable(Struct, frozen=True, array_like=True):
    """A name (local, module variable, attribute, key or index label) and its value (``[name, preview]`` on the wire)."""

    name: Text
    value: Value


class StackFrame(Struct, frozen=True):
    """One frame of a thread's stack (index 0 is the innermost)."""

    filename: Text = wire_name(name="file")
    function: Text = wire_name(name="func")
    qualname: Text = ""
    lineno: int | None = wire_name(default=None, name="line")
    locals: Annotated[tuple[Variable, ...], Many] | None = None
    """None when the agent skipped them (frame size bound, or a brief thread); see ``locals_total``."""
    locals_total: int = wire_name(default=0, name="nlocals")
    frame_id: int | None = wire_name(default=None, name="fid")
    """The frame's identity in the target while it runs (the focused thread's frames; None for a
    brief thread or a frame read from outside): ``Session.eval(frame_id=...)`` runs in that very call."""

    def local(self, name: str) -> Value | None:
        """The preview of one local variable, or None."""
        for variable in self.locals or ():
            if variable.name == name:
                return variable.value
        return None


class ThreadInfo(Struct, frozen=True):
    """One thread of the target and its stack, innermost frame first."""

    thread_id: int = wire_name(name="ident")
    """``threading.get_ident()`` in the target."""
    native_id: int | None = None
    """The OS thread id as the target sees it (None when the target's threading module does not know it)."""
    name: Text | None = None
    daemon: bool | None = None
    is_main: bool = wire_name(default=False, name="main")
    is_agent: bool = wire_name(default=False, name="agent")
    """A thread that runs an eval for periscope."""
    frames: Annotated[tuple[StackFrame, ...], Many] = wire_name(default=(), name="stack")
    depth: int = 0
    """The full stack depth (``frames`` may be cut at the agent's stack_depth limit)."""
    stack_omitted: bool = False
    """The frame left this thread's stack out (more threads than the agent's ``threads`` limit)."""
    brief: bool = False
    """Not the thread in periscope's view: ``frames`` holds the innermost frame only, without locals."""


class ModuleVariables(Struct, frozen=True):
    """The variables of one watched module (dunder names left out)."""

    name: Text
    variables: Annotated[tuple[Variable, ...], Many] = wire_name(default=(), name="vars")
    total: int = 0
    missing: bool = False
    """The module is not imported in the target."""

    def get(self, name: str) -> Value | None:
        """The preview of one variable, or None."""
        for variable in self.variables:
            if variable.name == name:
                return variable.value
        return None


class Frame(Struct, frozen=True):
    """One sample of the whole target: threads, stacks, locals and watched module variables."""

    seq: int
    time: float
    """Unix time in the target when the sample was taken."""
    agent_cpu: float
    """CPU seconds the agent has used in the target so far."""
    threads: tuple[ThreadInfo, ...]
    modules: tuple[ModuleVariables, ...]
    truncated: bool
    """Something was left out to keep the frame within its size bound."""
    build_ms: float
    """Milliseconds the agent took to build this frame."""
    errors: int
    """Errors the agent swallowed since the previous frame (to protect the target)."""
    error_log: tuple[str, ...] = ()
    encode_ms: float = 0.0
    """Milliseconds the agent took to encode the previous frame."""
    paused: str | None = None
    """Why values are not shown (``values paused: target code does not return``), or None."""
    wire_bytes: int = 0
    """Bytes this frame took on the stream (a delta: only what changed; 0 when not read from a stream).
    How the frame came, not what it shows: frames that differ only in it are equal."""

    def _shown(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__struct_fields__ if name != "wire_bytes")

    def __eq__(self, other: object) -> bool:
        return self._shown() == other._shown() if type(other) is Frame else NotImplemented

    def __hash__(self) -> int:
        return hash(self._shown())

    def thread(self, native_id: int) -> ThreadInfo | None:
        """The thread with this native id, or None."""
        for thread in self.threads:
            if thread.native_id == native_id:
                return thread
        return None

    @property
    def main_thread(self) -> ThreadInfo | None:
        """The target's main thread, if it is still running Python."""
        for thread in self.threads:
            if thread.is_main:
                return thread
        return None

    def module(self, name: str) -> ModuleVariables | None:
        """The variables of one watched module, or None."""
        for module in self.modules:
            if module.name == name:
                return module
        return None


class Hello(Struct, frozen=True):
    """The agent's first message: who it is and what it can do."""

    protocol: int
    pid: int
    python: str
    version: tuple[int, ...]
    implementation: str
    capabilities: tuple[str, ...]
    codec: str
    agent_native_id: int
    rate: float
    modules: tuple[str, ...]
    limits: dict[str, Any] = wire_name(default_factory=dict)
    """The agent's bounds (PROTOCOL.md ``limits``); not compared: hellos that differ only in them are equal."""

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__struct_fields__ if name != "limits")

    def __eq__(self, other: object) -> bool:
        return self._compared() == other._compared() if type(other) is Hello else NotImplemented

    def __hash__(self) -> int:
        return hash(self._compared())


class Children(Struct, frozen=True):
    """One page of an object's children (``Session.expand``)."""

    ref: int
    kind: str
    """``items`` (container elements) or ``attrs`` (instance attributes, module or class namespace)."""
    kinds: tuple[str, ...]
    """The kinds this object offers."""
    offset: int
    total: int
    children: tuple[Variable, ...]


class EvalResult(Struct, frozen=True):
    """The outcome of ``Session.eval``."""

    status: str
    """``ok``, ``raised`` or ``interrupted``."""
    mode: str
    """``eval`` (an expression) or ``exec`` (statements; the value of a final expression, if any)."""
    value: Value | None
    traceback: str | None
    exception: str | None
    elapsed: float
    output: str = ""
    """What the code printed (stdout and stderr, in order)."""
    output_dropped: int = 0
    frame: EvalFrame | None = None
    """The frame the code ran in (None: a module's globals)."""
    names: tuple[Variable, ...] = ()
    """The session's own names in the scope the code ran in (layered over it, not in the target's
    module or frame), up to 100; ``names_total`` counts them all."""
    names_total: int = 0

    @property
    def ok(self) -> bool:
        """The code ran to the end without raising."""
        return self.status == "ok"


class EvalFrame(Struct, frozen=True):
    """The stack frame an eval ran in, as the agent found it when the code started."""

    function: str
    qualname: str
    filename: str
    lineno: int | None
    index: int
    """Its position on the thread's stack when the code started, 0 = innermost."""
    new_call: bool = False
    """Asked for by its identity (``frame_id``), that call had returned: this is a later call of
    the same function (found by name and place), not the one periscope showed."""


class Completions(Struct, frozen=True):
    """What the name or attribute path at the end of a REPL input can become."""

    start: int
    """Where the completed word starts in the text that was sent."""
    matches: tuple[str, ...]
    """Whole words (``os.path.join``), sorted."""
    more: bool = False
    """There were more matches than the agent sends."""


class Output(Struct, frozen=True):
    """Print output of a running eval."""

    eval_id: int
    stream: str
    text: str


class Response(Struct, frozen=True):
    """The agent's answer to one request (decoded further by the session)."""

    request_id: int
    ok: bool
    result: Any
    error: str | None


class AgentError(Struct, frozen=True):
    """An error message from the agent that answers no particular request."""

    message: str
    fatal: bool


class WireFrame(Struct, frozen=True, kw_only=True):
    """A ``frame`` message as it is on the wire, full or a delta (explorer.wire makes a Frame of it)."""

    t: str = "frame"
    seq: int
    time: float
    cpu: float = 0.0
    threads: Annotated[tuple[ThreadInfo, ...], Many] = ()
    modules: Annotated[tuple[ModuleVariables, ...], Many] = ()
    truncated: bool = False
    build_ms: float = 0.0
    errors: int = 0
    error_log: Annotated[tuple[Text, ...], Many] = ()
    encode_ms: float = 0.0
    paused: Text | None = None
    base: int | None = None
    order: Annotated[tuple[int, ...], Many] | None = None
    module_order: Annotated[tuple[Text, ...], Many] | None = None


class OutOfStep(Struct, frozen=True):
    """A delta frame on frame ``base``, which periscope does not hold: it asks the agent to resync."""

    base: int


class Bye(Struct, frozen=True):
    """The agent has removed itself from the target."""

    reason: str


Message = Hello | Frame | Response | Output | AgentError | Bye | OutOfStep


def value_json(value: Value) -> dict[str, str]:
    """``{"type", "repr"}`` of a preview, as ``periscope snapshot --json`` prints it."""
    return {"type": value.type_name, "repr": value.repr}


def thread_json(thread: ThreadInfo) -> dict[str, Any]:
    """One thread of ``frame_json``."""
    return {
        "native_id": thread.native_id,
        "thread_id": thread.thread_id,
        "name": thread.name,
        "daemon": thread.daemon,
        "stack_omitted": thread.stack_omitted,
        "frames": [
            {
                "filename": stack_frame.filename,
                "function": stack_frame.qualname or stack_frame.function,
                "lineno": stack_frame.lineno,
                "locals": {v.name: value_json(v.value) for v in stack_frame.locals or ()},
            }
            for stack_frame in thread.frames
        ],
    }


def frame_json(pid: int, hello: Hello, frame: Frame, threads: bool = True) -> dict[str, Any]:
    """The JSON document of ``periscope snapshot --json`` (one line per frame in ``periscope
    watch``); without ``threads``, its ``threads`` list is left empty (see watch's FrameLines)."""
    return {
        "pid": pid,
        "python": ".".join(str(part) for part in hello.version[:3]) or hello.python.split()[0],
        "seq": frame.seq,
        "time": frame.time,
        "threads": [thread_json(thread) for thread in frame.threads if not thread.is_agent] if threads else [],
        "modules": {module.name: {v.name: value_json(v.value) for v in module.variables} for module in frame.modules},
        "truncated": frame.truncated,
        "paused": frame.paused,
    }
