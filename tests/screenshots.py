"""``python -m tests.screenshots`` (``make screenshots``): SVG screenshots of the real app for the README.

Each screenshot runs periscope against the demo target (explorer/demo_target.py under CPython
3.14), drives it with Pilot as a person would, waits until the screen shows what it should, and
saves ``screenshots/NAME.svg``. The module also holds what the TUI tests share: the "scene"
target (threads parked at known lines with known values, for snapshot tests) and ``wait_until``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "screenshots"
SIZE = (130, 40)
"""Terminal size of screenshots and snapshot tests (columns, rows)."""

SCENE_DIR = Path(tempfile.gettempdir()) / "periscope-scene"
"""A fixed directory, so paths shown in snapshots are the same on every run."""

SCENE_LIB = '''\
"""Functions of the scene target (kept out of __main__ so its variables have no addresses)."""
import threading
import time


def worker(limit):
    """The 'worker' thread: wakes up often (so it can run the agent), always at the same line."""
    polls = 0
    while True:
        polls += 1
        time.sleep(0.05)


def compute(values, label):
    """The main thread: parked in a sleep after computing a total."""
    total = sum(values)
    largest = max(values)
    time.sleep(3600)


def start():
    threading.Thread(target=worker, args=(10,), name="worker", daemon=True).start()
'''

SCENE = '''\
"""periscope's snapshot scene: two threads parked at known lines, with known values."""
import sys

import scene_lib

config = {"name": "scene", "retries": 3, "ratio": 0.5, "tags": ("alpha", "beta")}
items = [3, 5, 8, 13]
title = "periscope"
scene_lib.start()
print("ready", flush=True)
if "wait-input" in sys.argv:
    answer = input()
scene_lib.compute(items, title)
'''


def scene_script() -> Path:
    """Write the scene target into SCENE_DIR (idempotent) and return the script's path."""
    SCENE_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in (("scene_lib.py", SCENE_LIB), ("scene.py", SCENE)):
        path = SCENE_DIR / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return SCENE_DIR / "scene.py"


async def wait_until(pilot: Pilot[Any], condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Let the app run until ``condition()`` is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


def on_top(app: Any, screen_type: type) -> bool:
    """Whether ``app``'s top screen is a ``screen_type`` that has mounted (its children composed):
    a screen is on top a moment before its widgets exist."""
    return isinstance(app.screen, screen_type) and app.screen.is_mounted


# --- the screenshots ---------------------------------------------------------------------------


def _demo_python() -> str:
    from explorer.pythons import find_target_python

    return find_target_python()


def start_demo() -> subprocess.Popen[bytes]:
    """Start the demo target and wait until its threads run."""
    from explorer.commands.app import start_demo as start

    return start()


async def _process_list(pilot: Pilot[Any], demo_pid: int) -> None:
    """The demo and a copy started with remote debugging disabled: the refused one picked, its reason and fix below."""
    from explorer.screens.process_list import ProcessListScreen
    from widgets.process_table import ProcessTable

    screen = pilot.app.screen
    assert isinstance(screen, ProcessListScreen)
    table = screen.query_one(ProcessTable)
    await wait_until(pilot, lambda: screen.scans >= 2, "two process scans")
    await pilot.press(*"demo_target")
    await wait_until(pilot, lambda: len(table.shown_pids) >= 2, "the demo and the refused copy in the list")
    refused = next(pid for pid in table.shown_pids if not table.processes[pid].attachable)
    for _ in range(len(table.shown_pids) + 1):
        await pilot.press("down")
        if table.selected_process is not None and table.selected_process.pid == refused:
            break


async def _attached(pilot: Pilot[Any]) -> None:
    from explorer.screens.process import ProcessScreen

    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 3, "frames")


async def _process_screen(pilot: Pilot[Any], demo_pid: int) -> None:
    from explorer.screens.process import ProcessScreen
    from widgets.stack_view import StackView
    from widgets.variables import VariablesTree

    await _attached(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ProcessScreen)
    stack = screen.query_one(StackView)
    await wait_until(pilot, lambda: any(frame.function == "main" for frame in stack.frames), "the main thread's stack")
    stack.focus()
    while stack.frames[stack.selected_index].function != "main":
        await pilot.press("down")
    tree = screen.query_one(VariablesTree)
    await wait_until(pilot, lambda: ("locals", "total") in tree.value_paths(), "main()'s locals")
    await wait_until(pilot, lambda: ("module", "stats") in tree.value_paths(), "module variables")
    tree.focus()
    node = next(n for n in _walk(tree.root) if n.data is not None and n.data.path == ("module", "stats"))
    tree.move_cursor(node)
    await pilot.press("enter")
    await wait_until(pilot, lambda: ("module", "stats", "total") in tree.value_paths(), "stats expanded")
    tree.scroll_home(animate=False)


async def _repl(pilot: Pilot[Any], demo_pid: int) -> None:
    from explorer.screens.process import ProcessScreen
    from widgets.repl import ReplPane

    await _attached(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ProcessScreen)
    await pilot.press("e")  # the REPL runs in module __main__ until a frame is picked
    for code in ("stats.total, len(recent_totals)", "settings['limits']"):
        await pilot.press(*code, "enter")
    repl = screen.query_one(ReplPane)
    await wait_until(pilot, lambda: len(repl.entries) == 2 and not repl.running(), "the results")


async def _waiting(pilot: Pilot[Any], demo_pid: int) -> None:
    from explorer.screens.attach import AttachScreen

    app = pilot.app
    await wait_until(
        pilot,
        lambda: isinstance(app.screen, AttachScreen) and app.screen.step == "waiting" and app.screen.stack_reads > 0,
        "the waiting state",
    )


async def _tasks(pilot: Pilot[Any], server_pid: int) -> None:
    from explorer.screens.process import ProcessScreen
    from widgets.stack_view import StackView
    from widgets.task_list import TaskList
    from widgets.variables import VariablesTree

    await _attached(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, ProcessScreen)
    tasks = screen.query_one(TaskList)
    await wait_until(pilot, lambda: sum(row.where.startswith("handle") for row in tasks.tasks) >= 6, "requests in flight")
    await pilot.press("p")  # pause: the picture of one moment
    tasks.focus()
    await pilot.pause()
    stack = screen.query_one(StackView)
    tree = screen.query_one(VariablesTree)
    for attempt in range(6):
        # A request of the paused picture may end before its locals arrive (it was up to 5 s
        # old): then the next one.
        if attempt:
            tasks.focus()
            await pilot.press("down")
        while not tasks.tasks[tasks.cursor_row].where.startswith("handle"):
            await pilot.press("down")
        await wait_until(pilot, lambda: len(stack.frames) > 1, "the request's coroutine stack")
        stack.focus()
        await pilot.press("down")  # handle(): the request's own code
        try:
            await wait_until(pilot, lambda: ("locals", "path") in tree.value_paths(), "handle()'s locals", timeout=6)
            break
        except AssertionError:
            if attempt == 5:
                raise
    tasks.focus()


async def _profile(pilot: Pilot[Any], demo_pid: int) -> None:
    from explorer.screens.profile import ProfileScreen

    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProfileScreen), "the Profile view")
    screen = app.screen
    assert isinstance(screen, ProfileScreen)
    await wait_until(
        pilot,
        lambda: sum(row.self_samples for row in screen.rows) >= 300 and screen.rows[0].function in ("Tokenizer.split_words", "count_words"),
        "the busy service's hottest function at the top",
        timeout=30,
    )
    updates = screen.updates
    await wait_until(pilot, lambda: screen.updates > updates, "the detail of is_prime")


def _walk(node: Any) -> Any:
    yield node
    for child in node.children:
        yield from _walk(child)


SHOTS: dict[str, tuple[str, Callable[[Pilot[Any], int], Awaitable[None]]]] = {
    "process-list": ("list", _process_list),
    "process-screen": ("attach", _process_screen),
    "process-screen-80x24": ("attach", _process_screen),
    "repl": ("attach", _repl),
    "waiting-for-target": ("waiting", _waiting),
    "tasks": ("server", _tasks),
    "profile": ("profile", _profile),
}
"""name -> (how the app starts, what to do before the screenshot)."""


def take(name: str, demo_pid: int, waiting_pid: int | None = None, server_pid: int | None = None, busy_pid: int | None = None) -> Path:
    """Run the app, drive it, and save ``screenshots/NAME.svg``."""
    from textual._doc import take_svg_screenshot  # what pytest-textual-snapshot uses too

    from explorer.app import PeriscopeApp

    start, drive = SHOTS[name]
    pid = {"list": None, "attach": demo_pid, "waiting": waiting_pid, "server": server_pid, "profile": busy_pid}[start]
    profile = ("cpu", 100.0) if start == "profile" else None
    app = PeriscopeApp(pid=pid, history_path=Path(tempfile.mkdtemp()) / "history", profile=profile)

    async def run_before(pilot: Pilot[Any]) -> None:
        await drive(pilot, server_pid if start == "server" else demo_pid)

    size = (80, 24) if name.endswith("-80x24") else SIZE
    svg = take_svg_screenshot(app=app, terminal_size=size, run_before=run_before)
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.svg"
    path.write_text(svg)
    return path


def _start_refused_demo() -> subprocess.Popen[bytes]:
    """The demo with remote debugging disabled: listed, but periscope cannot attach to it."""
    from explorer.commands.app import demo_script

    env = {**os.environ, "PYTHON_DISABLE_REMOTE_DEBUG": "1"}
    return subprocess.Popen(
        [_demo_python(), str(demo_script())], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )


def _start_blocked_demo() -> subprocess.Popen[bytes]:
    """A demo-like target whose threads never run Python (main in input(), worker asleep)."""
    script = Path(tempfile.mkdtemp(prefix="periscope-waiting-")) / "blocked_service.py"
    script.write_text(
        textwrap.dedent(
            '''\
            """A service whose threads are all blocked in C: attaching has to wait."""
            import threading, time

            def housekeeping():
                time.sleep(3600)

            threading.Thread(target=housekeeping, name="housekeeping", daemon=True).start()
            command = input("command> ")
            '''
        )
    )
    return subprocess.Popen(
        [_demo_python(), str(script)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _start_loaded_server() -> tuple[Any, Any]:
    """The uvicorn app of the tests (tests.third_party) with a bounded loopback load on it."""
    from tests import targets
    from tests.third_party import UVICORN_APP, LoopbackLoad, venv_with

    # Requests of 5 s: a task picked in the list is still there when its locals arrive.
    server = targets.spawn(UVICORN_APP, python=venv_with(_demo_python(), "uvicorn==0.54.0"), script_name="service.py", args=["5"])
    port = int(server.wait_for_line("port").split()[1])
    return server, LoopbackLoad(port, clients=12, requests=20000, seconds=90).start()


BUSY_SERVICE = '''\
"""A report builder: two workers tokenize, count and checksum documents; the others idle."""
import hashlib, threading, time, zlib


class Tokenizer:
    def split_words(self, text):
        words, word = [], []
        for char in text:
            if char.isalnum():
                word.append(char)
            elif word:
                words.append("".join(word))
                word = []
        return words


def count_words(words):
    counts = {}
    for word in words:
        counts[word.lower()] = counts.get(word.lower(), 0) + 1
    return counts


def checksum(counts):
    digest = hashlib.sha256()
    for word in sorted(counts):
        digest.update(word.encode())
    return zlib.crc32(digest.digest())


def build_report(document):
    words = Tokenizer().split_words(document)
    return checksum(count_words(words))


def worker(document):
    while True:
        build_report(document)


def heartbeat():
    while True:
        time.sleep(0.5)


text = "The quick brown fox, 42 lazy dogs; and a report on periscope. " * 200
for name in ("worker-1", "worker-2"):
    threading.Thread(target=worker, args=(text,), name=name, daemon=True).start()
threading.Thread(target=heartbeat, name="heartbeat", daemon=True).start()
while True:
    time.sleep(1)
'''


def _start_busy_service() -> subprocess.Popen[bytes]:
    """A CPU-bound target for the Profile view's screenshot."""
    folder = Path(tempfile.gettempdir()) / "periscope-busy"  # fixed: the path shows in the screenshot
    folder.mkdir(exist_ok=True)
    script = folder / "report_builder.py"
    script.write_text(BUSY_SERVICE)
    return subprocess.Popen([_demo_python(), str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_threads(pid: int, count: int, timeout: float = 10.0) -> None:
    import psutil

    deadline = time.monotonic() + timeout
    while psutil.Process(pid).num_threads() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not start {count} threads")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """Regenerate every screenshot (or the ones named on the command line)."""
    names = (argv if argv is not None else sys.argv[1:]) or list(SHOTS)
    demo = start_demo()
    refused = _start_refused_demo()
    blocked = _start_blocked_demo()
    busy = _start_busy_service()
    server = load = None
    try:
        _wait_for_threads(blocked.pid, 2)
        _wait_for_threads(busy.pid, 4)
        if "tasks" in names:
            server, load = _start_loaded_server()
        for name in names:
            path = take(name, demo.pid, blocked.pid, server.pid if server is not None else None, busy.pid)
            print(f"wrote {path.relative_to(ROOT)}")
    finally:
        if load is not None:
            load.stop()
        for process in (demo, refused, blocked, busy):
            process.kill()
            process.wait()
        if server is not None:
            server.stop()
        shutil.rmtree(Path(blocked.args[1]).parent, ignore_errors=True)  # the blocked service's script
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
