"""The steps of attaching to a process, with the current one marked."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from explorer.text import visible

STEPS: tuple[tuple[str, str], ...] = (
    ("reading", "Reading the process"),
    ("injecting", "Injecting the agent"),
    ("waiting", "Waiting for the target to run Python"),
    ("starting", "Starting the agent"),
    ("connected", "Connected"),
)
"""The attach steps in order: (key, what the user sees)."""

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class AttachProgress(Static):
    """A checklist of the attach steps: done ones ticked, the current one spinning.

    Set ``step`` to one of the keys of ``STEPS``; ``detail`` adds a line under the list.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "attach-progress--done",
        "attach-progress--current",
        "attach-progress--pending",
    }

    DEFAULT_CSS = """
    AttachProgress {
        height: auto;
        padding: 0 1;
    }
    AttachProgress > .attach-progress--done {
        color: $success;
    }
    AttachProgress > .attach-progress--current {
        color: $warning;
        text-style: bold;
    }
    AttachProgress > .attach-progress--pending {
        color: $text-muted;
    }
    """

    step: reactive[str] = reactive("reading")
    """The step in progress (a key of ``STEPS``)."""

    detail: reactive[str] = reactive("", layout=True)
    """One line about the current step (how long it has waited, which thread was asked)."""

    animate_spinner: reactive[bool] = reactive(True)
    """Whether the current step's marker spins (off for reproducible screenshots)."""

    _frame: reactive[int] = reactive(0)

    def on_mount(self) -> None:
        self.set_interval(0.1, self._tick)

    def _tick(self) -> None:
        if self.animate_spinner and self.step != "connected":
            self._frame = (self._frame + 1) % len(_SPINNER)

    def render(self) -> Text:
        keys = [key for key, _ in STEPS]
        current = keys.index(self.step) if self.step in keys else 0
        text = Text()
        for index, (key, label) in enumerate(STEPS):
            if index < current or (key == "connected" and self.step == "connected"):
                style = self.get_component_rich_style("attach-progress--done", partial=True)
                text.append(f"✓ {label}\n", style=style)
            elif index == current:
                style = self.get_component_rich_style("attach-progress--current", partial=True)
                marker = _SPINNER[self._frame] if self.animate_spinner else "▸"
                text.append(f"{marker} {label}…\n", style=style)
            else:
                style = self.get_component_rich_style("attach-progress--pending", partial=True)
                text.append(f"· {label}\n", style=style)
        if self.detail:
            text.append(visible(self.detail, keep_lines=True), style="italic")
        else:
            text.rstrip()
        return text
