"""The TUI at 80x24 (the most common default terminal), driven with Pilot against real targets: the
stack keeps its line numbers, the idle REPL is one input line, every pane is reachable with Tab and
has a titled border, the header line shows the process's figures, a paused screen shows no frame
rate, the process list marks its sort column, and the command palette offers each action once, from
every pane, without text-editing commands."""

from __future__ import annotations

import re

import pytest
from textual.widgets import TextArea

from explorer.app import PeriscopeApp
from explorer.screens.process_list import ProcessListScreen
from tests.screenshots import scene_script, wait_until
from tests.test_app import attached_screen
from widgets.process_header import ProcessHeader
from widgets.process_table import ProcessTable
from widgets.repl import ReplInput, ReplPane
from widgets.stack_view import StackView, fit_location
from widgets.status_bar import StatusBar
from widgets.thread_list import ThreadList
from widgets.variables import VariablesTree

SMALL = (80, 24)

DEEP = '''
import threading, time

def a_function_with_a_rather_long_name(depth):
    if depth:
        return a_function_with_a_rather_long_name(depth - 1)
    while True:
        time.sleep(0.05)

threading.Thread(target=a_function_with_a_rather_long_name, args=(3,), name="worker", daemon=True).start()
print("ready", flush=True)
a_function_with_a_rather_long_name(2)
'''


@pytest.fixture
def history(tmp_path):
    return tmp_path / "history"


@pytest.fixture
def deep(spawn):
    target = spawn(DEEP, script_name="a_module_with_a_long_file_name_for_the_stack.py")
    target.wait_for_line("ready")
    return target


def test_fit_location_keeps_the_line_number() -> None:
    assert fit_location("threading.py", 1012, 20) == "threading.py:1012"
    assert fit_location("threading.py", 1012, 12) == "…ing.py:1012"
    assert fit_location("a" * 50, 7, 10).endswith(":7") and len(fit_location("a" * 50, 7, 10)) == 10


async def test_at_80x24_the_stack_keeps_its_line_numbers_and_the_idle_repl_is_one_line(deep, history):
    app = PeriscopeApp(pid=deep.pid, history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        screen = await attached_screen(pilot)
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: len(stack.frames) >= 3, "the main thread's stack")
        await pilot.pause()
        shown = [str(key.value) for key in stack.columns]
        assert "where" in shown and "function" in shown
        assert "source" not in shown  # the source text gave way first
        for row in range(stack.row_count):
            cell = stack.get_row_at(row)[shown.index("where")].plain
            assert re.search(r":\d+$", cell), cell  # the line number is always there
            assert stack.column_width("where") >= len(cell)
        # The whole table fits its pane: nothing is cut off on the right.
        assert sum(column.get_render_width(stack) for column in stack.ordered_columns) <= stack.size.width

        # The idle REPL is one input line (inside its border).
        repl_pane = screen.query_one("#repl-pane")
        assert repl_pane.has_class("-idle") and repl_pane.outer_size.height == 3
        assert "e: type Python" in str(repl_pane.border_subtitle)  # says how to use it while idle
        assert screen.query_one(ReplInput).size.height == 1
        assert screen.query_one(StackView).size.height >= 3

        # Every pane is reachable with Tab (the REPL's input is the last: there Tab is the REPL's own key),
        # each in a titled border.
        reached = {type(app.focused).__name__}
        for _ in range(8):
            if isinstance(app.focused, ReplInput):
                break
            await pilot.press("tab")
            reached.add(type(app.focused).__name__)
        assert {"ThreadList", "StackView", "VariablesTree", "ReplInput"} <= reached, reached
        titles = {pane.id: str(pane.border_title) for pane in screen.query(".pane") if pane.display}
        assert titles["threads-pane"] == "Threads" and titles["variables-pane"] == "Variables"
        assert titles["stack-pane"].startswith("Stack of ") and titles["repl-pane"] == "REPL"

        # Used, the REPL grows; the stack pane still shows rows.
        await pilot.press("e", *"1 + 1", "enter")
        repl = screen.query_one(ReplPane)
        await wait_until(pilot, lambda: len(repl.entries) == 1 and not repl.running(), "the result")
        await pilot.pause()
        assert not repl_pane.has_class("-idle") and repl_pane.outer_size.height > 3
        assert stack.size.height >= 2


async def test_the_header_line_and_the_status_bar_while_paused(deep, history):
    app = PeriscopeApp(pid=deep.pid, history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        screen = await attached_screen(pilot)
        header = screen.query_one(ProcessHeader)
        await wait_until(pilot, lambda: header.figures is not None, "the process's figures")
        await wait_until(pilot, lambda: len(header.cpu_history) >= 2, "two CPU figures for the sparkline")
        text = str(header.render())
        assert re.search(r"CPU \d+% [▁▂▃▄▅▆▇█]{2,} · RSS [\d.]+ \w+ · \d+ threads · GIL \S+ · up \d+", text), text
        assert header.figures.threads >= 2  # main, worker (and the agent)

        status = screen.query_one(StatusBar)
        await wait_until(pilot, lambda: "frames/s" in str(status.render()), "a live status")
        await pilot.press("p")
        assert screen.paused
        rendered = str(status.render())
        assert "paused" in rendered and "frames/s" not in rendered and "latency" not in rendered
        await pilot.press("p")
        assert "frames/s" in str(status.render())


async def test_the_process_list_marks_its_sort_column_and_fits_80_columns(deep, history):
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        assert isinstance(screen, ProcessListScreen)
        table = screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: deep.pid in table.processes, "the target in the list")

        def headers() -> list[str]:
            return [str(column.label) for column in table.ordered_columns]

        assert "CPU% ▼" in headers() and "PPID" in headers()
        await pilot.press("ctrl+s")
        assert "MEMORY ▼" in headers() or any(h.startswith("MEMORY") and h.endswith("▼") for h in headers())
        assert "CPU%" in headers()
        await pilot.press("ctrl+s")
        assert "PID ▲" in headers()
        assert sum(column.get_render_width(table) for column in table.ordered_columns) <= table.size.width
        keys = [str(c.key.value) for c in table.ordered_columns]
        for index in range(table.row_count):  # a narrowed MEMORY column keeps whole figures ("61.3M")
            cell = table.get_row_at(index)[keys.index("memory")].plain
            assert re.fullmatch(r"[\d.]+ ?(B|KiB|MiB|GiB|TiB|K|M|G|T)", cell), cell
            assert len(cell) <= table.column_width("memory")
        table.select_pid(deep.pid)
        row = table.get_row_at(table.cursor_row)
        assert table.processes[deep.pid].ppid == int(row[[str(c.key.value) for c in table.ordered_columns].index("ppid")].plain)


async def test_the_command_palette_offers_each_action_once_from_every_pane(deep, history):
    app = PeriscopeApp(pid=deep.pid, history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        screen = await attached_screen(pilot)
        editing = {binding.description for binding in TextArea.BINDINGS if getattr(binding, "description", "")}
        for pane in (ThreadList, StackView, VariablesTree, ReplInput):
            screen.query_one(pane).focus()
            await pilot.pause()
            titles = [command.title for command in app.get_system_commands(screen)]
            folded = [title.casefold() for title in titles]
            assert len(folded) == len(set(folded)), (pane.__name__, titles)
            assert {"Pause/resume", "Watch module", "Detach", "Process list", "Help", "Quit"} <= set(titles), (pane.__name__, titles)
            assert not editing & set(titles), (pane.__name__, editing & set(titles))
            assert "Home" not in titles and "Page Left" not in titles

        # From the REPL's input, the palette pauses the screen.
        screen.query_one(ReplInput).focus()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Pause/resume")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.paused, "paused from the palette")


async def test_ctrl_k_in_the_repl_deletes_to_the_end_of_the_line_and_ctrl_l_clears(deep, history):
    app = PeriscopeApp(pid=deep.pid, history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        screen = await attached_screen(pilot)
        repl = screen.query_one(ReplPane)
        await pilot.press("e", *"2 * 21", "enter")
        await wait_until(pilot, lambda: len(repl.entries) == 1 and not repl.running(), "the result")
        repl_input = screen.query_one(ReplInput)
        await wait_until(pilot, lambda: repl_input.has_focus, "the focus back in the input")
        await pilot.press(*"abc def", "left", "left", "left", "ctrl+k")
        assert repl_input.text == "abc " and len(repl.entries) == 1  # one meaning: the line, not the transcript
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: not repl.entries, "the transcript cleared")


def test_scene_script_is_importable() -> None:
    assert scene_script().exists()


async def test_the_process_list_puts_a_child_right_after_its_parent(spawn, history):
    from tests.test_cli_ps import PARENT

    parent = spawn(PARENT, script_name="periscope_layout_parent.py")
    child_pid = int(parent.wait_for_line("ready").split()[1])
    app = PeriscopeApp(history_path=history)
    async with app.run_test(size=SMALL) as pilot:
        table = app.screen.query_one(ProcessTable)
        await wait_until(pilot, lambda: {parent.pid, child_pid} <= set(table.shown_pids), "parent and child in the list")
        keys = [str(c.key.value) for c in table.ordered_columns]
        for sort in ("cpu", "memory", "pid"):
            app.screen.sort_by = sort
            await pilot.pause()
            shown = table.shown_pids
            assert shown.index(child_pid) == shown.index(parent.pid) + 1, (sort, shown)
            child_row = table.get_row_at(shown.index(child_pid))
            assert child_row[keys.index("command")].plain.lstrip().startswith("└ ")
            assert child_row[keys.index("ppid")].plain == str(parent.pid)
            assert not table.get_row_at(shown.index(parent.pid))[keys.index("command")].plain.lstrip().startswith("└")
