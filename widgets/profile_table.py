"""The Profile view's table: one row per function, with its self and total share of the samples."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from explorer.text import visible
from widgets._keyed_table import Column, KeyedTable, fit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from explorer.profile import FunctionKey, FunctionRow

SORTS = ("self", "total", "samples", "name")
"""The orders the table can show its rows in (``s`` goes to the next)."""

_COLUMNS: tuple[Column, ...] = (
    ("self", "SELF %", 7),
    ("total", "TOTAL %", 8),
    ("samples", "SAMPLES", 8),
    ("function", "FUNCTION", 44),
    ("where", "FILE:LINE (hottest line)", None),
)

_ORDER = {
    "self": lambda row: (-row.self_samples, -row.total_samples, row.function),
    "total": lambda row: (-row.total_samples, -row.self_samples, row.function),
    "samples": lambda row: (-(row.self_samples + row.total_samples), row.function),
    "name": lambda row: (row.function.lower(), row.filename),
}


def _row_key(key: FunctionKey) -> str:
    return f"{key[1]}\0{key[0]}"


class ProfileTable(KeyedTable["FunctionRow"]):
    """Functions of a profile, hottest first; the cursor selects the function the detail pane shows.

    Rows are keyed by (file, function) and diffed, so the cursor stays on its function while
    the figures change under it. ``FunctionSelected`` is posted only when the user moves the
    cursor (or presses Enter), never for the moves an update makes.

    | Key | Action |
    | :- | :- |
    | up/down | Select another function. |
    | s | Sort by the next column (self %, total %, samples, name). |
    """

    COLUMNS = _COLUMNS
    COMPARE_STYLE = False
    FLEX_MIN = 12

    BINDINGS: ClassVar[list[BindingType]] = [Binding("s", "next_sort", "Sort")]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "profile-table--hot",
        "profile-table--figure",
        "profile-table--function",
        "profile-table--location",
    }

    DEFAULT_CSS = """
    ProfileTable {
        height: 1fr;
        overflow-x: hidden;
    }
    ProfileTable > .profile-table--hot {
        color: $error;
        text-style: bold;
    }
    ProfileTable > .profile-table--figure {
        color: $text;
    }
    ProfileTable > .profile-table--function {
        color: $accent;
    }
    ProfileTable > .profile-table--location {
        color: $text-muted;
    }
    """

    sort_by: reactive[str] = reactive("self")
    """The column the rows are ordered by (one of SORTS)."""

    class FunctionSelected(Message):
        """The user moved the cursor to a function (or pressed Enter on it)."""

        def __init__(self, table: ProfileTable, key: FunctionKey) -> None:
            self.table = table
            """The table the cursor moved in."""
            self.key = key
            """(qualified name, file name) of the function."""
            super().__init__()

        @property
        def control(self) -> ProfileTable:
            """The table that sent the message."""
            return self.table

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes, show_header=True)
        self._rows: dict[str, FunctionRow] = {}
        self.selected: FunctionKey | None = None
        """The function under the cursor."""

    @property
    def rows_in_order(self) -> list[FunctionRow]:
        """The rows as shown, top first."""
        return sorted(self._rows.values(), key=_ORDER[self.sort_by])

    def update_rows(self, rows: Sequence[FunctionRow]) -> None:
        """Show these functions; the cursor stays on its function when that is still there."""
        self._rows = {_row_key(row.key): row for row in rows}
        self._sync()

    def watch_sort_by(self) -> None:
        if self.is_mounted:
            self._sync(force=True)

    def action_next_sort(self) -> None:
        """Order the rows by the next column."""
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]

    def _unchanged(self, previous: FunctionRow, row: FunctionRow) -> bool:
        return previous == row

    def _moves(self, previous: FunctionRow | None, row: FunctionRow) -> bool:
        return True

    def _cells(self, row: FunctionRow) -> list[Text]:
        style = self.get_component_rich_style
        figure = style("profile-table--hot" if row.self_percent >= 10 else "profile-table--figure", partial=True)
        location = f"{os.path.basename(row.filename) or row.filename}:{row.line}" if row.line else row.filename
        return [
            Text(f"{row.self_percent:6.1f}", style=figure, justify="right"),
            Text(f"{row.total_percent:6.1f}", style=style("profile-table--figure", partial=True), justify="right"),
            Text(f"{row.self_samples}", style=style("profile-table--figure", partial=True), justify="right"),
            Text(fit(visible(row.function), 44), style=style("profile-table--function", partial=True), no_wrap=True),
            Text(fit(visible(location), self._flex_width), style=style("profile-table--location", partial=True), no_wrap=True),
        ]

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        order = self.rows_in_order
        wanted = {_row_key(row.key): row for row in order}
        self._diff_rows(wanted, force)
        if not self.row_count:
            self.selected = None
            return
        position = {key: index for index, key in enumerate(wanted)}
        self._sort_rows(wanted, position.__getitem__)
        selected = _row_key(self.selected) if self.selected is not None else None
        if selected is not None and selected in position:
            self._cursor_to(position[selected])
        else:
            self.selected = order[0].key  # set first: the cursor move is no choice of the user's
            self._cursor_to(0)

    def _row_highlighted(self, key: str) -> None:
        row = self._rows.get(key)
        if row is not None and row.key != self.selected:
            self.selected = row.key
            self.post_message(self.FunctionSelected(self, row.key))

    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if not self._is_current(event) or event.row_key is None or event.row_key.value is None:
            return
        row = self._rows.get(event.row_key.value)
        if row is not None:
            self.selected = row.key
            self.post_message(self.FunctionSelected(self, row.key))
