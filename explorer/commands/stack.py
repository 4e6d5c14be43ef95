"""``periscope stack PID``: print every thread's Python stack, read from outside the process.

A read-only dump in the spirit of ``py-spy dump``: nothing runs in the target and it is not
stopped. Threads come main first (subinterpreters after the main interpreter), frames innermost
first. Thread names come from the OS thread name that ``threading`` sets, which the kernel cuts
to 15 bytes.
"""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from explorer.stacks import ThreadStack

NAME = "stack"
HELP = "print every thread's Python stack of a running CPython 3.14 or 3.15 process (read-only, like py-spy dump)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the CPython 3.14 or 3.15 process")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"pid", "python", "threads": [{"native_id", "thread_id", "name", "holds_gil", "frames": [...]}]}',
    )


MAX_QUICK_PID_DIGITS = 18


def parse_quick(argv: list[str]) -> SimpleNamespace | None:
    """The arguments after ``stack`` in their plain forms, ``PID``, ``--json PID`` and ``PID --json``,
    parsed without argparse, whose import and set-up take longer than the rest of the command.

    The result has the attributes and values argparse would give; anything else (other
    spellings, help, mistakes) returns None, and argparse parses it with its usual messages.
    """
    rest = [arg for arg in argv if arg != "--json"]
    if len(rest) != 1 or len(argv) > 2:
        return None
    pid = rest[0]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= MAX_QUICK_PID_DIGITS):
        return None
    return SimpleNamespace(command=NAME, pid=int(pid), json=len(argv) == 2, run=run)


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    from explorer.remote import RemoteProcess
    from explorer.stacks import StackReader

    process = RemoteProcess.open(args.pid)
    try:
        stacks = StackReader(process).read()
        version = process.version
        executable = process.image.path
    finally:
        process.close()
    # Names from the target may hold lone surrogates (undecodable file names): never fail on them.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.json:
        import json

        json.dump(stacks_to_json(args.pid, version, stacks), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_stacks(args.pid, version, executable, _cmdline(args.pid), stacks))
    sys.stdout.flush()
    return 0


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


def format_stacks(pid: int, version: str, executable: str, cmdline: str, stacks: list[ThreadStack]) -> str:
    """The human-readable dump: a header, then each thread and its frames, innermost first.

    Every name from the target (command line, thread, file and function names) is shown escaped
    (explorer.text.visible): a control character in them is written out, never obeyed."""
    from explorer.text import visible

    lines = [f"Process {pid}: {visible(cmdline)}", f"Python v{visible(version)} ({visible(executable)})", ""]
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
        for frame in stack.frames:
            where = frame.filename if frame.lineno is None else f"{frame.filename}:{frame.lineno}"
            lines.append(f"    {visible(frame.function)} ({visible(where)})")
        if stack.truncated:
            lines.append("    ... (outer frames not shown: the stack is deeper than periscope follows)")
        if not stack.frames and not stack.truncated:
            lines.append("    (no Python frames)")
        lines.append("")
    return "\n".join(lines)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="surrogateescape") for part in raw.rstrip(b"\0").split(b"\0")) or "?"
