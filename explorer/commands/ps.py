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
from collections.abc import Sequence
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


def run(args: argparse.Namespace) -> int:
    from explorer.discovery import ProcessScanner

    scanner = ProcessScanner()
    processes = scanner.scan()
    if args.interval > 0 and processes:
        time.sleep(args.interval)
        processes = scanner.scan()
    if args.json:
        json.dump([process.to_json() for process in processes], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table(processes, sys.stdout, width=_output_width(sys.stdout))
    return 0


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


def write_table(processes: Sequence[ProcessInfo], out: TextIO, width: int | None = None, hosts: Sequence[str] | None = None) -> None:
    """An aligned table, one row per process, then one line per process periscope cannot attach to.

    ``width`` limits each table line: ATTACH gives way first (the full reasons follow the table),
    then COMMAND. None means no limit. ``hosts`` (one name per process) adds a HOST column first.
    """
    if not processes:
        out.write(NO_PROCESSES + "\n")
        return
    headers = ("PID", "USER", "PYTHON", "CPU%", "RSS", "ATTACH", "COMMAND")
    rows = [
        (
            str(process.pid),
            visible(process.user),
            visible(process.python or "?"),
            f"{process.cpu_percent:.1f}",
            format_size(process.rss),
            "yes" if process.attachable else visible(f"no: {process.reason}"),
            _table_command(process, width),
        )
        for process in processes
    ]
    if hosts is not None:
        write_host_table(processes, hosts, rows, out)
        return
    widths = [max(len(header), *(len(row[column]) for row in rows)) for column, header in enumerate(headers)]
    if width is not None:
        before_attach = sum(widths[:5]) + 2 * 6
        room = max(width - before_attach - MIN_COMMAND_WIDTH, MIN_ATTACH_WIDTH)
        if widths[5] > room:
            widths[5] = room
            rows = [(*row[:5], _truncate(row[5], room), row[6]) for row in rows]
    right_aligned = {0, 3, 4}

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
    blocked = [process for process in processes if not process.attachable]
    if blocked:
        out.write("\n")
        for process in blocked:
            text = f"{process.pid}: {process.reason}"
            if process.fix:
                text += f"; fix: {process.fix}"
            out.write(visible(text) + "\n")


def write_host_table(processes: Sequence[ProcessInfo], hosts: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """The fleet table: the rows of ``write_table`` after a HOST column, then the blocked processes by host."""
    headers = ("HOST", "PID", "USER", "PYTHON", "CPU%", "RSS", "ATTACH", "COMMAND")
    cells = [(visible(host), *row) for host, row in zip(hosts, rows)]
    widths = [max(len(header), *(len(row[column]) for row in cells)) for column, header in enumerate(headers)]
    right_aligned = {1, 4, 5}

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
