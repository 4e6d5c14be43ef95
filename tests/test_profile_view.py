"""The Profile view in Pilot against a real busy target: hottest function first, and its keys."""

from __future__ import annotations

import tempfile
from pathlib import Path

from explorer.app import PeriscopeApp
from explorer.screens.profile import ProfileScreen
from tests.profile_targets import HOT_TARGET
from tests.screenshots import SIZE, on_top, wait_until
from widgets.flame_graph import FlameGraph
from widgets.function_detail import FunctionDetailView
from widgets.profile_table import ProfileTable


def _app(pid: int) -> PeriscopeApp:
    return PeriscopeApp(pid=pid, profile=("cpu", 100.0), history_path=Path(tempfile.mkdtemp()) / "history")


async def test_the_profile_view_shows_the_hottest_function_first(spawn):
    target = spawn(HOT_TARGET)
    target.wait_for_line("ready")
    app = _app(target.pid)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_top(app, ProfileScreen), "the Profile view")
        screen = app.screen
        assert isinstance(screen, ProfileScreen)

        def hottest_first() -> bool:
            return bool(screen.rows) and sum(row.self_samples for row in screen.rows) >= 50 and screen.rows[0].function == "hot_loop"

        await wait_until(pilot, hottest_first, "hot_loop at the top with 50 samples", timeout=30)
        table = screen.query_one(ProfileTable)
        assert "hot_loop" in table.get_row_at(0)[3].plain  # what the user sees on the first row
        assert table.selected == screen.rows[0].key
        # The detail pane: hot_loop is called by <module>, and its hot lines come with their source.
        detail = screen.query_one(FunctionDetailView)
        await wait_until(pilot, lambda: detail.detail is not None and detail.detail.key == screen.rows[0].key, "the detail")
        assert detail.detail is not None
        assert detail.detail.callers[0].function == "<module>"
        assert detail.detail.lines and detail.sources[detail.detail.lines[0].lineno] in ("x += 1", "for _ in range(200_000):")

        # The keys: mode, window, thread, sort, icicle, reset.
        await pilot.press("m")
        assert screen.mode == "wall"
        updates = screen.updates
        await wait_until(pilot, lambda: screen.updates > updates + 1, "an update in wall mode")
        assert any(row.function == "housekeeping" for row in screen.rows)  # idle threads count in wall mode
        await pilot.press("t")
        assert screen.thread is not None
        await pilot.press("w")
        assert screen.window is None
        await pilot.press("s")
        assert table.sort_by == "total"
        await pilot.press("f")
        flame = screen.query_one(FlameGraph)
        await wait_until(pilot, lambda: flame.root is not None and flame.root.samples > 0, "the icicle")
        await wait_until(pilot, lambda: "hot_loop" in str(flame.render()), "hot_loop in the icicle")
        assert screen.sampler is not None
        before = screen.sampler.profile.samples
        await pilot.press("r")
        assert screen.sampler.profile.samples < before  # the reset started the profile afresh
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ProfileScreen), "back")
        await wait_until(pilot, lambda: screen.sampler is not None and not screen.sampler.running, "the sampler stopped")


async def test_a_pid_that_is_not_python_is_reported(spawn):
    """Opening the view on a process periscope cannot read ends in the one-line error, in a dialog."""
    target = spawn(argv=["sleep", "60"])
    app = _app(target.pid)
    async with app.run_test(size=SIZE) as pilot:
        from explorer.screens.dialogs import ErrorDialog

        await wait_until(pilot, lambda: on_top(app, ErrorDialog), "the error dialog")
        dialog = app.screen
        assert "Cannot profile" in str(dialog.query_one("#dialog-title").render())
        assert "is not a Python program" in str(dialog.query_one("#message").render())


async def test_the_profile_view_opens_from_a_process_screen_and_is_in_the_palette(spawn):
    """``f`` on an attached process's screen opens its Profile view; the palette lists it there
    and on the process list; Esc comes back to the process screen, still attached."""
    from explorer.screens.process import ProcessScreen
    from explorer.screens.process_list import ProcessListScreen

    target = spawn(HOT_TARGET)
    target.wait_for_line("ready")
    app = PeriscopeApp(pid=target.pid, history_path=Path(tempfile.mkdtemp()) / "history")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "attached", 30)
        process_screen = app.screen
        assert "Profile" in {command.title for command in app.get_system_commands(process_screen)}
        await pilot.press("f")
        await wait_until(pilot, lambda: on_top(app, ProfileScreen), "the Profile view")
        profile = app.screen
        assert isinstance(profile, ProfileScreen)
        await wait_until(pilot, lambda: bool(profile.rows) and profile.rows[0].function == "hot_loop", "hot_loop first", 30)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is process_screen, "back on the process screen")
        assert target.pid in app.attached
        list_screen = next(screen for screen in app.screen_stack if isinstance(screen, ProcessListScreen))
        assert "Profile" in {command.title for command in app.get_system_commands(list_screen)}


EXITS_SOON = '''
import time
def busy_until(deadline):
    x = 0
    while time.monotonic() < deadline:
        x += 1
print("ready", flush=True)
busy_until(time.monotonic() + 2.0)
'''


async def test_the_view_keeps_what_it_sampled_when_the_process_exits(spawn):
    target = spawn(EXITS_SOON)
    target.wait_for_line("ready")
    app = _app(target.pid)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_top(app, ProfileScreen), "the Profile view")
        screen = app.screen
        assert isinstance(screen, ProfileScreen)
        status = screen.query_one("#profile-status")
        await wait_until(pilot, lambda: "the process exited" in str(status.render()), "the exit in the status line", 30)
        assert screen.rows and screen.rows[0].function == "busy_until"
        assert isinstance(app.screen, ProfileScreen)  # no dialog: the profile stays on show
