"""The process list: a live table of Python processes, diffed by pid, sortable and filterable."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from explorer.text import visible
from widgets._format import MASK, display_command, human_bytes, short_bytes
from widgets._keyed_table import Column, KeyedTable, fit

if TYPE_CHECKING:  # widgets take the model as data; they do not load discovery
    from explorer.discovery import ProcessInfo

SortKey = Literal["cpu", "memory", "pid"]

HOST_COLUMN: Column = ("host", "HOST", 14)
"""The fleet view's column: which host, container or pod a row's process runs on."""

_COLUMNS: tuple[Column, ...] = (
    ("attach", "", 1),
    ("pid", "PID", 7),
    ("ppid", "PPID", 7),
    ("user", "USER", 8),
    ("python", "PYTHON", 8),
    ("cpu", "CPU%", 6),
    ("memory", "MEMORY", 10),
    ("threads", "THR", 4),
    ("command", "COMMAND", None),
)


class ProcessTable(KeyedTable["ProcessInfo"]):
    """Python processes, one row per pid; rows are updated in place, never cleared and refilled.

    A process whose parent is listed too comes right after it (a master and its workers, a
    reloader and its child), its command indented under the parent's; the sort orders each level.
    The sort column's header is marked (``CPU% ▼``).

    Give it the latest scan with ``update_processes()``. The cursor stays on the same pid across
    updates, sorts and filters. Nothing is selected until the user moves the cursor (or a caller
    selects a pid): when the selected pid is filtered out or leaves, the cursor is hidden and
    nothing is selected; it never moves on to another process by itself.

    | Key | Action |
    | :- | :- |
    | enter | Attach to the selected process. |
    | up/down | Move the cursor. |
    """

    COLUMNS = _COLUMNS
    GIVE_WAY = (("threads", 0), ("memory", 7), ("user", 6), ("python", 5))
    """At 80 columns the thread count goes and memory, user and version narrow; the command keeps 20 cells."""
    FLEX_WIDTH = 60
    FLEX_MIN = 20
    FLEX_MARGIN = 2

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "attach", "Attach"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "process-table--attachable",
        "process-table--blocked",
        "process-table--attached",
    }

    DEFAULT_CSS = """
    ProcessTable {
        height: 1fr;
    }
    ProcessTable > .process-table--attachable {
        color: $success;
    }
    ProcessTable > .process-table--blocked {
        color: $text-muted;
    }
    ProcessTable > .process-table--attached {
        color: $accent;
        text-style: bold;
    }
    """

    sort_by: reactive[SortKey] = reactive("cpu")
    """The column rows are ordered by: CPU % (highest first), memory (largest first) or pid."""

    filter_text: reactive[str] = reactive("")
    """Only rows whose pid, user, Python version or command line contain this text are shown."""

    mask_noise: reactive[bool] = reactive(False)
    """Show placeholders for pids, CPU and memory figures (for reproducible screenshots)."""

    class ProcessHighlighted(Message):
        """The cursor moved to another process (or the table became empty)."""

        def __init__(self, table: ProcessTable, process: ProcessInfo | None) -> None:
            self.table = table
            """The table the cursor moved in."""
            self.process = process
            """The process under the cursor; None when no row is shown."""
            super().__init__()

        @property
        def control(self) -> ProcessTable:
            """The table that sent the message."""
            return self.table

    class AttachRequested(Message):
        """The user asked to attach to a process (Enter, or a click on a selected row)."""

        def __init__(self, table: ProcessTable, process: ProcessInfo) -> None:
            self.table = table
            """The table the request came from."""
            self.process = process
            """The process to attach to."""
            super().__init__()

        @property
        def control(self) -> ProcessTable:
            """The table that sent the message."""
            return self.table

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None, show_host: bool = False
    ) -> None:
        columns = (_COLUMNS[0], HOST_COLUMN, *_COLUMNS[1:]) if show_host else None
        super().__init__(name=name, id=id, classes=classes, zebra_stripes=True, columns=columns)
        self.show_host = show_host
        """The fleet view: a HOST column, and rows keyed by host and pid (``process.host``)."""
        self._processes: dict[str, ProcessInfo] = {}  # by row key (``row_key``)
        self._attached: frozenset[str] = frozenset()
        self._selected_pid: str | None = None  # the row key of the selected process
        self._last_reported: str | None = "-"

    # --- data in -------------------------------------------------------------------------------

    @property
    def processes(self) -> dict[int, ProcessInfo]:
        """Every process of the latest scan, shown or filtered out, by pid."""
        return {process.pid: process for process in self._processes.values()}

    @property
    def selected_process(self) -> ProcessInfo | None:
        """The process under the visible cursor; None when no row is highlighted."""
        if self._selected_pid is None or not self.show_cursor or not self._has_row(self._selected_pid):
            return None
        return self._processes.get(self._selected_pid)

    @property
    def shown_pids(self) -> list[int]:
        """The pids of the rows on show, in display order."""
        return [self._processes[key].pid for key in self._shown_keys()]

    def _shown_keys(self) -> list[str]:
        return [str(self.coordinate_to_cell_key((row, 0)).row_key.value) for row in range(self.row_count)]

    @staticmethod
    def row_key(process: ProcessInfo) -> str:
        """A process's row: its pid, or in the fleet view its host and pid (pids repeat across hosts)."""
        host = getattr(process, "host", None)
        return f"{host}\t{process.pid}" if host else str(process.pid)

    def update_processes(self, processes: Iterable[ProcessInfo], attached: Iterable[int | str] = ()) -> None:
        """Show this scan: add new pids, update changed rows, remove pids that are gone.

        ``attached``: pids, or row keys (``row_key``) in the fleet view."""
        self._processes = {self.row_key(process): process for process in processes}
        self._attached = frozenset(str(key) for key in attached)
        self._sync()

    def select_pid(self, pid: int | str | None) -> bool:
        """Move the cursor to ``pid`` (a pid, its first row in the fleet view, or a row key; None:
        select nothing); False when that pid is not shown.

        A pid that is not shown yet stays the selection: its row gets the cursor when it appears.
        """
        key = None if pid is None else str(pid)
        if key is not None and not self._has_row(key) and isinstance(pid, int):
            key = next((k for k in self._shown_keys() if self._processes[k].pid == pid), key)
        self._selected_pid = key
        self._restore_cursor()
        return key is not None and self._has_row(key)

    def move_selection(self, rows: int) -> None:
        """Move the cursor ``rows`` rows down (up when negative); with nothing selected, select the
        first row (going down) or the last (going up)."""
        if not self.row_count:
            return
        if self.selected_process is None:
            index = 0 if rows > 0 else self.row_count - 1
        else:
            index = max(0, min(self.row_count - 1, self.cursor_row + rows))
        self.select_pid(self._shown_keys()[index])

    def watch_sort_by(self) -> None:
        if self.columns:
            self._rebuild_columns(self._columns)  # the headers mark the new sort column
        else:
            self._sync()

    def _header(self, key: str, label: str) -> str:
        if key == self.sort_by:
            return f"{label} {'▲' if key == 'pid' else '▼'}"
        return label

    def watch_filter_text(self) -> None:
        self._sync()

    def watch_mask_noise(self) -> None:
        self._sync(force=True)

    # --- diffing -------------------------------------------------------------------------------

    def _matches(self, process: ProcessInfo) -> bool:
        needle = self.filter_text.strip().lower()
        if not needle:
            return True
        haystack = f"{getattr(process, 'host', '') or ''} {process.pid} {process.user} {process.python or ''} {process.command}".lower()
        return all(word in haystack for word in needle.split())

    def _cells(self, process: ProcessInfo) -> list[Text]:
        attached = self.row_key(process) in self._attached
        if attached:
            marker = Text("●", style=self.get_component_rich_style("process-table--attached", partial=True))
        elif process.attachable:
            marker = Text("✓", style=self.get_component_rich_style("process-table--attachable", partial=True))
        else:
            marker = Text("✗", style=self.get_component_rich_style("process-table--blocked", partial=True))
        muted = None if process.attachable or attached else self.get_component_rich_style("process-table--blocked", partial=True)
        cpu = MASK if self.mask_noise else f"{process.cpu_percent:5.1f}"
        memory = MASK if self.mask_noise else human_bytes(process.rss)
        if len(memory) > self.column_width("memory"):
            memory = short_bytes(process.rss)  # "125.9M": a narrow column keeps the whole figure
        host = [Text(visible(str(getattr(process, "host", "") or ""))[:14], no_wrap=True)] if self.show_host else []
        return [
            marker,
            *host,
            Text(MASK if self.mask_noise else str(process.pid), justify="right"),
            Text(MASK if self.mask_noise else str(process.ppid), justify="right"),
            Text(visible(process.user[: self.column_width("user") or 8])),
            Text(visible(process.python or "?")),
            Text(cpu, justify="right"),
            Text(memory, justify="right"),
            Text(str(process.num_threads), justify="right"),
            Text(fit(self._indent(self.row_key(process)) + display_command(process.cmdline, process.name), self._flex_width), style=muted or "", no_wrap=True),
        ]

    def _own_sort_value(self, key: str) -> tuple[float, int, str]:
        process = self._processes[key]
        pid, host = process.pid, str(getattr(process, "host", "") or "")
        if self.sort_by == "cpu":
            return (-process.cpu_percent, pid, host)
        if self.sort_by == "memory":
            return (-float(process.rss), pid, host)
        return (0.0, pid, host)

    def _parent_key(self, key: str) -> str:
        """The row key the parent of ``key``'s process would have (on the same host)."""
        process = self._processes[key]
        host = getattr(process, "host", None)
        return f"{host}\t{process.ppid}" if host else str(process.ppid)

    def _ancestors(self, key: str) -> list[str]:
        """The row keys of a process's listed ancestors, outermost first (a parent that is not a
        Python process ends the chain)."""
        chain: list[str] = []
        seen = {key}
        parent = self._parent_key(key)
        while parent in self._processes and parent not in seen and self._matches(self._processes[parent]):
            chain.append(parent)
            seen.add(parent)
            parent = self._parent_key(parent)
        return chain[::-1]

    def _indent(self, key: str) -> str:
        depth = len(self._ancestors(key)) if key in self._processes else 0
        return "  " * (depth - 1) + "└ " if depth else ""

    def _sort_value(self, key: str) -> tuple[tuple[float, int, str], ...]:
        """Each process after its parent: the sort keys of its ancestors, then its own."""
        return tuple(self._own_sort_value(ancestor) for ancestor in self._ancestors(key)) + (self._own_sort_value(key),)

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        wanted = {key: process for key, process in sorted(self._processes.items()) if self._matches(process)}
        self._diff_rows(wanted, force)
        if self.row_count:
            self._sort_rows(wanted, self._sort_value)
        self._restore_cursor()

    def _restore_cursor(self) -> None:
        """Keep the cursor on the selected pid; hide it (select nothing) when that pid is not shown.

        A selected pid that left the machine is forgotten; one the filter hides is kept, and gets
        the cursor back when the filter shows it again.
        """
        key = self._selected_pid
        if key is not None and key not in self._processes and self._processes:
            self._selected_pid = key = None
        if key is None or not self._has_row(key):
            self.show_cursor = False
            self._report(None)
            return
        self._cursor_to(self.get_row_index(key))
        self.show_cursor = True
        self._report(key)

    def _report(self, key: str | None) -> None:
        if key != self._last_reported or (key is not None and self._processes.get(key) is not None):
            self._last_reported = key
            self.post_message(self.ProcessHighlighted(self, self._processes.get(key) if key is not None else None))

    # --- user intent ---------------------------------------------------------------------------

    def _row_highlighted(self, key: str) -> None:
        if not self.show_cursor:
            return  # rows moved under a hidden cursor: the user chose nothing
        if key != self._selected_pid:
            self._selected_pid = key
            self._report(key)

    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_attach()

    def on_click(self, event: Click) -> None:
        """A click on a row selects it, also while nothing is selected (the cursor is hidden)."""
        row = event.style.meta.get("row") if event.style.meta else None
        if not self.show_cursor and isinstance(row, int) and 0 <= row < self.row_count:
            self.select_pid(self._shown_keys()[row])

    def action_cursor_down(self) -> None:
        """Move the cursor down (with nothing selected: to the first row)."""
        self.move_selection(1)

    def action_cursor_up(self) -> None:
        """Move the cursor up (with nothing selected: to the last row)."""
        self.move_selection(-1)

    def action_page_down(self) -> None:
        """Move the cursor a page down."""
        self.move_selection(max(1, self.size.height - 2))

    def action_page_up(self) -> None:
        """Move the cursor a page up."""
        self.move_selection(-max(1, self.size.height - 2))

    def action_attach(self) -> None:
        """Ask to attach to the process under the cursor."""
        process = self.selected_process
        if process is not None:
            self.post_message(self.AttachRequested(self, process))

    @staticmethod
    def pids_of(processes: Sequence[ProcessInfo]) -> list[int]:
        """The pids of ``processes``, in order (a convenience for callers and tests)."""
        return [process.pid for process in processes]
