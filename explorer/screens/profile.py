"""The Profile view: where one process's time goes, sampled from outside (no agent needed).

The screen owns a :class:`~explorer.sampler.Sampler` (its own thread, started by a worker so
that opening the process never holds the UI up) that samples every thread in *wall* mode, each
sample tagged with whether its thread was on a CPU and held the GIL; the mode keys then only
change what is counted. Twice a second a thread worker sums the selection (mode, window,
thread) into the table, the selected function's callers, callees and hot lines, and the icicle,
and posts one ``ProfileUpdated`` (a newer one replaces a queued older one).

Where the sampler runs is the screen's ``profiling``: :class:`LocalProfiling` on this machine, or
a host's (explorer.commands.app.HostProfiling), whose sampler has the same interface and is fed
by the far side (explorer.remote_profile).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Protocol

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Footer, Label, Static
from textual.worker import Worker

from explorer.discovery import ProcessInfo
from explorer.profile import MODES, WINDOW, FlameNode, FunctionDetail, FunctionKey, FunctionRow, ThreadMeta
from explorer.screens.dialogs import forward_failure
from explorer.screens.sources import SourceLines
from explorer.text import visible
from widgets._format import MASK, display_command
from widgets.flame_graph import FlameGraph
from widgets.function_detail import FunctionDetailView
from widgets.profile_table import ProfileTable

REFRESH_INTERVAL = 0.5
"""Seconds between two updates of the view."""


class Profiling(Protocol):
    """Where a process is profiled: its sampler, its source lines, what discovery knows of it."""

    def sampler(self, pid: int, rate: float) -> Any:
        """A started-or-startable sampler of ``pid`` (explorer.sampler.Sampler's interface); raises what opening it raises."""

    def sources(self, pid: int) -> Any:
        """Source lines of ``pid``'s frames (explorer.screens.sources.SourceLines' ``line()``)."""

    def inspect(self, pid: int) -> ProcessInfo | None:
        """What discovery says about ``pid`` (None: gone)."""


class LocalProfiling:
    """Profiles a process of this machine: the sampler runs in periscope's process."""

    def sampler(self, pid: int, rate: float) -> Any:
        from explorer.sampler import Sampler

        return Sampler(pid, rate=rate, mode="wall")

    def sources(self, pid: int) -> SourceLines:
        return SourceLines(pid)

    def inspect(self, pid: int) -> ProcessInfo | None:
        from explorer.discovery import ProcessScanner

        return ProcessScanner().inspect(pid)


MODE_NAMES = {"cpu": "CPU (threads on a CPU)", "wall": "wall (every thread)", "gil": "GIL (the thread holding it)"}


class ProfileUpdated(Message):
    """The latest sums of the selection; a newer one replaces a queued older one."""

    def __init__(
        self,
        rows: list[FunctionRow],
        samples: int,
        detail: FunctionDetail | None,
        sources: dict[int, str | None],
        flame: FlameNode,
        status: str,
        threads: list[ThreadMeta],
    ) -> None:
        self.rows = rows
        """The functions of the selection."""
        self.samples = samples
        """Samples in the selection."""
        self.detail = detail
        """Callers, callees and lines of the selected function (None: none selected)."""
        self.sources = sources
        """Source text of the detail's lines, by line number."""
        self.flame = flame
        """The icicle of the selection."""
        self.status = status
        """The status line."""
        self.threads = threads
        """Every thread sampled so far."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProfileUpdated)


class ProfileScreen(Screen[None]):
    """A live profile of one process: functions by their share of the samples, and where they are called.

    | Key | Action |
    | :- | :- |
    | m | Next mode: CPU, wall, GIL. |
    | w | Window: the last 10 s, or since the start. |
    | t | Next thread (all threads first). |
    | s | Sort by the next column. |
    | f | Icicle graph / callers, callees and hot lines. |
    | r | Reset: forget the samples so far. |
    | escape | Back. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "next_mode", "Mode"),
        Binding("w", "toggle_window", "Window"),
        Binding("t", "next_thread", "Thread"),
        Binding("f", "toggle_flame", "Icicle/detail"),
        Binding("r", "reset", "Reset"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        pid: int,
        process: ProcessInfo | None = None,
        *,
        mode: str = "cpu",
        rate: float = 100.0,
        mask_noise: bool = False,
        profiling: Profiling | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.pid = pid
        """The process profiled."""
        self.process = process
        """What discovery knew about it (for the title)."""
        self.rate = rate
        """Samples per second asked of the sampler."""
        self.mode = mode
        """What is counted: 'cpu', 'wall' or 'gil'."""
        self.window: float | None = WINDOW
        """Seconds counted back from now; None: since the start (or the last reset)."""
        self.thread: int | None = None
        """Native id of the one thread counted; None: every thread."""
        self.mask_noise = mask_noise
        """Hide the pid (reproducible screenshots)."""
        self.profiling: Profiling = profiling or LocalProfiling()
        """Where the sampler runs (this machine, or a host's far side)."""
        self.sampler: Any = None
        """The sampler (explorer.sampler.Sampler or a host's), once started."""
        self.updates = 0
        """How many updates were shown (tests wait on it)."""
        self.rows: list[FunctionRow] = []
        """The functions on show, in the table's order."""
        self._threads: list[ThreadMeta] = []
        self._selected: FunctionKey | None = None
        self._sources = self.profiling.sources(pid)
        self._stopped = threading.Event()

    def compose(self) -> ComposeResult:
        # markup=False: the command line and thread names are the target's, not periscope's markup.
        yield Static(self._title(), id="title", markup=False)
        yield Label("starting the sampler…", id="profile-status", markup=False)
        with Vertical(id="profile-body"):
            yield ProfileTable(id="profile-table")
            with ContentSwitcher(initial="profile-detail", id="profile-lower"):
                yield FunctionDetailView(id="profile-detail")
                yield FlameGraph(id="profile-flame")
        yield Footer()

    def _title(self) -> str:
        pid = MASK if self.mask_noise else str(self.pid)
        command = display_command(self.process.cmdline, self.process.name) if self.process is not None else ""
        return visible(f"periscope · profile · {pid}" + (f" · {command}" if command else ""))

    def describe(self) -> str:
        """The process in a few words (command palette)."""
        return self.process.command if self.process is not None else f"process {self.pid}"

    # --- start and stop --------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.query_one(ProfileTable).focus()
        self.query_one(FunctionDetailView).show_nothing("no samples yet")
        self.start_sampler()
        self.set_interval(REFRESH_INTERVAL, self.refresh_profile)

    def on_unmount(self) -> None:
        self._stopped.set()
        if self.sampler is not None:
            self.sampler.stop()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(event, self.post_message)

    @work(thread=True, name="profile-start", exit_on_error=False, exclusive=True, group="profile-start")
    def start_sampler(self) -> None:
        """Open the process and start sampling it (every thread, tagged: the modes only filter)."""
        sampler = self.profiling.sampler(self.pid, self.rate)
        if self._stopped.is_set():
            sampler.stop()
            return
        self.sampler = sampler
        sampler.start()
        if self.process is None:
            self.process = self.profiling.inspect(self.pid)
            self.app.call_from_thread(self._show_title)

    def _show_title(self) -> None:
        self.query_one("#title", Static).update(self._title())

    # --- updates ---------------------------------------------------------------------------------

    def refresh_profile(self) -> None:
        """Sum the selection again, off the UI thread."""
        if self.sampler is not None:
            self._compute(self.mode, self.window, self.thread, self._selected)

    @work(thread=True, name="profile-sums", exit_on_error=False, exclusive=True, group="profile-sums")
    def _compute(self, mode: str, window: float | None, thread: int | None, selected: FunctionKey | None) -> None:
        from explorer.profile import flame_tree, function_detail

        sampler = self.sampler
        if sampler is None:
            return
        counts = sampler.profile.counts(mode, window=window, thread=thread)
        rows = counts.summary()
        keys = {row.key for row in rows}
        if selected not in keys:
            selected = rows[0].key if rows else None
        detail = function_detail(counts, selected) if selected is not None else None
        sources = {line.lineno: self._sources.line(selected[1], line.lineno) for line in detail.lines} if detail and selected else {}
        self.post_message(
            ProfileUpdated(rows, counts.samples, detail, sources, flame_tree(counts), self._status(counts.samples), sampler.profile.thread_list())
        )

    def _status(self, samples: int) -> str:
        sampler = self.sampler
        assert sampler is not None
        stats = sampler.stats()
        window = "since the start" if self.window is None else f"last {WINDOW:.0f} s"
        thread = "all threads"
        if self.thread is not None:
            meta = next((meta for meta in self._threads if meta.native_id == self.thread), None)
            thread = f"thread {visible(meta.label) if meta else self.thread}"
        text = (
            f"{MODE_NAMES[self.mode]} · {window} · {thread} · {samples} samples · "
            f"{stats.achieved_rate:.0f} of {stats.rate:g} Hz · {stats.missed} missed · {stats.retries} torn reads retried"
        )
        if sampler.error is not None:
            from explorer.errors import ProcessGone

            if isinstance(sampler.error, ProcessGone):
                text += " · the process exited: this is what was sampled until then"
            else:
                text += f" · sampling stopped: {visible(str(sampler.error))}"
        return text

    def on_profile_updated(self, message: ProfileUpdated) -> None:
        self._threads = message.threads
        table = self.query_one(ProfileTable)
        with self.app.batch_update():
            self.query_one("#profile-status", Label).update(message.status)
            table.update_rows(message.rows)
            self.rows = table.rows_in_order
            self._selected = table.selected
            detail_view = self.query_one(FunctionDetailView)
            if message.detail is not None and message.detail.key == table.selected:
                detail_view.show(message.detail, message.samples, message.sources)
            elif not message.rows:
                detail_view.show_nothing("no samples yet" if self.mode == "wall" else f"no samples in {self.mode} mode yet (m: another mode)")
            flame = self.query_one(FlameGraph)
            flame.selected = table.selected
            flame.root = message.flame
        self.updates += 1

    @on(ProfileTable.FunctionSelected)
    def _on_function_selected(self, message: ProfileTable.FunctionSelected) -> None:
        message.stop()
        self._selected = message.key
        self.query_one(FlameGraph).selected = message.key
        self.refresh_profile()

    # --- actions ---------------------------------------------------------------------------------

    def action_next_mode(self) -> None:
        """Count the samples of the next mode: CPU, wall, GIL."""
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self.notify(f"Mode: {MODE_NAMES[self.mode]}")
        self.refresh_profile()

    def action_toggle_window(self) -> None:
        """Count the last 10 seconds, or everything since the start."""
        self.window = None if self.window is not None else WINDOW
        self.refresh_profile()

    def action_next_thread(self) -> None:
        """Count one thread after the other, then all of them again."""
        ids: list[int | None] = [None, *(meta.native_id for meta in self._threads)]
        position = ids.index(self.thread) if self.thread in ids else 0
        self.thread = ids[(position + 1) % len(ids)]
        self.refresh_profile()

    def action_toggle_flame(self) -> None:
        """Switch the lower pane between the icicle graph and the selected function's detail."""
        switcher = self.query_one(ContentSwitcher)
        switcher.current = "profile-flame" if switcher.current == "profile-detail" else "profile-detail"

    def action_reset(self) -> None:
        """Forget the samples so far and start counting again."""
        if self.sampler is not None:
            self.sampler.reset()
            self.refresh_profile()

    def action_back(self) -> None:
        """Leave the Profile view (sampling stops)."""
        self.app.pop_screen()
