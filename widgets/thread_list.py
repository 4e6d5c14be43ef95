"""The thread list of a process: one row per thread, diffed by native thread id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.message import Message
from textual.reactive import reactive

from explorer.text import visible
from widgets._format import MASK, human_seconds
from widgets._keyed_table import Column, KeyedTable


@dataclass(frozen=True)
class ThreadRow:
    """What the thread list shows about one thread."""

    native_id: int
    """The kernel's thread id (the row's key)."""
    name: str
    daemon: bool | None
    """Whether it is a daemon thread; None when unknown (read from outside)."""
    holds_gil: bool
    is_main: bool
    cpu_seconds: float | None
    """CPU time the thread used since it started (user + system); None when unknown."""
    where: str = ""
    """The innermost function, for a glance at what the thread does."""
    running_python: bool = True
    """False for a thread that exists in the OS but is not attached to the interpreter."""


_COLUMNS: tuple[Column, ...] = (
    ("state", "", 1),
    ("name", "THREAD", 16),
    ("native", "TID", 8),
    ("daemon", "DAEMON", 6),
    ("cpu", "CPU", 7),
    ("where", "IN", None),
)


class ThreadList(KeyedTable[ThreadRow]):
    """The threads of a process: name, native id, daemon, CPU time, and whether it holds the GIL.

    The first column is the thread's state: ``●`` holds the GIL, ``○`` runs Python but waits for
    the GIL, ``·`` has released it (blocked in C: a sleep, I/O, a lock). Give it rows with
    ``update_threads()``; rows are updated in place by native id and the cursor stays on the same
    thread.

    | Key | Action |
    | :- | :- |
    | up/down | Select another thread. |
    """

    COLUMNS = _COLUMNS
    GIVE_WAY = (("daemon", 0), ("native", 0), ("where", 0), ("name", 10))
    """Narrow panes drop the daemon flag, the thread id and the innermost frame (the stack pane shows it), in that order."""
    FLEX_WIDTH = 16
    FLEX_MIN = 8

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "thread-list--gil",
        "thread-list--waiting",
    }

    DEFAULT_CSS = """
    ThreadList {
        height: auto;
        max-height: 12;
        overflow-x: hidden;
    }
    ThreadList > .thread-list--gil {
        color: $success;
        text-style: bold;
    }
    ThreadList > .thread-list--waiting {
        color: $text-muted;
    }
    """

    mask_noise: reactive[bool] = reactive(False)
    """Show placeholders for native ids, CPU times and GIL states (reproducible screenshots)."""

    class ThreadSelected(Message):
        """The cursor moved to another thread."""

        def __init__(self, thread_list: ThreadList, native_id: int) -> None:
            self.thread_list = thread_list
            """The list the cursor moved in."""
            self.native_id = native_id
            """The selected thread's native id."""
            super().__init__()

        @property
        def control(self) -> ThreadList:
            """The list that sent the message."""
            return self.thread_list

    def __init__(
        self, *, compact: bool = False, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        columns = tuple(column for column in _COLUMNS if not (compact and column[0] in ("daemon", "cpu")))
        super().__init__(columns=columns, name=name, id=id, classes=classes)
        self.compact = compact
        """Leave out the daemon and CPU columns (what a read from outside cannot know)."""
        self._threads: dict[int, ThreadRow] = {}
        self.selected_id: int | None = None
        """The native id of the thread under the cursor."""

    def watch_mask_noise(self) -> None:
        self._sync(force=True)

    @property
    def threads(self) -> dict[int, ThreadRow]:
        """The rows on show, by native id."""
        return dict(self._threads)

    def update_threads(self, threads: Sequence[ThreadRow]) -> None:
        """Show these threads (main thread first, then by name); the cursor keeps its thread."""
        self._threads = {row.native_id: row for row in threads}
        self._sync()

    def select_thread(self, native_id: int) -> bool:
        """Move the cursor to the thread ``native_id``; False when it is not listed."""
        if not self._has_row(str(native_id)):
            return False
        self.selected_id = native_id
        self.move_cursor(row=self.get_row_index(str(native_id)), animate=False)
        return True

    def _cells(self, row: ThreadRow) -> list[Text]:
        if self.mask_noise:  # who holds the GIL at the sampled instant is timing, not state
            state = Text("·", style=self.get_component_rich_style("thread-list--waiting", partial=True))
        elif row.holds_gil:
            state = Text("●", style=self.get_component_rich_style("thread-list--gil", partial=True))
        elif not row.running_python:
            state = Text("·", style=self.get_component_rich_style("thread-list--waiting", partial=True))
        else:
            state = Text("○", style=self.get_component_rich_style("thread-list--waiting", partial=True))
        name = row.name + (" (main)" if row.is_main and "main" not in row.name.lower() else "")
        daemon = "?" if row.daemon is None else ("yes" if row.daemon else "no")
        if self.mask_noise:
            native, cpu = MASK, MASK
        else:
            native = str(row.native_id)
            cpu = "?" if row.cpu_seconds is None else human_seconds(row.cpu_seconds)
        cells = {
            "state": state,
            "name": Text(visible(name), no_wrap=True, overflow="ellipsis"),
            "native": Text(native, justify="right"),
            "daemon": Text(daemon),
            "cpu": Text(cpu, justify="right"),
            "where": Text(visible(row.where), no_wrap=True, overflow="ellipsis"),
        }
        return [cells[key] for key, _, _ in self._columns]

    def _unchanged(self, previous: ThreadRow, row: ThreadRow) -> bool:
        return previous == row

    def _moves(self, previous: ThreadRow | None, row: ThreadRow) -> bool:
        return previous is None or previous.name != row.name

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        wanted = self._threads
        reorder = self._diff_rows({str(native_id): row for native_id, row in wanted.items()}, force)
        order = {
            native_id: (not row.is_main, row.name.lower(), native_id) for native_id, row in wanted.items()
        }
        if self.row_count and reorder:
            self._sort_rows([str(native_id) for native_id in wanted], lambda key: order[int(key)])
            selected = self.selected_id
            if selected is None or selected not in wanted:
                main = [nid for nid, row in wanted.items() if row.is_main]
                selected = main[0] if main else min(wanted, key=lambda nid: order[nid])
                self.selected_id = selected
                self.post_message(self.ThreadSelected(self, selected))
            self._cursor_to(self.get_row_index(str(selected)))

    def _row_highlighted(self, key: str) -> None:
        native_id = int(key)
        if native_id != self.selected_id:
            self.selected_id = native_id
            self.post_message(self.ThreadSelected(self, native_id))
