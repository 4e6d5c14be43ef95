"""The TUI attaches only to the process the user chose: Enter acts on a visible, highlighted row only,
the list's cursor never moves on to another process by itself (after Esc, a failed attach or a lost
process), and a process of another user is attached to only after a yes. Real targets, Pilot."""

from __future__ import annotations

import textwrap

import pytest

from explorer.app import PeriscopeApp
from explorer.screens.attach import AttachScreen
from explorer.screens.dialogs import ConfirmDialog, ErrorDialog
from explorer.screens.process import ProcessScreen
from explorer.screens.process_list import ProcessListScreen
from tests.attacker import as_user, needs_root
from tests.screenshots import SIZE, on_top, wait_until
from tests.test_app import agent_threads, attached_screen
from tests.test_security_root import stranger  # noqa: F401 (a fixture)
from widgets.process_table import ProcessTable
from widgets.verdict import AttachVerdict

SLEEPER = "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.05)\n"


@pytest.fixture
def history(tmp_path):
    return tmp_path / "history"


def sleeper(spawn, name: str):
    target = spawn(SLEEPER, script_name=name)
    target.wait_for_line("ready")
    return target


async def test_enter_with_a_filter_that_matches_nothing_attaches_to_nothing(spawn, history):
    target = sleeper(spawn, "periscope_safety_filter.py")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ProcessListScreen)
        table = screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: target.pid in table.processes, "the target in the list")
        # Nothing is highlighted until the user moves the cursor: Enter does nothing.
        assert table.selected_process is None and not table.show_cursor
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ProcessListScreen)

        table.select_pid(target.pid)
        assert table.selected_process is not None and table.selected_process.pid == target.pid
        await pilot.press(*"zz-no-such-process-zz")
        await wait_until(pilot, lambda: table.row_count == 0, "nothing shown")
        assert "No Python process matches" in str(screen.query_one(AttachVerdict).render())
        assert table.selected_process is None
        await pilot.press("enter")
        for _ in range(5):
            await pilot.pause()
        assert isinstance(app.screen, ProcessListScreen), app.screen
        assert agent_threads(target.pid) == 0

        # The filter shows other rows but not the selected one: still nothing is highlighted.
        await pilot.press("escape", *"python")
        await wait_until(pilot, lambda: table.row_count >= 1, "rows again")
        if target.pid not in table.shown_pids:
            assert table.selected_process is None and not table.show_cursor
        # Cleared, the filter shows the chosen process again, with the cursor on it.
        await pilot.press("escape")
        await wait_until(pilot, lambda: target.pid in table.shown_pids, "the target shown again")
        assert table.selected_process is not None and table.selected_process.pid == target.pid
        assert table.shown_pids[table.cursor_row] == target.pid


async def test_the_cursor_returns_to_the_process_just_left_after_escape(spawn, history):
    target = sleeper(spawn, "periscope_safety_escape.py")
    other = sleeper(spawn, "periscope_safety_other.py")
    app = PeriscopeApp(pid=target.pid, history_path=history)  # periscope PID: the list had no cursor
    async with app.run_test(size=SIZE) as pilot:
        await attached_screen(pilot)
        await pilot.press("escape")
        await wait_until(pilot, lambda: on_top(app, ProcessListScreen), "the list")
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: {target.pid, other.pid} <= set(table.shown_pids), "both in the list")
        assert table.selected_process is not None and table.selected_process.pid == target.pid
        assert table.shown_pids[table.cursor_row] == target.pid
        # Enter shows the same process again: never another one.
        await pilot.press("enter")
        screen = await attached_screen(pilot)
        assert screen.pid == target.pid
        assert agent_threads(other.pid) == 0


async def test_the_list_is_not_rescanned_while_a_process_screen_covers_it(spawn, history):
    """Scanning every process of the machine for a list nobody sees costs CPU all the while one
    is attached: the list rescans again, at once, when it is back on top."""
    from explorer.screens.process_list import SCAN_INTERVAL

    target = sleeper(spawn, "periscope_safety_covered.py")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        list_screen = app.screen
        table = list_screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: target.pid in table.processes, "the target in the list")
        table.select_pid(target.pid)
        await pilot.press("enter")
        await attached_screen(pilot)
        await pilot.pause(0.5)  # a scan that had already started when the screen was covered
        scans = list_screen.scans
        await pilot.pause(SCAN_INTERVAL * 2.5)
        assert list_screen.scans == scans
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is list_screen and list_screen.scans > scans, "a scan on return", timeout=SCAN_INTERVAL)


async def test_after_a_failed_attach_the_cursor_stays_on_that_process(spawn, history):
    old = spawn("import time\nprint('ready', flush=True)\ntime.sleep(600)\n", python="/usr/bin/python3.11", script_name="periscope_safety_old.py")
    old.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: old.pid in table.processes, "the 3.11 process in the list")
        table.select_pid(old.pid)
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the dialog")
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ProcessListScreen), "the list")
        scans = app.screen.scans
        await wait_until(pilot, lambda: app.screen.scans > scans, "a new scan")
        assert table.selected_process is not None and table.selected_process.pid == old.pid


async def test_after_lost_process_the_cursor_is_on_nothing(spawn, history):
    target = sleeper(spawn, "periscope_safety_lost.py")
    other = sleeper(spawn, "periscope_safety_bystander.py")
    app = PeriscopeApp(pid=target.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await attached_screen(pilot)
        target.proc.kill()
        target.proc.wait()
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the Lost process dialog")
        assert app.screen.title_text.startswith("Lost process")
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ProcessListScreen), "the list")
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: other.pid in table.shown_pids and target.pid not in table.processes, "a scan without the lost process")
        assert table.selected_process is None and not table.show_cursor
        await pilot.press("enter")
        for _ in range(5):
            await pilot.pause()
        assert isinstance(app.screen, ProcessListScreen)
        assert agent_threads(other.pid) == 0


@needs_root
async def test_attaching_to_another_users_process_asks_first(spawn, stranger, history):  # noqa: F811
    uid, python, scripts = stranger
    script = scripts / "periscope_safety_foreign.py"
    script.write_text(textwrap.dedent(SLEEPER), encoding="utf-8")
    script.chmod(0o644)
    target = spawn(argv=[*as_user(uid), python, str(script)], cwd="/")
    target.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: target.pid in table.processes, "the other user's process in the list")
        table.select_pid(target.pid)
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ConfirmDialog), "the question")
        assert "user" in app.screen.title_text
        await pilot.press("n")
        await wait_until(pilot, lambda: on_top(app, ProcessListScreen), "back in the list")
        assert agent_threads(target.pid) == 0

        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ConfirmDialog), "the question again (the answer was no)")
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, (AttachScreen, ProcessScreen)), "attaching")
        await attached_screen(pilot)
        assert agent_threads(target.pid) >= 1
        # Detached and attached again: asked once is enough.
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessListScreen) and not app.attached, "detached")
        await pilot.press("enter")
        await attached_screen(pilot)
