"""The stack of one thread: function, file:line and the source line, innermost frame first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from widgets._keyed_table import Column, KeyedTable, fit


def fit_location(filename: str, lineno: int, width: int) -> str:
    """``FILE:LINE`` in ``width`` cells: a long file name loses its start (``…ding.py:1012``), never the line number."""
    suffix = f":{lineno}"
    name = fit(filename, 10_000)  # escaped, uncut
    if len(name) + len(suffix) <= width:
        return name + suffix
    keep = max(1, width - len(suffix) - 1)
    return "…" + name[-keep:] + suffix


@dataclass(frozen=True)
class StackEntry:
    """One frame as the stack view shows it."""

    function: str
    filename: str
    lineno: int
    source: str | None = None
    """The source line, stripped, when periscope could read the file."""
    key: int | None = field(default=None, compare=False)
    """The identity of the call shown (the agent's frame id), when known; not shown."""


_COLUMNS: tuple[Column, ...] = (
    ("function", "FUNCTION", 22),
    ("where", "FILE:LINE", 20),
    ("source", "SOURCE", None),
)


class StackView(KeyedTable[StackEntry]):
    """A thread's frames, innermost first; the cursor selects the frame whose variables are shown.

    Rows are keyed by their depth from the outermost frame, so an update rewrites only the rows
    whose frame changed; the selection keeps its position from the innermost frame (clamped to
    the stack's length). ``FrameSelected`` is posted only for the user's choices (cursor keys,
    Enter, a click), never for the cursor moves of an update or of ``select_frame``.

    | Key | Action |
    | :- | :- |
    | up/down | Select another frame. |
    | enter | Select the frame under the cursor. |
    """

    COLUMNS = _COLUMNS
    COMPARE_STYLE = False
    GIVE_WAY = (("source", 0), ("function", 12), ("where", 12))
    """Narrow panes drop the source text first, then narrow the function; FILE:LINE keeps its line number."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "stack-view--function",
        "stack-view--location",
        "stack-view--source",
    }

    DEFAULT_CSS = """
    StackView {
        height: 1fr;
        overflow-x: hidden;
    }
    StackView > .stack-view--function {
        color: $accent;
        text-style: bold;
    }
    StackView > .stack-view--location {
        color: $text-muted;
    }
    StackView > .stack-view--source {
        color: $text;
    }
    """

    empty_text: reactive[str] = reactive("no frames")
    """What to say when the thread has no Python frames."""

    class FrameSelected(Message):
        """The user selected a frame (moved the cursor to it, pressed Enter or clicked it)."""

        def __init__(self, stack_view: StackView, index: int, key: int | None = None, function: str = "") -> None:
            self.stack_view = stack_view
            """The view the cursor moved in."""
            self.index = index
            """The selected frame's position, 0 = innermost."""
            self.key = key
            """The identity of the call in that row when the user selected it (``StackEntry.key``)."""
            self.function = function
            """The function shown in that row then."""
            self.from_bottom = len(stack_view.frames) - 1 - index
            """Its place counted from the outermost frame shown then."""
            super().__init__()

        @property
        def control(self) -> StackView:
            """The view that sent the message."""
            return self.stack_view

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, show_header=True)
        self._frames: tuple[StackEntry, ...] = ()
        self.selected_index: int = 0
        """The selected frame, 0 = innermost."""

    @property
    def frames(self) -> tuple[StackEntry, ...]:
        """The frames on show, innermost first."""
        return self._frames

    def update_frames(self, frames: Sequence[StackEntry]) -> None:
        """Show this stack (innermost first); the selected frame stays on the same depth."""
        self._frames = tuple(frames)
        self._sync()

    def select_frame(self, index: int) -> None:
        """Select frame ``index`` (0 = innermost)."""
        if 0 <= index < len(self._frames):
            self.selected_index = index
            self.move_cursor(row=index, animate=False)

    def _depth_key(self, index: int) -> str:
        return str(len(self._frames) - 1 - index)

    def _cells(self, frame: StackEntry) -> list[Text]:
        function = Text(fit(frame.function, self.column_width("function")), style=self.get_component_rich_style("stack-view--function", partial=True))
        where = Text(
            fit_location(os.path.basename(frame.filename) or frame.filename, frame.lineno, self.column_width("where")),
            style=self.get_component_rich_style("stack-view--location", partial=True),
            no_wrap=True,
        )
        source = Text(fit(frame.source or "", self._flex_width), style=self.get_component_rich_style("stack-view--source", partial=True), no_wrap=True, overflow="ellipsis")
        return [function, where, source]

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        wanted = {self._depth_key(index): frame for index, frame in enumerate(self._frames)}
        self._diff_rows(wanted, force)
        if self.row_count:
            self._sort_rows(wanted, lambda key: -int(key))
            index = min(self.selected_index, self.row_count - 1)
            self.selected_index = index  # a shorter stack: the clamp is no choice of the user's
            self._cursor_to(index)

    def _index_of(self, key: str) -> int:
        return len(self._frames) - 1 - int(key)

    def action_cursor_down(self) -> None:
        """Move to the next (outer) frame: it is the selection at once, so that a stack update
        arriving before the highlight event is handled keeps it."""
        super().action_cursor_down()
        self._take_cursor()

    def action_cursor_up(self) -> None:
        """Move to the previous (inner) frame, selected at once (see ``action_cursor_down``)."""
        super().action_cursor_up()
        self._take_cursor()

    def _take_cursor(self) -> None:
        index = self.cursor_row
        if index != self.selected_index and 0 <= index < len(self._frames):
            self.selected_index = index
            self.post_message(self.FrameSelected(self, index, self._frames[index].key, self._frames[index].function))

    def _row_highlighted(self, key: str) -> None:
        index = self._index_of(key)
        if index != self.selected_index and 0 <= index < len(self._frames):
            self.selected_index = index
            self.post_message(self.FrameSelected(self, index, self._frames[index].key, self._frames[index].function))

    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if not self._is_current(event) or event.row_key is None or event.row_key.value is None:
            return
        index = self._index_of(event.row_key.value)
        if 0 <= index < len(self._frames):
            self.selected_index = index
            self.post_message(self.FrameSelected(self, index, self._frames[index].key, self._frames[index].function))
