"""The status bar of a process screen: attach state, and while live the frame rate, latency and data rate."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from explorer.text import visible
from widgets._format import MASK, human_bytes


class StatusBar(Static):
    """One line: the attach state, then live-stream figures (frames/s, latency, bytes/s)."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-bar--live",
        "status-bar--paused",
        "status-bar--down",
    }

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        background: $panel;
        color: $text-muted;
        padding: 0 1;
    }
    StatusBar > .status-bar--live {
        color: $success;
        text-style: bold;
    }
    StatusBar > .status-bar--paused {
        color: $warning;
        text-style: bold;
    }
    StatusBar > .status-bar--down {
        color: $error;
        text-style: bold;
    }
    """

    state: reactive[str] = reactive("attached")
    """"attached", "paused", "detaching" or "detached"."""

    pid: reactive[int] = reactive(0)
    """The process shown."""

    frame_rate: reactive[float] = reactive(0.0)
    """Frames received per second (recent average)."""

    latency_ms: reactive[float | None] = reactive(None)
    """From a frame's capture in the target to its display, in milliseconds."""

    bytes_per_second: reactive[float | None] = reactive(None)
    """Stream data rate; None when unknown."""

    watched: reactive[str] = reactive("__main__")
    """The watched module."""

    mask_noise: reactive[bool] = reactive(False)
    """Show placeholders for pid and figures (reproducible screenshots)."""

    def render(self) -> Text:
        style_name = {
            "attached": "status-bar--live",
            "paused": "status-bar--paused",
        }.get(self.state, "status-bar--down")
        text = Text()
        text.append(f"● {self.state}", style=self.get_component_rich_style(style_name, partial=True))
        pid = MASK if self.mask_noise else str(self.pid)
        text.append(f"  pid {pid}")
        text.append(f"  watching {visible(self.watched)}")
        if self.state != "attached":
            # Paused (or going): the panes show one moment, so a frame rate would describe nothing on screen.
            if self.state == "paused":
                text.append("  panes frozen: p resumes")
            return text
        if self.mask_noise:
            text.append(f"  {MASK} frames/s  latency {MASK}  data {MASK}")
        else:
            latency = "–" if self.latency_ms is None else f"{self.latency_ms:.0f} ms"
            rate = "–" if self.bytes_per_second is None else f"{human_bytes(self.bytes_per_second)}/s"
            text.append(f"  {self.frame_rate:.1f} frames/s  latency {latency}  data {rate}")
        return text
