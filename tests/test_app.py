"""The TUI against real CPython 3.14 and 3.15 targets, driven with Pilot: attach, threads, variables, REPL,
interrupt, detach, the attach flow's waiting state, and the error dialogs users meet."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import unicodedata
from functools import partial
from pathlib import Path

import psutil
import pytest

from explorer.app import PeriscopeApp
from explorer.screens.attach import AttachScreen, default_connector
from explorer.screens.dialogs import ErrorDialog
from explorer.screens.help import HelpScreen
from explorer.screens.process import ProcessScreen, load_history
from explorer.screens.process_list import ProcessListScreen
from explorer.attach import attach
from textual import events
from textual.widgets import Static

from tests.screenshots import SIZE, on_top, wait_until
from tests.test_inject import request_state
from widgets.process_table import ProcessTable
from widgets.repl import ReplEntry, ReplInput, ReplPane
from widgets.stack_view import StackView
from widgets.status_bar import StatusBar
from widgets.thread_list import ThreadList
from widgets.variables import VariablesTree
from widgets.verdict import AttachVerdict

DEMO = Path(__file__).resolve().parent.parent / "explorer" / "demo_target.py"


@pytest.fixture
def demo(spawn, target_python):
    """A private copy of the demo target, running (it prints a line per round with --verbose).

    It lives in a directory of its own, whose name tells it apart in the process list from the
    demos that tests running in parallel start."""
    target = spawn(DEMO.read_text(encoding="utf-8"), script_name="demo_target.py", args=["--verbose"])
    target.wait_for_line("round")
    return target


@pytest.fixture
def history(tmp_path) -> Path:
    return tmp_path / "history"


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


def agent_threads(pid: int) -> int:
    """How many threads the agent runs in ``pid`` (its thread is named periscope-agent)."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as handle:
                names.append(handle.read().strip())
        except OSError:
            continue
    return sum(1 for name in names if "periscope" in name)


async def attached_screen(pilot) -> ProcessScreen:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "the process screen")
    screen = app.screen
    assert isinstance(screen, ProcessScreen)
    return screen


async def test_process_list_filters_sorts_and_keeps_the_cursor_on_its_pid(demo, spawn, target_python, history):
    other = spawn("import time\nprint('ready', flush=True)\ntime.sleep(600)\n", script_name="periscope_other.py")
    other.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ProcessListScreen)
        table = screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: {demo.pid, other.pid} <= set(table.processes), "both targets in the list")

        # Filter as you type: letters go to the filter box, the table follows at once.
        unique = demo.script.parent.name
        await pilot.press(*unique)
        await wait_until(pilot, lambda: table.shown_pids == [demo.pid], "only the demo shown")
        assert screen.query_one("#filter").value == unique
        verdict = screen.query_one(AttachVerdict)
        assert verdict.process is None and "No process selected" in str(verdict.render())  # the user picked none yet
        await pilot.press("down")
        assert verdict.process is not None and verdict.process.pid == demo.pid
        assert "can attach" in str(verdict.render())

        # Clear the filter; put the cursor on the demo; rescans and sorts keep it there.
        await pilot.press("escape")
        await wait_until(pilot, lambda: {demo.pid, other.pid} <= set(table.shown_pids), "filter cleared")
        while table.selected_process is None or table.selected_process.pid != demo.pid:
            await pilot.press("down" if table.shown_pids.index(demo.pid) > table.cursor_row else "up")
        scans = screen.scans
        await pilot.press("ctrl+s", "ctrl+r")  # sort by memory, scan now
        assert screen.sort_by == "memory"
        await wait_until(pilot, lambda: screen.scans >= scans + 2, "two more scans")
        assert table.selected_process is not None and table.selected_process.pid == demo.pid
        assert table.shown_pids[table.cursor_row] == demo.pid
        await pilot.press("ctrl+s")
        assert screen.sort_by == "pid"
        shown, processes = table.shown_pids, table.processes
        roots = [pid for pid in shown if processes[pid].ppid not in shown]
        assert roots == sorted(roots)  # by pid, each process right after its parent (a tree)
        assert all(shown.index(processes[pid].ppid) < shown.index(pid) for pid in shown if pid not in roots)
        assert table.shown_pids[table.cursor_row] == demo.pid
        await pilot.press("ctrl+s")
        assert screen.sort_by == "cpu" and table.shown_pids[table.cursor_row] == demo.pid


async def test_attach_select_thread_expand_evaluate_interrupt_detach(demo, history):
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        list_screen = app.screen
        table = list_screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: demo.pid in table.processes, "the demo in the list")
        table.select_pid(demo.pid)
        await pilot.press("enter")
        screen = await attached_screen(pilot)
        assert agent_threads(demo.pid) >= 1

        # Threads: the demo's three, by name; select the feeder and see its stack.
        threads = screen.query_one(ThreadList)
        await wait_until(pilot, lambda: {"MainThread", "feeder", "cruncher"} <= {t.name for t in threads.threads.values()}, "threads")
        feeder = next(t for t in threads.threads.values() if t.name == "feeder")
        assert feeder.daemon is True
        threads.focus()
        while threads.selected_id != feeder.native_id:
            await pilot.press("down")
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: [f.function for f in stack.frames[:2]] == ["slow_source", "feeder"], "the feeder's stack")
        assert stack.frames[0].source == "time.sleep(delay)"
        variables = screen.query_one(VariablesTree)
        await wait_until(pilot, lambda: ("locals", "delay") in variables.value_paths(), "slow_source's locals")
        assert variables.value_paths()[("locals", "delay")].preview == "0.2"

        # Expand a module variable: children load on demand.
        node = next(n for n in walk(variables.root) if n.data is not None and n.data.path == ("module", "settings"))
        assert not any(child.data and child.data.value for child in node.children)
        variables.focus()
        variables.move_cursor(node)
        await pilot.press("enter")
        await wait_until(pilot, lambda: ("module", "settings", "'batch_size'") in variables.value_paths() or ("module", "settings", "batch_size") in variables.value_paths(), "settings expanded")

        # Evaluate in the module (where the REPL starts), then in the selected frame.
        await pilot.press("e")
        repl = screen.query_one(ReplPane)
        assert screen.query_one(ReplInput).has_focus
        assert repl.eval_in == "module"
        await pilot.press(*"settings['batch_size'] * 2", "enter")
        await wait_until(pilot, lambda: repl.entries and repl.entries[-1].state != "running", "the first result")
        entry = repl.entries[-1]
        assert entry.state == "done"
        assert str(entry.query_one(".repl-result").render()) == "10"
        await pilot.press("ctrl+t")
        assert repl.eval_in == "frame"
        await pilot.press(*"delay + 1", "enter")
        await wait_until(pilot, lambda: len(repl.entries) == 2 and repl.entries[-1].state != "running", "the frame result")
        assert str(repl.entries[-1].query_one(".repl-result").render()) == "1.2"
        assert "slow_source" in repl.entries[-1].scope

        # An exception shows its traceback; a running loop stops on Ctrl+C.
        await pilot.press(*"1/0", "enter")
        await wait_until(pilot, lambda: len(repl.entries) == 3 and repl.entries[-1].state != "running", "the traceback")
        assert repl.entries[-1].state == "error"
        assert "ZeroDivisionError" in str(repl.entries[-1].query_one(".repl-error").render())
        await pilot.press("ctrl+t")
        await pilot.press(*"while True: pass", "enter", "enter")
        await wait_until(pilot, lambda: len(repl.entries) == 4, "the loop started")
        looping: ReplEntry = repl.entries[-1]
        assert looping.state == "running"
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: looping.state != "running", "the interrupt")
        assert looping.state == "interrupted"
        assert load_history(history)[-1] == "while True: pass"

        # Detach: back to the list, and the agent leaves the target.
        await pilot.press("escape")  # out of the REPL
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessListScreen) and not app.attached, "detached")
        await wait_until(pilot, lambda: agent_threads(demo.pid) == 0, "the agent gone from the target")
    assert demo.proc.poll() is None


def type_at_once(app: PeriscopeApp, *keys: str) -> None:
    """Queue key presses all at once, as a terminal delivers keys typed fast or while the app is
    busy (``pilot.press`` waits for the app to settle after each key, which hides ordering bugs).
    Each argument is a key name ("e", "ctrl+t", "enter") or a string of characters to type."""
    for key in keys:
        if key in ("enter", "ctrl+t", "escape") or len(key) == 1:
            presses = [key]
        else:
            presses = list(key)
        for press in presses:
            if len(press) == 1:
                name = press if press.isalnum() else unicodedata.name(press).lower().replace(" ", "_").replace("-", "_")
                event = events.Key(name, press)
            else:
                event = events.Key(press, "\r" if press == "enter" else None)
            app.post_message(event)


def scope_label(repl: ReplPane) -> str:
    """The line above the REPL input that says where code runs."""
    return str(repl.query_one("#repl-scope").render())


async def last_result(pilot, repl: ReplPane, count: int) -> ReplEntry:
    await wait_until(pilot, lambda: len(repl.entries) == count and repl.entries[-1].state != "running", f"result {count}")
    return repl.entries[-1]


def result_text(entry: ReplEntry) -> str:
    shown = entry.query(".repl-result") or entry.query(".repl-error")
    return str(shown.first().render()) if shown else ""


async def test_repl_runs_in_the_module_until_a_frame_is_picked_and_ctrl_t_switches_at_once(demo, history):
    """The REPL starts in module __main__ (the main thread sits in threading's code, where the
    demo's globals are not defined); picking a frame in the stack view moves it there; Ctrl+T
    switches back and forth, also when it arrives in one burst with ``e``, the code and Enter."""
    app = PeriscopeApp(pid=demo.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        repl = screen.query_one(ReplPane)
        main = screen.query_one(StackView)
        await wait_until(pilot, lambda: main.frames and main.frames[0].function == "Condition.wait", "main waits in threading")
        assert scope_label(repl).startswith("runs in module __main__")
        type_at_once(app, "e", "stats.total >= 0", "enter")
        entry = await last_result(pilot, repl, 1)
        assert entry.scope == "module __main__" and result_text(entry) == "True"

        # Pick the feeder's frame 1, feeder(), in the stack view: the REPL now runs there.
        await pilot.press("escape")
        threads = screen.query_one(ThreadList)
        feeder = next(t for t in threads.threads.values() if t.name == "feeder")
        threads.focus()
        while threads.selected_id != feeder.native_id:
            await pilot.press("down")
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: [f.function for f in stack.frames[:2]] == ["slow_source", "feeder"], "the feeder's stack")
        assert scope_label(repl).startswith("runs in module __main__")  # a thread is no frame
        stack.focus()
        await pilot.press("down")
        await wait_until(pilot, lambda: repl.eval_in == "frame", "the frame picked")
        assert scope_label(repl).startswith("runs in frame feeder() in feeder")

        # One burst: e, Ctrl+T, the code, Enter. It runs in the module: no 'produced' there.
        type_at_once(app, "e", "ctrl+t", "'produced' in dir()", "enter")
        entry = await last_result(pilot, repl, 2)
        assert entry.scope == "module __main__" and result_text(entry) == "False"
        assert scope_label(repl).startswith("runs in module __main__")
        # Ctrl+T right behind Enter does not reach back to the code before it; then in the frame.
        type_at_once(app, "'produced' in dir()", "enter", "ctrl+t", "'produced' in dir()", "enter")
        await wait_until(pilot, lambda: len(repl.entries) == 4 and not repl.running(), "two more results")
        before, after = repl.entries[-2:]
        assert before.scope == "module __main__" and result_text(before) == "False"
        assert after.scope == "frame feeder() in feeder" and result_text(after) == "True"
        assert scope_label(repl).startswith("runs in frame feeder() in feeder")


async def test_module_variables_show_data_and_hide_modules_functions_classes_until_asked(demo, history):
    app = PeriscopeApp(pid=demo.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        tree = screen.query_one(VariablesTree)
        await wait_until(pilot, lambda: ("module", "stats") in tree.value_paths(), "module variables")
        module = {path[1] for path in tree.value_paths() if path[0] == "module" and len(path) == 2}
        assert {"APP_NAME", "settings", "numbers", "recent_totals", "stop", "stats"} == module
        title = str(tree.root.children[1].label)
        assert title.startswith("Module __main__ · ") and "modules/functions/classes hidden (a)" in title
        hidden = int(title.split(" · ")[1].split()[0])
        assert hidden >= 15  # 7 modules, the Stats class, 7 functions

        await pilot.press("a")
        await wait_until(pilot, lambda: ("module", "add_numbers") in tree.value_paths(), "definitions shown")
        names = [child.data.path[1] for child in tree.root.children[1].children]
        assert names[:6] == ["APP_NAME", "settings", "numbers", "recent_totals", "stop", "stats"]  # data first
        assert {"math", "Stats", "feeder", "threading"} <= set(names[6:]) and len(names) == 6 + hidden
        assert str(tree.root.children[1].label) == "Module __main__"

        commands = {command.title: command for command in app.get_system_commands(screen)}
        assert "Show/hide modules, functions, classes" in commands
        app.call_later(commands["Show/hide modules, functions, classes"].callback)  # as the palette runs it
        await wait_until(pilot, lambda: ("module", "add_numbers") not in tree.value_paths(), "definitions hidden again")


async def test_periscope_pid_attaches_straight_away_and_quit_detaches(demo, history):
    app = PeriscopeApp(pid=demo.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        assert screen.pid == demo.pid
        # The status bar shows the stream's data rate (the session counts the bytes it reads).
        status = screen.query_one(StatusBar)
        await wait_until(pilot, lambda: re.search(r"data \d+(\.\d)? (B|KiB|MiB)/s", str(status.render())), "the data rate")
        assert status.bytes_per_second is not None and status.bytes_per_second > 0
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: on_top(app, HelpScreen), "the help screen")
        assert "Detach" in app.screen.text() and "Pause/resume" in app.screen.text()
        await pilot.press("escape")
        await pilot.press("p")
        assert screen.paused
        applied = screen.frames_applied
        latest = screen.latest
        await wait_until(pilot, lambda: screen.latest is not latest, "a frame while paused")
        assert screen.frames_applied == applied
        await pilot.press("p")
        assert not screen.paused and screen.frames_applied > applied
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: agent_threads(demo.pid) == 0, "the agent gone after quit")


async def test_two_processes_at_once_and_switching(demo, spawn, target_python, history):
    second = spawn(argv=[target_python, str(DEMO), "--verbose"])
    second.wait_for_line("round")
    app = PeriscopeApp(pid=demo.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await attached_screen(pilot)
        app.attach(second.pid)
        await wait_until(pilot, lambda: second.pid in app.attached and app.screen is app.attached[second.pid], "the second process")
        await wait_until(pilot, lambda: app.attached[second.pid].frames_applied >= 1, "frames from the second")
        await pilot.press("ctrl+o")  # wraps to the process list
        assert isinstance(app.screen, ProcessListScreen)
        await pilot.press("ctrl+o")
        assert app.screen is app.attached[demo.pid]
        await pilot.press("ctrl+o")
        assert app.screen is app.attached[second.pid]
        commands = [command.title for command in app.get_system_commands(app.screen)]
        assert f"Switch to {demo.pid}" in commands and f"Detach from {second.pid}" in commands
        assert "Detach" in commands and "Pause/resume" in commands
        await pilot.press("d")
        await wait_until(pilot, lambda: second.pid not in app.attached, "the second detached")
        assert set(app.attached) == {demo.pid}


async def test_python_311_target_shows_a_dialog_with_the_fix(spawn, history):
    old = spawn("import time\nprint('ready', flush=True)\ntime.sleep(600)\n", python="/usr/bin/python3.11")
    old.wait_for_line("ready")
    app = PeriscopeApp(pid=old.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the error dialog")
        dialog = app.screen
        assert "3.11" in dialog.message
        assert dialog.fix and "CPython 3.14 or 3.15" in dialog.fix
        await pilot.press("enter")
        assert isinstance(app.screen, ProcessListScreen)

        # The same process from the list: the verdict says why, Enter shows the dialog.
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: old.pid in table.processes, "the 3.11 process in the list")
        table.select_pid(old.pid)
        await wait_until(pilot, lambda: "cannot attach" in str(app.screen.query_one(AttachVerdict).render()), "the verdict")
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the dialog from the list")
        assert "CPython 3.14 or 3.15" in (app.screen.fix or "")


async def test_remote_debugging_disabled_shows_a_dialog_with_the_fix(spawn, history):
    target = spawn(
        "import time\nprint('ready', flush=True)\ntime.sleep(600)\n", env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"}
    )
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the error dialog")
        dialog = app.screen
        assert "disabled" in dialog.message
        assert dialog.fix and "PYTHON_DISABLE_REMOTE_DEBUG" in dialog.fix
    assert agent_threads(target.pid) == 0


async def test_an_error_raised_with_its_fix_shows_the_fix_apart(spawn, history):
    """Another session's agent is in the target: the dialog says so, and below, apart, what to do
    (the fix is the error's own field: the words are not taken back out of one message)."""
    target = spawn("import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n")
    target.wait_for_line("ready")
    first = await attach(target.pid, rate=0)
    try:
        app = PeriscopeApp(pid=target.pid, history_path=history)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the error dialog")
            dialog = app.screen
            assert dialog.title_text == f"Cannot attach to {target.pid}"
            assert dialog.message == f"process {target.pid}: another periscope agent is attached to this process"
            assert dialog.fix == "detach that session first"
            assert str(dialog.query_one("#message", Static).render()) == dialog.message
            assert str(dialog.query_one("#fix", Static).render()) == "fix: detach that session first"
            await pilot.press("enter")
            assert isinstance(app.screen, ProcessListScreen)
        assert (await first.eval("1 + 1")).value.repr == "2"  # the first session goes on
    finally:
        await first.detach()


BLOCKED = """
import threading, time

def busy():
    while True:
        sum(range(1000))
        time.sleep(0.01)

threading.Thread(target=busy, name="busy", daemon=True).start()
print("ready", flush=True)
command = input()
"""


async def test_waiting_for_a_blocked_thread_shows_stacks_and_can_switch_thread(spawn, history):
    """The main thread waits in input(): attaching shows every stack; 't' injects via another thread."""
    target = spawn(BLOCKED, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        app.attach(target.pid, thread=target.pid)  # through the main thread, blocked in input()
        await wait_until(pilot, lambda: isinstance(app.screen, AttachScreen) and app.screen.query(ThreadList), "the attach screen")
        attach = app.screen
        assert isinstance(attach, AttachScreen)
        threads = attach.query_one(ThreadList)
        await wait_until(pilot, lambda: len(threads.threads) == 2, "both threads from outside")
        main = next(t for t in threads.threads.values() if t.is_main)
        busy = next(t for t in threads.threads.values() if not t.is_main)
        assert main.where == "<module>" and busy.name == "busy"
        await wait_until(pilot, lambda: attach.step == "waiting", "the waiting state")
        assert attach.query_one(StackView).frames[0].source == "command = input()"
        threads.focus()
        threads.select_thread(busy.native_id)
        await pilot.press("t")
        screen = await attached_screen(pilot)
        assert screen.session.injected_via == busy.native_id


async def test_cancel_while_waiting_returns_to_the_list(spawn, history):
    """Esc while waiting: back to the list, and the request is taken back at once (not when the
    attach timeout runs out); quitting while waiting does the same."""
    target = spawn("import time\nprint('ready', flush=True)\nline = input()\n", stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        app.attach(target.pid)
        await wait_until(pilot, lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting", "waiting")
        assert app.screen.query_one(StackView).frames[0].source == "line = input()"
        assert request_state(target.pid)[0] == 1
        await pilot.press("escape")
        await wait_until(pilot, lambda: on_top(app, ProcessListScreen), "back to the list")
        assert not app.attached
        await wait_until(pilot, lambda: request_state(target.pid)[0] == 0, "the request withdrawn", timeout=2)

        app.attach(target.pid)
        await wait_until(pilot, lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting", "waiting again")
        assert request_state(target.pid)[0] == 1
        await pilot.press("ctrl+q")
    deadline = time.monotonic() + 2
    while request_state(target.pid)[0] != 0:
        assert time.monotonic() < deadline, "the request is still pending after quitting"
        await asyncio.sleep(0.02)
    assert psutil.pid_exists(target.pid)


async def test_a_target_that_never_runs_python_ends_in_a_dialog_not_a_hang(spawn, history):
    target = spawn("print('ready', flush=True)\nline = input()\n", stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, connector=partial(default_connector, timeout=2.0), history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the timeout dialog")
        dialog = app.screen
        assert dialog.title_text == f"Cannot attach to {target.pid}"
        assert "blocked" in dialog.message and "press t" in (dialog.fix or "")
        assert "--via" not in dialog.message + (dialog.fix or "")  # the CLI's words stay in the CLI
        await pilot.press("enter")
        assert isinstance(app.screen, ProcessListScreen)


SERVING = """
def serve():
    greeting = "hello"
    count = 0
    print("ready", flush=True)
    while True:
        line = input()
        count += 1

serve()
"""


async def test_waiting_shows_locals_read_from_outside_then_the_agents_live_values(spawn, target_python, history):
    """The only thread waits in input(): the waiting screen shows its frame's locals read from
    outside, marked so; once a line arrives the agent starts and the process screen shows the
    same variables live."""
    target = spawn(SERVING, python=target_python, stdin=subprocess.PIPE)
    target.wait_for_line("ready")
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        app.attach(target.pid, thread=target.pid)
        await wait_until(pilot, lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting", "waiting")
        attach = app.screen
        assert isinstance(attach, AttachScreen)
        tree = attach.query_one("#attach-locals", VariablesTree)
        await wait_until(pilot, lambda: ("locals", "greeting") in tree.value_paths(), "the locals read from outside")
        paths = tree.value_paths()
        assert paths[("locals", "greeting")].preview == "'hello'" and paths[("locals", "count")].preview == "0"
        scope = next(node for node in tree.root.children if node.data and node.data.path == ("locals",))
        assert str(scope.label) == "Locals of serve · read from outside, not live"
        assert target.proc.stdin is not None
        target.proc.stdin.write(b"one\n")
        target.proc.stdin.flush()
        screen = await attached_screen(pilot)
        variables = screen.query_one(VariablesTree)
        await wait_until(
            pilot,
            lambda: getattr(variables.value_paths().get(("locals", "count")), "preview", None) == "1",
            "the agent's live value of count",
        )
        scope = next(node for node in variables.root.children if node.data and node.data.path == ("locals",))
        assert "outside" not in str(scope.label)
