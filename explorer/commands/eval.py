"""``periscope eval PID CODE``: run an expression or statements inside the target and print the result.

Exit status 1 when the code raised (its traceback goes to stderr). What the code prints comes
back here, not to the target's stdout. Ctrl+C interrupts the code (KeyboardInterrupt in the target).
Where an event loop runs in the target, asyncio code runs in its thread (see :data:`EPILOG`).
"""

from __future__ import annotations

import sys

from explorer.commands.snapshot import (
    AGENT_DEFAULTS,
    VIA_FIX,
    QuickArgs,
    add_agent_arguments,
    quick_pid,
    refuse_bad_arguments,
    thread_choice,
)
from explorer.text import visible

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse

NAME = "eval"
HELP = "evaluate an expression or statements inside a CPython 3.14 or 3.15 process and print the result's repr"


EPILOG = (
    "The code runs in a thread periscope starts in the target (periscope-eval-N), not in the thread whose "
    "frame it reads with --thread: there is no running event loop there (unless the code runs in the loop, "
    "below), threading.local() values are that thread's own (empty), and a database connection or anything "
    "else kept per thread is its own too. Names the code creates stay periscope's: in a module they are "
    "layered over its globals (reading sees the module, assigning a name the module has writes through, a "
    "new name is not added to it); in a frame, over its locals. None and statements print nothing. "
    "Where an asyncio event loop runs in the target, code that awaits or names asyncio "
    "(asyncio.all_tasks(), asyncio.get_running_loop(), ...) runs in that loop's thread: code that awaits "
    "as a task of the loop, the rest as one callback of it. Ctrl+C, or 30 s without finishing, stops it at its "
    "own next line (a loop that never awaits included), and the target's loop goes on. Other code runs in "
    "periscope's own thread in the target."
)


DEFAULT_MAX_REPR = 1 << 20
"""Characters of the printed repr, unless --max-repr says."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("code", help="an expression or statements ('-' reads them from stdin)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--module", metavar="M", help="run in the globals of module M (default __main__)")
    where.add_argument("--thread", type=int, metavar="NATIVE_ID", help="run in a frame of this thread (its locals write through on 3.13+)")
    parser.add_argument(
        "--frame",
        type=_frame_choice,
        default=0,
        metavar="N|NAME",
        help="with --thread: the frame, as an index (0 = innermost, the default) or a function name "
        "(the innermost frame running it, e.g. --frame runtest); the frame that ran goes to stderr",
    )
    parser.add_argument(
        "--max-repr",
        type=int,
        default=DEFAULT_MAX_REPR,
        metavar="CHARS",
        help="cut the printed repr at CHARS characters (default 1048576); a cut repr says how much it dropped",
    )
    add_agent_arguments(parser, modules=False)


def parse_quick(argv: list[str]) -> QuickArgs | None:
    """``eval PID CODE`` (CODE not starting with ``-``, or ``-`` alone for stdin), parsed without
    argparse; anything else returns None and argparse parses it."""
    if len(argv) != 2 or (argv[1].startswith("-") and argv[1] != "-"):
        return None
    pid = quick_pid(argv[0])
    if pid is None:
        return None
    return QuickArgs(
        command=NAME, pid=pid, code=argv[1], module=None, thread=None, frame=0, max_repr=DEFAULT_MAX_REPR, **AGENT_DEFAULTS, run=run
    )


def _frame_choice(text: str) -> int | str:
    """``--frame``: an index (0 = innermost) or a function's name or qualified name."""
    import argparse

    try:
        index = int(text)
    except ValueError:
        if all(part.isidentifier() for part in text.split(".")) or text in ("<module>", "<lambda>"):
            return text
        raise argparse.ArgumentTypeError(f"not a frame index or function name: {text!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"a frame index is 0 (innermost) or more, not {index}")
    return index


def run(args: argparse.Namespace) -> int:
    refusal = refuse_bad_arguments(args)
    if refusal is None:
        refusal = _read_code(args)
    if refusal is not None:
        print(f"periscope: {refusal}", file=sys.stderr)
        return 2
    from explorer.oneshot import on_remote_host

    from explorer.oneshot import InterruptPending

    try:
        if on_remote_host():
            import asyncio

            return _report(args, asyncio.run(_eval(args)))
        return _report(args, _eval_here(args))
    except InterruptPending as pending:
        print(f"periscope: {pending}", file=sys.stderr)
        return 130


def _read_code(args: argparse.Namespace) -> str | None:
    """Put the code to run (from the command line or stdin) in ``args.code``; the refusal if it is not UTF-8."""
    if args.code == "-":
        try:
            args.code = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as error:
            return f"the code on stdin is not valid UTF-8 (byte {error.start}); save it as UTF-8"
        return None
    try:
        args.code.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
    except UnicodeEncodeError as error:
        return f"the code is not valid UTF-8 (character {error.start}); pass it as UTF-8"
    return None


def _eval_here(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The eval on this machine, with the synchronous client (explorer.oneshot); its EvalResult."""
    from explorer.oneshot import attach

    session = attach(args.pid, thread=thread_choice(args), timeout=args.timeout, rate=0.0, blocked_fix=VIA_FIX)
    try:
        return session.eval(
            args.code,
            module=args.module,
            thread=_target_thread_id(args.pid, args.thread),
            frame=args.frame if isinstance(args.frame, int) else 0,
            frame_name=args.frame if isinstance(args.frame, str) else None,
            repr_chars=max(1, min(args.max_repr, 1 << 20)),
            on_output=_print_output,
        )
    finally:
        session.detach()


async def _eval(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The eval through --host or --exec (the async session that explorer.hosts relays); its EvalResult."""
    import asyncio
    import signal

    from explorer.hosts import attach
    from explorer.oneshot import INTERRUPT_GRACE, InterruptPending

    module = args.module
    session = await attach(args.pid, thread=thread_choice(args), timeout=args.timeout, rate=0.0, blocked_fix=VIA_FIX)
    try:
        handle = session.start_eval(
            args.code,
            module=module,
            thread=_target_thread_id(args.pid, args.thread),
            frame=args.frame if isinstance(args.frame, int) else 0,
            frame_name=args.frame if isinstance(args.frame, str) else None,
            repr_chars=max(1, min(args.max_repr, 1 << 20)),
            on_output=_print_output,
        )
        loop = asyncio.get_running_loop()
        interrupted = False
        interrupting: list[asyncio.Task[None]] = []  # the loop keeps only a weak reference to a task
        waiting = asyncio.ensure_future(handle.result())
        given_up: list[bool] = []

        def give_up() -> None:
            # Still running after the grace: blocked in a C call, which takes the interrupt when it returns.
            if not waiting.done():
                given_up.append(True)
                waiting.cancel()

        def on_sigint() -> None:
            nonlocal interrupted
            if interrupted:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                return
            interrupted = True
            interrupting.append(asyncio.ensure_future(handle.interrupt()))
            loop.call_later(INTERRUPT_GRACE, give_up)

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            try:
                result = await waiting
            except asyncio.CancelledError:
                if not given_up:
                    raise
                raise InterruptPending.of(args.pid) from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
    finally:
        await session.detach()
    return result


def _report(args: argparse.Namespace, result) -> int:  # type: ignore[no-untyped-def]
    """Print an eval's result (or its traceback) and return the exit status."""
    if result.frame is not None:
        where = result.frame
        print(
            f"periscope: ran in frame {where.index} ({visible(where.qualname)}() at "
            f"{visible(where.filename)}:{where.lineno or '?'}) of thread {args.thread}",
            file=sys.stderr,
        )
    if result.output_dropped:
        print(f"periscope: {result.output_dropped} more characters of printed output were dropped", file=sys.stderr)
    if result.ok:
        if result.value is not None:  # None: nothing, as in Python's REPL
            print(visible(result.value.repr, keep_lines=True))
            if result.value.dropped:
                more = "more than " if result.value.dropped_more else ""
                print(f"periscope: the repr was cut at {args.max_repr} characters; {more}{result.value.dropped} dropped (--max-repr)", file=sys.stderr)
        return 0
    sys.stderr.write(visible(result.traceback or f"{result.exception}\n", keep_lines=True))
    return 130 if result.status == "interrupted" else 1


def _print_output(output) -> None:  # type: ignore[no-untyped-def]
    stream = sys.stdout if output.stream == "stdout" else sys.stderr
    stream.write(visible(output.text, keep_lines=True))
    stream.flush()


def _target_thread_id(pid: int, native_id: int | None) -> int | None:
    """A native thread id as the target sees it (periscope may run in another pid namespace)."""
    if native_id is None:
        return None
    from explorer.oneshot import on_remote_host

    if on_remote_host():
        from explorer.hosts import current

        host = current()
        assert host is not None
        return host.target_thread(pid, native_id)  # the far side's id, translated there
    try:
        from explorer.remote import RemoteProcess

        with RemoteProcess.open(pid) as process:
            return process.thread_by_native_id(native_id).target_native_id
    except LookupError:
        return native_id
