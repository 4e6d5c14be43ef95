"""``periscope ps``: list the Python processes on this machine and whether periscope can attach.

CPU % is measured over ``--interval`` seconds (two scans that far apart; the second is cheap
because ELF results are cached). With ``--interval 0`` it is each process's average since it
started. Listing never writes to, signals or stops any process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TextIO

from explorer.text import visible

if TYPE_CHECKING:  # the discovery machinery loads only when the command runs
    from explorer.discovery import ProcessInfo

NAME = "ps"
HELP = "list the Python processes on this machine and whether periscope can attach to each"
DEFAULT_INTERVAL = 0.3
NO_PROCESSES = "no Python processes found"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    parser.add_argument(
        "--tree", action="store_true", help="draw each process under its parent (a master and its workers) in COMMAND"
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"measure CPU %% over this many seconds (default {DEFAULT_INTERVAL}; 0: average since each process started)",
    )


def _seconds(text: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


IDLE_CPU = 0.5
"""CPU % below which a single-threaded process that never ran Python while ps looked counts as blocked."""

BLOCKED_SAMPLES = 6
"""How many times ``ps`` looks at a single-threaded process's thread before calling it blocked in C."""


def run(args: argparse.Namespace) -> int:
    from explorer.discovery import ProcessScanner

    scanner = ProcessScanner()
    processes = scanner.scan()
    samples = max(1, BLOCKED_SAMPLES if args.interval > 0 else 1)
    ran_python: set[int] = set()
    for sample in range(samples):
        ran_python |= _running_python(processes)
        if sample + 1 < samples:
            time.sleep(args.interval / samples)
    if args.interval > 0 and processes:
        processes = scanner.scan()
    # A thread that never ran Python while ps looked and used no CPU is waiting in C.
    blocked = {
        process.pid
        for process in processes
        if _single_thread(process) and process.pid not in ran_python and process.cpu_percent < IDLE_CPU
    }
    processes = in_tree_order(processes)
    if args.json:
        documents = []
        for process in processes:
            document = process.to_json()
            document["blocked_in_c"] = process.pid in blocked if _single_thread(process) else None
            documents.append(document)
        json.dump(documents, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table(processes, sys.stdout, width=_output_width(sys.stdout), tree=args.tree, blocked=blocked)
    return 0


def _single_thread(process: ProcessInfo) -> bool:
    return process.attachable and process.num_threads == 1


def _running_python(processes: Sequence[ProcessInfo]) -> set[int]:
    """The single-threaded attachable processes whose thread is attached to the interpreter now
    (running Python), read from outside; a process periscope cannot read counts as running."""
    from explorer.errors import PeriscopeError
    from explorer.remote import RemoteProcess

    running = set()
    for process in processes:
        if not _single_thread(process):
            continue
        try:
            remote = RemoteProcess.open(process.pid)
        except (PeriscopeError, OSError):
            running.add(process.pid)
            continue
        try:
            if any(thread.attached or thread.holds_gil for thread in remote.threads()):
                running.add(process.pid)
        except (PeriscopeError, OSError):
            running.add(process.pid)
        finally:
            remote.close()
    return running


def in_tree_order(processes: Sequence[ProcessInfo]) -> list[ProcessInfo]:
    """Each process right after its parent (when the parent is listed), siblings by pid."""
    by_pid = {process.pid: process for process in processes}
    children: dict[int, list[ProcessInfo]] = {}
    roots = []
    for process in sorted(processes, key=lambda p: p.pid):
        if process.ppid in by_pid and process.ppid != process.pid:
            children.setdefault(process.ppid, []).append(process)
        else:
            roots.append(process)
    ordered: list[ProcessInfo] = []
    seen: set[int] = set()

    def visit(process: ProcessInfo) -> None:
        if process.pid in seen:
            return
        seen.add(process.pid)
        ordered.append(process)
        for child in children.get(process.pid, ()):
            visit(child)

    for root in roots:
        visit(root)
    for process in processes:  # a parent cycle (pid reuse): still listed once
        visit(process)
    return ordered


def _depths(processes: Sequence[ProcessInfo]) -> dict[int, int]:
    by_pid = {process.pid: process for process in processes}
    depths = {}
    for process in processes:
        depth, parent, seen = 0, process.ppid, {process.pid}
        while parent in by_pid and parent not in seen:
            depth += 1
            seen.add(parent)
            parent = by_pid[parent].ppid
        depths[process.pid] = depth
    return depths


def _output_width(stream: TextIO) -> int | None:
    """The terminal's width when writing to a terminal (or COLUMNS is set); None means no limit."""
    if "COLUMNS" in os.environ or stream.isatty():
        return shutil.get_terminal_size().columns
    return None


def format_size(size: int) -> str:
    """A byte count the way people read it: 812K, 23.4M, 1.2G."""
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            if unit in ("B", "K"):
                return f"{value:.0f}{unit}"
            return f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _truncate(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


MIN_COMMAND_WIDTH = 30
MIN_ATTACH_WIDTH = 16


def _table_command(process: ProcessInfo, width: int | None) -> str:
    """The COMMAND cell: the whole command line, or, when lines are limited, the same with only
    the interpreter's file name."""
    if width is None or not process.cmdline:
        return visible(process.command)
    return visible(" ".join([os.path.basename(process.cmdline[0]), *process.cmdline[1:]]))


BLOCKED_VERDICT = "yes, blocked in C"
"""The ATTACH cell of a process whose only thread did not run Python while ``ps`` looked."""


def write_table(
    processes: Sequence[ProcessInfo],
    out: TextIO,
    width: int | None = None,
    hosts: Sequence[str] | None = None,
    *,
    tree: bool = False,
    blocked: Collection[int] = (),
) -> None:
    """An aligned table, one row per process, then one line per process periscope cannot attach to.

    ``width`` limits each table line: ATTACH gives way first (the full reasons follow the table),
    then COMMAND. None means no limit. ``tree`` draws each process under its parent in COMMAND
    (list them in ``in_tree_order``); ``blocked`` are pids whose only thread is blocked in C.
    ``hosts`` (one name per process) adds a HOST column first (the fleet view).
    """
    if not processes:
        out.write(NO_PROCESSES + "\n")
        return
    headers = ("PID", "PPID", "USER", "PYTHON", "CPU%", "RSS", "ATTACH", "COMMAND")
    depths = _depths(processes) if tree else {}

    def verdict(process: ProcessInfo) -> str:
        if not process.attachable:
            return visible(f"no: {process.reason}")
        return BLOCKED_VERDICT if process.pid in blocked else "yes"

    rows = [
        (
            str(process.pid),
            str(process.ppid),
            visible(process.user),
            visible(process.python or "?"),
            f"{process.cpu_percent:.1f}",
            format_size(process.rss),
            verdict(process),
            ("  " * (depths[process.pid] - 1) + "└─ " if depths.get(process.pid) else "") + _table_command(process, width),
        )
        for process in processes
    ]
    if hosts is not None:
        write_host_table(processes, hosts, rows, out)
        return
    widths = [max(len(header), *(len(row[column]) for row in rows)) for column, header in enumerate(headers)]
    if width is not None:
        before_attach = sum(widths[:6]) + 2 * 7
        room = max(width - before_attach - MIN_COMMAND_WIDTH, MIN_ATTACH_WIDTH)
        if widths[6] > room:
            widths[6] = room
            rows = [(*row[:6], _truncate(row[6], room), row[7]) for row in rows]
    right_aligned = {0, 1, 4, 5}

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[column]) if column in right_aligned else cell.ljust(widths[column])
            for column, cell in enumerate(cells[:-1])
        ]
        text = "  ".join(parts) + "  "
        command = cells[-1]
        if width is not None:
            command = _truncate(command, max(width - len(text), 10))
        return text + command

    out.write(line(headers) + "\n")
    for row in rows:
        out.write(line(row) + "\n")
    refused = [process for process in processes if not process.attachable]
    if refused:
        out.write("\n")
        for process in refused:
            text = f"{process.pid}: {process.reason}"
            if process.fix:
                text += f"; fix: {process.fix}"
            out.write(visible(text) + "\n")
    if any(process.pid in blocked for process in processes):
        out.write(
            f"\n{BLOCKED_VERDICT}: the only thread did not run Python while ps looked (input(), a sleep, a lock): "
            "attaching waits until it does; 'periscope stack PID' shows where it waits, without attaching\n"
        )


def write_host_table(processes: Sequence[ProcessInfo], hosts: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """The fleet table: the rows of ``write_table`` after a HOST column, then the blocked processes by host."""
    headers = ("HOST", "PID", "PPID", "USER", "PYTHON", "CPU%", "RSS", "ATTACH", "COMMAND")
    cells = [(visible(host), *row) for host, row in zip(hosts, rows)]
    widths = [max(len(header), *(len(row[column]) for row in cells)) for column, header in enumerate(headers)]
    right_aligned = {1, 2, 5, 6}

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        return "  ".join(parts) + "  " + row[-1]

    out.write(line(headers) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    blocked = [(host, process) for host, process in zip(hosts, processes) if not process.attachable]
    if blocked:
        out.write("\n")
        for host, process in blocked:
            text = f"{host} {process.pid}: {process.reason}"
            if process.fix:
                text += f"; fix: {process.fix}"
            out.write(visible(text) + "\n")
