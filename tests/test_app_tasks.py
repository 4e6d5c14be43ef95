"""The Tasks pane of the process screen, against real asyncio targets, driven with Pilot."""

from __future__ import annotations

import sys

import pytest

from explorer.app import PeriscopeApp
from tests.screenshots import SIZE, wait_until
from tests.test_app import attached_screen, last_result, result_text, type_at_once
from tests.test_tasks import NESTED
from widgets.repl import ReplPane
from widgets.stack_view import StackView
from widgets.task_list import TaskList
from widgets.variables import VariablesTree


@pytest.fixture
def history(tmp_path):
    return tmp_path / "history"


async def test_the_tasks_pane_lists_tasks_as_a_tree_and_shows_a_task_s_coroutine_stack(spawn, target_python, history):
    target = spawn(NESTED, python=target_python)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        task_list = screen.query_one(TaskList)
        await wait_until(pilot, lambda: task_list.display and len(task_list.tasks) == 23, "23 tasks in the pane", timeout=60)
        rows = {row.name: row for row in task_list.tasks}
        assert rows["tg-root"].depth == 0 and rows["tg1-r.a"].depth == 1 and rows["leaf-r.a.b.a"].depth == 3
        order = [row.name for row in task_list.tasks]
        assert order.index("tg-root") < order.index("tg1-r.a") < order.index("tg2-r.a.b") < order.index("leaf-r.a.b.a")
        assert "Tasks (23)" in str(screen.query_one("#tasks-title").render())
        # Select the task blocked on the lock: its coroutine stack replaces the thread's.
        task_list.focus()
        await pilot.pause()
        while task_list.selected_id != rows["lock-waiter"].task_id:
            await pilot.press("down")
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: [f.function for f in stack.frames] == ["Lock.acquire", "_ContextManagerMixin.__aenter__", "blocked"], "the coroutine stack", timeout=60)
        assert stack.frames[-1].source == "async with lock:"
        assert "Coroutine stack of task lock-waiter (pending)" in str(screen.query_one("#stack-title").render())
        # The locals of the coroutine frame picked (from the agent), and the REPL runs there.
        stack.focus()
        await pilot.press("down", "down")
        tree = screen.query_one(VariablesTree)
        await wait_until(pilot, lambda: {("locals", "lock"), ("locals", "held")} <= set(tree.value_paths()), "blocked()'s locals", timeout=60)
        repl = screen.query_one(ReplPane)
        await wait_until(pilot, lambda: repl.eval_in == "frame", "the coroutine frame picked", timeout=60)
        type_at_once(app, "e", "f'{type(lock).__name__} {lock.locked()}'", "enter")
        entry = await last_result(pilot, repl, 1)
        assert entry.scope == "frame blocked() in task lock-waiter" and result_text(entry) == "'Lock True'"
        await pilot.press("escape")
        task_list.focus()
        await pilot.pause()
        # Rows are diffed by task id: a later read keeps the cursor on the same task.
        reads = screen.tasks
        await wait_until(pilot, lambda: screen.tasks is not reads, "another read of the tasks", timeout=60)
        assert task_list.selected_id == rows["lock-waiter"].task_id
        assert task_list.tasks[task_list.cursor_row].name == "lock-waiter"


async def test_a_target_without_asyncio_hides_the_pane_and_says_why_when_asked(spawn, target_python, history):
    target = spawn("import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)\n", python=target_python)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        await wait_until(pilot, lambda: screen.tasks_reason is not None, "a read of the tasks", timeout=60)
        title, pane = screen.query_one("#tasks-title"), screen.query_one("#tasks-pane")
        assert not pane.display and not screen.query_one(TaskList).display
        await pilot.press("k")
        assert pane.display
        assert f"process {target.pid} has not imported asyncio: it has no tasks" in str(title.render())
        assert f"process {target.pid} has not imported asyncio" in str(pane.border_title)  # the pane's titled border


LATE_ASYNCIO = """
import time
print('ready', flush=True)
for _ in range(80):  # a few reads of the tasks find no asyncio first (awake, for the attach)
    time.sleep(0.05)
import asyncio

async def main():
    task = asyncio.create_task(asyncio.sleep(3600), name="late-task")
    await task

asyncio.run(main())
"""


async def test_tasks_show_once_asyncio_is_imported_later_and_the_process_is_opened_once(spawn, target_python, history, monkeypatch):
    from explorer.remote import RemoteProcess

    opened = []
    original = RemoteProcess.open.__func__

    def counting_open(cls, *args, **kwargs):
        if sys._getframe(1).f_code.co_name == "read_tasks":
            opened.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(RemoteProcess, "open", classmethod(counting_open))
    target = spawn(LATE_ASYNCIO, python=target_python)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=history)
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        await wait_until(pilot, lambda: screen.tasks_reason is not None, "a read that finds no asyncio", timeout=60)
        await wait_until(
            pilot, lambda: screen.tasks is not None and any(t.name == "late-task" for t in screen.tasks.tasks), "the late task", timeout=60
        )
        assert len(opened) == 1  # the reader looked for asyncio again each second in the process it had open
