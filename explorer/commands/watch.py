"""``periscope watch PID``: stream frames as JSON lines (one frame per line) until Ctrl+C or a count."""

from __future__ import annotations

import json
import sys

from explorer.commands.snapshot import VIA_FIX, add_agent_arguments, refuse_bad_arguments, thread_choice

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any

NAME = "watch"
HELP = "attach to a CPython 3.14 or 3.15 process and print one JSON line per frame until Ctrl+C (or --count)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("--interval", type=float, default=0.5, metavar="S", help="seconds between frames (default 0.5)")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N frames")
    add_agent_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.interval >= 0.01:  # also refuses nan
        print("periscope: --interval must be at least 0.01 seconds", file=sys.stderr)
        return 2
    refusal = refuse_bad_arguments(args)
    if refusal is not None:
        print(f"periscope: {refusal}", file=sys.stderr)
        return 2
    from explorer.oneshot import on_remote_host

    try:
        if on_remote_host():
            import asyncio

            return asyncio.run(_watch(args))
        return _watch_here(args)
    except KeyboardInterrupt:
        from explorer import signals

        # Ctrl+C is how a watch ends (status 0); SIGTERM or SIGHUP say so. The session detached on the way out.
        return signals.exit_status(0)


def _attach_options(args: argparse.Namespace) -> dict[str, Any]:
    """What watch asks of attach, here and through a host."""
    return {
        "thread": thread_choice(args),
        "timeout": args.timeout,
        "rate": 1.0 / args.interval,
        "modules": tuple(args.modules or ("__main__",)),
        "blocked_fix": VIA_FIX,
    }


class FrameLines:
    """Frames as JSON lines, ``json.dumps(frame_json(...))`` to the byte, with each thread's text
    made once while it is the same model object (a thread that did not change is the same
    object from frame to frame: explorer.wire), so the cost follows the change."""

    def __init__(self) -> None:
        self.threads: dict[int, tuple[Any, str]] = {}  # id(thread) -> (thread, its JSON text)

    def line(self, pid: int, hello: Any, frame: Any) -> str:
        from explorer.model import frame_json, thread_json

        texts = []
        kept = {}
        for thread in frame.threads:
            if thread.is_agent:
                continue
            known = self.threads.get(id(thread))
            text = known[1] if known is not None and known[0] is thread else json.dumps(thread_json(thread))
            kept[id(thread)] = (thread, text)
            texts.append(text)
        self.threads = kept
        # Before "threads" come only the pid, the version, seq and time, and a quote inside a
        # JSON string is escaped: the first '"threads": []' is the key's.
        head = json.dumps(frame_json(pid, hello, frame, threads=False))
        return head.replace('"threads": []', '"threads": [' + ", ".join(texts) + "]", 1)


def _print_frame(args: argparse.Namespace, hello: Any, frame: Any, count: int, lines: FrameLines) -> bool:
    """Print the ``count``-th frame as a JSON line; whether that was the last one asked for."""
    sys.stdout.write(lines.line(args.pid, hello, frame) + "\n")
    sys.stdout.flush()
    return args.count is not None and count >= args.count


def _watch_here(args: argparse.Namespace) -> int:
    """The watch on this machine, with the synchronous client (explorer.oneshot)."""
    from explorer.oneshot import attach

    session = attach(args.pid, **_attach_options(args))
    count = 0
    lines = FrameLines()
    try:
        for frame in session.frames():
            count += 1
            if _print_frame(args, session.hello, frame, count, lines):
                break
    finally:
        session.detach()
    if session.error is not None and (args.count is None or count < args.count):
        raise session.error
    return 0


async def _watch(args: argparse.Namespace) -> int:
    """The watch through --host or --exec (the async session that explorer.hosts relays)."""
    from explorer.hosts import attach

    session = await attach(args.pid, **_attach_options(args))
    count = 0
    lines = FrameLines()
    try:
        async for frame in session.frames():
            count += 1
            if _print_frame(args, session.hello, frame, count, lines):
                break
    finally:
        await session.detach()
    if session.error is not None and (args.count is None or count < args.count):
        raise session.error
    return 0
