"""The header line of a process screen: CPU (with a sparkline), RSS, threads, the GIL holder and uptime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from explorer.text import visible
from widgets._format import MASK, human_bytes

BARS = "▁▂▃▄▅▆▇█"
"""Sparkline levels, lowest first."""


@dataclass(frozen=True)
class ProcessFigures:
    """What the header shows about a process at one moment."""

    cpu_percent: float
    """CPU use over the last interval (100 = one core)."""
    rss: int
    """Resident memory in bytes."""
    threads: int
    """Threads of the process (the agent's included)."""
    gil_holder: str | None
    """Name of the thread that holds the GIL; None when none does (or it is unknown)."""
    uptime: float
    """Seconds since the process started."""


def sparkline(values: Sequence[float], width: int, top: float = 100.0) -> str:
    """The last ``width`` values as block characters, ``top`` (or the largest value) as the full bar."""
    shown = list(values)[-width:]
    if not shown:
        return ""
    ceiling = max(top, max(shown)) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int(value / ceiling * (len(BARS) - 1) + 0.5))] for value in shown)


def human_uptime(seconds: float) -> str:
    """``4s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


class ProcessHeader(Static):
    """One line about the attached process: ``CPU 12.0% ▁▂▅ · RSS 21.4 MiB · 3 threads · GIL MainThread · up 3m12s``.

    Set ``figures`` (a ``ProcessFigures``) once a second; the sparkline keeps the last CPU figures.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"process-header--label", "process-header--spark"}

    DEFAULT_CSS = """
    ProcessHeader {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    ProcessHeader > .process-header--label {
        color: $text-muted;
    }
    ProcessHeader > .process-header--spark {
        color: $success;
    }
    """

    SPARK_WIDTH: ClassVar[int] = 20
    """CPU figures kept for the sparkline."""

    figures: reactive[ProcessFigures | None] = reactive(None)
    """The latest figures; None until the first read."""

    mask_noise: reactive[bool] = reactive(False)
    """Show placeholders for the figures (reproducible screenshots)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.cpu_history: list[float] = []
        """The last CPU figures, oldest first."""

    def watch_figures(self, figures: ProcessFigures | None) -> None:
        if figures is not None:
            self.cpu_history = (self.cpu_history + [figures.cpu_percent])[-self.SPARK_WIDTH :]

    def render(self) -> Text:
        label = self.get_component_rich_style("process-header--label", partial=True)
        spark = self.get_component_rich_style("process-header--spark", partial=True)
        figures = self.figures
        text = Text(no_wrap=True, overflow="ellipsis")
        if figures is None:
            text.append("reading the process's figures…", style=label)
            return text
        masked = self.mask_noise
        text.append("CPU ", style=label)
        text.append(MASK if masked else f"{figures.cpu_percent:.0f}%")
        text.append(" ")
        text.append(MASK if masked else sparkline(self.cpu_history, self.SPARK_WIDTH), style=spark)
        text.append(" · RSS ", style=label)
        text.append(MASK if masked else human_bytes(figures.rss))
        text.append(" · ", style=label)
        text.append(MASK if masked else str(figures.threads))
        text.append(" threads · GIL ", style=label)
        text.append(MASK if masked else visible(figures.gil_holder) if figures.gil_holder else "free")
        text.append(" · up ", style=label)
        text.append(MASK if masked else human_uptime(figures.uptime))
        return text
