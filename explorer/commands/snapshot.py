"""``periscope snapshot PID``: attach the agent, take one full frame (threads, stacks, locals,
module variables), detach."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "snapshot"
HELP = "attach to a CPython 3.14 or 3.15 process, print one full frame (threads, stacks, locals, module variables), detach"


VIA_FIX = "use --via any, or --via NATIVE_ID of a thread that runs Python"
"""What the agent commands say to do when no thread of the target ran Python in time (``attach(blocked_fix=...)``)."""


def add_agent_arguments(parser: argparse.ArgumentParser, *, modules: bool = True) -> None:
    """Options every agent command shares: which thread injects, the timeout, the watched modules."""
    parser.add_argument(
        "--via",
        default="auto",
        metavar="THREAD",
        help="thread that runs the agent script: auto (the thread running Python, else main; default), "
        "main, any (try every thread; use when the main thread is blocked), or a native thread id",
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
    from explorer.session import parse_thread_choice

    try:
        return parse_thread_choice(args.via)
    except ValueError as error:
        print(f"periscope: --via: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("--json", action="store_true", help="print the frame as one JSON document")
    add_agent_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio

    refusal = refuse_bad_arguments(args)
    if refusal is not None:
        print(f"periscope: {refusal}", file=sys.stderr)
        return 2
    return asyncio.run(_snapshot(args))


async def _snapshot(args: argparse.Namespace) -> int:
    from explorer.model import frame_json
    from explorer.session import attach

    session = await attach(
        args.pid,
        thread=thread_choice(args),
        timeout=args.timeout,
        rate=0.0,
        modules=tuple(args.modules or ("__main__",)),
        blocked_fix=VIA_FIX,
    )
    try:
        frame = await session.sample()
    finally:
        await session.detach()
    if args.json:
        print(json.dumps(frame_json(args.pid, session.hello, frame), indent=2))
    else:
        print(render_text(args.pid, session.hello, frame))
    return 0


def render_text(pid: int, hello, frame) -> str:  # type: ignore[no-untyped-def]
    """A frame as plain text: each thread's stack with locals, then the module variables.

    Every string from the target (names, reprs) is shown escaped (explorer.text.visible)."""
    from explorer.text import visible

    lines = [f"process {pid}: Python {visible(hello.python.split()[0])}"]
    for thread in frame.threads:
        if thread.is_agent:
            continue
        flags = ", ".join(f for f, on in (("main", thread.is_main), ("daemon", thread.daemon)) if on)
        lines.append("")
        lines.append(f"thread {thread.native_id} {visible(thread.name or '?')}{f' ({flags})' if flags else ''}")
        for stack_frame in thread.frames:
            lines.append(f"  {visible(stack_frame.qualname)} ({visible(stack_frame.filename)}:{stack_frame.lineno})")
            for variable in stack_frame.locals or ():
                lines.append(f"      {visible(variable.name)} = {visible(variable.value.repr)}")
    for module in frame.modules:
        lines.append("")
        lines.append(f"module {visible(module.name)}" + (" (not imported)" if module.missing else f" ({module.total} variables)"))
        for variable in module.variables:
            lines.append(f"  {visible(variable.name)} = {visible(variable.value.repr)}")
    if frame.truncated:
        lines.append("")
        lines.append("(frame truncated at the agent's size bound)")
    return "\n".join(lines)
