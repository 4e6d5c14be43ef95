"""The attach verdict of the selected process: can periscope attach, and if not, why and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from explorer.text import visible
from widgets._format import MASK, display_command

if TYPE_CHECKING:  # widgets take the model as data; they do not load discovery
    from explorer.discovery import ProcessInfo


class AttachVerdict(Static):
    """Shows the selected process's command line and whether periscope can attach to it.

    Set ``process`` (a ``ProcessInfo``); ``attached`` marks a process periscope is attached to.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "attach-verdict--ok",
        "attach-verdict--blocked",
        "attach-verdict--label",
    }

    DEFAULT_CSS = """
    AttachVerdict {
        height: auto;
        min-height: 4;
        padding: 0 1;
        border-top: solid $primary-muted;
    }
    AttachVerdict > .attach-verdict--ok {
        color: $success;
        text-style: bold;
    }
    AttachVerdict > .attach-verdict--blocked {
        color: $error;
        text-style: bold;
    }
    AttachVerdict > .attach-verdict--label {
        color: $text-muted;
    }
    """

    process: reactive[ProcessInfo | None] = reactive(None)
    """The process to describe; None shows a hint instead."""

    attached: reactive[bool] = reactive(False)
    """Whether periscope is attached to ``process`` already."""

    mask_noise: reactive[bool] = reactive(False)
    """Hide the pid (for reproducible screenshots)."""

    rows_shown: reactive[int] = reactive(0)
    """How many processes the list shows (with ``process`` None: none matches, or none is picked yet)."""

    def render(self) -> Text:
        process = self.process
        if process is None and self.rows_shown:
            return Text("No process selected: move the cursor (↑/↓ or a click) to one, then press Enter to attach.", style="italic")
        if process is None:
            return Text("No Python process matches. Clear the filter, or start one.", style="italic")
        label = self.get_component_rich_style("attach-verdict--label", partial=True)
        pid = MASK if self.mask_noise else str(process.pid)
        text = Text()
        text.append(f"{pid}  ", style="bold")
        text.append(display_command(process.cmdline, process.name), style="")
        text.append("\n")
        if self.attached:
            text.append("attached", style=self.get_component_rich_style("attach-verdict--ok", partial=True))
            text.append(": press Enter to show it", style=label)
        elif process.attachable:
            text.append("can attach", style=self.get_component_rich_style("attach-verdict--ok", partial=True))
            version = f"CPython {process.python}" if process.python else "CPython"
            text.append(f" ({version}): press Enter", style=label)
        else:
            text.append("cannot attach", style=self.get_component_rich_style("attach-verdict--blocked", partial=True))
            text.append(f": {visible(process.reason or 'unknown reason')}")
            if process.fix:
                text.append("\nfix: ", style=label)
                text.append(visible(process.fix))
        return text
