"""``periscope exec PID FILE``: run a Python file inside a CPython 3.14 or 3.15 process (PEP 768 remote exec).

FILE is read from periscope's side and copied into a fresh private directory in the target's own
view of the file system (readable by the target's user only), behind a launcher that removes the
copy as soon as it starts. The chosen thread (the main thread, or ``--thread NATIVE_ID``) picks
the request up at its next eval-breaker check; periscope waits for that pickup, then briefly for
the launcher to remove the copy. Pickup is not completion: whatever the script prints, and its
errors, go to the target's own stdout and stderr.

Exit status: 0 when the script started, 1 for a refusal or failure (one line on stderr), 2 when
the thread did not pick the request up within ``--wait`` (the request is then withdrawn).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

NAME = "exec"
HELP = "run a Python file inside a running CPython 3.14 or 3.15 process (remote exec, PEP 768)"
DEFAULT_WAIT = 5.0
START_WAIT = 2.0  # after pickup, how long the launcher may take to open the copy and remove it


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


EPILOG = (
    "The script runs in a fresh, empty namespace of its own (only __builtins__; __name__ is not set), not in "
    "the globals of __main__ or of the code the thread was running: reach the program's state with "
    "'import __main__' or sys.modules['mypkg.config'], and its functions' locals with sys._current_frames(). "
    "It runs in the chosen thread, between two of that thread's bytecodes, so the thread waits until it returns; "
    "an exception it raises is printed to the target's stderr and the thread goes on."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("pid", type=int, metavar="PID", help="the target process")
    parser.add_argument("file", metavar="FILE", help="the Python file to run (as periscope sees it)")
    parser.add_argument(
        "--thread",
        type=int,
        metavar="NATIVE_ID",
        help="run it in the thread with this native id (as in ps -L or threading.get_native_id()); default: the main thread",
    )
    parser.add_argument(
        "--wait",
        type=_positive_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long the thread may take to pick the request up (default {DEFAULT_WAIT:g})",
    )


def _fail(message: str, status: int = 1) -> int:
    from explorer.text import visible

    print(f"periscope: {visible(message)}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    from explorer.staging import prepare_script_dir, stage_script
    from explorer.remote_exec import (
        describe_threads,
        remote_exec,
        select_thread,
    )
    from explorer.errors import ProcessGone
    from explorer.memory import MemoryFault
    from explorer.remote import RemoteProcess

    try:
        with open(args.file, "rb") as handle:
            source = handle.read()
    except OSError as error:
        return _fail(f"cannot read {args.file}: {error.strerror or error}")
    label = f"<periscope exec {os.path.abspath(args.file)}>"

    try:
        with RemoteProcess.open(args.pid) as process:
            # Every refusal (disabled, finalizing, no such thread) comes before anything is staged.
            select_thread(process, args.thread)
            script_dir = prepare_script_dir(args.pid)
            try:
                # Picked up after the wait (periscope killed before it could withdraw): not run.
                staged = stage_script(script_dir, source, label, not_after=time.time() + args.wait + 2.0)
                result = remote_exec(process, staged.launcher_path, native_id=args.thread, wait=args.wait)
                if not result.picked_up:
                    threads: str | None
                    try:
                        threads = describe_threads(process.threads(process.main_interpreter()))
                    except MemoryFault:
                        threads = None  # the list changed under us: the message is useful without it
                    reason, fix = result.explain(threads)
                    return _fail(f"{reason}; {fix}", 2)
                milliseconds = result.elapsed * 1000
                try:
                    started = staged.wait_until_started(START_WAIT, process)
                except ProcessGone:
                    return _fail(
                        f"process {args.pid} exited right after thread {result.native_id} picked up the script, "
                        "before the script started"
                    )
                if not started:
                    return _fail(
                        f"thread {result.native_id} of process {args.pid} picked up the script after "
                        f"{milliseconds:.2f} ms but did not start it within {START_WAIT:g} s: the target refused "
                        "or could not open it (an audit hook, an open-code hook, or its file system; see the "
                        "target's stderr); the copy was removed"
                    )
                print(
                    f"injected into thread {result.native_id} of {args.pid}; picked up after {milliseconds:.2f} ms "
                    "(pickup is not completion: output goes to the target)"
                )
                return 0
            finally:
                script_dir.cleanup()
    except MemoryFault:
        return _fail(f"process {args.pid} changed while being read; try again")
    except OSError as error:
        return _fail(f"process {args.pid}: {error.strerror or error}")
