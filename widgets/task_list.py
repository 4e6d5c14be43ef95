"""The asyncio tasks of a process: one row per task, in await-tree order, diffed by task id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from widgets._format import MASK
from widgets._keyed_table import Column, KeyedTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from explorer.tasks import TaskSnapshot


@dataclass(frozen=True)
class TaskRow:
    """What the task list shows about one task."""

    task_id: int
    """The task's id (its address in the target): the row's key."""
    name: str
    depth: int
    """How deep in the await tree: 0 for a task nobody awaits, 1 for the tasks it awaits, ..."""
    state: str
    where: str
    """The innermost coroutine frame (``function:line``), or what the task waits on."""
    awaited_by: str = ""
    """Names of the tasks that await this one."""


_COLUMNS: tuple[Column, ...] = (
    ("state", "", 1),
    ("name", "TASK", 24),
    ("status", "STATE", 10),
    ("where", "AWAITING IN", None),
)

_GLYPHS = {"running": "●", "pending": "·", "cancelling": "×", "cancelled": "×", "done": "✓", "failed": "!"}


def rows_from_snapshot(snapshot: TaskSnapshot, text: Callable[[str], str] = str) -> list[TaskRow]:
    """The rows of a snapshot in tree order: each task, then (indented) the tasks it awaits.

    A task is under the task that awaits it; one awaited by several is shown under the first;
    a cycle is cut where it closes. ``text`` makes the target's strings safe to show (the caller's
    ``explorer.text.visible``: widgets do not import periscope's core).
    """
    tasks = {task.id: task for task in snapshot.tasks}
    children: dict[int, list[int]] = {}
    for task in snapshot.tasks:
        parents = [parent for parent in task.awaited_by if parent in tasks and parent != task.id]
        if parents:
            children.setdefault(parents[0], []).append(task.id)
    placed: set[int] = set()
    rows: list[TaskRow] = []

    def add(task_id: int, depth: int) -> None:
        stack = [(task_id, depth)]
        while stack:
            current, level = stack.pop()
            if current in placed:
                continue
            placed.add(current)
            task = tasks[current]
            where = _where(task.coroutine_stack) or task.waiting_on or ""
            awaited_by = ", ".join(tasks[parent].name for parent in task.awaited_by if parent in tasks)
            rows.append(TaskRow(current, text(task.name), level, task.state or "?", text(where), text(awaited_by)))
            stack.extend((child, level + 1) for child in reversed(children.get(current, ())))

    for task in snapshot.tasks:
        if not any(parent in tasks and parent != task.id for parent in task.awaited_by):
            add(task.id, 0)
    for task in snapshot.tasks:  # what is left is in cycles
        add(task.id, 0)
    return rows


def _where(stack: Sequence) -> str:
    """The innermost frame of the program's own code, and the library call it waits in:
    ``handle:8 › sleep`` (asyncio's own frames say little on their own)."""
    if not stack:
        return ""
    own = next((frame for frame in stack if "/asyncio/" not in frame.filename), stack[-1])
    where = f"{own.function}:{own.lineno}"
    if own is not stack[0]:
        where += f" › {stack[0].function}"
    return where


def _indent(depth: int) -> str:
    """``└ `` under the awaiting task, ``│ `` per level above (guides, not leading spaces, which
    an SVG screenshot collapses)."""
    depth = min(depth, 8)
    return "│ " * (depth - 1) + "└ " if depth else ""


class TaskList(KeyedTable[TaskRow]):
    """The tasks of a process: name (indented under the task that awaits it), state, where it waits.

    The first column is the state: ``●`` running now, ``·`` waiting, ``×`` cancelled or being
    cancelled. Give it rows with ``update_tasks()``; rows are updated in place by task id and the
    cursor stays on the same task. ``TaskSelected`` is posted when the user moves the cursor, and
    when the selected task finishes (the cursor then stays on its row, now another task's).

    | Key | Action |
    | :- | :- |
    | up/down | Select another task. |
    | enter | Select the task under the cursor. |
    """

    COLUMNS = _COLUMNS
    FLEX_WIDTH = 24
    FLEX_MIN = 10

    COMPONENT_CLASSES: ClassVar[set[str]] = {"task-list--running", "task-list--waiting"}

    DEFAULT_CSS = """
    TaskList {
        height: auto;
        max-height: 9;
        overflow-x: hidden;
    }
    TaskList > .task-list--running {
        color: $success;
        text-style: bold;
    }
    TaskList > .task-list--waiting {
        color: $text-muted;
    }
    """

    mask_noise: reactive[bool] = reactive(False)
    """Show placeholders for what changes from moment to moment (reproducible screenshots)."""

    class TaskSelected(Message):
        """The user moved the cursor to a task, or pressed Enter on one."""

        def __init__(self, task_list: TaskList, task_id: int) -> None:
            self.task_list = task_list
            """The list the cursor moved in."""
            self.task_id = task_id
            """The selected task's id."""
            super().__init__()

        @property
        def control(self) -> TaskList:
            """The list that sent the message."""
            return self.task_list

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._tasks: list[TaskRow] = []
        self._order: list[str] = []
        self.selected_id: int | None = None
        """The id of the task under the cursor."""

    def watch_mask_noise(self) -> None:
        self._sync(force=True)

    @property
    def tasks(self) -> list[TaskRow]:
        """The rows on show, in order."""
        return list(self._tasks)

    def update_tasks(self, rows: Sequence[TaskRow]) -> None:
        """Show these tasks in this order; the cursor keeps its task."""
        self._tasks = list(rows)
        self._sync()

    def _cells(self, row: TaskRow) -> list[Text]:
        glyph = _GLYPHS.get(row.state, "?")
        style = "task-list--running" if row.state == "running" else "task-list--waiting"
        state = Text(glyph, style=self.get_component_rich_style(style, partial=True))
        where = MASK if self.mask_noise and row.state == "running" else row.where
        return [
            state,
            Text(_indent(row.depth) + row.name, no_wrap=True, overflow="ellipsis"),
            Text(row.state),
            Text(where, no_wrap=True, overflow="ellipsis"),
        ]

    def _unchanged(self, previous: TaskRow, row: TaskRow) -> bool:
        return previous == row

    def _moves(self, previous: TaskRow | None, row: TaskRow) -> bool:
        return previous is None or previous.depth != row.depth

    def _sync(self, force: bool = False) -> None:
        if not self.columns:
            return
        wanted = {str(row.task_id): row for row in self._tasks}
        order = {str(row.task_id): index for index, row in enumerate(self._tasks)}
        reorder = self._diff_rows(wanted, force)
        if self.row_count and (reorder or self._order != list(wanted)):
            self._sort_rows(list(wanted), lambda key: order[key])
            self._order = list(wanted)
        if self.row_count:
            if self.selected_id is None or str(self.selected_id) not in wanted:
                # The task under the cursor finished: the cursor stays on the row where it was.
                gone = self.selected_id is not None
                index = min(max(self.cursor_row, 0), len(self._tasks) - 1) if gone else 0
                self.selected_id = self._tasks[index].task_id
                if gone:
                    self.post_message(self.TaskSelected(self, self.selected_id))
            self._cursor_to(self.get_row_index(str(self.selected_id)))

    def _row_highlighted(self, key: str) -> None:
        task_id = int(key)
        if task_id != self.selected_id:
            self.selected_id = task_id
            self.post_message(self.TaskSelected(self, task_id))

    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if not self._is_current(event) or event.row_key is None or event.row_key.value is None:
            return
        self.selected_id = int(event.row_key.value)
        self.post_message(self.TaskSelected(self, self.selected_id))
