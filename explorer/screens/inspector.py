"""The value inspector: one value's whole repr, long strings included, in a scrollable pane."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, TextArea

from explorer.errors import PeriscopeError
from explorer.model import Value
from explorer.text import visible
from widgets.variables import ValueView


class ValueInspector(ModalScreen[None]):
    """The whole repr of one value, asked of the agent (under the watchdog that guards every repr).

    It opens with the preview the pane had, then shows the whole repr once it arrives; the text
    scrolls, and can be selected and copied. Control characters of the target's text are written
    out (``explorer.text.visible``).

    | Key | Action |
    | :- | :- |
    | escape, q, v | Close the inspector. |
    | arrows, page up/down | Scroll. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,v", "close", "Close")]

    DEFAULT_CSS = """
    ValueInspector {
        align: center middle;
    }
    ValueInspector > Vertical {
        width: 90%;
        height: 80%;
        border: thick $accent;
        background: $surface;
        padding: 0 1;
    }
    ValueInspector #inspector-title {
        text-style: bold;
        width: 1fr;
    }
    ValueInspector #inspector-status {
        color: $text-muted;
        width: 1fr;
    }
    ValueInspector TextArea {
        height: 1fr;
    }
    """

    def __init__(self, value: ValueView, load: Callable[[], Awaitable[Value]] | None, *, note: str = "the whole value") -> None:
        super().__init__()
        self.value = value
        """The value as the pane shows it."""
        self._load = load
        self._note = note
        self.whole: str | None = None
        """The whole repr, once it arrived (None before, or when it could not be had)."""

    def compose(self) -> ComposeResult:
        value = self.value
        kind = value.type_name if value.length is None else f"{value.type_name}[{value.length}]"
        with Vertical():
            yield Label(Text(visible(f"{value.name}  ({kind})")), id="inspector-title")
            status = "loading the whole repr…" if self._load is not None else f"{self._note}  (escape closes)"
            yield Label(status, id="inspector-status")
            yield TextArea(visible(value.preview, keep_lines=True), read_only=True, soft_wrap=True, show_line_numbers=False, id="inspector-text")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()
        if self._load is not None:
            self.load_whole()

    @work(name="inspect", exit_on_error=False, group="inspect")
    async def load_whole(self) -> None:
        """Ask for the whole repr and show it."""
        assert self._load is not None
        status = self.query_one("#inspector-status", Label)
        try:
            value = await self._load()
        except PeriscopeError as error:
            status.update(Text(visible(f"showing the preview: the whole repr could not be read ({error})")))
            return
        self.whole = value.repr
        self.query_one(TextArea).load_text(visible(value.repr, keep_lines=True))
        note = f"{len(value.repr):,} characters"
        if value.dropped:
            note += f"; {'more than ' if value.dropped_more else ''}{value.dropped:,} more not shown"
        if value.failed:
            note += "; its __repr__ failed"
        status.update(note + "  (escape closes)")

    def action_close(self) -> None:
        """Close the inspector."""
        self.dismiss(None)
