"""The TUI: how fast a key reaches the screen under a busy stream, and what periscope costs idle.

Figures, not assertions (``python -m tests.bench tui``):

* key-to-screen latency: the app (headless) attached to a 3.14 target with 100 threads while the
  agent streams 10 frames a second; each Down/Up key (posted as the terminal driver posts it)
  moves the thread list's cursor, which re-renders the stack and variables panes; timed from the
  key until the screen refresh that shows the new thread has completed (goal: under 100 ms);
* periscope's own CPU: the real ``periscope PID`` command in a terminal (tmux), attached to an
  idle target at the TUI's default rate, measured with psutil over 10 s (goal: under 5% of a core).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests import targets
from tests.bench import load_average

PRESSES = 60
CPU_WINDOW = 10.0

HUNDRED_THREADS = '''
import threading, time

def worker(n):
    counter = 0
    payload = {"n": n, "items": list(range(10)), "name": f"worker-{n}"}
    while True:
        counter += 1
        time.sleep(0.1)

for i in range(99):
    threading.Thread(target=worker, args=(i,), name=f"worker-{i}", daemon=True).start()
print("ready", flush=True)
worker(-1)
'''

IDLE = '''
import threading, time
settings = {"mode": "idle"}
def housekeeping():
    while True:
        time.sleep(0.5)
threading.Thread(target=housekeeping, name="housekeeping", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.5)
'''


async def _key_latency(pid: int) -> tuple[list[float], float]:
    from explorer.app import PeriscopeApp
    from explorer.screens.process import ProcessScreen
    from tests.screenshots import SIZE, wait_until
    from widgets.thread_list import ThreadList

    app = PeriscopeApp(pid=pid, history_path=Path(tempfile.mkdtemp()) / "history")
    timings: list[float] = []
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "attached", 30)
        screen = app.screen
        assert isinstance(screen, ProcessScreen)
        await screen.session.set_rate(10)
        threads = screen.query_one(ThreadList)
        await wait_until(pilot, lambda: len(threads.threads) >= 100, "100 threads", 30)
        threads.focus()
        applied = screen.frames_applied
        started = time.monotonic()
        for index in range(PRESSES):
            refreshed = asyncio.Event()
            key = "down" if (index // 10) % 2 == 0 else "up"
            before = screen.selected_thread
            await asyncio.sleep(0.05 + (index % 7) / 70)  # keys arrive at random moments of the stream
            t0 = time.perf_counter()
            app.simulate_key(key)  # what the terminal driver does with a key
            while screen.selected_thread == before:  # the screen has taken the new thread...
                await asyncio.sleep(0.001)
            app.call_after_refresh(refreshed.set)
            await refreshed.wait()  # ...and the refresh that shows it has been written
            timings.append(time.perf_counter() - t0)
        rate = (screen.frames_applied - applied) / (time.monotonic() - started)
        await pilot.press("ctrl+q")
    return timings, rate


def key_to_screen() -> None:
    target = targets.spawn(HUNDRED_THREADS)
    try:
        target.wait_for_line("ready")
        timings, rate = asyncio.run(_key_latency(target.pid))
    finally:
        target.stop()
    ms = sorted(t * 1000 for t in timings)
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(
        f"key-to-screen, 100 threads at 10 frames/s ({rate:.1f} frames/s applied): "
        f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms "
        f"over {len(ms)} keys (goal: under 100 ms)"
    )


def _tmux(socket: str, *args: str) -> str:
    tmux = shutil.which("tmux")
    assert tmux is not None
    return subprocess.run([tmux, "-L", socket, *args], capture_output=True, text=True, timeout=10, check=True).stdout


def idle_cpu() -> None:
    if shutil.which("tmux") is None:
        print("idle CPU: skipped (tmux is not installed)")
        return
    target = targets.spawn(IDLE)
    socket = f"periscope-bench-{secrets.token_hex(4)}"
    periscope = str(Path(sys.executable).with_name("periscope"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env["XDG_DATA_HOME"] = tempfile.mkdtemp()
    try:
        target.wait_for_line("ready")
        subprocess.run(
            [shutil.which("tmux") or "tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "main",
             "-x", "130", "-y", "40", f"{periscope} {target.pid}"],
            check=True, env=env, timeout=10,
        )
        deadline = time.monotonic() + 30
        while "attached" not in _tmux(socket, "capture-pane", "-p", "-t", "main"):
            if time.monotonic() > deadline:
                raise TimeoutError("periscope did not attach within 30 s")
            time.sleep(0.1)
        pane_pid = int(_tmux(socket, "display-message", "-p", "-t", "main", "#{pane_pid}").strip())
        process = psutil.Process(pane_pid)
        time.sleep(2.0)  # let start-up work (imports, the first frames) settle before measuring
        before = process.cpu_times()
        target_before = psutil.Process(target.pid).cpu_times()
        started = time.monotonic()
        time.sleep(CPU_WINDOW)
        after = process.cpu_times()
        target_after = psutil.Process(target.pid).cpu_times()
        elapsed = time.monotonic() - started
        used = (after.user + after.system) - (before.user + before.system)
        target_used = (target_after.user + target_after.system) - (target_before.user + target_before.system)
        print(
            f"periscope's own CPU attached to an idle target: {100 * used / elapsed:.1f}% of a core "
            f"over {elapsed:.0f} s (goal: under 5%); the target meanwhile: {100 * target_used / elapsed:.1f}%"
        )
    finally:
        subprocess.run([shutil.which("tmux") or "tmux", "-L", socket, "kill-server"], capture_output=True, timeout=10)
        target.stop()


def main() -> None:
    """Print the TUI's figures."""
    print(f"load average: {load_average()}")
    key_to_screen()
    idle_cpu()


if __name__ == "__main__":
    main()
