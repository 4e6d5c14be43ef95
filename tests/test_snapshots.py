"""SVG snapshots of each screen, from the real app attached to real CPython targets (one set per minor).

The "scene" target (tests/screenshots.py) parks its threads at known lines with known values and
lives in a fixed directory, so what the panes show is the same on every run. The app runs with
``mask_noise``: pids, thread ids, CPU figures, frame rates and timings show as ``····``.
Update after a deliberate change with ``pytest tests/test_snapshots.py --snapshot-update`` and
look at the report.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from explorer.app import PeriscopeApp
from explorer.screens.attach import AttachScreen
from explorer.screens.dialogs import ErrorDialog
from explorer.screens.help import HelpScreen
from explorer.screens.process import ProcessScreen
from explorer.screens.process_list import ProcessListScreen
from explorer.versions import minor_name
from tests.screenshots import SCENE_DIR, SIZE, scene_script, on_top, wait_until
from widgets.process_table import ProcessTable
from widgets.repl import ReplPane
from widgets.variables import VariablesTree


@pytest.fixture
def scene(spawn, target_python):
    """Start the scene target with ``args`` (a word that also tells parallel tests' scenes apart)."""

    def start(*args: str, stdin: int | None = subprocess.DEVNULL):
        script = scene_script()
        target = spawn(argv=[target_python, str(script), *args], cwd=str(script.parent), stdin=stdin)
        target.wait_for_line("ready")
        return target

    return start


SIZES = {"80x24": (80, 24), "120x40": (120, 40), "200x50": (200, 50)}
"""The terminal sizes the main screens are snapshotted at: the common default, a roomy one, a wide one."""

sizes = pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))


def app_for(pid: int | None) -> PeriscopeApp:
    return PeriscopeApp(pid=pid, mask_noise=True, history_path=Path(tempfile.mkdtemp()) / "history")


def walk(node: Any):
    yield node
    for child in node.children:
        yield from walk(child)


async def attached(pilot: Pilot[Any]) -> ProcessScreen:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "frames")
    screen = app.screen
    assert isinstance(screen, ProcessScreen)
    tree = screen.query_one(VariablesTree)
    await wait_until(pilot, lambda: ("locals", "largest") in tree.value_paths() and ("module", "config") in tree.value_paths(), "variables")
    await wait_until(pilot, lambda: screen.query_one("ThreadList").row_count == 2, "both threads")
    return screen


@sizes
def test_process_list(snap_compare, scene, target_minor, size):
    """The process list filtered to the scene target of the minor ("python3.15 /tmp/periscope-scene/scene.py list"):
    one attachable row ("✓") of that minor (3.14.10 or 3.15.2), picked with the cursor, the CPU%
    header marked "▼" (the sort column), PPID beside PID, its command line, and below it the verdict
    "can attach (CPython 3.14.10): press Enter" (or 3.15.2). At 80x24 the thread count gives way
    and memory, user and version narrow; the command keeps its column."""
    scene(f"list-{size}")  # the size tells apart the scenes of the other sizes, running in parallel

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, ProcessListScreen)
        table = screen.query_one(ProcessTable)
        # The interpreter's name in the filter: the scene of the other minor may be running too.
        await pilot.press(*f"python{minor_name(target_minor)} {SCENE_DIR / 'scene.py'} list-{size}")
        await wait_until(pilot, lambda: len(table.shown_pids) == 1, "the scene in the list")
        await pilot.press("down")

    assert snap_compare(app_for(None), terminal_size=SIZES[size], run_before=run_before)


@sizes
def test_process_screen_with_stack_and_variables(snap_compare, scene, size):
    """Attached to the scene: the header line (CPU, RSS, threads, GIL, uptime: masked), panes in
    titled borders (Variables bright: it has the focus); threads MainThread and worker; MainThread's
    stack (compute in scene_lib.py:18, then <module> at scene.py:13, with the source
    "time.sleep(3600)" where there is room: at 80x24 the source gives way, the line numbers stay);
    the locals of compute() (values, label, total = 29, largest = 13) and module __main__ with config
    expanded (name, retries, ratio, tags), items and title; "2 modules/functions/classes hidden (a)";
    the idle REPL one input line; the status bar "paused", with no frame rate."""
    target = scene("process")

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = await attached(pilot)
        tree = screen.query_one(VariablesTree)
        node = next(n for n in walk(tree.root) if n.data is not None and n.data.path == ("module", "config"))
        tree.focus()
        tree.move_cursor(node)
        await pilot.press("enter")
        await wait_until(pilot, lambda: len([p for p in tree.value_paths() if p[:2] == ("module", "config")]) == 5, "config's items")
        await pilot.press("p")  # pause: nothing moves while the screenshot is taken

    assert snap_compare(app_for(target.pid), terminal_size=SIZES[size], run_before=run_before)


def test_repl_with_results(snap_compare, scene):
    """The REPL after three evaluations in module __main__: In [1] sorted(config) with its list
    result (expandable), In [2] items[1:] printed and summed, and In [3] 1/0 with its
    ZeroDivisionError traceback."""
    target = scene("repl")

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = await attached(pilot)
        await pilot.press("p")  # pause the panes
        await pilot.press("e")  # the REPL runs in module __main__ until a frame is picked
        for code in ("sorted(config)", "print(items[1:]); sum(items)", "1/0"):
            await pilot.press(*code, "enter")
        repl = screen.query_one(ReplPane)
        await wait_until(pilot, lambda: len(repl.entries) == 3 and not repl.running(), "three results")
        await pilot.pause()
        await wait_until(pilot, lambda: repl.at_end, "the newest output in view")
        # The input gets the focus back after each result; then its cursor is shown steadily
        # (its blinking is presentation noise).
        repl_input = screen.query_one("#repl-input")
        await wait_until(pilot, lambda: repl_input.has_focus, "the focus back in the input")
        repl_input.cursor_blink = False
        # An edit redraws the input line, with the steady cursor, now: not at whichever repaint
        # something else causes (on a loaded machine that decided whether the cursor showed).
        await pilot.press("x", "backspace")
        await pilot.pause()

    assert snap_compare(app_for(target.pid), terminal_size=SIZE, run_before=run_before)


@sizes
def test_waiting_for_the_target(snap_compare, scene, size):
    """Attaching through the main thread while it waits in input(): "Injecting the agent" ticked,
    "Waiting for the target to run Python" current, and each thread's stack read from outside
    (MainThread at "answer = input()", worker in time.sleep); on the right, the selected frame's
    locals (none in <module>) and __main__'s config, items and title, "read from outside"."""
    target = scene("wait-input", stdin=subprocess.PIPE)
    app = app_for(None)

    async def run_before(pilot: Pilot[Any]) -> None:
        app.attach(target.pid, thread=target.pid)
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting" and app.screen.stack_reads >= 1,
            "the waiting state",
        )
        await wait_until(pilot, lambda: app.screen.query_one("ThreadList").row_count == 2, "both threads")
        await wait_until(pilot, lambda: app.screen.locals_reads >= 1, "the values read from outside")

    assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)


def test_error_dialog_for_python_311(snap_compare, spawn, target_minor):
    """A Python 3.11 process picked in the list and Enter pressed: a dialog "Cannot attach to ····"
    (title in red) that says "CPython 3.11: attaching needs 3.14 or newer" and, in green, the fix
    "restart it under CPython 3.14+", with an OK button."""
    scene_script()  # makes the fixed directory
    old = spawn(
        "import time\nprint('ready', flush=True)\ntime.sleep(600)\n",
        python="/usr/bin/python3.11",
        directory=str(SCENE_DIR),
        script_name=f"old_python_{minor_name(target_minor)}.py",  # apart from the other minor's run, in parallel
    )
    old.wait_for_line("ready")
    app = app_for(None)

    async def run_before(pilot: Pilot[Any]) -> None:
        table = app.screen.query_one(ProcessTable)
        await pilot.press(*f"old_python_{minor_name(target_minor)}.py")
        await wait_until(pilot, lambda: table.shown_pids == [old.pid], "the 3.11 process in the list")
        await pilot.press("down", "enter")  # pick the row, then attach
        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the dialog")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, scene):
    """The help screen over an attached process: what periscope does, the keys that apply now
    (pause, REPL, watch module, detach, ...), the keys that work everywhere and each screen's keys."""
    target = scene("help")
    app = app_for(target.pid)

    async def run_before(pilot: Pilot[Any]) -> None:
        await attached(pilot)
        await pilot.press("p")
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: on_top(app, HelpScreen), "the help")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def _tasks_scene() -> Path:
    """The nested-TaskGroup target of tests/test_tasks.py in a fixed directory (stable paths)."""
    import os

    from tests.test_tasks import NESTED

    folder = SCENE_DIR.parent / "periscope-tasks-scene"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tasks_scene.py"
    if not path.exists() or path.read_text() != NESTED:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(NESTED)
        tmp.replace(path)
    return path


def test_tasks_pane_with_a_coroutine_frame_and_its_locals(snap_compare, spawn, target_python):
    """Attached to an asyncio program: the Tasks pane (23 tasks) as an await tree: tg-root, under it
    tg1-r.a and its groups down to leaf tasks, the gatherer and its three children, lock-holder,
    lock-waiter and ticker; the leaf task leaf-r.a.a.a selected, its coroutine stack (sleep in
    tasks.py, then leaf at "await asyncio.sleep(3600)") with leaf() picked, and its locals
    (label = 'r.a.a.a') from the agent; the REPL runs in that frame."""
    script = _tasks_scene()
    target = spawn(argv=[target_python, str(script)], cwd=str(script.parent))
    target.wait_for_line("ready")

    async def run_before(pilot: Pilot[Any]) -> None:
        from widgets.stack_view import StackView
        from widgets.task_list import TaskList

        app = pilot.app
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "frames", timeout=60)
        screen = app.screen
        tasks = screen.query_one(TaskList)
        await wait_until(pilot, lambda: len(tasks.tasks) == 23, "the tasks", timeout=60)
        tasks.focus()
        await pilot.pause()
        while tasks.tasks[tasks.cursor_row].name != "leaf-r.a.a.a":
            await pilot.press("down")
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: [f.function for f in stack.frames] == ["sleep", "leaf"], "the leaf's coroutine stack", timeout=60)
        stack.focus()
        await pilot.press("down")
        tree = screen.query_one(VariablesTree)
        await wait_until(pilot, lambda: ("locals", "label") in tree.value_paths(), "leaf()'s locals", timeout=60)
        await pilot.press("p")

    assert snap_compare(app_for(target.pid), terminal_size=SIZE, run_before=run_before)
