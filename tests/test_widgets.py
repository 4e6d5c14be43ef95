"""periscope's widgets on their own (pure UI: they take model objects and post messages)."""

from __future__ import annotations

from typing import Any

from rich.style import Style
from textual.app import App, ComposeResult
from textual.message import Message

from explorer.discovery import ProcessInfo
from tests.screenshots import wait_until
from widgets.process_table import ProcessTable
from widgets.repl import ReplInput, ReplPane, is_complete
from widgets.stack_view import StackEntry, StackView
from widgets.task_list import TaskList, rows_from_snapshot
from widgets.thread_list import ThreadList, ThreadRow
from widgets.variables import ValueView, VariablesTree


def process(pid: int, cpu: float = 0.0, rss: int = 1 << 20, command: str = "app.py", attachable: bool = True) -> ProcessInfo:
    return ProcessInfo(
        pid=pid, ppid=1, user="alice", uid=1000, cmdline=("/usr/bin/python3.14", command), exe="/usr/bin/python3.14",
        name="python3.14", cpu_percent=cpu, rss=rss, num_threads=2, create_time=1.0, python="3.14.10",
        free_threaded=False, runtime_path="/usr/bin/python3.14", remote_debug_enabled=attachable,
        attachable=attachable, reason=None if attachable else "remote debugging is disabled in this process",
        fix=None if attachable else "restart it without PYTHON_DISABLE_REMOTE_DEBUG",
    )


class Harness(App[None]):
    """Mounts one widget and records the messages it posts."""

    def __init__(self, widget: Any) -> None:
        super().__init__()
        self.widget = widget
        self.messages: list[Message] = []

    def compose(self) -> ComposeResult:
        yield self.widget

    def on_process_table_process_highlighted(self, message: ProcessTable.ProcessHighlighted) -> None:
        self.messages.append(message)

    def on_process_table_attach_requested(self, message: ProcessTable.AttachRequested) -> None:
        self.messages.append(message)

    def on_variables_tree_expand_requested(self, message: VariablesTree.ExpandRequested) -> None:
        self.messages.append(message)

    def on_repl_pane_eval_requested(self, message: ReplPane.EvalRequested) -> None:
        self.messages.append(message)

    def on_thread_list_thread_selected(self, message: ThreadList.ThreadSelected) -> None:
        self.messages.append(message)

    def on_stack_view_frame_selected(self, message: StackView.FrameSelected) -> None:
        self.messages.append(message)

    def on_task_list_task_selected(self, message: TaskList.TaskSelected) -> None:
        self.messages.append(message)


async def test_process_table_updates_rows_in_place_and_keeps_the_cursor_on_its_pid() -> None:
    table = ProcessTable()
    app = Harness(table)
    async with app.run_test() as pilot:
        table.update_processes([process(10, cpu=5), process(20, cpu=50), process(30, cpu=1)])
        assert table.shown_pids == [20, 10, 30]  # CPU, highest first
        table.select_pid(10)
        row_before = table.get_row("10")
        table.update_processes([process(10, cpu=90), process(20, cpu=50), process(30, cpu=1), process(40, cpu=0)])
        assert table.shown_pids == [10, 20, 30, 40]
        assert table.shown_pids[table.cursor_row] == 10  # the cursor followed pid 10 to the top
        assert table.get_row("10")[0] is row_before[0]  # unchanged cells are the same objects: not refilled
        table.sort_by = "memory"
        table.sort_by = "pid"
        assert table.shown_pids == [10, 20, 30, 40] and table.shown_pids[table.cursor_row] == 10
        table.update_processes([process(20), process(30), process(40)])  # 10 exited
        assert table.shown_pids == [20, 30, 40]
        assert table.selected_process is None and not table.show_cursor  # never another process by itself
        table.filter_text = "alice 3.14 app"
        assert len(table.shown_pids) == 3
        table.filter_text = "40"
        assert table.shown_pids == [40] and table.selected_process is None
        await pilot.press("enter")
        await pilot.pause()
        assert not any(isinstance(m, ProcessTable.AttachRequested) for m in app.messages)
        await pilot.press("down")  # the user picks the row
        assert table.selected_process is not None and table.selected_process.pid == 40
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(isinstance(m, ProcessTable.AttachRequested) for m in app.messages), "attach request")
        request = next(m for m in app.messages if isinstance(m, ProcessTable.AttachRequested))
        assert request.process.pid == 40


async def test_thread_list_keeps_its_thread_and_puts_the_main_thread_first() -> None:
    threads = ThreadList()
    app = Harness(threads)

    def row(native_id: int, name: str, main: bool = False, cpu: float = 0.0) -> ThreadRow:
        return ThreadRow(native_id, name, daemon=not main, holds_gil=False, is_main=main, cpu_seconds=cpu, where="f:1")

    async with app.run_test() as pilot:
        threads.update_threads([row(3, "zeta"), row(1, "MainThread", main=True), row(2, "alpha")])
        await pilot.pause()
        assert threads.selected_id == 1
        assert [threads.coordinate_to_cell_key((i, 0)).row_key.value for i in range(3)] == ["1", "2", "3"]
        threads.select_thread(3)
        threads.update_threads([row(1, "MainThread", main=True, cpu=1.5), row(2, "alpha"), row(3, "zeta"), row(4, "beta")])
        assert threads.selected_id == 3 and threads.coordinate_to_cell_key((threads.cursor_row, 0)).row_key.value == "3"
        assert "1.50s" in threads.get_row("1")[4].plain
        threads.mask_noise = True
        assert threads.get_row("1")[2].plain == "····"


async def test_a_table_whose_cells_change_every_frame_keeps_only_a_screen_of_rendered_lines() -> None:
    """DataTable keys its rendered cells by a counter that each cell update moves on: a thread list
    updated at every frame must not keep every frame's renderings (its caches stay near a screen's
    worth, where DataTable's own would grow to 10,000 cells)."""
    threads = ThreadList()
    app = Harness(threads)

    def rows(tick: int) -> list[ThreadRow]:
        return [
            ThreadRow(n, f"worker-{n}", daemon=True, holds_gil=False, is_main=n == 1, cpu_seconds=tick * 0.01 + n, where=f"f:{tick}")
            for n in range(1, 41)
        ]

    async with app.run_test(size=(120, 50)) as pilot:
        for tick in range(150):
            threads.update_threads(rows(tick))
            await pilot.pause()
        bound = ThreadList.RENDER_CACHE_ROWS
        assert 0 < len(threads._cell_render_cache) <= bound * 12
        assert len(threads._row_render_cache) <= bound and len(threads._line_cache) <= bound * 2
        assert 0 < len(threads._row_renderable_cache) <= bound
        assert threads.get_row("1")[4].plain.startswith("2.49")  # the last update is what shows


async def test_stack_view_shows_frames_innermost_first_and_keeps_the_selection() -> None:
    stack = StackView()
    app = Harness(stack)
    frames = [StackEntry("inner", "/src/app/mod.py", 10, "x = 1"), StackEntry("outer", "/src/app/main.py", 3, "inner()")]
    async with app.run_test() as pilot:
        stack.update_frames(frames)
        assert [frame.function for frame in stack.frames] == ["inner", "outer"]
        assert stack.get_row_at(0)[1].plain == "mod.py:10"
        stack.select_frame(1)
        stack.update_frames([StackEntry("deeper", "/src/app/mod.py", 20), *frames])
        assert stack.selected_index == 1 and stack.cursor_row == 1

        # Only the user's choices are FrameSelected: not select_frame, not a shorter stack's clamp.
        stack.select_frame(2)
        stack.update_frames(frames[:1])
        await pilot.pause()
        assert stack.selected_index == 0 and stack.cursor_row == 0
        assert app.messages == []
        stack.update_frames([StackEntry("deeper", "/src/app/mod.py", 20), *frames])
        stack.focus()
        await pilot.press("enter")  # the innermost frame, chosen without moving
        await wait_until(pilot, lambda: app.messages, "a frame selected with Enter")
        assert [(m.index) for m in app.messages] == [0]
        await pilot.press("down")
        await wait_until(pilot, lambda: len(app.messages) == 2, "a frame selected with the cursor")
        assert app.messages[-1].index == 1 and stack.selected_index == 1


async def test_variables_tree_marks_changes_and_loads_children_on_demand() -> None:
    tree = VariablesTree()
    app = Harness(tree)
    async with app.run_test() as pilot:
        tree.show_scope("locals", "Locals of f()", [ValueView("n", "int", "1"), ValueView("items", "list", "[1, 2]", ref=7, length=2)])
        assert tree.changed_paths == set()
        tree.show_scope("locals", "Locals of f()", [ValueView("n", "int", "2"), ValueView("items", "list", "[1, 2]", ref=7, length=2)])
        assert tree.changed_paths == {("locals", "n")}
        tree.show_scope("locals", "Locals of g()", [ValueView("n", "int", "3")], track_changes=False)
        assert tree.changed_paths == set()
        assert set(tree.value_paths()) == {("locals", "n")}

        tree.show_scope("module", "Module __main__", [ValueView("config", "dict", "{...}", ref=9, length=120)])
        node = next(n for n in tree.root.children[1].children if n.data.value.name == "config")
        assert not node.children  # nothing loaded before the user asks
        node.expand()
        await wait_until(pilot, lambda: app.messages, "an expand request")
        request = app.messages[-1]
        assert isinstance(request, VariablesTree.ExpandRequested) and request.ref == 9 and request.page == 0
        assert [str(child.label) for child in node.children] == ["loading…"]
        tree.show_children(node, [ValueView(f"'k{i}'", "int", str(i)) for i in range(100)], more=True)
        assert len(node.children) == 101 and str(node.children[-1].label) == "more…"
        await pilot.pause()
        tree.move_cursor(node.children[-1])
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.messages) == 2, "the next page's request")
        assert app.messages[-1].page == 1
        tree.show_children(node, [ValueView(f"'k{i}'", "int", str(i)) for i in range(100, 120)])
        assert len(node.children) == 120


async def test_variables_tree_keeps_children_while_they_reload_and_marks_the_changed_ones() -> None:
    tree = VariablesTree()
    app = Harness(tree)
    async with app.run_test(size=(60, 10)) as pilot:
        tree.show_scope("module", "Module __main__", [ValueView("state", "dict", "{'a': 1, 'b': 2}", ref=3, length=2)])
        node = tree.root.children[0].children[0]
        node.expand()
        await wait_until(pilot, lambda: app.messages, "an expand request")
        tree.show_children(node, [ValueView("a", "int", "1"), ValueView("b", "int", "2")])
        asked = len(app.messages)
        # The parent changes (here: a new object): its children are asked for again, the old stay.
        tree.show_scope("module", "Module __main__", [ValueView("state", "dict", "{'a': 5, 'b': 2}", ref=4, length=2)])
        await wait_until(pilot, lambda: len(app.messages) > asked, "the children asked for again")
        assert app.messages[-1].ref == 4 and app.messages[-1].page == 0
        assert [child.data.value.preview for child in node.children] == ["1", "2"]
        tree.show_children(node, [ValueView("a", "int", "5"), ValueView("b", "int", "2")])
        assert [child.data.value.preview for child in node.children] == ["5", "2"]
        assert ("module", "state", "a") in tree.changed_paths and ("module", "state", "b") not in tree.changed_paths
        assert node.children[0].data.marked and not node.children[1].data.marked

        # A value too long for the pane ends in an ellipsis, and its type stays in view.
        tree.show_scope("module", "Module __main__", [ValueView("text", "str", "'" + "y" * 200 + "'", length=200)])
        await pilot.pause()
        leaf = tree.root.children[0].children[0]
        label = tree.render_label(leaf, Style(), Style()).plain
        assert label.endswith("…  str[200]") and len(label) <= tree.scrollable_content_region.width


def test_is_complete_follows_the_python_repl() -> None:
    assert is_complete("1 + 1")
    assert is_complete("x = [1,\n 2]")
    assert not is_complete("x = [1,")
    assert not is_complete("for i in range(3):")
    assert not is_complete("for i in range(3):\n    print(i)")
    assert is_complete("for i in range(3):\n    print(i)\n")
    assert is_complete("1 +* 2")  # a syntax error runs, so the target reports it
    assert not is_complete("   ")


async def test_repl_input_runs_complete_code_and_walks_the_history() -> None:
    pane = ReplPane()
    app = Harness(pane)
    async with app.run_test() as pilot:
        pane.history = ["old = 1"]
        repl_input = pane.query_one(ReplInput)
        repl_input.focus()
        await pilot.press(*"if True:", "enter", *"x = 2", "enter")
        assert repl_input.text == "if True:\n    x = 2\n    "
        await pilot.press("enter")  # the empty line ends the block
        await wait_until(pilot, lambda: app.messages, "the eval request")
        request = app.messages[-1]
        assert isinstance(request, ReplPane.EvalRequested)
        assert request.code == "if True:\n    x = 2" and request.eval_in == "module"  # no frame selected
        assert pane.history == ["old = 1", "if True:\n    x = 2"]
        await pilot.press("up")
        assert repl_input.text == "if True:\n    x = 2"
        await pilot.press("up")  # within the two-line entry: to its first line
        assert repl_input.text == "if True:\n    x = 2" and repl_input.cursor_location[0] == 0
        await pilot.press("up")
        assert repl_input.text == "old = 1"
        await pilot.press("down", "down", "down")
        assert repl_input.text == ""
        pane.frame_scope = "f() in MainThread"
        await pilot.press(*"y", "enter")
        await wait_until(pilot, lambda: len(app.messages) == 2, "the second eval request")
        assert app.messages[-1].eval_in == "module"  # a frame to run in, but nobody picked it
        pane.eval_in = "frame"  # what the process screen does when the user picks a frame
        await pilot.press(*"z", "enter")
        await wait_until(pilot, lambda: len(app.messages) == 3, "the third eval request")
        assert app.messages[-1].eval_in == "frame"
        assert pane.entries[-1].scope == "frame f() in MainThread"


async def test_task_list_orders_tasks_as_an_await_tree_and_follows_its_task() -> None:
    from explorer.stacks import FrameInfo
    from explorer.tasks import TaskInfo, TaskSnapshot

    def task(task_id: int, name: str, awaited_by: tuple[int, ...] = ()) -> TaskInfo:
        stack = (FrameInfo("/usr/lib/python3.14/asyncio/tasks.py", "sleep", 716), FrameInfo("/srv/app.py", "work", 7))
        return TaskInfo(task_id, name, 1, 0, "pending", 0, stack, awaited_by, "_asyncio.Future", False)

    snapshot = TaskSnapshot((), (task(3, "leaf", (2,)), task(1, "root"), task(2, "middle", (1,)), task(4, "other")), False)
    rows = rows_from_snapshot(snapshot)
    assert [(row.name, row.depth) for row in rows] == [("root", 0), ("middle", 1), ("leaf", 2), ("other", 0)]
    assert rows[1].where == "work:7 › sleep" and rows[2].awaited_by == "middle"
    # The target's strings go through the caller's escaping.
    from explorer.text import visible

    hostile = TaskSnapshot((), (task(5, "evil\x1b]0;title\x07"),), False)
    assert rows_from_snapshot(hostile, visible)[0].name == "evil\\x1b]0;title\\x07"
    # Tasks awaiting each other still each get one row.
    cycle = TaskSnapshot((), (task(1, "a", (2,)), task(2, "b", (1,))), False)
    assert sorted(row.name for row in rows_from_snapshot(cycle)) == ["a", "b"]

    tasks = TaskList()
    app = Harness(tasks)
    async with app.run_test() as pilot:
        tasks.update_tasks(rows)
        await pilot.pause()
        assert tasks.selected_id == 1
        tasks.focus()
        await pilot.press("down", "down")
        await wait_until(pilot, lambda: tasks.selected_id == 3, "the leaf selected")
        app.messages.clear()
        tasks.update_tasks([rows[3], *rows[:3]])  # reordered: the cursor follows task 3
        assert tasks.tasks[tasks.cursor_row].task_id == 3 and app.messages == []
        tasks.update_tasks([row for row in rows if row.task_id != 3])  # task 3 finished
        await wait_until(pilot, lambda: app.messages, "the task now under the cursor selected")
        assert app.messages[-1].task_id == tasks.selected_id == tasks.tasks[tasks.cursor_row].task_id


PURE_MODULES = ["explorer", "explorer.profile", "explorer.text"]
"""explorer modules widgets may load: plain model objects and the escaping of target strings."""


def test_widgets_load_no_process_or_socket_code() -> None:
    """widgets/ take model objects and post messages: importing them loads none of explorer's
    process, memory, injection or session code (checked in a fresh interpreter), only its plain
    model and text modules."""
    import json
    import subprocess
    import sys

    code = (
        "import importlib, json, pkgutil, sys, widgets\n"
        "for info in pkgutil.iter_modules(widgets.__path__, 'widgets.'): importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('explorer') or m in ('psutil', 'msgpack'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert [name for name in json.loads(out.stdout) if name not in PURE_MODULES] == []
