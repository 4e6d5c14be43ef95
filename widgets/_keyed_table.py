"""A data table whose rows are diffed by key: the base of the process, thread and stack tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from explorer.text import visible

RowT = TypeVar("RowT")

Column = tuple[str, str, "int | None"]
"""A column: its key, its header label and its width (None for the column that takes the rest)."""


def fit(text: str, width: int) -> str:
    """``text`` (escaped: it comes from the target) cut to ``width`` characters, with ``…`` as the last one when it was cut."""
    text = visible(text)
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


class KeyedTable(DataTable[Text], Generic[RowT]):
    """A row-cursor table of model objects, one row per string key, updated in place.

    Subclasses list their ``COLUMNS`` (exactly one with width None: it takes the width the
    others leave, at least ``FLEX_MIN``) and turn a model object into cells with ``_cells()``.
    Their ``_sync()`` hands the wanted rows to ``_diff_rows()``, which removes the rows whose key
    is gone, rewrites only the cells that changed and adds the new keys; ``_sort_rows()`` and
    ``_cursor_to()`` then put rows and cursor in place. A cursor move the user makes reaches
    ``_row_highlighted()`` with the row's key, unless a later update already moved the rows under
    the cursor; Enter or a click reaches ``_row_selected()``.
    """

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    """The table's columns, left to right."""

    FLEX_WIDTH: ClassVar[int] = 40
    """The flexible column's width until the table knows its own size."""

    FLEX_MIN: ClassVar[int] = 10
    """The flexible column is never narrower than this."""

    FLEX_MARGIN: ClassVar[int] = 1
    """Cells kept free besides the columns and their padding when the flexible column is sized."""

    COMPARE_STYLE: ClassVar[bool] = True
    """Rewrite a cell whose style changed (not only its text)."""

    REBUILD_ROWS: ClassVar[int] = 200
    """Above this many rows a resize rebuilds the rows instead of re-measuring them (see on_resize)."""

    GIVE_WAY: ClassVar[tuple[tuple[str, int], ...]] = ()
    """How columns give way when the table is too narrow for all of them, in order: (key, width)
    narrows that column to ``width``, (key, 0) hides it. A step is taken only while the columns
    still do not fit (the flexible column at ``FLEX_MIN``)."""

    def __init__(
        self,
        *,
        columns: tuple[Column, ...] | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", **options)
        self._bound_render_caches()
        self._all_columns: tuple[Column, ...] = self.COLUMNS if columns is None else columns
        self._columns: tuple[Column, ...] = self._all_columns
        """The columns on show (those that did not give way), with their widths."""
        self._flex_width = self.FLEX_WIDTH
        self._shown: dict[str, RowT] = {}

    RENDER_CACHE_ROWS: ClassVar[int] = 120
    """Rows' worth of rendered lines the table keeps (a screen's rows, twice over)."""

    def _bound_render_caches(self) -> None:
        """Keep the rendered-line caches to about a screen's worth.

        DataTable keys its rendered cells, rows and lines by a counter that every cell update
        moves on, so a table whose cells change at each frame makes new entries for every visible
        cell each time, until its caches hold 10,000 cells and 1,000 rows, rows' renderables and
        lines: about 15 MiB of the TUI's memory after ten minutes on a 100-thread target, all of it
        out of date. The entries for the current counter are the only ones ever hit again.
        """
        from textual.cache import LRUCache

        rows = self.RENDER_CACHE_ROWS
        sizes = {"_cell_render_cache": rows * 12, "_row_render_cache": rows, "_row_renderable_cache": rows, "_line_cache": rows * 2}
        for name, size in sizes.items():
            if isinstance(getattr(self, name, None), LRUCache):  # DataTable's own caches (Textual 8)
                setattr(self, name, LRUCache(size))

    # --- hooks ---------------------------------------------------------------------------------

    def _sync(self, force: bool = False) -> None:
        """Show the current model; ``force`` rewrites every cell (after a resize or a mask)."""
        raise NotImplementedError

    def _cells(self, row: RowT) -> list[Text]:
        """The cells of one row: one per column of ``self._columns`` (those on show), or one per
        column of the table's whole set (the hidden ones are left out)."""
        raise NotImplementedError

    def column_width(self, key: str) -> int:
        """The width of column ``key`` now (0 when it gave way)."""
        for column_key, _, width in self._columns:
            if column_key == key:
                return self._flex_width if width is None else width
        return 0

    def _unchanged(self, previous: RowT, row: RowT) -> bool:
        """Whether ``row`` may keep the cells made for ``previous`` (by default: never)."""
        return False

    def _moves(self, previous: RowT | None, row: RowT) -> bool:
        """Whether changing ``previous`` into ``row`` can change the row's place."""
        return False

    def _row_highlighted(self, key: str) -> None:
        """The user moved the cursor to the row ``key``."""

    def _row_selected(self, event: DataTable.RowSelected) -> None:
        """The user pressed Enter on a row or clicked the selected one."""

    # --- columns -------------------------------------------------------------------------------

    def _header(self, key: str, label: str) -> str:
        """The header of column ``key`` (by default its label; a sortable table marks its sort column)."""
        return label

    def on_mount(self) -> None:
        for key, label, width in self._columns:
            self.add_column(self._header(key, label), key=key, width=width if width is not None else self._flex_width)
        self._sync(force=True)

    def _rebuild_columns(self, columns: tuple[Column, ...]) -> None:
        """Show ``columns`` (in order, with their widths and headers); the rows keep their keys and get their cells again."""
        for key, _, _ in self._columns:
            self.remove_column(key)
        self._columns = columns
        for key, label, width in columns:
            self.add_column(self._header(key, label), key=key, width=width if width is not None else self._flex_width)
        self._sync(force=True)

    def _fitted_columns(self, room: int) -> tuple[Column, ...]:
        """The columns that fit in ``room`` cells, taking the ``GIVE_WAY`` steps as needed."""
        widths = {key: width for key, _, width in self._all_columns}
        shown = [key for key, _, _ in self._all_columns]

        def needed() -> int:
            return sum(self.FLEX_MIN if widths[key] is None else widths[key] or 0 for key in shown) + 2 * len(shown) + self.FLEX_MARGIN

        for key, width in self.GIVE_WAY:
            if needed() <= room:
                break
            if key not in shown:
                continue
            if width == 0:
                shown.remove(key)
            elif widths[key] is not None:
                widths[key] = max(width, (widths[key] or 0) - (needed() - room))
        return tuple((key, label, widths[key]) for key, label, _ in self._all_columns if key in shown)

    def on_resize(self) -> None:
        if self.GIVE_WAY:
            fitted = self._fitted_columns(self.size.width)
            if fitted != self._columns:
                self._rebuild_columns(fitted)
        fixed = sum(width or 0 for _, _, width in self._columns) + 2 * len(self._columns) + self.FLEX_MARGIN
        width = max(self.FLEX_MIN, self.size.width - fixed)
        if not any(column[2] is None for column in self._columns):
            return
        if width != self._flex_width:
            # The flexible column is as wide as the table allows, whatever the rows seen so far.
            self._flex_width = width
            key, label, _ = next(column for column in self._columns if column[2] is None)
            if self.row_count > self.REBUILD_ROWS:
                # DataTable re-measures a whole column for each cell of a column added to a table
                # that has rows (seconds with a thousand threads): add it to an empty table, then
                # the rows again, measured once each. Small tables keep their rows throughout.
                self.clear()
                self._shown.clear()
            self.remove_column(key)
            self.add_column(self._header(key, label), key=key, width=width)
            self._sync(force=True)

    # --- diffing -------------------------------------------------------------------------------

    def _diff_rows(self, wanted: Mapping[str, RowT], force: bool = False) -> bool:
        """Make the rows those of ``wanted`` (added in its order); True when rows may move.

        Rows may move when ``force`` is set, keys came or went, or ``_moves()`` says so.
        """
        current = {str(key.value) for key in self.rows}
        for key in current - wanted.keys():
            self.remove_row(key)
        reorder = force or current != wanted.keys()
        columns = [key for key, _, _ in self._columns]
        every = [key for key, _, _ in self._all_columns]
        for key, row in wanted.items():
            previous = self._shown.get(key)
            if previous is not None and not force and self._unchanged(previous, row):
                continue  # nothing about this row changed: leave it alone
            self._shown[key] = row
            cells = self._cells(row)
            if len(cells) == len(every) != len(columns):
                by_key = dict(zip(every, cells))
                cells = [by_key[column] for column in columns]
            if key in current:
                for column, before, after in zip(columns, self.get_row(key), cells):
                    if force or before.plain != after.plain or (self.COMPARE_STYLE and before.style != after.style):
                        self.update_cell(key, column, after)
                if self._moves(previous, row):
                    reorder = True
            else:
                self.add_row(*cells, key=key)
        for key in list(self._shown):
            if key not in wanted:
                del self._shown[key]
        return reorder

    def _sort_rows(self, keys: Iterable[str], order: Callable[[str], Any]) -> None:
        """Order the rows ``keys`` (all the rows on show) by ``order(key)``; rows already in that
        order are left alone (a sort redraws the whole table)."""
        shown = [str(row.key.value) for row in self.ordered_rows]
        if shown == sorted(shown, key=order):
            return
        by_cell = {id(self.get_row(key)[0]): key for key in keys}
        self.sort(key=lambda cells: order(by_cell[id(cells[0])]))

    def _cursor_to(self, index: int) -> None:
        """Put the cursor on row ``index`` unless it is there already."""
        if self.cursor_row != index:
            self.move_cursor(row=index, animate=False)

    def _has_row(self, key: str) -> bool:
        return RowKey(key) in self.rows

    # --- user intent ---------------------------------------------------------------------------

    def _is_current(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> bool:
        """Whether the highlighted (or selected) row is still the one under the cursor."""
        if not 0 <= self.cursor_row < self.row_count:
            return False
        return self.coordinate_to_cell_key((self.cursor_row, 0)).row_key == event.row_key

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if not self._is_current(event):
            return  # posted before a later diff moved the rows under the cursor
        if event.row_key is None or event.row_key.value is None:
            return
        self._row_highlighted(event.row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self._row_selected(event)
