"""``periscope top PID``: the TUI opened on the Profile view of a process (no agent needed)."""

from __future__ import annotations

import argparse
import math
from typing import Any
import sys

NAME = "top"
HELP = "a live profile of a CPython 3.14 or 3.15 process in the TUI: where its time goes, sampled from outside"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from explorer.profile import MODES
    from explorer.sampler import DEFAULT_RATE

    parser.add_argument("pid", type=int, help="process id of the target")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="HZ", help=f"samples per second (default {DEFAULT_RATE:.0f})")
    parser.add_argument("--mode", choices=MODES, default="cpu", help="what the view counts first: cpu (default), wall or gil")


def run(args: argparse.Namespace) -> int:
    from explorer.commands.app import run_app
    from explorer.remote import RemoteProcess
    from explorer.sampler import MAX_RATE

    if not (math.isfinite(args.rate) and 1 <= args.rate <= MAX_RATE):
        print(f"periscope: --rate must be between 1 and {MAX_RATE:.0f} samples per second", file=sys.stderr)
        return 2
    if args.pid <= 0:
        print(f"periscope: {args.pid} is not a process id", file=sys.stderr)
        return 2
    from explorer import hosts

    host = hosts.current()
    if host is not None:
        return _run_on_host(host, args)
    RemoteProcess.open(args.pid).close()  # refuse now, in one line, what the view could not read
    return run_app(pid=args.pid, demo=False, profile=(args.mode, args.rate))


def _run_on_host(host: Any, args: argparse.Namespace) -> int:
    """``top`` through ``--host`` or ``--exec``: the far side samples, the view runs here."""
    from explorer import hosts
    from explorer.commands.app import host_app_options, run_app
    from explorer.transport import HostError

    if len(hosts.all_hosts()) > 1:
        raise HostError("periscope top works on one host at a time", "give one --host or --exec")
    # Refuse now, in one line, what the view could not read: the far side opens it as the sampler would.
    host.link.request("stack", pid=args.pid)
    return run_app(pid=args.pid, demo=False, profile=(args.mode, args.rate), **host_app_options())
