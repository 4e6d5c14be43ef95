"""The agent's side of asyncio tasks, in real asyncio targets: coroutine locals (equal to what the
target logs), eval in a coroutine frame, and top-level await run in the target's own loop."""

from __future__ import annotations

import asyncio
import json

from explorer.remote import RemoteProcess
from explorer.attach import attach
from explorer.tasks import TaskReader

TARGET = '''
import asyncio, json

async def inner(depth):
    marker = f"inner-{depth}"
    await asyncio.sleep(3600)

async def job(n):
    count = n * 10
    label = f"job-{n}"
    items = [n, n + 1, "x" * n]
    print("locals", json.dumps({"count": count, "label": label, "items": items}), flush=True)
    await inner(n + 100)

async def ticker():
    while True:  # wakes the idle loop now and then, as servers' timers do
        await asyncio.sleep(0.02)

def running_loop():  # asyncio reached through the target's own code
    return asyncio.get_running_loop()

async def answer(x):
    await asyncio.sleep(0.01)
    return x * 2

async def main():
    asyncio.create_task(ticker(), name="ticker")
    jobs = [asyncio.create_task(job(n), name=f"job-{n}") for n in range(3)]
    await asyncio.sleep(0.05)
    print("ready", len(asyncio.all_tasks()), flush=True)
    await asyncio.gather(*jobs)

asyncio.run(main())
'''


def task_ids(pid: int) -> dict[str, int]:
    """The target's tasks by name, from a read that is not torn (the loop runs while it is read:
    the ticker wakes every 20 ms, and a loaded machine can catch a list mid-change)."""
    process = RemoteProcess.open(pid)
    try:
        reader = TaskReader(process)
        for _ in range(50):
            snapshot = reader.read()
            if not snapshot.torn:
                break
        assert not snapshot.torn
        return {task.name: task.id for task in snapshot.tasks}
    finally:
        process.close()


async def test_coroutine_locals_equal_what_the_target_logs(spawn, target_python):
    target = spawn(TARGET, python=target_python)
    target.wait_for_line("ready")
    logged = [json.loads(line.split(" ", 1)[1]) for line in target.lines if line.startswith("locals ")]
    ids = task_ids(target.pid)
    session = await attach(target.pid, rate=0)
    try:
        for n in range(3):
            frames = await session.task_frames(ids[f"job-{n}"])
            assert [frame.function for frame in frames] == ["sleep", "inner", "job"]
            job = frames[2]
            assert job.local("count").repr == repr(logged[n]["count"])
            assert job.local("label").repr == repr(logged[n]["label"])
            assert job.local("items").repr == repr(logged[n]["items"])
            assert frames[1].local("marker").repr == repr(f"inner-{n + 100}")
            assert frames[1].local("depth").repr == repr(n + 100)
            # The REPL can run in a coroutine frame's scope.
            result = await session.eval("count + len(items)", task=ids[f"job-{n}"], frame=2)
            assert result.ok and result.value.repr == repr(logged[n]["count"] + 3)
    finally:
        await session.detach()


async def test_an_unknown_task_is_refused_in_one_line(spawn, target_python):
    target = spawn(TARGET, python=target_python)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        from explorer.session import RequestFailed

        try:
            await session.task_frames(8)
        except RequestFailed as error:
            assert "no running event loop has a task 0x8" in str(error)
        else:
            raise AssertionError("an unknown task id was accepted")
    finally:
        await session.detach()


async def test_top_level_await_runs_in_the_target_s_loop(spawn, target_python):
    target = spawn(TARGET, python=target_python)
    tasks = int(target.wait_for_line("ready").split()[1])
    session = await attach(target.pid, rate=0)
    try:
        # Code that names asyncio runs in the target's loop thread, as a callback: no task of its own.
        result = await session.eval("len(asyncio.all_tasks())")
        assert result.ok and result.value.repr == str(tasks), result
        # Code that neither awaits nor names asyncio runs in periscope's thread, and an asyncio
        # call deep inside says where code has to be to reach the loop.
        result = await session.eval("running_loop()")
        assert not result.ok and "code runs in the target's loop when it awaits or names asyncio" in result.traceback
        # With await, the code runs as a task of the target's loop.
        result = await session.eval("await answer(21)")
        assert result.ok and result.value.repr == "42"
        result = await session.eval("await asyncio.sleep(0)\nlen(asyncio.all_tasks()), asyncio.current_task().get_loop() is asyncio.get_running_loop()")
        assert result.ok and result.value.repr == f"({tasks + 1}, True)", result
        # Ctrl+C cancels the awaited coroutine in the target.
        handle = session.start_eval("await asyncio.sleep(3600)")
        await asyncio.sleep(0.3)
        assert await handle.interrupt()
        outcome = await handle.result()
        assert outcome.status == "interrupted"
        for _ in range(50):
            result = await session.eval("await asyncio.sleep(0)\nlen(asyncio.all_tasks()) - 1")
            if result.value.repr == str(tasks):
                break
            await asyncio.sleep(0.05)
        assert result.value.repr == str(tasks)  # the eval's task was cancelled and is gone
        # A bounded wait: past await_timeout the coroutine is cancelled and the eval says why.
        await session.configure(await_timeout=0.5)
        result = await session.eval("await asyncio.sleep(60)")
        assert not result.ok and result.exception == "TimeoutError"
        assert "did not finish within 0.5s" in result.traceback
    finally:
        await session.detach()


DONE = '''
import asyncio

async def ok():
    return 42

async def boom():
    raise ValueError("bad value")

async def main():
    global finished, failed, cancelled
    finished = asyncio.create_task(ok(), name="finished")
    failed = asyncio.create_task(boom(), name="failed")
    cancelled = asyncio.create_task(asyncio.sleep(3600), name="cancelled")
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0.01)
    print("ready", finished.result(), type(failed.exception()).__name__, cancelled.cancelled(), flush=True)
    while True:
        await asyncio.sleep(0.02)

asyncio.run(main())
'''


async def test_done_tasks_still_referenced_show_their_result_exception_or_cancellation(spawn, target_python):
    """Finished tasks leave CPython's task lists, so only the agent sees them, through what holds them."""
    target = spawn(DONE, python=target_python)
    assert target.wait_for_line("ready") == "ready 42 ValueError True"
    assert {task for task in task_ids(target.pid)} == {"Task-1"}  # not in the lists any more
    session = await attach(target.pid, rate=0)
    try:
        frame = await session.sample()
        module = frame.module("__main__")
        assert module is not None
        assert "finished" in module.get("finished").repr and "result=42" in module.get("finished").repr
        assert "exception=ValueError('bad value')" in module.get("failed").repr
        assert "cancelled" in module.get("cancelled").repr
    finally:
        await session.detach()


BUSY = '''
import asyncio

ticks = 0

async def ticker():
    global ticks
    while True:
        ticks += 1
        await asyncio.sleep(0.01)

async def idle():
    await asyncio.sleep(3600)

async def main():
    asyncio.create_task(ticker(), name="ticker")
    asyncio.create_task(idle(), name="idle")
    await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
'''


async def ticking(session) -> None:
    """Wait until the target's loop has ticked again (``ticks`` read from periscope's own thread)."""
    first = (await session.eval("ticks")).value.repr
    for _ in range(200):
        await asyncio.sleep(0.02)
        result = await session.eval("ticks")
        assert result.ok, result
        if result.value.repr != first:
            return
    raise AssertionError("the target's event loop stopped ticking")


async def test_asyncio_calls_without_await_run_in_the_loop_thread(spawn, target_python):
    target = spawn(BUSY, python=target_python)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval("sorted(task.get_name() for task in asyncio.all_tasks())")
        assert result.ok and result.value.repr == repr(sorted(task_ids(target.pid))) == "['Task-1', 'idle', 'ticker']"
        result = await session.eval(
            "loop = asyncio.get_running_loop()\n"
            "loop is asyncio.get_event_loop(), asyncio.current_task(), loop.is_running()"
        )
        assert result.ok and result.value.repr == "(True, None, True)", result
        # An exception of the code comes back as the eval's own; the loop goes on.
        result = await session.eval("asyncio.get_running_loop()\n1 / 0")
        assert not result.ok and result.exception == "ZeroDivisionError"
        await ticking(session)
    finally:
        await session.detach()


async def test_a_busy_loop_in_the_loop_thread_is_stopped_by_interrupt_and_by_the_timeout(spawn, target_python):
    """Code that never awaits holds the target's loop: Ctrl+C and await_timeout stop it at its own bytecode."""
    target = spawn(BUSY, python=target_python)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        spins = [
            "asyncio.get_running_loop()\nwhile True:\n    pass",
            # In a function of its own, called from the eval's code.
            "def spin():\n    n = 0\n    while True:\n        n += 1\nasyncio.all_tasks()\nspin()",
            # After an await: cancelling the task alone would not end it.
            "await asyncio.sleep(0)\nwhile True:\n    pass",
        ]
        for code in spins:
            handle = session.start_eval(code)
            await asyncio.sleep(0.3)
            assert await handle.interrupt()
            outcome = await handle.result()
            assert outcome.status == "interrupted", (code, outcome)
            await ticking(session)
        await session.configure(await_timeout=0.5)
        for code in spins:
            result = await session.eval(code)
            assert not result.ok and result.exception == "TimeoutError", (code, result)
            assert "did not finish within 0.5s in the target's event loop" in result.traceback
            assert result.traceback.rstrip().endswith("stopped"), result.traceback
            await ticking(session)
        # The stops are gone: code in the loop thread runs to its end again.
        result = await session.eval("n = 0\nfor _ in range(100000):\n    n += 1\nasyncio.get_running_loop() and n")
        assert result.ok and result.value.repr == "100000", result
    finally:
        await session.detach()
