"""The start screen: a live list of Python processes, with the selected one's attach verdict."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.events import Key
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import Worker

from explorer.discovery import ProcessInfo, ProcessScanner
from explorer.screens.dialogs import forward_failure
from widgets.process_table import ProcessTable
from widgets.verdict import AttachVerdict

SCAN_INTERVAL = 2.0
"""Seconds between two scans of the process list."""

SORT_NAMES = {"cpu": "CPU", "memory": "memory", "pid": "pid"}


class ProcessesScanned(Message):
    """A complete scan of the machine's Python processes; a newer scan replaces a queued older one."""

    def __init__(self, processes: list[ProcessInfo]) -> None:
        self.processes = processes
        """Every Python process found, sorted by pid."""
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ProcessesScanned)


class ProcessListScreen(Screen[None]):
    """Python processes on this machine, refreshed every two seconds; Enter attaches.

    Typing filters the list at once (by pid, user, Python version or command line): the filter box
    has the focus, and the arrow keys move the list's cursor. Clicking a column header sorts by it.
    No process is picked until the user moves the cursor (or clicks a row, or comes back from a
    process): Enter attaches only to the highlighted row on show.

    | Key | Action |
    | :- | :- |
    | enter | Attach to the highlighted process (or show it, when attached); nothing when none is. |
    | up/down, pageup/pagedown | Move the list's cursor (the first press picks the first or last row). |
    | ctrl+s | Sort by CPU, then memory, then pid. |
    | ctrl+f | Profile the selected process (sampled from outside: no attaching). |
    | escape | Clear the filter. |
    | ctrl+r | Scan again now. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "attach", "Attach", show=True),
        Binding("ctrl+s", "cycle_sort", "Sort CPU/mem/pid"),
        Binding("ctrl+f", "profile", "Profile", show=False),
        Binding("escape", "clear_filter", "Clear filter"),
        Binding("ctrl+r", "rescan", "Rescan", show=False),
        Binding("down", "cursor_down", show=False),
        Binding("up", "cursor_up", show=False),
        Binding("pagedown", "page_down", show=False),
        Binding("pageup", "page_up", show=False),
    ]

    sort_by: reactive[str] = reactive("cpu")
    """Which column orders the list: "cpu", "memory" or "pid"."""

    def __init__(
        self,
        scanner_factory: Callable[[], ProcessScanner] = ProcessScanner,
        *,
        mask_noise: bool = False,
        name: str | None = None,
        show_host: bool = False,
    ) -> None:
        super().__init__(name=name)
        self.show_host = show_host
        """The fleet view: processes of several hosts, with a HOST column."""
        self.scanner_factory = scanner_factory
        """Makes the scanner the scan worker calls (one per screen, kept for CPU %)."""
        self.mask_noise = mask_noise
        """Hide pids and figures that change between runs (screenshots)."""
        self.attached_pids: frozenset[int | str] = frozenset()
        """Processes periscope is attached to (marked in the list): pids, or row keys in the fleet view."""
        self.scans = 0
        """How many scans have been shown (tests wait on it)."""
        self._stop = threading.Event()
        self._scan_now = threading.Event()
        self._shown = threading.Event()  # the screen is on top: a list nobody sees is not rescanned
        self._shown.set()
        self._latest: list[ProcessInfo] = []
        self._select_on_mount: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("periscope · Python processes", id="title")
        yield Input(placeholder="type to filter (pid, user, version, command)", id="filter", select_on_focus=False)
        table = ProcessTable(id="processes", show_host=self.show_host)
        table.mask_noise = self.mask_noise
        yield table
        verdict = AttachVerdict(id="verdict")
        verdict.mask_noise = self.mask_noise
        yield verdict
        yield Static("", id="scan-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).focus()
        self.query_one(ProcessTable).select_pid(self._select_on_mount)
        self._update_title()
        self.scan_processes()

    def on_unmount(self) -> None:
        self._stop.set()
        self._scan_now.set()
        self._shown.set()

    def on_screen_suspend(self) -> None:
        # Another screen is on top (a process, its profile): scanning every process of the
        # machine every 2 s for a list nobody sees was a steady part of periscope's CPU.
        self._shown.clear()

    def on_screen_resume(self) -> None:
        if not self._shown.is_set():
            self._shown.set()
            self._scan_now.set()  # back on top: a fresh list at once

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(event, self.post_message)

    # --- the scan worker ---------------------------------------------------------------------

    @work(thread=True, name="process-scan", exit_on_error=False, exclusive=True, group="process-scan")
    def scan_processes(self) -> None:
        """Scan every SCAN_INTERVAL seconds (or when asked) until the screen goes away."""
        scanner = self.scanner_factory()
        while not self._stop.is_set():
            self._shown.wait()
            if self._stop.is_set():
                break
            processes = scanner.scan()
            if self._stop.is_set():
                break
            self.post_message(ProcessesScanned(processes))
            self._scan_now.wait(SCAN_INTERVAL)
            self._scan_now.clear()

    def on_processes_scanned(self, message: ProcessesScanned) -> None:
        self._latest = message.processes
        table = self.query_one(ProcessTable)
        with self.app.batch_update():
            table.update_processes(message.processes, self.attached_pids)
        self.scans += 1
        self._update_status()

    def _update_status(self) -> None:
        shown = self.query_one(ProcessTable).row_count
        self.query_one(AttachVerdict).rows_shown = shown
        total = len(self._latest)
        noun = "Python process" if total == 1 else "Python processes"
        if self.mask_noise:  # the machine's other processes come and go
            status = f"{shown} shown"
        else:
            status = f"{total} {noun}" if shown == total else f"{shown} of {total} {noun}"
        self.query_one("#scan-status", Static).update(f"{status} · sorted by {SORT_NAMES[self.sort_by]}")

    def select_pid(self, pid: int | None) -> None:
        """Put the list's cursor on ``pid`` (None: on nothing), now or when its row appears."""
        self._select_on_mount = pid
        if self.is_mounted:
            self.query_one(ProcessTable).select_pid(pid)

    def set_attached(self, pids: frozenset[int | str]) -> None:
        """Mark these pids as attached (the app calls this when sessions start or end)."""
        self.attached_pids = pids
        if self.is_mounted:
            self.query_one(ProcessTable).update_processes(self._latest, pids)
            self._show_verdict(self.query_one(ProcessTable).selected_process)

    # --- user intent -------------------------------------------------------------------------

    @on(ProcessTable.ProcessHighlighted)
    def _on_highlighted(self, message: ProcessTable.ProcessHighlighted) -> None:
        message.stop()
        self._show_verdict(message.process)

    def _show_verdict(self, process: ProcessInfo | None) -> None:
        verdict = self.query_one(AttachVerdict)
        verdict.rows_shown = self.query_one(ProcessTable).row_count
        verdict.process = process
        verdict.attached = process is not None and ProcessTable.row_key(process) in {str(key) for key in self.attached_pids}

    @on(Input.Changed, "#filter")
    def _on_filter_changed(self, event: Input.Changed) -> None:
        self.query_one(ProcessTable).filter_text = event.value
        self._update_status()

    @on(Input.Submitted, "#filter")
    def _on_filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_attach()

    def on_key(self, event: Key) -> None:
        """Typing while the list has the focus goes to the filter too (filter as you type)."""
        filter_input = self.query_one("#filter", Input)
        if filter_input.has_focus or not event.is_printable or event.character is None:
            return
        event.stop()
        event.prevent_default()
        filter_input.focus()
        filter_input.insert_text_at_cursor(event.character)

    def action_attach(self) -> None:
        """Attach to the process under the cursor."""
        table = self.query_one(ProcessTable)
        process = table.selected_process
        if process is not None:
            # Posted here, not through the table: a message created while this screen handles an
            # event has the screen as sender, and bubbling stops at its sender.
            self.post_message(ProcessTable.AttachRequested(table, process))

    def action_profile(self) -> None:
        """Open the Profile view of the process under the cursor (no agent needed)."""
        process = self.query_one(ProcessTable).selected_process
        if process is None:
            return
        self.app.show_profile(process.pid, process)  # type: ignore[attr-defined]

    def action_sort(self, column: str) -> None:
        """Order the list by ``column``: "cpu", "memory" or "pid"."""
        self.sort_by = column

    def action_cycle_sort(self) -> None:
        """Order the list by the next column: CPU, then memory, then pid."""
        order = list(SORT_NAMES)
        self.sort_by = order[(order.index(self.sort_by) + 1) % len(order)]

    def on_data_table_header_selected(self, event: ProcessTable.HeaderSelected) -> None:
        """A click on the CPU%, MEMORY or PID header sorts by that column."""
        event.stop()
        column = str(event.column_key.value)
        if column in SORT_NAMES:
            self.sort_by = column

    def watch_sort_by(self, column: str) -> None:
        if self.is_mounted:
            self.query_one(ProcessTable).sort_by = column  # type: ignore[assignment]
            self._update_title()
            self._update_status()

    def _update_title(self) -> None:
        self.sub_title = f"sorted by {SORT_NAMES[self.sort_by]}"

    def action_clear_filter(self) -> None:
        """Empty the filter."""
        filter_input = self.query_one("#filter", Input)
        filter_input.value = ""
        filter_input.focus()

    def action_rescan(self) -> None:
        """Scan again now instead of at the next tick."""
        self._scan_now.set()

    def action_cursor_down(self) -> None:
        """Move the list cursor down (also while typing a filter)."""
        self.query_one(ProcessTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        """Move the list cursor up (also while typing a filter)."""
        self.query_one(ProcessTable).action_cursor_up()

    def action_page_down(self) -> None:
        """Move the list cursor a page down."""
        self.query_one(ProcessTable).action_page_down()

    def action_page_up(self) -> None:
        """Move the list cursor a page up."""
        self.query_one(ProcessTable).action_page_up()
