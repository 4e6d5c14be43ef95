"""``periscope record PID -o FILE``: sample a process's stacks from outside and write a profile file.

Nothing runs in the target and it is never stopped (see :mod:`explorer.sampler`). A progress line
shows on a terminal while it records; Ctrl+C ends the recording and writes what was gathered, and
so does a target that exits first (which is said in the last line).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from explorer.sampler import SamplerStats

NAME = "record"
HELP = "sample a CPython 3.14 or 3.15 process's stacks from outside (it is never stopped) and write a profile: speedscope, collapsed or JSON"

PROGRESS_INTERVAL = 0.25
"""Seconds between two updates of the progress line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explorer.profile import MODES
    from explorer.profile_files import FORMATS
    from explorer.sampler import DEFAULT_RATE

    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="speedscope (open in speedscope.app; the default), collapsed (flamegraph.pl, inferno; "
        "the default for .txt, .folded, .collapsed) or json (periscope's own)",
    )
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: at Ctrl+C)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="HZ", help=f"samples per second (default {DEFAULT_RATE:.0f})")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="cpu",
        help="cpu: threads on a CPU when sampled (default); wall: every thread; gil: the thread holding the GIL",
    )


def _check(args: argparse.Namespace) -> str | None:
    """The usage error in the arguments, if any (one line with the fix)."""
    from explorer.sampler import MAX_RATE

    if not (math.isfinite(args.rate) and 1 <= args.rate <= MAX_RATE):
        return f"--rate must be between 1 and {MAX_RATE:.0f} samples per second"
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        return "--duration must be a number of seconds above 0 (leave it out to record until Ctrl+C)"
    directory = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output):
        return f"-o {args.output} is a directory: give a file name"
    if not os.path.isdir(directory):
        return f"cannot write {args.output}: the directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot write {args.output}: no permission to write in {directory}; choose another -o"
    return None


def run(args: argparse.Namespace) -> int:
    from explorer.errors import ProcessGone
    from explorer.profile import Profile
    from explorer.profile_files import Recording, format_for, write_profile
    from explorer.remote import RemoteProcess
    from explorer.sampler import Sampler
    from explorer.text import visible

    problem = _check(args)
    if problem is not None:
        print(f"periscope: {problem}", file=sys.stderr)
        return 2
    fmt = args.format or format_for(args.output)
    process = RemoteProcess.open(args.pid)
    command = _cmdline(args.pid)
    sampler = Sampler(args.pid, rate=args.rate, mode=args.mode, profile=Profile(keep_timeline=True), process=process)
    shown_pid = args.pid
    print(
        f"periscope: recording process {shown_pid} ({args.mode}, {args.rate:g} Hz) into {visible(args.output)}; "
        + ("Ctrl+C to stop" if args.duration is None else f"for {args.duration:g} s, Ctrl+C to stop early"),
        file=sys.stderr,
        flush=True,
    )
    tty = sys.stderr.isatty()
    interrupted = False
    sampler.start()
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        try:
            while not sampler.done.is_set():
                wait = PROGRESS_INTERVAL if deadline is None else min(PROGRESS_INTERVAL, deadline - time.monotonic())
                if wait <= 0:
                    break
                sampler.done.wait(wait)
                if tty:
                    sys.stderr.write("\r\x1b[K" + _progress(sampler.stats()))
                    sys.stderr.flush()
        except KeyboardInterrupt:
            interrupted = True
    finally:
        sampler.stop()
        process.close()
        if tty:
            sys.stderr.write("\r\x1b[K")
    stats = sampler.stats()
    exited = isinstance(sampler.error, ProcessGone)
    recording = Recording(
        pid=args.pid,
        python=process.version,
        mode=args.mode,
        rate=args.rate,
        achieved_rate=stats.achieved_rate,
        duration=stats.elapsed,
        ticks=stats.ticks,
        missed=stats.missed,
        retries=stats.retries,
        torn=stats.torn,
        command=visible(command),
        exited=exited,
    )
    written = write_profile(sampler.profile, recording, args.output, fmt)
    figures = (
        f"{written} samples in {stats.elapsed:.1f} s at {stats.achieved_rate:.1f} Hz "
        f"({stats.missed} ticks missed, {stats.retries} torn reads retried)"
    )
    if exited:
        print(f"periscope: process {shown_pid} exited after {stats.elapsed:.1f} s: wrote the {figures} gathered until then to {visible(args.output)} ({fmt})", file=sys.stderr)
    else:
        ended = "stopped by Ctrl+C: " if interrupted else ""
        print(f"periscope: {ended}wrote {figures} to {visible(args.output)} ({fmt})", file=sys.stderr)
    if written == 0:
        hint = {"cpu": "no thread was on a CPU: try --mode wall", "gil": "no thread held the GIL: try --mode wall"}.get(args.mode)
        if hint:
            print(f"periscope: the profile is empty ({hint})", file=sys.stderr)
    if sampler.error is not None and not exited:
        raise sampler.error
    return 0


def _progress(stats: SamplerStats) -> str:
    """The progress line: time, samples, the rate achieved, missed ticks and torn reads."""
    return (
        f"recording: {stats.elapsed:6.1f} s, {stats.samples} samples, {stats.achieved_rate:6.1f} Hz, "
        f"{stats.missed} missed, {stats.retries} torn reads retried"
    )


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0"))
