"""The stack of one thread: function, file:line and the source line, innermost frame first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"




@dataclass(frozen=True)
class StackEntry:
    """One frame as the stack view shows it."""

    function: str
    filename: str
    lineno: int
    source: str | None = None
    """The source line, stripped, when periscope could read the file."""


_COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("function", "FUNCTION", 22),
    ("where", "FILE:LINE", 20),
    ("source", "SOURCE", None),
)


class StackView(DataTable[Text]):
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

        def __init__(self, stack_view: StackView, index: int) -> None:
            self.stack_view = stack_view
            """The view the cursor moved in."""
            self.index = index
            """The selected frame's position, 0 = innermost."""
            super().__init__()

        @property
        def control(self) -> StackView:
            """The view that sent the message."""
            return self.stack_view

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", show_header=True)
        self._frames: tuple[StackEntry, ...] = ()
        self._source_width = 40
        self.selected_index: int = 0
        """The selected frame, 0 = innermost."""

    @property
    def frames(self) -> tuple[StackEntry, ...]:
        """The frames on show, innermost first."""
        return self._frames

    def on_mount(self) -> None:
        for key, label, width in _COLUMNS:
            self.add_column(label, key=key, width=width if width is not None else self._source_width)
        self._sync()

    def on_resize(self) -> None:
        width = max(10, self.size.width - 22 - 20 - 2 * len(_COLUMNS) - 1)
        if width != self._source_width:
            # The source column takes the rest of the width, whatever the lines seen so far.
            self._source_width = width
            self.remove_column("source")
            self.add_column("SOURCE", key="source", width=width)
            self._sync(force=True)

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
        function = Text(_fit(frame.function, 22), style=self.get_component_rich_style("stack-view--function", partial=True))
        where = Text(
            _fit(f"{os.path.basename(frame.filename) or frame.filename}:{frame.lineno}", 20),
            style=self.get_component_rich_style("stack-view--location", partial=True),
            no_wrap=True,
        )
        source = Text(_fit(frame.source or "", self._source_width), style=self.get_component_rich_style("stack-view--source", partial=True), no_wrap=True, overflow="ellipsis")
        return [function, where, source]

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        frames = self._frames
        wanted = {self._depth_key(index): frame for index, frame in enumerate(frames)}
        current = {str(key.value) for key in self.rows}
        for key in current - wanted.keys():
            self.remove_row(key)
        keys = [key for key, _, _ in _COLUMNS]
        for key, frame in wanted.items():
            cells = self._cells(frame)
            if key in current:
                for column, before, after in zip(keys, self.get_row(key), cells):
                    if force or before.plain != after.plain:
                        self.update_cell(key, column, after)
            else:
                self.add_row(*cells, key=key)
        if self.row_count:
            by_cell = {id(self.get_row(key)[0]): int(key) for key in wanted}
            self.sort(key=lambda cells: -by_cell[id(cells[0])])
            index = min(self.selected_index, self.row_count - 1)
            self.selected_index = index  # a shorter stack: the clamp is no choice of the user's
            if self.cursor_row != index:
                self.move_cursor(row=index, animate=False)

    def _is_current(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> bool:
        """Whether the highlighted (or selected) row is still the one under the cursor."""
        if not 0 <= self.cursor_row < self.row_count:
            return False
        return self.coordinate_to_cell_key((self.cursor_row, 0)).row_key == event.row_key

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if not self._is_current(event):
            return  # posted before a later diff moved the rows under the cursor
        if event.row_key is None or event.row_key.value is None or RowKey(event.row_key.value) not in self.rows:
            return
        index = len(self._frames) - 1 - int(event.row_key.value)
        if index != self.selected_index and 0 <= index < len(self._frames):
            self.selected_index = index
            self.post_message(self.FrameSelected(self, index))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if not self._is_current(event) or event.row_key is None or event.row_key.value is None:
            return
        index = len(self._frames) - 1 - int(event.row_key.value)
        if 0 <= index < len(self._frames):
            self.selected_index = index
            self.post_message(self.FrameSelected(self, index))
