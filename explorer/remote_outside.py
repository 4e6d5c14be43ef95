"""Stacks and values a far side read from outside (serve's ``stack`` op), as this side's model.

The attach screen shows, while it waits, every thread's stack and the selected thread's locals
read from outside. Over a host the far side reads them; its ``stack --json`` document is hostile
input here: each field is type checked and bounded before it becomes an
:class:`explorer.stacks.ThreadStack` or an :class:`explorer.model.Variable`.
"""

from __future__ import annotations

from typing import Any

from explorer.errors import ProtocolError

MAX_THREADS = 10_000
MAX_FRAMES = 4096
MAX_VARIABLES = 10_000
MAX_TEXT = 10_000
"""Characters kept of a name, a file name or a repr (longer ones are cut, as the reader cuts its own)."""


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"the far side's stacks have a malformed {what}")
    return value[:MAX_TEXT]


def _int(value: Any, what: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise ProtocolError(f"the far side's stacks have a malformed {what}")
    return value


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"the far side's stacks have a malformed {what}")
    return value


def _items(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"the far side's stacks have a malformed {what}")
    return value


def _variables(data: Any) -> tuple[Any, ...]:
    """``[{"name", "type", "repr", "cut", "torn", "len"?, "attrs"?}]`` as model Variables (previews only)."""
    from explorer.model import Value, Variable

    found = []
    for entry in _items(data, MAX_VARIABLES, "variable list"):
        if not isinstance(entry, dict):
            raise ProtocolError("the far side's stacks have a malformed variable")
        text = _text(entry.get("repr"), "repr") or ""
        attrs = entry.get("attrs")
        if attrs is not None:
            shown = []
            for attr in _items(attrs, 100, "attribute list"):
                if not isinstance(attr, dict):
                    raise ProtocolError("the far side's stacks have a malformed attribute")
                shown.append(f"{_text(attr.get('name'), 'attribute name')}={_text(attr.get('repr'), 'attribute repr')}")
            if shown:
                text += " with " + ", ".join(shown)  # as explorer.outside.to_value shows them
        value = Value(
            type_name=_text(entry.get("type"), "type name") or "",
            repr=text[:MAX_TEXT],
            length=_int(entry.get("len"), "length", optional=True),
            truncated=_flag(entry.get("cut", False), "cut flag"),
            failed=_flag(entry.get("torn", False), "torn flag"),
        )
        found.append(Variable(_text(entry.get("name"), "variable name") or "", value))
    return tuple(found)


def outside_from_json(document: Any) -> tuple[list[Any], dict[int, list[tuple[Any, ...] | None]], tuple[Any, ...] | None]:
    """(stacks, locals by native id, ``__main__``'s variables) of a ``stack`` document with
    ``locals``; ProtocolError when a field is missing, of another type or out of bounds."""
    from explorer.stacks import FrameInfo, ThreadStack

    if not isinstance(document, dict):
        raise ProtocolError("the far side's stacks are not a map")
    stacks = []
    locals_by_thread: dict[int, list[tuple[Any, ...] | None]] = {}
    for thread in _items(document.get("threads"), MAX_THREADS, "thread list"):
        if not isinstance(thread, dict):
            raise ProtocolError("the far side's stacks have a malformed thread")
        native_id = _int(thread.get("native_id"), "thread id")
        assert native_id is not None
        frames = []
        per_frame: list[tuple[Any, ...] | None] = []
        has_locals = False
        for frame in _items(thread.get("frames"), MAX_FRAMES, "frame list"):
            if not isinstance(frame, dict):
                raise ProtocolError("the far side's stacks have a malformed frame")
            frames.append(
                FrameInfo(_text(frame.get("filename"), "file name"), _text(frame.get("function"), "function name"), _int(frame.get("lineno"), "line number", optional=True))
            )
            if "locals" in frame:
                has_locals = True
                per_frame.append(None if frame["locals"] is None else _variables(frame["locals"]))
        stacks.append(
            ThreadStack(
                native_id,
                _int(thread.get("thread_id"), "thread ident"),
                _text(thread.get("name"), "thread name", optional=True),
                _flag(thread.get("holds_gil"), "GIL flag"),
                _flag(thread.get("is_main"), "main-thread flag"),
                _int(thread.get("interpreter_id", 0), "interpreter id"),
                tuple(frames),
                _flag(thread.get("attached", True), "attached flag"),
            )
        )
        if has_locals:
            locals_by_thread[native_id] = per_frame
    module = None
    globals_ = document.get("globals")
    if isinstance(globals_, dict) and globals_.get("__main__") is not None:
        module = _variables(globals_["__main__"])
    return stacks, locals_by_thread, module
