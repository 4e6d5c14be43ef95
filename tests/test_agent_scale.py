"""Huge targets: a thousand threads are all listed (stacks for as many as the limit allows,
the rest marked), a module with a million globals costs a few milliseconds of the target's CPU
per frame and says it was cut, and expanding a million-entry dict at an offset costs memory in
proportion to the page."""

from __future__ import annotations

import json
import statistics

from explorer.attach import attach

THREADS = '''
import json, sys, threading
hold = threading.Event()
ids = []
lock = threading.Lock()

def idle():
    with lock:
        ids.append(threading.get_native_id())
    hold.wait()

def deep(n):
    if n:
        return deep(n - 1)
    idle()

threads = [threading.Thread(target=idle, daemon=True) for _ in range(999)]
threads.append(threading.Thread(target=deep, args=(60,), name="deep", daemon=True))
for thread in threads:
    thread.start()
while len(ids) < 1000:
    hold.wait(0.01)
sys.stdout.write("ready %s\\n" % json.dumps(ids))
while True:
    hold.wait(0.01)
'''


async def test_a_thousand_threads_are_all_in_the_frame(spawn):
    target = spawn(THREADS)
    ids = set(json.loads(target.wait_for_line("ready ", timeout=120).split(" ", 1)[1]))
    session = await attach(target.pid, rate=0, timeout=60)
    try:
        frame = await session.sample(timeout=60)
    finally:
        await session.detach()
    listed = {t.native_id for t in frame.threads}
    assert ids <= listed and len(frame.threads) == 1001
    limit = session.hello.limits["threads"]
    with_stacks = [t for t in frame.threads if not t.stack_omitted]
    assert len(with_stacks) == limit and all(t.frames for t in with_stacks)
    assert all(t.stack_omitted and not t.frames for t in frame.threads if t not in with_stacks)
    assert frame.truncated and frame.main_thread is not None and not frame.main_thread.stack_omitted
    deep = next(t for t in frame.threads if t.name == "deep")
    assert deep.native_id in ids


GLOBALS = '''
import sys, time
BIG = {i: i for i in range(1_000_000)}
globals().update({"v%d" % i: i for i in range(1_000_000)})
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''

FRAME_CPU_BUDGET = 0.005
"""Seconds of the target's CPU one frame may cost with a million globals watched (README)."""


def _peak_rss_kib(pid: int) -> tuple[int, int]:
    """VmHWM and VmRSS of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values["VmHWM"], values["VmRSS"]


async def test_a_million_globals_are_paged_within_the_frame_budget(spawn):
    target = spawn(GLOBALS)
    target.wait_for_line("ready", timeout=120)
    session = await attach(target.pid, rate=5, timeout=60)
    try:
        frames = [await session.next_frame(timeout=60) for _ in range(12)]
        module = frames[-1].module("__main__")
        assert module.total >= 1_000_000 and 0 < len(module.variables) <= session.hello.limits["module_vars"]
        assert frames[-1].truncated
        costs = [later.agent_cpu - earlier.agent_cpu for earlier, later in zip(frames[2:], frames[3:])]
        assert statistics.median(costs) <= FRAME_CPU_BUDGET, costs
        # Expanding at an offset: the target's peak memory grows with the page, not the dict.
        big = module.get("BIG")
        with open(f"/proc/{target.pid}/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        before, _ = _peak_rss_kib(target.pid)
        page = await session.expand(big.ref, kind="items", offset=999_000, limit=100)
        after, _ = _peak_rss_kib(target.pid)
        assert page.total == 1_000_000 and [c.name for c in page.children][:2] == ["999000", "999001"]
        assert after - before < 16 * 1024, (before, after)
    finally:
        await session.detach()


async def test_the_thread_list_shows_every_one_of_a_thousand_threads(spawn, tmp_path):
    from explorer.app import PeriscopeApp
    from explorer.screens.process import ProcessScreen
    from tests.screenshots import SIZE, wait_until
    from widgets.thread_list import ThreadList

    target = spawn(THREADS)
    ids = set(json.loads(target.wait_for_line("ready ", timeout=120).split(" ", 1)[1]))
    app = PeriscopeApp(pid=target.pid, history_path=tmp_path / "history")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 1, "the process screen", timeout=120)
        rows = app.screen.query_one(ThreadList).threads
        assert ids <= set(rows) and target.pid in rows
        omitted = [row for native_id, row in rows.items() if row.where == "(stack not sent: too many threads)"]
        assert len(rows) - len(omitted) == app.screen.session.hello.limits["threads"]
