"""periscope's Textual app: wires the process list, the attach flow and process screens together.

The app owns no data source itself. Screens own theirs (the process list its scan worker, a
process screen its session reader); the app decides which screen is current, keeps the set of
attached processes, turns every failed worker into an error dialog (``on_worker_state_changed``),
and puts every action in the command palette.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker

from explorer.discovery import ProcessInfo, ProcessScanner
from explorer.errors import PeriscopeError
from explorer.screens.attach import AttachFailed, AttachScreen, Attached, Connector, default_connector
from explorer.screens.dialogs import ConfirmDialog, ErrorDialog, WorkerFailed, forward_failure
from explorer.screens.help import HelpScreen, KeySection, key_rows
from explorer.screens.process import ProcessScreen, history_file
from explorer.screens.process_list import ProcessListScreen
from explorer.text import visible
from explorer.screens.profile import ProfileScreen
from widgets._format import MASK
from widgets.process_table import ProcessTable
from widgets.profile_table import ProfileTable


class PeriscopeApp(App[int]):
    """Look inside running CPython 3.14 and 3.15 processes: the process list, then one screen per attached process.

    | Key | Action |
    | :- | :- |
    | ?, f1 | Help: every key binding. |
    | ctrl+p | Command palette: every action. |
    | ctrl+o | Switch to the next attached process (or the process list). |
    | ctrl+q | Detach from every process and quit. |
    """

    CSS_PATH = "app.tcss"
    TITLE = "periscope"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,f1", "help", "Help"),
        Binding("ctrl+o", "next_process", "Switch process"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        pid: int | None = None,
        *,
        connector: Connector | None = None,
        scanner_factory: Callable[[], ProcessScanner] = ProcessScanner,
        history_path: Path | None = None,
        mask_noise: bool = False,
        profile: tuple[str, float] | None = None,
        show_host: bool = False,
    ) -> None:
        super().__init__()
        self.start_profile = profile
        """(mode, rate): open ``pid``'s Profile view at start instead of attaching (``periscope top``)."""
        self.start_pid = pid
        """Attach to this process at start (``periscope PID``); None opens the process list only."""
        self.connector = connector or default_connector
        """Attaches to a pid and returns a connected session (the real one unless a test swaps it)."""
        self.scanner_factory = scanner_factory
        """Makes the process scanner of the process list."""
        self.history_path = history_path or history_file()
        """Where the REPL history is kept across runs."""
        self.mask_noise = mask_noise
        """Hide pids, times and rates (reproducible screenshots and snapshot tests)."""
        self.confirmed_foreign: set[int] = set()
        """Processes of other users the user agreed to attach to (asked once each)."""
        self.attached: dict[int, ProcessScreen] = {}
        """The process screen of every attached process, by pid."""
        self.process_list = ProcessListScreen(scanner_factory, mask_noise=mask_noise, show_host=show_host)
        """The start screen; always at the bottom of the screen stack."""

    # --- start and stop --------------------------------------------------------------------------

    quit_on_signals = False
    """Whether SIGTERM and SIGHUP (a closed terminal) quit the app as Ctrl+Q does, withdrawing a
    pending request (``periscope`` sets it; an app run inside a test leaves the signals alone)."""

    def on_mount(self) -> None:
        if self.quit_on_signals:
            from explorer import signals

            loop = asyncio.get_running_loop()
            signals.install(lambda: loop.call_soon_threadsafe(self._quit_on_signal))
        self.push_screen(self.process_list)
        if self.start_pid is not None and self.start_profile is not None:
            self.show_profile(self.start_pid, mode=self.start_profile[0], rate=self.start_profile[1])
        elif self.start_pid is not None:
            self.attach(self.start_pid)

    def show_profile(self, pid: int, process: ProcessInfo | None = None, *, mode: str = "cpu", rate: float = 100.0) -> None:
        """Open the Profile view of ``pid`` (read from outside: no agent needed), sampled where it
        runs (a host's connector, or the fleet view's row's host, brings its own profiling)."""
        for_process = getattr(self.connector, "for_process", None)
        connector = for_process(process) if for_process is not None and process is not None else self.connector
        profiling = getattr(connector, "profiling", None)
        self.push_screen(ProfileScreen(pid, process, mode=mode, rate=rate, mask_noise=self.mask_noise, profiling=profiling))

    async def action_quit(self) -> None:
        """Detach from every process, then quit."""
        for screen in list(self.attached.values()):
            await screen.detach()
        self.exit(0)

    def _quit_on_signal(self) -> None:
        self.run_worker(self.action_quit(), name="quit on signal", exit_on_error=False)

    # --- attach, switch, detach ----------------------------------------------------------------

    def _attached_rows(self) -> frozenset[int | str]:
        """The process list's rows of the attached processes: pids, or host and pid in the fleet view."""
        from widgets.process_table import ProcessTable

        return frozenset(
            ProcessTable.row_key(screen.process) if screen.process is not None else pid for pid, screen in self.attached.items()
        )

    def attach(self, pid: int, process: ProcessInfo | None = None, *, thread: int | None = None) -> None:
        """Show ``pid``'s screen, attaching first when periscope is not attached to it yet.

        ``thread`` is the native id of the thread to inject through (None: the session picks).
        """
        if pid in self.attached:
            attached_host = getattr(self.attached[pid].session, "host_name", None)
            wanted_host = getattr(process, "host", None) or attached_host
            if wanted_host != attached_host:  # the fleet view: the same pid on another host
                self.push_screen(
                    ErrorDialog(
                        f"Cannot attach to {self._shown_pid(pid)} on {wanted_host}",
                        f"periscope is attached to process {pid} on {attached_host}, and shows one process per pid",
                        "detach from it first (d on its screen)",
                    )
                )
                return
            self.show_process(pid)
            return
        self.process_list.select_pid(pid)  # back in the list, the cursor is on the process just left
        owner = _owner(pid, process)
        if owner is not None and owner[0] != os.geteuid() and pid not in self.confirmed_foreign:
            user = visible(owner[1])

            def answered(yes: bool | None) -> None:
                if yes:
                    self.confirmed_foreign.add(pid)
                    self.attach(pid, process, thread=thread)

            self.push_screen(
                ConfirmDialog(
                    f"Attach to a process of user {user}?",
                    f"{self._shown_pid(pid)} belongs to {user}, not to you: periscope would run its agent inside "
                    "that user's program, which then sees everything the agent shows you.",
                    yes="Attach",
                ),
                answered,
            )
            return
        if process is not None and not process.attachable:
            self.push_screen(
                ErrorDialog(f"Cannot attach to {self._shown_pid(pid)}", process.reason or "periscope cannot attach", process.fix)
            )
            return
        # The fleet view's connector attaches through the host of the row (explorer.hosts).
        for_process = getattr(self.connector, "for_process", None)
        connector = for_process(process) if for_process is not None and process is not None else self.connector
        self.push_screen(AttachScreen(pid, connector, process, thread=thread, mask_noise=self.mask_noise), self._on_attach_done)

    def _on_attach_done(self, result: Attached | AttachFailed | None) -> None:
        if result is None:
            return  # cancelled
        if isinstance(result, AttachFailed):
            # The error's reason, and its fix in the TUI's words (an InjectionTimeout carries the
            # fix the connector asked for: pick a thread and press t).
            self.push_screen(ErrorDialog.from_error(f"Cannot attach to {self._shown_pid(result.pid)}", result.error))
            return
        screen = ProcessScreen(result.session, result.process, history_path=self.history_path, mask_noise=self.mask_noise)
        self.attached[result.pid] = screen
        self.install_screen(screen, name=f"process-{result.pid}")
        self.process_list.set_attached(self._attached_rows())
        self.show_process(result.pid)

    def _shown_pid(self, pid: int) -> str:
        return MASK if self.mask_noise else str(pid)

    def show_process(self, pid: int) -> None:
        """Make ``pid``'s process screen current (the process list stays below it)."""
        screen = self.attached[pid]
        if self.screen is screen:
            return
        if isinstance(self.screen, ProcessScreen):
            self.switch_screen(screen)
        else:
            self._pop_to_process_list()
            self.push_screen(screen)

    async def detach(self, pid: int) -> None:
        """Detach from ``pid`` and forget its screen; back to the process list when it was current."""
        screen = self.attached.pop(pid, None)
        if screen is None:
            return
        await screen.detach()
        if screen in self.screen_stack:
            if self.screen is screen:
                await self.pop_screen()
            else:
                self._pop_to_process_list()
        self.uninstall_screen(screen)
        if screen.is_mounted:
            await screen.remove()
        self.process_list.set_attached(self._attached_rows())

    def _pop_to_process_list(self) -> None:
        if isinstance(self.screen, ProcessScreen):
            self.process_list.select_pid(self.screen.pid)  # the cursor returns to the process just left
        while len(self.screen_stack) > 1 and not isinstance(self.screen, ProcessListScreen):
            self.pop_screen()

    def action_process_list(self) -> None:
        """Back to the process list (attached processes stay attached)."""
        self._pop_to_process_list()

    def action_next_process(self) -> None:
        """Cycle through attached processes, then the process list."""
        pids = sorted(self.attached)
        if not pids:
            self.notify("Not attached to any process yet: pick one and press Enter.")
            return
        current = self.screen
        if isinstance(current, ProcessScreen) and current.pid in pids:
            index = pids.index(current.pid) + 1
            if index >= len(pids):
                self._pop_to_process_list()
                return
            self.show_process(pids[index])
        else:
            self.show_process(pids[0])

    @on(ProcessTable.AttachRequested)
    def _on_attach_requested(self, message: ProcessTable.AttachRequested) -> None:
        self.attach(message.process.pid, message.process)

    @on(ProcessScreen.DetachRequested)
    async def _on_detach_requested(self, message: ProcessScreen.DetachRequested) -> None:
        await self.detach(message.pid)

    @on(ProcessScreen.SessionEnded)
    async def _on_session_ended(self, message: ProcessScreen.SessionEnded) -> None:
        await self.detach(message.pid)
        if message.error is not None:
            self.push_screen(ErrorDialog.from_error(f"Lost process {self._shown_pid(message.pid)}", message.error))

    # --- failures ------------------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        forward_failure(event, self.post_message)

    def on_worker_failed(self, message: WorkerFailed) -> None:
        """The one place a failed worker (the app's or a screen's) turns into something the user sees."""
        error = message.worker.error
        if error is None:
            return
        worker = message.worker
        node = worker.node
        if isinstance(node, AttachScreen):
            if node.is_current:
                node.dismiss(AttachFailed(node.pid, error))  # _on_attach_done shows the dialog
            return
        if isinstance(node, ProcessScreen) and worker.group == "reader":
            self.post_message(ProcessScreen.SessionEnded(node.pid, error))
            return
        title = {
            "process-scan": "Cannot list processes",
            "expand": "Cannot expand",
            "eval": "Cannot evaluate",
            "interrupt": "Cannot interrupt",
            "watch-module": "Cannot watch that module",
            "thread-cpu": "Cannot read thread times",
            "profile-start": "Cannot profile",
            "profile-sums": "Cannot sum the profile",
        }.get(worker.name, f"{worker.name} failed")
        if not isinstance(error, PeriscopeError):
            self.log.error(f"worker {worker.name} failed: {error!r}")
        self.push_screen(ErrorDialog.from_error(title, error))

    # --- help and the command palette ----------------------------------------------------------

    def key_sections(self) -> list[KeySection]:
        """Key tables for the help screen: what applies now first, then each screen."""
        sections: list[KeySection] = []
        current = [
            (binding.key, binding.description)
            for binding in (active.binding for active in self.screen.active_bindings.values())
            if binding.description and binding.show
        ]
        sections.append(("Keys that apply now", _dedupe(key_rows(Binding(k, "", d) for k, d in current))))
        sections.append(("Everywhere", key_rows(self.BINDINGS) + [("Ctrl+P", "Command palette")]))
        sections.append(("Process list", key_rows(ProcessListScreen.BINDINGS)))
        sections.append(("Attaching", key_rows(AttachScreen.BINDINGS)))
        sections.append(("Process screen", key_rows(ProcessScreen.BINDINGS)))
        sections.append(("Profile", key_rows(ProfileScreen.BINDINGS) + key_rows(ProfileTable.BINDINGS)))
        for title, bindings in ProcessScreen.pane_bindings():
            sections.append((title, key_rows(bindings)))
        return sections

    def action_help(self) -> None:
        """Show every key binding."""
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.key_sections()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every action once: the screen's own (whichever pane has the focus), the focused pane's,
        switching and detaching, then Textual's own (theme, screenshot) except the duplicates.

        Text-editing keys of the REPL's input and the filter box (delete a word, select a line, ...)
        are keys, not commands: they are left out.
        """
        seen: set[str] = set()

        def fresh(title: str, action: str | None = None) -> bool:
            key = title.casefold()
            if key in seen or (action is not None and f"action:{action}" in seen):
                return False
            seen.add(key)
            if action is not None:
                seen.add(f"action:{action}")
            return True

        def from_binding(binding: Binding, node: object) -> SystemCommand | None:
            if not binding.description or not fresh(binding.description, binding.action):
                return None
            return SystemCommand(
                binding.description,
                f"{binding.key_display or _key_label(binding.key)}: {binding.tooltip or binding.description}",
                lambda node=node, action=binding.action: self.run_action(action, node),
            )

        # The screen's actions, from every pane (the REPL's input shadows their keys, not the commands).
        for binding in type(screen).BINDINGS:
            if isinstance(binding, Binding) and not _is_editing(binding):
                command = from_binding(binding, screen)
                if command is not None:
                    yield command
        screen_keys = {binding.key for binding in type(screen).BINDINGS if isinstance(binding, Binding)}
        for active in screen.active_bindings.values():
            binding, node = active.binding, active.node
            if not active.enabled or node is screen or node is self or binding.key in screen_keys:
                continue  # the screen's own (above), or a pane's key the screen's command already covers
            if _is_editing(binding) or _is_textual_navigation(binding, node):
                continue
            command = from_binding(binding, node)
            if command is not None:
                yield command
        for pid, process_screen in sorted(self.attached.items()):
            if process_screen is not screen:
                yield SystemCommand(f"Switch to {self._shown_pid(pid)}", process_screen.describe(), lambda pid=pid: self.show_process(pid))
            yield SystemCommand(f"Detach from {self._shown_pid(pid)}", process_screen.describe(), lambda pid=pid: self.run_worker(self.detach(pid), name=f"detach-{pid}", exit_on_error=False))
        if not isinstance(screen, ProcessListScreen) and fresh("Process list", "back"):
            yield SystemCommand("Process list", "Back to the list of Python processes (attached processes stay attached)", self.action_process_list)
        if self.attached and fresh("Switch process", "next_process"):
            yield SystemCommand("Switch process", "ctrl+o: the next attached process (or the process list)", self.action_next_process)
        if fresh("Help", "help"):
            yield SystemCommand("Help", "?: every key binding", self.action_help)
        if fresh("Quit", "quit"):
            yield SystemCommand("Quit", "ctrl+q: detach from every process and quit", lambda: self.run_worker(self.action_quit(), name="quit", exit_on_error=False))
        for command in super().get_system_commands(screen):
            title = command.title.casefold()
            if title.startswith("quit") or "keys" in title or not fresh(command.title):
                continue  # periscope's own Quit and Help say it already
            yield command


def _key_label(key: str) -> str:
    return key.split(",")[0]


def _is_textual_navigation(binding: Binding, node: object) -> bool:
    """Whether ``binding`` comes from one of Textual's own widget classes (cursor and scroll keys)."""
    for cls in type(node).__mro__:
        if cls.__module__.startswith("textual.") and any(
            isinstance(own, Binding) and own.action == binding.action for own in cls.__dict__.get("BINDINGS", ())
        ):
            return True
    return False


def _is_editing(binding: Binding) -> bool:
    """Whether ``binding`` is a text-editing key of Textual's TextArea or Input (not a command)."""
    from textual.widgets import Input, TextArea

    return any(binding.action == own.action for own in (*TextArea.BINDINGS, *Input.BINDINGS) if isinstance(own, Binding))


def _owner(pid: int, process: ProcessInfo | None) -> tuple[int, str] | None:
    """(uid, user name) of ``pid``'s owner; None when it cannot be told (the process is gone)."""
    if process is not None:
        return process.uid, process.user
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    import pwd

    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, str(uid)


def _dedupe(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    by_description: dict[str, list[str]] = {}
    for keys, description in rows:
        by_description.setdefault(description, []).append(keys)
    return [(", ".join(keys), description) for description, keys in by_description.items()]
