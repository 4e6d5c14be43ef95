"""Small text formatters shared by periscope's widgets (sizes, durations, paths)."""

from __future__ import annotations

import os

from explorer.text import visible

MASK = "····"
"""What a masked figure shows (see the widgets' ``mask_noise``)."""


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count in the largest binary unit below 1024."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def short_bytes(count: float) -> str:
    """``1536`` -> ``"1.5K"``: ``human_bytes`` in at most 6 cells (``125.9M``), for narrow columns."""
    value = float(count)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or abs(value) >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.0f}T"  # pragma: no cover - the loop always returns


def human_seconds(seconds: float) -> str:
    """``75.3`` -> ``"1m15s"``, ``0.25`` -> ``"0.25s"``: CPU or wall time, short."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def short_path(path: str, width: int = 40) -> str:
    """A file path shortened from the left to ``width`` characters (the file name stays)."""
    if len(path) <= width:
        return path
    name = os.path.basename(path)
    if len(name) + 2 >= width:
        return "…" + name[-(width - 1) :]
    return "…" + path[-(width - 1) :]


def display_command(cmdline: tuple[str, ...] | list[str], name: str = "") -> str:
    """A command line as the lists show it: the program by its name, the arguments as they are."""
    if not cmdline:
        return visible(f"[{name}]") if name else "?"
    return visible(" ".join([os.path.basename(cmdline[0]) or cmdline[0], *cmdline[1:]]))
