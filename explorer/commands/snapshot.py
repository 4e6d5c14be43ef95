"""``periscope snapshot PID``: attach the agent, take one full frame (threads, stacks, locals,
module variables), detach.

When no thread of the target takes the agent's request within ``OUTSIDE_AFTER`` seconds (all of
them blocked in C: a sleep, ``input()``, a lock), the request is withdrawn and the frame is read
from the target's memory instead (explorer.outside): the same threads, stacks, locals and module
variables, marked as read from outside, in the agent's bounds. The output says which source the
values came from (``source`` in JSON: ``agent`` or ``outside``).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any

NAME = "snapshot"
HELP = "attach to a CPython 3.14 or 3.15 process, print one full frame (threads, stacks, locals, module variables), detach"


OUTSIDE_AFTER = 0.5
"""Seconds to wait for a thread to take the agent's request before reading the values from outside."""

VIA_FIX = "the program is blocked in C there: 'periscope stack PID' shows where (read from outside, no agent needed); attach again once it runs Python"
"""What the agent commands say to do when no thread of the target ran Python in time (``attach(blocked_fix=...)``)."""


def add_agent_arguments(parser: argparse.ArgumentParser, *, modules: bool = True) -> None:
    """Options every agent command shares: which thread injects, the timeout, the watched modules."""
    parser.add_argument(
        "--via",
        default="any",
        metavar="THREAD",
        help="thread that runs the agent script: any (the GIL holder, main, then every other thread; default, "
        "as in the TUI), auto (the thread running Python, else main), main, or a native thread id",
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="give up attaching after S seconds (default 10)")
    if not modules:
        return
    parser.add_argument(
        "--module",
        dest="modules",
        action="append",
        metavar="M",
        help="watch the variables of module M (repeatable; default __main__)",
    )


def refuse_bad_arguments(args: argparse.Namespace) -> str | None:
    """The one-line reason the agent options in ``args`` cannot work (None when they can).

    Checked before anything is written into the target, so a typo never costs an injection.
    """
    import math

    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        return "--timeout must be a positive number of seconds, such as 10"
    count = getattr(args, "count", None)
    if count is not None and count < 1:
        return "--count must be at least 1 (leave it out to watch until Ctrl+C)"
    max_repr = getattr(args, "max_repr", None)
    if max_repr is not None and max_repr < 1:
        return "--max-repr must be at least 1 character"
    return None


def thread_choice(args: argparse.Namespace) -> str | int:
    """The parsed ``--via`` value (exits with a usage error when it is malformed)."""
    from explorer.attach import parse_thread_choice

    try:
        return parse_thread_choice(args.via)
    except ValueError as error:
        print(f"periscope: --via: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("--json", action="store_true", help="print the frame as one JSON document")
    add_agent_arguments(parser)


MAX_QUICK_PID_DIGITS = 18


class QuickArgs:
    """The arguments a ``parse_quick`` read, as attributes named as argparse names them
    (types.SimpleNamespace without importing types: start-up time)."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


AGENT_DEFAULTS = {"via": "any", "timeout": 10.0}
"""What add_agent_arguments' options default to."""


def quick_pid(text: str) -> int | None:
    """A PID as argparse's ``type=int`` reads it, in its plain form only (ASCII digits)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_QUICK_PID_DIGITS:
        return int(text)
    return None


def parse_quick(argv: list[str]) -> QuickArgs | None:
    """``snapshot PID`` with ``--json`` before or after it, parsed without argparse (its import and
    set-up take a tenth of the command); anything else returns None and argparse parses it."""
    flags = [arg for arg in argv if arg == "--json"]
    rest = [arg for arg in argv if arg != "--json"]
    if len(rest) != 1 or len(flags) > 1:
        return None
    pid = quick_pid(rest[0])
    if pid is None:
        return None
    return QuickArgs(command=NAME, pid=pid, json=bool(flags), modules=None, **AGENT_DEFAULTS, run=run)


def run(args: argparse.Namespace) -> int:
    refusal = refuse_bad_arguments(args)
    if refusal is not None:
        print(f"periscope: {refusal}", file=sys.stderr)
        return 2
    return _snapshot(args)


def _snapshot(args: argparse.Namespace) -> int:
    """Attach with the synchronous client (explorer.oneshot), take one frame, detach, print it."""
    from explorer.errors import InjectionTimeout
    from explorer.model import frame_json
    from explorer.oneshot import NotTaken, attach

    modules = tuple(args.modules or ("__main__",))
    try:
        session = attach(
            args.pid,
            thread=thread_choice(args),
            timeout=args.timeout,
            rate=0.0,
            modules=modules,
            blocked_fix=VIA_FIX,
            taken_within=OUTSIDE_AFTER,  # every thread blocked in C: read from outside instead
        )
    except NotTaken:
        return _print_outside(args, modules, f"no thread ran Python within {OUTSIDE_AFTER:g} s")
    except InjectionTimeout as error:
        if not error.no_thread_ran:
            raise
        return _print_outside(args, modules, "no thread ran Python within the timeout")
    try:
        frame = session.sample()
    finally:
        session.detach()
    if args.json:
        document = frame_json(args.pid, session.hello, frame)
        import json

        print(json.dumps(mark_source(document, "agent"), indent=2))
    else:
        print(render_text(args.pid, session.hello, frame, source="values from the agent, live inside the process"))
    return 0


def _print_outside(args: argparse.Namespace, modules: tuple[str, ...], why: str) -> int:
    """Read the frame from the target's memory and print it, saying so."""
    from explorer.model import frame_json
    from explorer.outside import SOURCE, outside_hello, read_frame
    from explorer.remote import RemoteProcess

    with RemoteProcess.open(args.pid) as process:
        frame = read_frame(process, modules)
        hello = outside_hello(process)
    if args.json:
        document = frame_json(args.pid, hello, frame)
        document["why"] = f"{why}: the agent could not start"
        import json

        print(json.dumps(mark_source(document, SOURCE), indent=2))
    else:
        line = f"values read from outside (not live): {why}, so the agent could not start"
        print(render_text(args.pid, hello, frame, source=line))
    return 0


def mark_source(document: dict, source: str) -> dict:  # type: ignore[type-arg]
    """Add ``source`` to a ``frame_json`` document and to each of its values."""
    document["source"] = source
    for thread in document["threads"]:
        for stack_frame in thread["frames"]:
            for value in stack_frame["locals"].values():
                value["source"] = source
    for variables in document["modules"].values():
        for value in variables.values():
            value["source"] = source
    return document


def render_text(pid: int, hello, frame, source: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """A frame as plain text: each thread's stack with locals, then the module variables.

    ``source`` (a line saying where the values come from) follows the header. Strings from the
    target go through ``explorer.text.visible``.
    """
    from explorer.model import is_definition
    from explorer.text import visible

    def data(variables):  # type: ignore[no-untyped-def]
        kept = [v for v in variables if not is_definition(v.name, v.value.type_name, v.value.repr)]
        return kept, len(variables) - len(kept)

    watched = {repr(module.name): module.name for module in frame.modules if not module.missing}
    lines = [f"process {pid}: Python {visible(hello.python.split()[0])}"]
    if source:
        lines.append(source)
    for thread in frame.threads:
        if thread.is_agent:
            continue
        flags = ", ".join(f for f, on in (("main", thread.is_main), ("daemon", thread.daemon)) if on)
        lines.append("")
        lines.append(f"thread {thread.native_id} {visible(thread.name or '?')}{f' ({flags})' if flags else ''}")
        for stack_frame in thread.frames:
            lines.append(f"  {visible(stack_frame.qualname)} ({visible(stack_frame.filename)}:{stack_frame.lineno})")
            variables = list(stack_frame.locals or ())
            if stack_frame.function == "<module>":
                # A module's code: its locals are the module's globals, listed once.
                name = next((v.value.repr for v in variables if v.name == "__name__"), None)
                if name in watched:
                    lines.append(f"      (its locals are the globals of module {visible(watched[name])}, below)")
                    continue
                variables, hidden = data(variables)
                if hidden:
                    lines.append(f"      ({hidden} imports, functions, classes and dunder names left out)")
            for variable in variables:
                lines.append(f"      {visible(variable.name)} = {visible(variable.value.repr)}")
    for module in frame.modules:
        lines.append("")
        lines.append(f"module {visible(module.name)}" + (" (not imported)" if module.missing else f" ({module.total} variables)"))
        variables, hidden = data(list(module.variables))
        if hidden:
            lines.append(f"  ({hidden} imports, functions, classes and dunder names left out; --json has them)")
        for variable in variables:
            lines.append(f"  {visible(variable.name)} = {visible(variable.value.repr)}")
    if frame.truncated:
        lines.append("")
        lines.append("(frame truncated at the agent's size bound)")
    return "\n".join(lines)
