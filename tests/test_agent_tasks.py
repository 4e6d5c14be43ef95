"""The agent's side of asyncio tasks, in real asyncio targets: coroutine locals (equal to what the
target logs), eval in a coroutine frame, and top-level await run in the target's own loop."""

from __future__ import annotations

import asyncio
import json

from explorer.remote import RemoteProcess
from explorer.session import attach
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
    process = RemoteProcess.open(pid)
    try:
        return {task.name: task.id for task in TaskReader(process).read().tasks}
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
        # Code that awaits runs in the target's loop, where asyncio.all_tasks() works; without an
        # await it runs in periscope's thread, and the error says how to write it.
        result = await session.eval("len(asyncio.all_tasks())")
        assert not result.ok and "write it with await (await asyncio.sleep(0); asyncio.all_tasks())" in result.traceback
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
