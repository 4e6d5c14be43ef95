"""One attached process: threads, the selected thread's stack, variables, a REPL and a status bar.

The screen owns its session while it exists: a reader task turns the agent's stream into one
``FrameReceived`` message per frame (a newer frame replaces a queued older one), and the screen
applies the latest frame inside ``batch_update()``. Requests (expand, eval, interrupt, watched
module) run as named workers whose results go back to the widget that asked.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import psutil
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Label, Static
from textual.worker import Worker

from explorer.discovery import ProcessInfo
from explorer.errors import PeriscopeError
from explorer.model import Frame, StackFrame, ThreadInfo, Value, Variable
from explorer.model import is_definition as is_definition_of
from explorer.screens.dialogs import forward_failure
from explorer.screens.inspector import ValueInspector
from explorer.screens.sources import NoSources, SourceLines
from explorer.text import visible
from widgets._format import MASK, display_command
from widgets.process_header import ProcessFigures, ProcessHeader
from widgets.repl import ReplEntry, ReplInput, ReplPane
from widgets.stack_view import StackEntry, StackView
from widgets.status_bar import StatusBar
from widgets.task_list import TaskList, rows_from_snapshot
from widgets.thread_list import ThreadList, ThreadRow
from widgets.variables import ValueView, VariablesTree

HISTORY_LIMIT = 1000
"""REPL history entries kept on disk."""

CPU_INTERVAL = 1.0
"""Seconds between two reads of per-thread CPU times."""

PAGE = 100
REPL_REPR = 4000
"""Characters of a REPL result's repr shown in the transcript (the inspector, v, shows it whole)."""
"""Children per page when expanding an object."""

STATUS_INTERVAL = 0.5
"""Seconds between two redraws of the status bar's figures."""

TASKS_INTERVAL = 1.0
"""Seconds between two reads of the asyncio tasks (from outside)."""

DETACH_TIMEOUT = 6.0
"""Seconds detaching may take before the connection is simply dropped (the agent then leaves on its own)."""


def _visible_or_none(text: str | None) -> str | None:
    """``visible(text)``, keeping None (no source line)."""
    return None if text is None else visible(text)


def history_file() -> Path:
    """The REPL history file in the user's data directory (``$XDG_DATA_HOME/periscope/history``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "periscope" / "repl_history"


def load_history(path: Path) -> list[str]:
    """The REPL history, oldest first (entries are separated by NUL so they can span lines)."""
    try:
        data = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [entry for entry in data.split("\0") if entry.strip()][-HISTORY_LIMIT:]


def save_history(path: Path, entries: Sequence[str]) -> None:
    """Write the REPL history (best effort: a read-only home only loses the history)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\0".join(entries[-HISTORY_LIMIT:]), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # the history is a convenience; the REPL works without it


def value_view(name: str, value: Value) -> ValueView:
    """The variables tree's view of one agent value."""
    preview = value.repr + ("…" if value.truncated and not value.repr.endswith("…") else "")
    # A string, bytes or bytearray has a ref only to be inspected whole: it has no children.
    children = value.ref if value.type_name not in _LEAF_TYPES else None
    return ValueView(name=name, type_name=value.type_name, preview=preview, ref=children, length=value.length, inspect_ref=value.ref)


_LEAF_TYPES = frozenset({"str", "bytes", "bytearray"})


def value_views(variables: Sequence[Variable]) -> list[ValueView]:
    """Views of a sequence of agent variables, in order."""
    return [value_view(variable.name, variable.value) for variable in variables]


def is_definition(view: ValueView) -> bool:
    """Whether a module variable is an import, a class, a function or a dunder name rather than data."""
    return is_definition_of(view.name, view.type_name, view.preview)


def data_first(views: list[ValueView]) -> list[ValueView]:
    """Module variables with the data first and imports, classes and functions after (order kept)."""
    return sorted(views, key=is_definition)


def module_views(views: list[ValueView], *, show_definitions: bool) -> tuple[list[ValueView], int]:
    """What the module pane lists: the data, then (when asked) the definitions; and how many are hidden."""
    if show_definitions:
        return data_first(views), 0
    data = [view for view in views if not is_definition(view)]
    return data, len(views) - len(data)


class FrameReceived(Message):
    """The agent's latest frame; a newer one replaces it while it waits in the queue."""

    def __init__(self, frame: Frame, received: float, total_bytes: int | None) -> None:
        self.frame = frame
        """The whole state of the target at one moment."""
        self.received = received
        """``time.time()`` when it was decoded."""
        self.total_bytes = total_bytes
        """Bytes read from the agent so far (None when the session does not count them)."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FrameReceived)


class ThreadTimes(Message):
    """Per-thread CPU seconds (psutil) and GIL states (read from outside), off the UI path."""

    def __init__(
        self, times: dict[int, float], states: dict[int, tuple[bool, bool]], usage: tuple[float, int, int, float] | None = None
    ) -> None:
        self.times = times
        """CPU seconds (user + system) by native thread id."""
        self.states = states
        """(holds the GIL, attached to the interpreter) by native thread id; empty when unreadable."""
        self.usage = usage
        """The whole process: (CPU % since the last read, RSS bytes, threads, seconds since start)."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ThreadTimes)


class TasksRead(Message):
    """The target's asyncio tasks, read from outside, or why they cannot be read."""

    def __init__(self, snapshot: Any, reason: str | None, imported: bool) -> None:
        self.snapshot = snapshot
        """An explorer.tasks.TaskSnapshot, or None."""
        self.reason = reason
        """Why there are no tasks to show (no asyncio, a build without the task layout), or None."""
        self.imported = imported
        """The target has imported asyncio."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TasksRead)


class WatchModuleDialog(ModalScreen[str | None]):
    """Asks which module's variables to watch."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    WatchModuleDialog {
        align: center middle;
    }
    WatchModuleDialog > Vertical {
        width: 60;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Watch the variables of which module? (for example __main__, threading, mypkg.config)")
            yield Input(value=self.current, id="module-name")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        name = event.value.strip()
        self.dismiss(name or None)

    def action_cancel(self) -> None:
        """Keep the current module."""
        self.dismiss(None)


def _where(thread: ThreadInfo, top: StackFrame | None) -> str:
    """The thread list's 'where' cell: the innermost frame, or why there is none."""
    if top is not None:
        return f"{top.function}:{top.lineno}"
    if thread.stack_omitted:
        return "(stack not sent: too many threads)"
    return "(no Python frames)"


class ProcessScreen(Screen[None]):
    """An attached process: pick a thread, a frame, expand variables, evaluate code.

    | Key | Action |
    | :- | :- |
    | tab | Next pane. |
    | p | Pause / resume live updates. |
    | e | Go to the REPL. |
    | ctrl+t | Run REPL code in the selected frame / in the module. |
    | w | Watch another module. |
    | a | Show / hide the watched module's modules, functions and classes. |
    | k | Show / hide the asyncio tasks (shown by itself once the target imports asyncio). |
    | d | Detach from this process. |
    | f | Profile: where the time goes (sampled from outside). |
    | escape | Back to the process list (stays attached). |

    ``e`` is a priority binding that moves the focus at once: keys typed right behind it then go
    to the REPL, not to the pane that had the focus (the REPL's input consumes ``e`` itself, so
    the binding is out of the way while typing there).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("e", "focus_repl", "REPL", priority=True),
        Binding("ctrl+t", "toggle_repl_scope", "REPL: frame/module", show=False),
        Binding("w", "watch_module", "Watch module"),
        Binding("a", "toggle_definitions", "Show/hide modules, functions, classes", show=False),
        Binding("k", "toggle_tasks", "Show/hide asyncio tasks", show=False),
        Binding("d", "detach", "Detach"),
        Binding("f", "profile", "Profile", show=False),
        Binding("escape", "back", "Process list"),
    ]

    paused: reactive[bool] = reactive(False)
    """While paused, frames keep arriving but the panes stay as they are."""

    watched_module: reactive[str] = reactive("__main__")
    """The module whose variables the variables pane shows."""

    show_definitions: reactive[bool] = reactive(False)
    """Whether the module pane lists imports, functions and classes (after the data) too."""

    class DetachRequested(Message):
        """The user asked to detach from this process."""

        def __init__(self, pid: int) -> None:
            self.pid = pid
            """The process to detach from."""
            super().__init__()

    class SessionEnded(Message):
        """The session ended on its own (the target exited, the agent left, the stream broke)."""

        def __init__(self, pid: int, error: BaseException | None) -> None:
            self.pid = pid
            """The process."""
            self.error = error
            """Why, when it was an error."""
            super().__init__()

    def __init__(
        self,
        session: Any,
        process: ProcessInfo | None = None,
        *,
        history_path: Path | None = None,
        mask_noise: bool = False,
    ) -> None:
        super().__init__()
        self.session = session
        """The agent session (explorer.session)."""
        self.pid: int = int(session.pid)
        """The process shown."""
        self.process = process
        """What discovery knew at attach time."""
        self.history_path = history_path
        """Where the REPL history is kept (None: not kept)."""
        self.mask_noise = mask_noise
        """Hide pids, ids, times and rates (reproducible screenshots)."""
        self.frame: Frame | None = None
        """The frame on show."""
        self.latest: Frame | None = None
        """The newest frame received (differs from ``frame`` while paused)."""
        self.frames_applied = 0
        """How many frames were shown (tests wait on it)."""
        self.selected_thread: int | None = None
        """Native id of the selected thread."""
        self.selected_frame = 0
        """The selected frame of that thread (0 = innermost)."""
        self.pinned_frame: int | None = None
        """The identity (agent frame id) of the call the user selected: the selection follows it
        as the stack above or below moves, and the REPL runs in it (an error once it returned)."""
        self.pinned_function = ""
        self.pinned_from_bottom: int | None = None
        self._cpu_times: dict[int, float] = {}
        self._gil_states: dict[int, tuple[bool, bool]] = {}
        self._arrivals: deque[tuple[float, int | None]] = deque(maxlen=50)
        self._stop = threading.Event()
        # A far side's frames name its files, not this machine's (nor a local process's of that pid).
        self._sources = NoSources() if getattr(session, "host_name", None) else SourceLines(self.pid)
        self._detached = False
        self._evals: list[Any] = []
        self._shown_key: tuple[int | None, int, str] | None = None
        self._status_shown = 0.0
        self._stack_title = ""
        self.tasks: Any = None
        """The latest explorer.tasks.TaskSnapshot (None until asyncio is seen)."""
        self.tasks_reason: str | None = None
        """Why no tasks are shown, when none are."""
        self.selected_task: int | None = None
        """Id of the task whose coroutine stack is shown (None: the selected thread's stack is)."""
        self._tasks_wanted: bool | None = None
        self._tasks_latest: TasksRead | None = None
        self._task_locals: tuple[int, tuple[StackFrame, ...] | None, str | None] | None = None
        """(task id, its coroutine frames with locals from the agent, or why there are none)."""
        self._view_sent: tuple[int | None, int] | None = None
        """The view last told to the agent (focused thread, frame): only that thread's stack and locals are sent."""

    # --- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(Text(self._title()), id="title")
        header = ProcessHeader(id="process-header")
        header.mask_noise = self.mask_noise
        yield header
        with Horizontal(id="process-top"):
            with Vertical(id="process-left"):
                with Vertical(id="threads-pane", classes="pane") as pane:
                    pane.border_title = "Threads"
                    thread_list = ThreadList(id="threads")
                    thread_list.mask_noise = self.mask_noise
                    yield thread_list
                with Vertical(id="tasks-pane", classes="pane") as pane:
                    pane.border_title = "Tasks"
                    yield Label("Tasks", classes="section", id="tasks-title")
                    task_list = TaskList(id="tasks")
                    task_list.mask_noise = self.mask_noise
                    yield task_list
                with Vertical(id="stack-pane", classes="pane") as pane:
                    pane.border_title = "Stack"
                    yield Label("Stack", classes="section", id="stack-title")
                    yield StackView(id="stack")
            with Vertical(id="variables-pane", classes="pane") as pane:
                pane.border_title = "Variables"
                yield VariablesTree(id="variables")
        with Vertical(id="repl-pane", classes="pane -idle") as pane:
            pane.border_title = "REPL"
            pane.border_subtitle = "e: type Python to run in the target"
            yield ReplPane(id="repl")
        status = StatusBar(id="status")
        status.mask_noise = self.mask_noise
        status.pid = self.pid
        yield status
        yield Footer()

    def _title(self) -> str:
        pid = MASK if self.mask_noise else str(self.pid)
        command = display_command(self.process.cmdline, self.process.name) if self.process is not None else ""
        host = getattr(self.session, "host_name", None)
        where = f"{visible(host)} · " if host else ""
        return f"periscope · {where}{pid} · {command}"

    def describe(self) -> str:
        """The process in a few words (command palette)."""
        return visible(self.process.command) if self.process is not None else f"process {self.pid}"

    @classmethod
    def pane_bindings(cls) -> list[tuple[str, list[BindingType]]]:
        """The key bindings of the panes, for the help screen."""
        return [
            (
                "REPL",
                list(ReplPane.BINDINGS)
                + list(ReplInput.BINDINGS)
                + [Binding("tab", "", "Complete a name or attribute"), Binding("shift+tab", "", "Leave the input")],
            ),
            (
                "Variables",
                [
                    Binding("enter", "", "Expand or collapse the value (a value without children: inspect it)"),
                    Binding("space", "", "Expand or collapse"),
                    Binding("v", "", "Inspect: the whole repr, scrollable"),
                ],
            ),
            ("Thread states (first column)", [
                Binding("●", "", "holds the GIL (running Python)"),
                Binding("○", "", "runs Python, waiting for the GIL"),
                Binding("·", "", "released the GIL (blocked in C: sleep, I/O, a lock)"),
            ]),
        ]

    # --- start and stop --------------------------------------------------------------------------

    def on_mount(self) -> None:
        repl = self.query_one(ReplPane)
        if self.history_path is not None:
            repl.history = load_history(self.history_path)
        self._panes = self.query_one(ThreadList)
        self._panes.focus()
        self.query_one("#tasks-pane").display = False
        self.query_one(TaskList).display = False
        self.read_stream()
        if getattr(self.session, "host_name", None) is None:  # the pid is on another host: nothing to read here
            self.read_cpu_times()
            self.read_tasks()

    async def on_unmount(self) -> None:
        self._stop.set()
        await self.detach()  # the app is closing without a quit (a crash, a test's exit)

    async def detach(self) -> None:
        """Detach the session (idempotent); the agent leaves the target."""
        if self._detached:
            return
        self._detached = True
        self._stop.set()
        self._set_state("detaching")
        try:
            await asyncio.wait_for(self.session.detach(), timeout=DETACH_TIMEOUT)
        except (TimeoutError, PeriscopeError, OSError) as error:
            self.log.warning(f"detach from {self.pid}: {error}")
            await self.session.close()
        self._set_state("detached")

    def _set_state(self, state: str) -> None:
        for status in self.query(StatusBar):
            status.state = state

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(event, self.post_message)

    # --- the stream ------------------------------------------------------------------------------

    @work(name="reader", exit_on_error=False, exclusive=True, group="reader")
    async def read_stream(self) -> None:
        """Post one FrameReceived per frame until the session ends."""
        async for frame in self.session.frames():
            if self._stop.is_set():
                return
            received = getattr(self.session, "bytes_received", None)  # total bytes read, when the session counts them
            self.post_message(FrameReceived(frame, time.time(), received))
        if not self._detached:
            self.post_message(self.SessionEnded(self.pid, self.session.error))

    @work(thread=True, name="thread-cpu", exit_on_error=False, exclusive=True, group="thread-cpu")
    def read_cpu_times(self) -> None:
        """Once a second: each thread's CPU time (psutil) and GIL state (read from outside)."""
        from explorer.remote import RemoteProcess

        try:
            process = psutil.Process(self.pid)
        except psutil.Error:
            return
        remote: RemoteProcess | None = None
        try:
            while not self._stop.is_set():
                try:
                    times = {thread.id: thread.user_time + thread.system_time for thread in process.threads()}
                    with process.oneshot():
                        usage = (process.cpu_percent(None), process.memory_info().rss, process.num_threads(), time.time() - process.create_time())
                except psutil.Error:
                    return
                states: dict[int, tuple[bool, bool]] = {}
                try:
                    if remote is None:
                        remote = RemoteProcess.open(self.pid)
                    states = {ref.native_id: (ref.holds_gil, ref.attached) for ref in remote.threads()}
                except (PeriscopeError, OSError):
                    if remote is not None:
                        remote.close()
                    remote = None
                self.post_message(ThreadTimes(times, states, usage))
                self._stop.wait(CPU_INTERVAL)
        finally:
            if remote is not None:
                remote.close()

    @work(thread=True, name="tasks", exit_on_error=False, exclusive=True, group="tasks")
    def read_tasks(self) -> None:
        """Every TASKS_INTERVAL: the asyncio tasks, read from outside (works while the loop is blocked)."""
        from explorer.remote import RemoteProcess
        from explorer.tasks import AsyncioUnavailable, TaskReader

        remote: RemoteProcess | None = None
        reader: TaskReader | None = None
        try:
            while not self._stop.is_set():
                try:
                    if remote is None:
                        remote = RemoteProcess.open(self.pid)
                    if reader is None:
                        reader = TaskReader(remote)
                    self.post_message(TasksRead(reader.read(), None, True))
                except AsyncioUnavailable as error:
                    # asyncio may be imported later: look for its table again, in the process
                    # already open (opening it again is the maps and the ELF read every second).
                    reader = None
                    self.post_message(TasksRead(None, error.reason, error.imported))
                except (PeriscopeError, OSError):
                    if remote is not None:
                        remote.close()
                    remote = reader = None
                self._stop.wait(TASKS_INTERVAL)
        finally:
            if remote is not None:
                remote.close()

    def _taken_down(self) -> bool:
        """Whether the panes are gone while the screen still takes messages: the app exiting
        removes them first, with a worker's message (frame, CPU times, tasks) still on its way."""
        panes = getattr(self, "_panes", None)
        return panes is None or not panes.is_attached

    def on_tasks_read(self, message: TasksRead) -> None:
        if self._taken_down():
            return
        self._tasks_latest = message
        if self.paused:
            return  # the panes show one moment: these tasks wait for the resume
        self.tasks = message.snapshot
        self.tasks_reason = message.reason
        with self.app.batch_update():
            self._show_tasks()
            if self.selected_task is not None and self.frame is not None:
                self._show_selection(self.frame)
        if self.selected_task is not None:
            self.load_task_frames(self.selected_task)

    @work(name="task-frames", exit_on_error=False, exclusive=True, group="task-frames")
    async def load_task_frames(self, task_id: int) -> None:
        """Ask the agent for the locals of the selected task's coroutine frames."""
        try:
            frames = await self.session.task_frames(task_id)
        except PeriscopeError as error:
            self._task_locals = (task_id, None, str(error))
        else:
            self._task_locals = (task_id, frames, None)
        if self.selected_task == task_id and self.frame is not None:  # the user's own pick: also while paused
            with self.app.batch_update():
                self._show_selection(self.frame)

    def _show_tasks(self) -> None:
        title = self.query_one("#tasks-title", Label)
        pane = self.query_one("#tasks-pane")
        task_list = self.query_one(TaskList)
        shown = self._tasks_wanted if self._tasks_wanted is not None else (self.tasks is not None or self.tasks_reason is not None and "has not imported" not in self.tasks_reason)
        pane.display = shown
        task_list.display = shown and self.tasks is not None and bool(self.tasks.tasks)
        if not shown:
            return
        if self.tasks is None:
            title.update(f"Tasks: {visible(self.tasks_reason or 'not read yet')}")
            pane.border_title = Text(str(title.render()))
            return
        count = len(self.tasks.tasks)
        title.update(f"Tasks ({count})" + (" · the list changed while read" if self.tasks.torn else "") if count else "Tasks: none (no task exists now)")
        pane.border_title = Text(str(title.render()))
        task_list.update_tasks(rows_from_snapshot(self.tasks, visible))

    def action_toggle_tasks(self) -> None:
        """Show or hide the asyncio tasks."""
        self._tasks_wanted = not self.query_one("#tasks-pane").display
        self._show_tasks()
        if self._tasks_wanted and self.query_one(TaskList).display:
            self.query_one(TaskList).focus()

    def on_thread_times(self, message: ThreadTimes) -> None:
        if self._taken_down():
            return
        self._cpu_times = message.times
        self._gil_states = message.states
        if message.usage is not None and not self.paused:
            cpu, rss, threads, uptime = message.usage
            holder = next((native for native, (holds, _) in message.states.items() if holds), None)
            thread = self.frame.thread(holder) if self.frame is not None and holder is not None else None
            name = (thread.name or f"thread {holder}") if thread is not None else (f"thread {holder}" if holder is not None else None)
            self.query_one(ProcessHeader).figures = ProcessFigures(cpu, rss, threads, name, uptime)
        if self.frame is not None and not self.paused:
            self._show_threads(self.frame)

    def on_frame_received(self, message: FrameReceived) -> None:
        if self._taken_down():
            return
        self._arrivals.append((message.received, message.total_bytes))
        self.latest = message.frame
        self._update_status(message.frame)
        if self.paused:
            return
        shown = self.frame
        # Unchanged threads and modules are the very objects of the frame before (wire.FrameAssembler).
        if shown is not None and message.frame.threads is shown.threads and message.frame.modules is shown.modules:
            self.frame = message.frame  # the same picture: nothing to redraw
            return
        with self.app.batch_update():
            self.apply_frame(message.frame)

    def _update_status(self, frame: Frame) -> None:
        """Frame rate, latency and data rate, redrawn at most twice a second."""
        now = time.time()
        if now - self._status_shown < STATUS_INTERVAL:
            return
        self._status_shown = now
        status = self.query_one(StatusBar)
        status.latency_ms = max(0.0, (now - frame.time) * 1000)
        if len(self._arrivals) >= 2:
            (first, first_bytes), (last, last_bytes) = self._arrivals[0], self._arrivals[-1]
            if last > first:
                status.frame_rate = (len(self._arrivals) - 1) / (last - first)
                if first_bytes is not None and last_bytes is not None:
                    status.bytes_per_second = (last_bytes - first_bytes) / (last - first)

    def apply_frame(self, frame: Frame) -> None:
        """Show ``frame`` in every pane."""
        self.frame = frame
        self.frames_applied += 1
        self._show_threads(frame)
        self._show_selection(frame)

    def _thread_rows(self, frame: Frame) -> list[ThreadRow]:
        rows = []
        for thread in frame.threads:
            if thread.is_agent or thread.native_id is None:
                continue
            top = thread.frames[0] if thread.frames else None
            holds_gil, attached = self._gil_states.get(thread.native_id, (False, True))
            rows.append(
                ThreadRow(
                    native_id=thread.native_id,
                    name=thread.name or f"thread {thread.native_id}",
                    daemon=thread.daemon,
                    holds_gil=holds_gil,
                    is_main=thread.is_main,
                    cpu_seconds=self._cpu_times.get(thread.native_id),
                    where=_where(thread, top),
                    running_python=attached,
                )
            )
        return rows

    def _show_threads(self, frame: Frame) -> None:
        thread_list = self.query_one(ThreadList)
        thread_list.update_threads(self._thread_rows(frame))
        if self.selected_thread is None or frame.thread(self.selected_thread) is None:
            self.selected_thread = thread_list.selected_id
        self._tell_view()

    def _tell_view(self) -> None:
        """Tell the agent which thread and frame are on show, when that changed (PROTOCOL.md, the view)."""
        view = (self.selected_thread, self.selected_frame)
        if view != self._view_sent and self.selected_thread is not None:
            self._view_sent = view
            self.send_view(*view)

    @work(name="view", exit_on_error=False, exclusive=True, group="view")
    async def send_view(self, focus: int | None, frame: int) -> None:
        """Ask the agent for this thread's whole stack with locals and the others' innermost frames."""
        try:
            await self.session.set_view(focus=focus, frame=frame)
        except PeriscopeError:
            self._view_sent = None  # the session is ending, or the agent refused: say it again next frame

    def _selected(self, frame: Frame) -> tuple[ThreadInfo | None, StackFrame | None]:
        thread = frame.thread(self.selected_thread) if self.selected_thread is not None else None
        if thread is None:
            return None, None
        if not thread.frames:
            return thread, None
        index = min(self.selected_frame, len(thread.frames) - 1)
        return thread, thread.frames[index]

    def _show_task_selection(self, frame: Frame) -> bool:
        """Show the selected task's coroutine stack; False when that task is gone (show the thread again)."""
        task = self.tasks.by_id().get(self.selected_task) if self.tasks is not None else None
        if task is None:
            self.selected_task = None
            return False
        stack = self.query_one(StackView)
        stack.update_frames(
            [
                StackEntry(visible(item.function), visible(item.filename), item.lineno or 0, _visible_or_none(self._sources.line(item.filename, item.lineno or 0)))
                for item in task.coroutine_stack
            ]
        )
        name = visible(task.name)
        title = f"Coroutine stack of task {name} ({task.state or '?'})"
        if title != self._stack_title:
            self._stack_title = title
            self.query_one("#stack-title", Label).update(Text(title))
            self.query_one("#stack-pane").border_title = Text(title)
        if stack.frames and stack.selected_index != self.selected_frame:
            self.selected_frame = stack.selected_index
        variables = self.query_one(VariablesTree)
        repl = self.query_one(ReplPane)
        if not task.coroutine_stack:
            variables.show_scope("locals", f"Task {name} has no coroutine frame", [], track_changes=False)
            repl.frame_scope = ""
            return True
        index = min(self.selected_frame, len(task.coroutine_stack) - 1)
        item = task.coroutine_stack[index]
        key = (-task.id, index, item.function)
        track = key == self._shown_key
        self._shown_key = key
        known = self._task_locals if self._task_locals is not None and self._task_locals[0] == task.id else None
        frames = known[1] if known is not None else None
        if frames is not None and index < len(frames):
            shown = frames[index]
            function = visible(shown.qualname or shown.function)
            variables.show_scope("locals", f"Locals of {function}() in task {name}", value_views(shown.locals or ()), track_changes=track)
        elif known is not None and known[2]:
            variables.show_scope("locals", f"Locals of {visible(item.function)}(): {visible(known[2])}", [], track_changes=False)
        else:
            variables.show_scope("locals", f"Locals of {visible(item.function)}() in task {name} (reading…)", [], track_changes=False)
        repl.frame_scope = f"{visible(item.function)}() in task {name}"
        return True

    def _show_selection(self, frame: Frame, *, moved: bool = False) -> None:
        if self.selected_task is None or not self._show_task_selection(frame):
            self._show_thread_selection(frame, moved=moved)
        self._show_module(frame)

    def _show_thread_selection(self, frame: Frame, *, moved: bool) -> None:
        thread, stack_frame = self._selected(frame)
        frames = thread.frames if thread is not None else ()
        if self.pinned_frame is not None and thread is not None and not thread.brief:
            # The call the user picked: the selection follows it; once it returned, the REPL runs
            # in a later call of the same function at the same place, and says so.
            place = next((index for index, item in enumerate(frames) if item.frame_id == self.pinned_frame), None)
            if place is None and self.pinned_from_bottom is not None and thread.depth == len(frames) > self.pinned_from_bottom:
                later = len(frames) - 1 - self.pinned_from_bottom  # a later call of it, at its place?
                if (frames[later].qualname or frames[later].function) == self.pinned_function:
                    place = later
            if place is not None and place != self.selected_frame:
                self.selected_frame = place  # the stack moved around the picked call: follow it
                thread, stack_frame = self._selected(frame)
        stack = self.query_one(StackView)
        stack.update_frames(
            [
                StackEntry(
                    item.qualname or item.function, item.filename, item.lineno or 0, self._sources.line(item.filename, item.lineno or 0),
                    key=item.frame_id,
                )
                for item in frames
            ]
        )
        if stack.frames and stack.selected_index != self.selected_frame:
            if self.selected_frame < len(stack.frames):
                stack.select_frame(self.selected_frame)
            else:
                self.selected_frame = stack.selected_index  # the stack got shorter than the selection
                thread, stack_frame = self._selected(frame)
        thread_name = (thread.name or str(thread.native_id)) if thread is not None else "no thread"
        title = f"Stack of {thread_name}"
        if title != self._stack_title:  # a label update re-lays out the screen: only when it changes
            self._stack_title = title
            self.query_one("#stack-title", Label).update(Text(visible(title)))
            self.query_one("#stack-pane").border_title = Text(visible(title))
        variables = self.query_one(VariablesTree)
        key = (self.selected_thread, self.selected_frame, stack_frame.qualname if stack_frame else "")
        track = not moved and key == self._shown_key
        self._shown_key = key
        if stack_frame is not None and stack_frame.function == "<module>":
            self._show_module_frame(variables, stack_frame, track)
        elif stack_frame is not None:
            title = f"Locals of {stack_frame.qualname or stack_frame.function}()"
            if thread is not None and thread.brief:
                title += " (reading…)"  # the agent sends this thread's locals from its next frame on
            elif stack_frame.locals is None:
                title += f" ({stack_frame.locals_total} not sent: frame too large)"
            variables.show_scope("locals", title, value_views(stack_frame.locals or ()), track_changes=track)
        else:
            variables.show_scope("locals", "Locals (no Python frame)", [], track_changes=False)
        self.query_one(ReplPane).frame_scope = f"{stack_frame.qualname or stack_frame.function}() in {thread_name}" if stack_frame else ""

    def _show_module_frame(self, variables: VariablesTree, stack_frame: StackFrame, track: bool) -> None:
        """A ``<module>`` frame's locals are its module's globals: listed once, in the module pane
        when that module is the watched one, else here with the module pane's filter."""
        name = next((v.value.repr for v in stack_frame.locals or () if v.name == "__name__"), None)
        if name == repr(self.watched_module):
            variables.show_scope("locals", f"Locals of <module>: module {self.watched_module}, below", [], track_changes=False)
            return
        views, hidden = module_views(value_views(stack_frame.locals or ()), show_definitions=self.show_definitions)
        title = "Locals of <module> (its module's globals)"
        if hidden:
            title += f" · {hidden} modules/functions/classes hidden (a)"
        variables.show_scope("locals", title, views, track_changes=track)

    def _show_module(self, frame: Frame) -> None:
        variables = self.query_one(VariablesTree)
        module = frame.module(self.watched_module)
        if module is None or module.missing:
            variables.show_scope("module", f"Module {self.watched_module} (not imported)", [], track_changes=False)
        else:
            shown = len(module.variables)
            more = f", {shown} of {module.total}" if module.total > shown else ""
            views, hidden = module_views(value_views(module.variables), show_definitions=self.show_definitions)
            if hidden:
                more += f" · {hidden} modules/functions/classes hidden (a)"
            variables.show_scope("module", f"Module {module.name}{more}", views)
        self.query_one(ReplPane).module_scope = self.watched_module

    # --- selection -----------------------------------------------------------------------------

    @on(ThreadList.ThreadSelected)
    def _on_thread_selected(self, message: ThreadList.ThreadSelected) -> None:
        message.stop()
        if message.native_id == self.selected_thread and self.selected_task is None:
            return
        self.selected_task = None
        self.selected_thread = message.native_id
        self.selected_frame = 0
        self.pinned_frame = self.pinned_from_bottom = None
        self.query_one(StackView).select_frame(0)
        self.query_one(ReplPane).eval_in = "module"  # until the user picks a frame of this thread
        self._tell_view()
        if self.frame is not None:
            with self.app.batch_update():
                self._show_selection(self.frame, moved=True)

    @on(TaskList.TaskSelected)
    def _on_task_selected(self, message: TaskList.TaskSelected) -> None:
        message.stop()
        if message.task_id == self.selected_task:
            return
        self.selected_task = message.task_id
        self.selected_frame = 0
        self.pinned_frame = self.pinned_from_bottom = None
        self.query_one(StackView).select_frame(0)
        self.load_task_frames(message.task_id)
        if self.frame is not None:
            with self.app.batch_update():
                self._show_selection(self.frame, moved=True)

    @on(StackView.FrameSelected)
    def _on_frame_selected(self, message: StackView.FrameSelected) -> None:
        message.stop()
        self.selected_frame = message.index
        self.pinned_frame = message.key if self.selected_task is None else None
        self.pinned_function = message.function
        thread = self.frame.thread(self.selected_thread) if self.frame is not None and self.selected_thread is not None else None
        complete = thread is not None and not thread.brief and thread.depth == len(thread.frames)
        self.pinned_from_bottom = message.from_bottom if complete else None
        self.query_one(ReplPane).eval_in = "frame"  # the user picked a frame: the REPL runs there
        self._tell_view()
        if self.frame is not None:
            with self.app.batch_update():
                self._show_selection(self.frame, moved=True)

    # --- requests --------------------------------------------------------------------------------

    @on(VariablesTree.ExpandRequested)
    def _on_expand_requested(self, message: VariablesTree.ExpandRequested) -> None:
        message.stop()
        self.expand(message.tree, message.node, message.ref, message.page)

    @work(name="expand", exit_on_error=False, group="expand")
    async def expand(self, tree: VariablesTree, node: Any, ref: Any, page: int) -> None:
        """Load one page of an object's children into ``node``."""
        try:
            children = await self.session.expand(ref, offset=page * PAGE, limit=PAGE)
        except PeriscopeError as error:
            tree.show_error(node, f"cannot expand: {error}")
            return
        shown = children.offset + len(children.children)
        tree.show_children(node, value_views(children.children), more=shown < children.total)

    def _eval_scope(self, eval_in: str) -> dict[str, Any]:
        """Where REPL code (or a completion) runs: the watched module, a task's frame, or the
        selected frame of a thread, pinned by its identity (the very call picked; once it
        returned, a later call of the same function at the same place, which the result reports),
        else by its function and its place counted from the outermost frame."""
        if eval_in == "frame" and self.selected_task is not None:
            return {"task": self.selected_task, "frame": self.selected_frame}
        if eval_in == "frame" and self.frame is not None:
            selected, stack_frame = self._selected(self.frame)
            if selected is not None and stack_frame is not None:
                scope: dict[str, Any] = {"thread": selected.native_id, "frame": self.selected_frame}
                if selected.depth >= len(selected.frames) and selected.depth > self.selected_frame:
                    scope["frame_name"] = stack_frame.qualname or stack_frame.function
                    scope["frame_from_bottom"] = selected.depth - 1 - self.selected_frame
                if self.pinned_frame is not None:
                    # That very call while it runs; then a later call of it at its place, reported.
                    scope["frame_id"] = self.pinned_frame
                    scope["frame_name"] = self.pinned_function or stack_frame.qualname or stack_frame.function
                    if self.pinned_from_bottom is not None:
                        scope["frame_from_bottom"] = self.pinned_from_bottom
                    else:
                        scope.pop("frame_from_bottom", None)
                elif stack_frame.frame_id is not None:
                    scope["frame_id"] = stack_frame.frame_id
                    scope.setdefault("frame_name", stack_frame.qualname or stack_frame.function)
                return scope
        return {"module": self.watched_module}

    def _update_repl_size(self) -> None:
        """The REPL is one input line while idle (no transcript, no focus); full size once used."""
        repl = self.query_one(ReplPane)
        idle = not repl.entries and not self.query_one(ReplInput).has_focus
        pane = self.query_one("#repl-pane")
        pane.set_class(idle, "-idle")
        pane.border_subtitle = "e: type Python to run in the target" if idle else None

    def on_descendant_focus(self) -> None:
        self._update_repl_size()

    def on_descendant_blur(self) -> None:
        self._update_repl_size()

    @on(ReplPane.EvalRequested)
    def _on_eval_requested(self, message: ReplPane.EvalRequested) -> None:
        message.stop()
        self._update_repl_size()
        if self.history_path is not None:
            save_history(self.history_path, message.pane.history)
        self.evaluate(message.entry, message.code, self._eval_scope(message.eval_in))

    @on(ReplPane.CompletionRequested)
    def _on_completion_requested(self, message: ReplPane.CompletionRequested) -> None:
        message.stop()
        self.complete(message.pane, message.text, self._eval_scope(message.eval_in))

    @work(name="complete", exit_on_error=False, group="complete", exclusive=True)
    async def complete(self, pane: ReplPane, text: str, scope: dict[str, Any]) -> None:
        """Ask the agent what the word before the REPL's cursor can become, and apply it."""
        try:
            found = await self.session.complete(text, **scope)
        except PeriscopeError as error:
            pane.show_completions(text, len(text), [])
            self.notify(f"cannot complete: {error}", severity="warning")
            return
        pane.show_completions(text, found.start, found.matches, more=found.more)

    @on(VariablesTree.InspectRequested)
    def _on_inspect_requested(self, message: VariablesTree.InspectRequested) -> None:
        message.stop()
        value = message.value
        ref = value.inspect_ref if value.inspect_ref is not None else value.ref
        session = self.session
        load = (lambda: session.inspect_value(ref)) if isinstance(ref, int) else None
        self.app.push_screen(ValueInspector(value, load))

    @work(name="eval", exit_on_error=False, group="eval")
    async def evaluate(self, entry: ReplEntry, code: str, scope: dict[str, Any]) -> None:
        """Run ``code`` in the target and show the outcome in ``entry`` (printed output as it comes)."""
        try:
            handle = self.session.start_eval(code, repr_chars=REPL_REPR, on_output=lambda out: entry.add_output(out.text), **scope)
            self._evals.append(handle)
            try:
                result = await handle.result()
            finally:
                self._evals.remove(handle)
        except PeriscopeError as error:
            entry.show_error(str(error))
        else:
            if result.frame is not None and result.frame.new_call:
                entry.note_scope(f"ran in a later call of {result.frame.qualname}(): the one picked had returned")
            if result.status == "interrupted":
                entry.show_interrupted()
            elif result.ok:
                entry.show_result(value_view("result", result.value) if result.value is not None else None)
            else:
                entry.show_error(result.traceback or result.exception or "failed")
            if result.names:
                # Shown apart: these live in periscope's session, layered over the target's scope.
                more = f", {len(result.names)} of {result.names_total}" if result.names_total > len(result.names) else ""
                title = f"REPL names in {entry.scope}{more} (the session's, not in the target; gone on detach)"
                self.query_one("#variables", VariablesTree).show_scope("session", title, value_views(result.names))
        self.query_one(ReplPane).scroll_to_end()

    @on(ReplPane.InterruptRequested)
    def _on_interrupt_requested(self, message: ReplPane.InterruptRequested) -> None:
        message.stop()
        self.interrupt()

    @work(name="interrupt", exit_on_error=False, group="interrupt")
    async def interrupt(self) -> None:
        """Interrupt every running evaluation (KeyboardInterrupt in its thread)."""
        for handle in list(self._evals):
            await handle.interrupt()

    # --- actions ---------------------------------------------------------------------------------

    def watch_paused(self, paused: bool) -> None:
        if not self.is_mounted:
            return
        self.query_one(StatusBar).state = "paused" if paused else "attached"
        self.sub_title = "paused" if paused else ""
        if not paused and self._tasks_latest is not None:
            self.on_tasks_read(self._tasks_latest)
        if not paused and self.latest is not None:
            with self.app.batch_update():
                self.apply_frame(self.latest)

    def action_toggle_pause(self) -> None:
        """Freeze the panes (frames keep arriving) or resume live updates."""
        self.paused = not self.paused

    def action_focus_repl(self) -> None:
        """Move to the REPL input (at once, so that the next keys already go there)."""
        self.set_focus(self.query_one(ReplInput))

    def action_toggle_repl_scope(self) -> None:
        """Run REPL code in the selected frame, or in the watched module."""
        self.query_one(ReplPane).action_toggle_scope()

    def action_toggle_definitions(self) -> None:
        """Show or hide the watched module's imports, functions and classes."""
        self.show_definitions = not self.show_definitions

    def watch_show_definitions(self) -> None:
        if self.is_mounted and self.frame is not None:
            with self.app.batch_update():
                self._show_selection(self.frame)

    def action_watch_module(self) -> None:
        """Ask for another module to watch."""
        self.app.push_screen(WatchModuleDialog(self.watched_module), self._on_module_chosen)

    def _on_module_chosen(self, name: str | None) -> None:
        if name and name != self.watched_module:
            self.set_watched_module(name)

    @work(name="watch-module", exit_on_error=False, group="watch-module")
    async def set_watched_module(self, name: str) -> None:
        """Ask the agent to stream ``name``'s variables, then show them."""
        await self.session.set_modules([name])
        self.watched_module = name
        self.query_one(StatusBar).watched = name
        self.query_one(VariablesTree).remove_scope("module")

    def action_profile(self) -> None:
        """Open the Profile view of this process."""
        self.app.show_profile(self.pid, self.process)  # type: ignore[attr-defined]

    def action_detach(self) -> None:
        """Detach from this process."""
        self.post_message(self.DetachRequested(self.pid))

    def action_back(self) -> None:
        """Back to the process list; stays attached."""
        if self.query_one(ReplInput).has_focus:
            self.query_one(ThreadList).focus()
            return
        self.app.action_process_list()  # type: ignore[attr-defined]
