"""The attach flow: progress, and where each thread is (read from outside) while periscope waits.

Attaching injects the agent through one thread and waits for that thread to run Python. A
thread blocked in C (a sleep, a lock, a socket read) does not, so while it waits the screen shows
every thread's stack and the locals of the selected frame, read-only from the target's memory
(marked "read from outside"), and lets the user inject through another thread or cancel. Once the
agent starts, the process screen replaces them with its live values.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, Static
from textual.worker import Worker

from explorer.discovery import ProcessInfo, ProcessScanner
from explorer.errors import PeriscopeError
from explorer.screens.dialogs import forward_failure
from explorer.screens.sources import SourceLines
from widgets._format import MASK, display_command
from widgets.attach_progress import AttachProgress
from widgets.stack_view import StackEntry, StackView
from widgets.thread_list import ThreadList, ThreadRow
from widgets.variables import ValueView, VariablesTree

STACK_INTERVAL = 0.5
"""Seconds between two reads of the stacks while waiting."""

ProgressCallback = Callable[[str, str, "tuple[Any, ...] | None"], None]
"""Called with (step, detail, stacks) as attaching goes on; step is a key of
``widgets.attach_progress.STEPS``; stacks are ``explorer.stacks.ThreadStack`` read while waiting."""

ATTACH_TIMEOUT = 10.0
"""Seconds attaching may take before it fails with InjectionTimeout (the user can retry another thread)."""

STREAM_RATE = 4.0
"""Frames per second the agent streams to the TUI."""

BLOCKED_FIX = (
    "attach again and, while periscope waits, select a thread that runs Python and press t; "
    "or make the program do some work"
)
"""What to do when no thread of the target ran Python in time, in the TUI's words."""


class Connector(Protocol):
    """Attaches to ``pid`` (through ``thread`` when given) and returns a connected session."""

    def __call__(self, pid: int, *, thread: int | None, progress: ProgressCallback) -> Awaitable[Any]: ...


class AttachRefused(PeriscopeError):
    """Discovery already knows periscope cannot attach (old Python, remote debugging off, ...)."""

    def __init__(self, pid: int, reason: str, fix: str | None) -> None:
        super().__init__(reason, fix)
        self.pid = pid
        """The process discovery refused."""


@dataclass(frozen=True)
class Attached:
    """A finished attach: the session and what discovery knew about the process."""

    pid: int
    process: ProcessInfo | None
    session: Any


_STATE_STEPS = {"injected": "injecting", "waiting": "waiting", "starting": "starting", "connected": "connected"}


@dataclass(frozen=True)
class AttachFailed:
    """A failed attach: which process, and why."""

    pid: int
    error: BaseException


async def default_connector(
    pid: int, *, thread: int | None, progress: ProgressCallback, timeout: float = ATTACH_TIMEOUT
) -> Any:
    """Attach with periscope's session client (explorer.attach), reporting each step."""
    from explorer import attach as attach_module

    def report(step: attach_module.AttachProgress) -> None:
        progress(_STATE_STEPS.get(step.state.value, "injecting"), step.message, step.stacks)

    return await attach_module.attach(
        pid,
        thread="any" if thread is None else thread,  # the GIL holder, main, then every other thread
        timeout=timeout,
        rate=STREAM_RATE,
        progress=report,
        blocked_fix=BLOCKED_FIX,
    )


def read_outside(pid: int, selected: int | None) -> tuple[list[Any], dict[int, list[Any]], tuple[Any, ...] | None]:
    """Every thread's stack, the locals of thread ``selected`` (None or gone: the main thread's)
    and ``__main__``'s variables, read from outside on this machine."""
    from explorer.model import Variable
    from explorer.outside import frame_locals, to_value
    from explorer.remote import RemoteProcess
    from explorer.stacks import StackReader
    from explorer.values import Unsupported, ValueReader

    with RemoteProcess.open(pid) as process:
        stacks = StackReader(process).read()
        chosen = [s for s in stacks if s.native_id == selected] or [s for s in stacks if s.is_main]
        try:
            reader = ValueReader(process)
            found = {stack.native_id: frame_locals(reader, stack) for stack in chosen[:1]}
            main = reader.module_globals("__main__")
            module = tuple(Variable(name, to_value(value)) for name, value in main or ())
        except Unsupported:
            found, module = {}, None
    return stacks, found, module


class StacksRead(Message):
    """The latest read-only stacks of the target; a newer read replaces a queued older one."""

    def __init__(
        self,
        stacks: list[Any],
        error: str | None = None,
        locals: dict[int, list[Any]] | None = None,
        module: tuple[Any, ...] | None = None,
    ) -> None:
        self.stacks = stacks
        """``explorer.stacks.ThreadStack`` objects, one per thread."""
        self.error = error
        """Why the stacks could not be read this time, if they could not."""
        self.locals = locals
        """Per native thread id, each frame's locals read from outside (``explorer.model.Variable``
        tuples, None for a frame that changed while read); None when this read has none."""
        self.module = module
        """The variables of ``__main__`` read from outside, if this read has them."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StacksRead)


class AttachStep(Message):
    """Attaching moved on (another step, or the same step with news)."""

    def __init__(self, step: str, detail: str, stacks: tuple[Any, ...] | None) -> None:
        self.step = step
        """A key of ``widgets.attach_progress.STEPS``."""
        self.detail = detail
        """One line about the step."""
        self.stacks = stacks
        """Every thread's stack read from outside while waiting, if the session read them."""
        super().__init__()


def _mask_numbers(text: str) -> str:
    """Hide thread ids and timings in a progress line (reproducible screenshots)."""
    import re

    return re.sub(r"\d+(\.\d+)?", "··", text)


class AttachScreen(Screen["Attached | AttachFailed | None"]):
    """Attaching to one process: the steps so far, and every thread's stack while it waits.

    Dismissed with an ``Attached`` when connected, with None when cancelled. A failure is the
    attach worker's error: the app dismisses the screen with an ``AttachFailed`` and shows it.

    | Key | Action |
    | :- | :- |
    | t | Inject through the selected thread instead. |
    | escape | Cancel attaching. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "inject_through", "Inject via thread"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(
        self,
        pid: int,
        connector: Connector,
        process: ProcessInfo | None = None,
        *,
        thread: int | None = None,
        mask_noise: bool = False,
    ) -> None:
        super().__init__()
        self.pid = pid
        """The process being attached to."""
        self.process = process
        """What discovery knows about it (looked up when not given)."""
        self.connector = connector
        """Does the attaching."""
        self.mask_noise = mask_noise
        """Hide pids and thread ids (reproducible screenshots)."""
        self.thread = thread
        """The native id of the thread to inject through; None lets the session choose."""
        self.step = "reading"
        """The current attach step (tests wait on it)."""
        self.stack_reads = 0
        """How many stack reads have been shown (tests wait on it)."""
        self.locals_reads = 0
        """How many reads of the selected thread's locals have been shown (tests wait on it)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        # A host's connector brings its own (no files of this machine for a far side's frames).
        self._sources = (getattr(connector, "sources", None) or SourceLines)(pid)
        self._stacks: dict[int, Any] = {}
        self._locals: dict[int, list[Any]] = {}
        self._selected: int | None = None
        """The thread whose locals the reader reads (None: the main thread); set on the UI thread."""
        self._frame_index = 0
        self._module: tuple[Any, ...] | None = None

    def compose(self) -> ComposeResult:
        pid = MASK if self.mask_noise else str(self.pid)
        from explorer.text import visible

        host = getattr(self.connector, "host_name", None)
        yield Static(Text(f"periscope · attaching to {pid}" + (f" on {visible(host)}" if host else "")), id="title")
        with Vertical(id="attach-body"):
            yield Label(Text(self._describe()), id="attach-command")
            yield AttachProgress(id="progress")
            yield Label("Where each thread is now (read from outside: nothing runs in the target)", classes="section")
            yield Label(
                "A thread blocked in C (input(), a sleep, a lock) cannot run the agent: "
                "select another and press t, or Esc to cancel.",
                id="attach-hint",
            )
            with Horizontal(id="attach-panes"):
                thread_list = ThreadList(id="attach-threads", compact=True)
                thread_list.mask_noise = self.mask_noise
                yield thread_list
                with Vertical(id="attach-right"):
                    yield StackView(id="attach-stack")
                    yield VariablesTree(id="attach-locals")
        yield Footer()

    def _describe(self) -> str:
        if self.process is None:
            return "…"
        return display_command(self.process.cmdline, self.process.name)

    def on_mount(self) -> None:
        progress = self.query_one(AttachProgress)
        progress.animate_spinner = not self.mask_noise
        self.query_one(ThreadList).focus()
        self.read_stacks()
        self.attach()

    def on_unmount(self) -> None:
        self._stop.set()
        self._wake.set()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(event, self.post_message)

    # --- workers -----------------------------------------------------------------------------

    @work(name="attach", exit_on_error=False, exclusive=True, group="attach")
    async def attach(self) -> None:
        """Check the verdict, then attach; dismiss the screen with the session."""
        if self.process is None:
            inspect = getattr(self.connector, "inspect", None) or ProcessScanner().inspect  # a host's: its own discovery
            self.process = await asyncio.to_thread(inspect, self.pid)
            self.query_one("#attach-command", Label).update(Text(self._describe()))
        process = self.process
        if process is not None and not process.attachable:
            raise AttachRefused(self.pid, process.reason or "periscope cannot attach", process.fix)
        session = await self.connector(self.pid, thread=self.thread, progress=self._report_progress)
        self._stop.set()
        self.step = "connected"
        self.dismiss(Attached(self.pid, process, session))

    def _report_progress(self, step: str, detail: str = "", stacks: tuple[Any, ...] | None = None) -> None:
        self.post_message(AttachStep(step, detail, stacks))

    @work(thread=True, name="read-stacks", exit_on_error=False, exclusive=True, group="read-stacks")
    def read_stacks(self) -> None:
        """Read every thread's stack and the selected thread's locals from outside, twice a
        second (at once when another thread is selected), until attached or cancelled: here, or
        on the far side when the connector goes through a host (its ``read_outside``)."""
        read = getattr(self.connector, "read_outside", None) or read_outside
        while not self._stop.is_set():
            try:
                stacks, found, module = read(self.pid, self._selected)
            except PeriscopeError as error:
                self.post_message(StacksRead([], error=str(error)))
            else:
                self.post_message(StacksRead(list(stacks), locals=found, module=module))
            self._wake.wait(STACK_INTERVAL)
            self._wake.clear()

    # --- messages ------------------------------------------------------------------------------

    def on_attach_step(self, message: AttachStep) -> None:
        self.step = message.step
        progress = self.query_one(AttachProgress)
        progress.step = message.step
        progress.detail = _mask_numbers(message.detail) if self.mask_noise else message.detail
        if message.stacks is not None:
            self.on_stacks_read(StacksRead(list(message.stacks)))

    def on_stacks_read(self, message: StacksRead) -> None:
        self.stack_reads += 1
        if message.error:
            self.query_one(AttachProgress).detail = f"cannot read stacks: {message.error}"
            return
        self._stacks = {stack.native_id: stack for stack in message.stacks}
        if message.locals is not None:
            self._locals = message.locals
            self.locals_reads += 1
        if message.module is not None:
            self._module = message.module
        rows = [
            ThreadRow(
                native_id=stack.native_id,
                name=stack.name or ("MainThread" if stack.is_main else f"thread {stack.native_id}"),
                daemon=None,
                holds_gil=stack.holds_gil,
                is_main=stack.is_main,
                cpu_seconds=None,
                where=stack.frames[0].function if stack.frames else "(no Python frames)",
                running_python=bool(getattr(stack, "attached", True)),
            )
            for stack in message.stacks
        ]
        with self.app.batch_update():
            thread_list = self.query_one(ThreadList)
            thread_list.update_threads(rows)
            self._show_stack(thread_list.selected_id)
            self._show_locals(thread_list.selected_id, track_changes=True)

    @on(ThreadList.ThreadSelected)
    def _on_thread_selected(self, message: ThreadList.ThreadSelected) -> None:
        message.stop()
        if message.native_id != self._selected:
            self._selected = message.native_id
            self._frame_index = 0
            self._wake.set()  # read that thread's locals now
        self._show_stack(message.native_id)
        self._show_locals(message.native_id, track_changes=False)

    @on(VariablesTree.InspectRequested)
    def _on_inspect_requested(self, message: VariablesTree.InspectRequested) -> None:
        """Values read from outside are previews already cut: the inspector shows what there is."""
        message.stop()
        from explorer.screens.inspector import ValueInspector

        self.app.push_screen(ValueInspector(message.value, None, note="the preview read from outside (the whole repr needs the agent)"))

    @on(StackView.FrameSelected)
    def _on_frame_selected(self, message: StackView.FrameSelected) -> None:
        message.stop()
        self._frame_index = message.index
        self._show_locals(self.query_one(ThreadList).selected_id, track_changes=False)

    def _show_locals(self, native_id: int | None, *, track_changes: bool) -> None:
        """The selected frame's locals and ``__main__``'s data, as last read from outside (the
        agent is not running yet)."""
        from explorer.screens.process import module_views
        from explorer.text import visible

        tree = self.query_one("#attach-locals", VariablesTree)
        stack = self._stacks.get(native_id) if native_id is not None else None
        views: list[ValueView] = []
        if stack is None or not stack.frames:
            title, track_changes = "Locals (no Python frame)", False
        else:
            index = min(self._frame_index, len(stack.frames) - 1)
            function = visible(stack.frames[index].function)
            per_frame = self._locals.get(stack.native_id)
            if per_frame is None or index >= len(per_frame):
                title, track_changes = f"Locals of {function} (reading from outside…)", False
            elif per_frame[index] is None:
                title, track_changes = f"Locals of {function}: changed while read", False
            else:
                title, views = f"Locals of {function} · read from outside, not live", _views(per_frame[index])
        tree.show_scope("locals", title, views, track_changes=track_changes)
        if self._module is not None:
            data, hidden = module_views(_views(self._module), show_definitions=False)
            more = f" · {hidden} modules/functions/classes hidden" if hidden else ""
            tree.show_scope("module", f"Module __main__ · read from outside{more}", data, track_changes=track_changes)

    def _show_stack(self, native_id: int | None) -> None:
        stack = self._stacks.get(native_id) if native_id is not None else None
        frames = stack.frames if stack is not None else ()
        self.query_one(StackView).update_frames(
            [
                StackEntry(frame.function, frame.filename, frame.lineno, self._sources.line(frame.filename, frame.lineno))
                for frame in frames
            ]
        )

    # --- actions ---------------------------------------------------------------------------------

    def action_inject_through(self) -> None:
        """Start over, injecting through the thread under the cursor."""
        native_id = self.query_one(ThreadList).selected_id
        if native_id is None:
            return
        self.thread = native_id
        shown = MASK if self.mask_noise else str(native_id)
        self.notify(f"Injecting through thread {shown}")
        self.query_one(AttachProgress).step = "injecting"
        self.attach()  # exclusive: cancels the attempt in progress

    def action_cancel(self) -> None:
        """Stop attaching and go back."""
        self._stop.set()
        self.workers.cancel_node(self)
        self.dismiss(None)


def _views(variables: tuple[Any, ...]) -> list[ValueView]:
    """The variables tree's views of values read from outside (their text shown, never obeyed)."""
    from explorer.text import visible

    return [
        ValueView(name=visible(variable.name), type_name=visible(variable.value.type_name), preview=visible(variable.value.repr))
        for variable in variables
    ]
