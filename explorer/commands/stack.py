"""``periscope stack PID``: print every thread's Python stack, read from outside the process.

A read-only dump in the spirit of ``py-spy dump``: nothing runs in the target and it is not
stopped. Threads come main first (subinterpreters after the main interpreter), frames innermost
first. Thread names come from the target's ``threading`` module, read from its memory.
``--locals`` adds each frame's local variables and the variables of ``__main__``, also read from
memory (explorer.values), like ``py-spy dump --locals``.
"""

from __future__ import annotations

import io
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from explorer.stacks import ThreadStack
    from explorer.values import OutsideValue, ValueReader

NAME = "stack"
HELP = "print every thread's Python stack of a running CPython 3.14 or 3.15 process (read-only, like py-spy dump)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the CPython 3.14 or 3.15 process")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"pid", "python", "threads": [{"native_id", "thread_id", "name", "holds_gil", "frames": [...]}]}',
    )
    parser.add_argument(
        "--locals",
        action="store_true",
        help="also print each frame's local variables and the variables of __main__, read from the target's memory",
    )


MAX_QUICK_PID_DIGITS = 18


class QuickArgs:
    """The arguments :func:`parse_quick` read, as attributes named as argparse names them
    (types.SimpleNamespace without importing types: start-up time)."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def parse_quick(argv: list[str]) -> QuickArgs | None:
    """The arguments after ``stack`` in their plain forms, ``PID`` with ``--json`` and ``--locals``
    before or after it, parsed without argparse, whose import and set-up take longer than the
    rest of the command.

    The result has the attributes and values argparse would give; anything else (other
    spellings, help, mistakes, a repeated option) returns None, and argparse parses it with its
    usual messages.
    """
    flags = [arg for arg in argv if arg in ("--json", "--locals")]
    rest = [arg for arg in argv if arg not in ("--json", "--locals")]
    if len(rest) != 1 or len(set(flags)) != len(flags):
        return None
    pid = rest[0]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= MAX_QUICK_PID_DIGITS):
        return None
    return QuickArgs(command=NAME, pid=int(pid), json="--json" in flags, locals="--locals" in flags, run=run)


def run(args: argparse.Namespace | QuickArgs) -> int:
    from explorer.remote import RemoteProcess
    from explorer.stacks import StackReader

    process = RemoteProcess.open(args.pid)
    try:
        values = _value_reader(process) if getattr(args, "locals", False) else None
        stacks = StackReader(process, values=values).read()
        version = process.version
        executable = process.image.path
        variables = read_variables(process, stacks, values) if values is not None else None
    finally:
        process.close()
    # Names from the target may hold lone surrogates (undecodable file names): never fail on them.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.json:
        import json

        document = stacks_to_json(args.pid, version, stacks)
        if variables is not None:
            add_variables_json(document, variables)
        json.dump(document, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_stacks(args.pid, version, executable, _cmdline(args.pid), stacks, variables))
    sys.stdout.flush()
    return 0


class Variables:
    """What ``--locals`` read: each thread's frames' locals (None: unreadable) and ``__main__``'s globals."""

    def __init__(self, frames: dict[int, list[list[Any] | None]], main: list[tuple[str, OutsideValue]] | None) -> None:
        self.frames = frames
        """Per thread (native id): per frame, its locals (``explorer.values.OutsideLocal``) or None."""
        self.main = main
        """The variables of ``__main__`` (None when it is not imported or unreadable)."""


def _value_reader(process: Any) -> ValueReader:
    """A value reader of the target; a PeriscopeError that says why when its minor has none."""
    from explorer.errors import PeriscopeError
    from explorer.values import Unsupported, ValueReader

    try:
        return ValueReader(process)
    except Unsupported as error:
        raise PeriscopeError(str(error), "run periscope stack without --locals") from None


def read_variables(process: Any, stacks: list[ThreadStack], reader: ValueReader | None = None) -> Variables:
    """Every frame's locals and ``__main__``'s variables, read from the target's memory
    (with ``reader``, the one that read the thread names: its caches are warm)."""
    if reader is None:
        reader = _value_reader(process)
    every_thread = reader.stacks_locals([stack.frame_refs for stack in stacks])
    frames: dict[int, list[list[Any] | None]] = {stack.native_id: found for stack, found in zip(stacks, every_thread)}
    return Variables(frames, reader.module_globals("__main__"))


def value_to_json(value: OutsideValue) -> dict[str, Any]:
    """One value read from outside: ``{"type", "repr", "address", "cut", "torn"}``, plus ``len`` and ``attrs``."""
    document: dict[str, Any] = {
        "type": value.type_name,
        "repr": value.repr,
        "address": value.address,
        "cut": value.cut,
        "torn": value.torn,
    }
    if value.length is not None:
        document["len"] = value.length
    if value.attrs is not None:
        document["attrs"] = [{"name": name, **value_to_json(attr)} for name, attr in value.attrs]
    return document


def add_variables_json(document: dict[str, Any], variables: Variables) -> None:
    """Put each frame's ``locals`` (a list, or null when unreadable) and ``globals`` into a ``--json`` document."""
    for thread in document["threads"]:
        per_frame = variables.frames.get(thread["native_id"], [])
        for frame, local_variables in zip(thread["frames"], per_frame):
            frame["locals"] = (
                None
                if local_variables is None
                else [{"name": local.name, "argument": local.argument, **value_to_json(local.value)} for local in local_variables]
            )
    document["globals"] = {
        "__main__": None if variables.main is None else [{"name": name, **value_to_json(value)} for name, value in variables.main]
    }


def stacks_to_json(pid: int, version: str, stacks: list[ThreadStack]) -> dict[str, Any]:
    """The ``--json`` document: the shape documented in ``periscope stack --help``, plus per-thread flags."""
    return {
        "pid": pid,
        "python": version,
        "threads": [
            {
                "native_id": stack.native_id,
                "thread_id": stack.thread_id,
                "name": stack.name,
                "holds_gil": stack.holds_gil,
                "is_main": stack.is_main,
                "interpreter_id": stack.interpreter_id,
                "torn": stack.torn,
                "truncated": stack.truncated,
                "frames": [
                    {"filename": frame.filename, "function": frame.function, "lineno": frame.lineno}
                    for frame in stack.frames
                ],
            }
            for stack in stacks
        ],
    }


def format_stacks(
    pid: int, version: str, executable: str, cmdline: str, stacks: list[ThreadStack], variables: Variables | None = None
) -> str:
    """The human-readable dump: a header, then each thread and its frames, innermost first.

    With ``variables`` (``--locals``), each frame's arguments and locals follow it, and the
    variables of ``__main__`` close the dump; every name and value from the target
    (command line, thread, file and function names) goes through ``explorer.text.visible``: a control
    character in them is written out, never obeyed.
    """
    from explorer.text import visible

    lines = [f"Process {pid}: {visible(cmdline)}", f"Python v{visible(version)} ({visible(executable)})", ""]
    # Threads share frames (FrameInfo objects) and values (the reader formats an object once):
    # their lines are made once too, by identity. Every object stays alive while these are used.
    frame_lines: dict[int, str] = {}
    local_lines: dict[tuple[str, int], str] = {}
    value_texts: dict[int, str] = {}

    def value_text(value: OutsideValue) -> str:
        text = value_texts.get(id(value))
        if text is None:
            text = value_texts[id(value)] = _format_value(value)
        return text

    def locals_lines(local_variables: list[Any] | None) -> list[str]:
        if local_variables is None:
            return ["        (locals not readable: the frame changed while it was read)"]
        found = []
        for heading, want in (("Arguments:", True), ("Locals:", False)):
            chosen = [local for local in local_variables if local.argument is want]
            if chosen:
                found.append(f"        {heading}")
                for local in chosen:
                    key = (local.name, id(local.value))
                    line = local_lines.get(key)
                    if line is None:
                        line = local_lines[key] = f"            {visible(local.name)} = {value_text(local.value)}"
                    found.append(line)
        return found

    for stack in stacks:
        title = f"Thread {stack.native_id}"
        if stack.is_main:
            title += " (main thread)"
        elif stack.name:
            title += f" ({visible(stack.name)})"
        if stack.holds_gil:
            title += " [holds GIL]"
        if stack.interpreter_id:
            title += f" [interpreter {stack.interpreter_id}]"
        if stack.torn:
            title += " [stack changed while reading: frames may be missing]"
        lines.append(title)
        per_frame = variables.frames.get(stack.native_id, []) if variables is not None else []
        for index, frame in enumerate(stack.frames):
            line = frame_lines.get(id(frame))
            if line is None:
                where = frame.filename if frame.lineno is None else f"{frame.filename}:{frame.lineno}"
                line = frame_lines[id(frame)] = f"    {visible(frame.function)} ({visible(where)})"
            lines.append(line)
            if index < len(per_frame):
                lines.extend(locals_lines(per_frame[index]))
        if stack.truncated:
            lines.append("    ... (outer frames not shown: the stack is deeper than periscope follows)")
        if not stack.frames and not stack.truncated:
            lines.append("    (no Python frames)")
        lines.append("")
    if variables is not None:
        if variables.main is None:
            lines.append("Module __main__: not readable")
        else:
            lines.append("Module __main__")
            lines.extend(f"    {visible(name)} = {_format_value(value)}" for name, value in variables.main)
        lines.append("")
    return "\n".join(lines)


def _format_value(value: OutsideValue) -> str:
    """One value on one line: its repr, and an object's instance attributes."""
    from explorer.text import visible

    text = visible(value.repr)
    if value.attrs:
        text += " with " + ", ".join(f"{visible(name)}={visible(attr.repr)}" for name, attr in value.attrs)
    return text


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="surrogateescape") for part in raw.rstrip(b"\0").split(b"\0")) or "?"
