"""The REPL and the values panes of the TUI against real CPython 3.14 and 3.15 targets, driven with
Pilot: Tab completion, Escape leaving the input, names defined in a frame kept for later lines,
one SyntaxError, None not echoed, the value inspector, cut labels that keep their type, expanded
children kept and marked while they reload, a ``<module>`` frame's globals listed once, and the
picked frame pinned by identity."""

from __future__ import annotations

import asyncio

from rich.style import Style

from explorer.app import PeriscopeApp
from explorer.screens.inspector import ValueInspector
from explorer.screens.process import ProcessScreen
from tests.screenshots import SIZE, on_top, wait_until
from tests.test_agent_repl import CALLS, wait_for_a_new_call
from tests.test_app import attached_screen, last_result, result_text, walk
from widgets.repl import ReplEntry, ReplInput, ReplPane
from widgets.stack_view import StackView
from widgets.thread_list import ThreadList
from widgets.variables import PLACEHOLDER, VariablesTree

TARGET = '''
import sys, threading, time

LONG_TEXT = "start-" + "x" * 300 + "-end"
class Raw:
    def __repr__(self):
        return "\\x1b]0;owned\\x07" + "q" * 300

ESCAPED = Raw()
state = {"ticks": 0, "fixed": "same"}

def worker_loop():
    local_count = 5
    sys.stdout.write(f"native {threading.get_native_id()}\\n")
    while True:
        time.sleep(0.05)

threading.Thread(target=worker_loop, name="worker", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    state["ticks"] += 1
    time.sleep(0.1)
'''


def node_at(tree: VariablesTree, *path: str):  # type: ignore[no-untyped-def]
    return next((n for n in walk(tree.root) if n.data is not None and n.data.path == path), None)


async def pick_thread(pilot, screen: ProcessScreen, name: str) -> None:  # type: ignore[no-untyped-def]
    """Move the thread list's cursor to the thread called ``name``."""
    threads = screen.query_one(ThreadList)
    await wait_until(pilot, lambda: any(t.name == name for t in threads.threads.values()), f"the {name} thread")
    wanted = next(t for t in threads.threads.values() if t.name == name)
    threads.focus()
    while threads.selected_id != wanted.native_id:
        await pilot.press("down")


def has_error(entry: ReplEntry) -> bool:
    return bool(entry.query(".repl-error"))


async def test_completion_none_a_single_syntax_error_and_escape_leaving_the_input(spawn, tmp_path):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=tmp_path / "history")
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        repl = screen.query_one(ReplPane)
        repl_input = screen.query_one(ReplInput)
        await pilot.press("e")
        assert repl_input.has_focus

        # One match: the word is completed; several: what they share, and the list.
        await pilot.press(*"LONG_T", "tab")
        await wait_until(pilot, lambda: repl_input.text == "LONG_TEXT", "LONG_T completed")
        await pilot.press(*".upp", "tab")
        await wait_until(pilot, lambda: repl_input.text == "LONG_TEXT.upper", "an attribute of a str completed")
        await pilot.press("ctrl+c")  # clears the input (nothing runs)
        await pilot.press(*"sta", "tab")
        await wait_until(pilot, lambda: "state" in repl.completions and "staticmethod" in repl.completions, "the matches of sta")
        assert repl_input.text == "stat"
        listing = str(repl.query_one("#repl-completions").render())
        assert "state" in listing and "staticmethod" in listing
        await pilot.press("ctrl+c")
        # Tab at the start of a line still indents.
        await pilot.press("tab")
        assert repl_input.text.strip() == "" and repl_input.text != ""
        await pilot.press("ctrl+c")

        # A statement, and None, echo nothing; print's output shows.
        await pilot.press(*"print('hello')", "enter")
        entry = await last_result(pilot, repl, 1)
        assert entry.state == "done" and not entry.query(".repl-result")
        assert "hello" in str(entry.query_one(".repl-output").render())
        await pilot.press(*"None", "enter")
        entry = await last_result(pilot, repl, 2)
        assert entry.state == "done" and result_text(entry) == ""

        # A SyntaxError once, as Python shows it, with no frame of the agent.
        await pilot.press(*"x = = 1", "enter")
        entry = await last_result(pilot, repl, 3)
        shown = str(entry.query_one(".repl-error").render())
        assert shown.count("SyntaxError") == 1 and "<periscope-agent>" not in shown and "During handling" not in shown

        # Escape leaves the input, not the screen; Shift+Tab too.
        await pilot.press("escape")
        assert not repl_input.has_focus and isinstance(app.screen, ProcessScreen)
        await pilot.press("e")
        assert repl_input.has_focus
        await pilot.press("shift+tab")
        assert not repl_input.has_focus and isinstance(app.screen, ProcessScreen)


async def test_names_defined_in_a_frame_are_kept_for_later_lines(spawn, tmp_path):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=tmp_path / "history")
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        await pick_thread(pilot, screen, "worker")
        stack = screen.query_one(StackView)
        await wait_until(pilot, lambda: stack.frames and stack.frames[0].function == "worker_loop", "the worker's stack")
        stack.focus()
        await pilot.press("enter")
        repl = screen.query_one(ReplPane)
        await wait_until(pilot, lambda: repl.eval_in == "frame", "the frame picked")

        await pilot.press("e", *"probe = 123", "enter")
        entry = await last_result(pilot, repl, 1)
        assert entry.state == "done", result_text(entry)
        await pilot.press(*"def double(x):", "enter", *"return x * 2", "enter", "enter")
        entry = await last_result(pilot, repl, 2)
        assert entry.state == "done", result_text(entry)
        await pilot.press(*"double(probe) + local_count", "enter")
        entry = await last_result(pilot, repl, 3)
        assert "worker_loop" in entry.scope and result_text(entry) == "251"
        # The session's names are listed apart from the frame's locals.
        variables = screen.query_one(VariablesTree)
        shown = variables.value_paths()
        assert ("session", "probe") in shown and ("session", "double") in shown
        assert ("locals", "probe") not in shown and ("locals", "local_count") in shown
        # Completion sees the frame's locals and the names defined there.
        await pilot.press(*"prob", "tab")
        await wait_until(pilot, lambda: screen.query_one(ReplInput).text == "probe", "probe completed in the frame")


async def test_the_inspector_cut_labels_children_kept_and_marked_and_module_frames(spawn, tmp_path):
    target = spawn(TARGET)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=tmp_path / "history")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await attached_screen(pilot)
        variables = screen.query_one(VariablesTree)
        await wait_until(pilot, lambda: node_at(variables, "module", "LONG_TEXT") is not None, "LONG_TEXT listed")

        # The main thread runs the module's code: its locals are the module's globals, once.
        scope = variables._scopes["locals"]
        assert "Locals of <module>: module __main__" in str(scope.label) and not scope.children

        # A long value is cut with an ellipsis, and its type stays in view.
        node = node_at(variables, "module", "LONG_TEXT")
        label = variables.render_label(node, Style(), Style()).plain
        assert "…" in label and label.rstrip(" *").endswith("str[310]")
        assert len(label) <= variables.scrollable_content_region.width

        # v opens the inspector on the whole repr; Escape closes it.
        variables.focus()
        variables.move_cursor(node)
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, ValueInspector) and app.screen.whole is not None, "the whole repr")
        assert app.screen.whole == repr("start-" + "x" * 300 + "-end")
        await pilot.press("escape")
        await wait_until(pilot, lambda: on_top(app, ProcessScreen), "the inspector closed")

        # The target's control characters are written out, never sent to the terminal.
        variables.move_cursor(node_at(variables, "module", "ESCAPED"))
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, ValueInspector) and app.screen.whole is not None, "the escaped repr")
        shown = app.screen.query_one("#inspector-text").text
        assert app.screen.whole.startswith("\x1b]0;owned\x07")  # as the target's __repr__ returned it
        assert "\x1b" not in shown and "\x07" not in shown and shown.startswith("\\x1b]0;owned\\x07q")
        await pilot.press("escape")
        await wait_until(pilot, lambda: on_top(app, ProcessScreen), "the inspector closed")

        # An expanded dict that changes keeps its children shown while they reload, and marks the changed one.
        node = node_at(variables, "module", "state")
        variables.move_cursor(node)
        await pilot.press("enter")
        await wait_until(pilot, lambda: node_at(variables, "module", "state", "ticks") is not None, "state expanded")
        placeholders = []

        def ticks_marked() -> bool:
            placeholders.extend(c for c in node.children if str(c.label) == PLACEHOLDER)
            return ("module", "state", "ticks") in variables.changed_paths

        await wait_until(pilot, ticks_marked, "the changed child marked")
        assert not placeholders
        assert ("module", "state", "fixed") not in variables.changed_paths
        ticks = node_at(variables, "module", "state", "ticks")
        assert ticks.data.marked

        # Enter on a leaf inspects it too.
        variables.move_cursor(node_at(variables, "module", "state", "fixed"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: on_top(app, ValueInspector), "the inspector on a leaf")
        assert "'same'" in app.screen.query_one("#inspector-text").text
        await pilot.press("escape")



async def test_the_picked_frame_is_followed_as_the_stack_moves_and_a_later_call_is_reported(spawn, tmp_path):
    """Pick work() while it is the innermost frame: when inner() runs above it the selection
    stays on work(), and the REPL runs in that very call; once it returned, the REPL runs in the
    later call of work() at the same place and says so."""
    target = spawn(CALLS)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=tmp_path / "history")
    async with app.run_test(size=SIZE) as pilot:
        screen = await attached_screen(pilot)
        await pick_thread(pilot, screen, "looper")
        stack = screen.query_one(StackView)
        # From the start of a call on (its 4 s ahead: on a loaded machine, a call caught late
        # had returned before the steps below were through).
        await asyncio.to_thread(wait_for_a_new_call, target)
        await wait_until(pilot, lambda: [f.function for f in stack.frames[:2]] == ["work", "looper"], "work() innermost", timeout=30)
        stack.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.pinned_frame is not None, "work() picked")
        picked = screen.pinned_frame
        await pilot.press("e", *"call", "enter")
        entry = await last_result(pilot, repl := screen.query_one(ReplPane), 1)
        first = int(result_text(entry))
        assert "work" in entry.scope and "later call" not in str(entry.query_one(".repl-prompt").render())

        # inner() comes above work(): the selection moves with work(), the REPL stays in that call.
        await wait_until(pilot, lambda: stack.frames and stack.frames[0].function == "inner", "inner() above work()")
        await wait_until(pilot, lambda: stack.selected_index == 1 and screen.selected_frame == 1, "the selection on work()")
        assert stack.frames[1].function == "work" and screen.pinned_frame == picked
        screen.query_one(ReplInput).focus()
        await pilot.press(*"call", "enter")
        entry = await last_result(pilot, repl, 2)
        assert int(result_text(entry)) == first

        # That call returns; the next call of work() runs at the same place.
        target.wait_for_line(f"call {first // 10 + 1}", timeout=30)
        await pilot.pause(0.5)  # the line comes just before the call: let it get into work()
        await pilot.press(*"call", "enter")
        entry = await last_result(pilot, repl, 3)
        assert int(result_text(entry)) > first, result_text(entry)
        assert "ran in a later call of work()" in str(entry.query_one(".repl-prompt").render())
