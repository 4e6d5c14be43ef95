"""``periscope tasks``: every asyncio task read from outside, agreeing with CPython's own ``asyncio ps``/``pstree``.

Each target is a real asyncio program; each comparison runs periscope and CPython's tools on the
target stopped at one moment (tests.asyncio_ps.frozen).
"""

from __future__ import annotations

import json

import pytest

from explorer.commands.tasks import format_tree
from explorer.remote import RemoteProcess
from explorer.asyncio_debug import parse_asyncio_offsets
from explorer.tasks import TaskReader
from tests.asyncio_ps import assert_agree, frozen, periscope, views

NESTED = """
import asyncio, os

async def leaf(label):
    await asyncio.sleep(3600)

async def group(prefix, depth):
    async with asyncio.TaskGroup() as tg:
        for side in ("a", "b"):
            name = f"{prefix}.{side}"
            if depth < 3:
                tg.create_task(group(name, depth + 1), name=f"tg{depth}-{name}")
            else:
                tg.create_task(leaf(name), name=f"leaf-{name}")

async def gathered():
    await asyncio.gather(leaf("g1"), leaf("g2"), leaf("g3"))

async def holder(lock, held):
    async with lock:
        held.set()
        await asyncio.sleep(3600)

async def blocked(lock, held):
    await held.wait()
    async with lock:
        pass

async def ticker():
    # Wakes the loop now and then, as a server's timers do: an attached agent needs the
    # thread to run Python (an idle loop sits in epoll_wait, which remote exec cannot interrupt).
    while True:
        await asyncio.sleep(0.05)

async def main():
    lock, held = asyncio.Lock(), asyncio.Event()
    asyncio.create_task(ticker(), name="ticker")
    root = asyncio.create_task(group("r", 1), name="tg-root")
    gather_task = asyncio.create_task(gathered(), name="gatherer")
    asyncio.create_task(holder(lock, held), name="lock-holder")
    asyncio.create_task(blocked(lock, held), name="lock-waiter")
    while len(asyncio.all_tasks()) < 1 + 1 + 1 + 2 + 4 + 8 + 1 + 3 + 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    print("ready", len(asyncio.all_tasks()), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""

MANY = """
import asyncio

async def sleeper(n):
    await asyncio.sleep(3600 + n)

async def main():
    tasks = [asyncio.create_task(sleeper(n), name=f"sleeper-{n}") for n in range(1000)]
    gathering = asyncio.gather(*tasks)  # registers this task as the awaiter of all 1,000
    await asyncio.sleep(0.1)
    print("ready", len(asyncio.all_tasks()), flush=True)
    await gathering

asyncio.run(main())
"""


def test_nested_taskgroups_gather_and_a_lock_agree_with_asyncio_ps_and_pstree(spawn, target_python):
    target = spawn(NESTED, python=target_python)
    expected = int(target.wait_for_line("ready").split()[1])
    seen = views(target_python, target.pid)
    assert_agree(seen)
    tasks = {task["name"]: task for task in seen.periscope["tasks"]}
    assert len(tasks) == expected == 23
    ids = {name: task["id"] for name, task in tasks.items()}
    # TaskGroup children point at the task that owns the group, three levels down.
    assert tasks["tg1-r.a"]["awaited_by"] == [ids["tg-root"]]
    assert tasks["tg2-r.a.b"]["awaited_by"] == [ids["tg1-r.a"]]
    assert tasks["leaf-r.a.b.a"]["awaited_by"] == [ids["tg2-r.a.b"]]
    # gather children point at the task awaiting the gather.
    gathered = [task for task in seen.periscope["tasks"] if task["awaited_by"] == [ids["gatherer"]]]
    assert len(gathered) == 3
    assert tasks["gatherer"]["waiting_on"] == "_GatheringFuture"
    # The task blocked on the lock waits in Lock.acquire; the holder sleeps inside it.
    waiter = tasks["lock-waiter"]
    assert [frame["function"] for frame in waiter["coroutine_stack"]] == [
        "Lock.acquire", "_ContextManagerMixin.__aenter__", "blocked",
    ]
    assert waiter["state"] == "pending"
    assert waiter["coroutine_stack"][-1]["source"] == "async with lock:"
    assert [frame["function"] for frame in tasks["lock-holder"]["coroutine_stack"]] == ["sleep", "holder"]
    leaf = tasks["leaf-r.a.b.a"]["coroutine_stack"]
    assert (leaf[1]["function"], leaf[1]["source"]) == ("leaf", "await asyncio.sleep(3600)")
    assert leaf[1]["filename"] == str(target.script)
    thread = seen.periscope["threads"][0]
    # Frozen between two steps of the loop, or in one task's step (mostly the ticker's): that task is one of the listed.
    assert thread["running_loop"] and thread["current_task"] in (None, *ids.values()) and thread["native_id"] == target.pid
    assert all(task["thread"] == target.pid for task in seen.periscope["tasks"])


def test_a_thousand_sleeping_tasks_agree_with_asyncio_ps_and_pstree(spawn, target_python):
    target = spawn(MANY, python=target_python)
    assert target.wait_for_line("ready") == "ready 1001"
    seen = views(target_python, target.pid)
    assert_agree(seen)
    names = {task["name"] for task in seen.periscope["tasks"]}
    assert names == {f"sleeper-{n}" for n in range(1000)} | {"Task-1"}
    main = next(task for task in seen.periscope["tasks"] if task["name"] == "Task-1")
    awaited = [task for task in seen.periscope["tasks"] if task["awaited_by"] == [main["id"]]]
    assert len(awaited) == 1000


STATES = """
import asyncio, time

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue

async def main():
    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    print("ready", task.cancelling(), flush=True)
    time.sleep(3600)  # the event loop is blocked, its task running

asyncio.run(main())
"""


def test_states_read_while_the_loop_is_blocked(spawn, target_python):
    target = spawn(STATES, python=target_python)
    assert target.wait_for_line("ready") == "ready 1"
    result = periscope("tasks", str(target.pid), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    tasks = {task["name"]: task for task in document["tasks"]}
    assert tasks["Task-1"]["state"] == "running"
    assert [frame["function"] for frame in tasks["Task-1"]["coroutine_stack"]] == ["main"]
    assert tasks["stubborn"]["state"] == "cancelling" and tasks["stubborn"]["cancel_requests"] == 1
    assert document["threads"][0]["current_task"] == tasks["Task-1"]["id"]
    text = periscope("tasks", str(target.pid))
    assert text.returncode == 0
    assert "current task Task-1" in text.stdout
    assert "stubborn" in text.stdout and "[cancelling]" in text.stdout
    assert "time.sleep(3600)" in text.stdout  # the source line of the running frame


def test_a_target_without_asyncio_has_no_tasks_and_says_why(spawn, target_python):
    target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(3600)\n", python=target_python)
    target.wait_for_line("ready")
    text = periscope("tasks", str(target.pid))
    assert text.returncode == 0
    assert text.stderr.strip() == f"periscope: process {target.pid} has not imported asyncio: it has no tasks"
    result = periscope("tasks", str(target.pid), "--json")
    document = json.loads(result.stdout)
    assert document["asyncio"] is False and document["tasks"] == [] and "not imported asyncio" in document["reason"]


def test_imported_asyncio_is_told_by_sys_modules_not_by_a_look_alike_name(spawn, target_python):
    """On 3.15 ``_asyncio`` is in the binary itself: only ``sys.modules`` says whether asyncio was imported."""
    look_alike = spawn(
        "import sys, time\nsys.modules['asyncio_helpers'] = type(sys)('asyncio_helpers')\n"
        "print('ready', flush=True)\ntime.sleep(3600)\n",
        python=target_python,
    )
    importer = spawn("import asyncio, time\nprint('ready', flush=True)\ntime.sleep(3600)\n", python=target_python)
    look_alike.wait_for_line("ready")
    importer.wait_for_line("ready")
    document = json.loads(periscope("tasks", str(look_alike.pid), "--json").stdout)
    assert document["asyncio"] is False and "not imported asyncio" in document["reason"]
    result = periscope("tasks", str(importer.pid), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["asyncio"] is True and document["tasks"] == []
    assert all(not thread["running_loop"] for thread in document["threads"])


def test_names_are_shown_escaped_and_kept_exact_in_json(spawn, target_python):
    source = """
import asyncio
async def main():
    asyncio.create_task(asyncio.sleep(3600), name="evil\\x1b]0;pwned\\x07")
    asyncio.create_task(asyncio.sleep(3600), name="café-αβγ-🙂")
    asyncio.create_task(asyncio.sleep(3600), name="long-" + "x" * 300)
    await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""
    target = spawn(source, python=target_python)
    target.wait_for_line("ready")
    with frozen(target.pid):
        text = periscope("tasks", str(target.pid))
        tree = periscope("tasks", str(target.pid), "--tree")
        document = json.loads(periscope("tasks", str(target.pid), "--json").stdout)
    assert "\x1b" not in text.stdout and "evil\\x1b]0;pwned\\x07" in text.stdout
    assert "\x1b" not in tree.stdout and "evil\\x1b]0;pwned\\x07" in tree.stdout
    names = {task["name"] for task in document["tasks"]}
    assert {"evil\x1b]0;pwned\x07", "café-αβγ-🙂", "long-" + "x" * 300} <= names


def test_the_reader_agrees_with_itself_across_reads_and_the_tree_draws_cycles(spawn, target_python):
    target = spawn(NESTED, python=target_python)
    target.wait_for_line("ready")
    process = RemoteProcess.open(target.pid)
    try:
        reader = TaskReader(process)
        with frozen(target.pid):
            first = reader.read()
            second = reader.read()
    finally:
        process.close()
    assert first == second and len(first.tasks) == 23
    assert [task.name for task in first.tasks] == [task.name for task in second.tasks]
    # A cycle (two tasks awaiting each other, which asyncio pstree refuses to draw) still draws.
    one, two = first.tasks[0], first.tasks[1]
    cyclic = first._replace(tasks=(one._replace(awaited_by=(two.id,)), two._replace(awaited_by=(one.id,))))
    lines = format_tree(cyclic)
    assert any("(cycle: " in line for line in lines)


def test_an_asyncio_table_that_is_not_plausible_is_refused():
    good = bytes.fromhex(
        "a800000000000000" "8800000000000000" "6000000000000000" "6c00000000000000" "6d00000000000000"
        "8000000000000000" "9800000000000000" "4872030000000000" "802a000000000000" "a803000000000000"
        "6003000000000000" "6803000000000000" "7003000000000000"
    )
    assert parse_asyncio_offsets(good, 0x37248, 0x340) is not None
    assert parse_asyncio_offsets(good[:-8], 0x37248, 0x340) is None  # truncated
    assert parse_asyncio_offsets(good, 0x37000, 0x340) is None  # another interpreter layout
    huge_node = bytearray(good)
    huge_node[48:56] = (0xFFFF).to_bytes(8, "little")
    assert parse_asyncio_offsets(bytes(huge_node), 0x37248, 0x340) is None


@pytest.mark.parametrize("data", [b"", b"\x7fELF", b"\x7fELF\x02\x01" + b"\xff" * 58, bytes(range(256)) * 8])
def test_the_elf_section_parser_survives_garbage(tmp_path, data):
    from explorer.asyncio_debug import ASYNCIO_SECTION, _elf_section

    path = tmp_path / "garbage.so"
    path.write_bytes(data)
    assert _elf_section(str(path), ASYNCIO_SECTION) is None


@pytest.fixture(scope="session")
def uvicorn_python(target_python):
    """A virtual environment of the target interpreter with uvicorn (h11, pure Python) installed."""
    from tests.third_party import venv_with

    return venv_with(target_python, "uvicorn==0.54.0")


def test_a_uvicorn_server_under_loopback_load_agrees_with_asyncio_ps_and_pstree(spawn, target_python, uvicorn_python):
    from tests.third_party import UVICORN_APP, LoopbackLoad

    target = spawn(UVICORN_APP, python=uvicorn_python)
    port = int(target.wait_for_line("port").split()[1])
    load = LoopbackLoad(port, clients=16, requests=3000, seconds=60).start()
    try:
        seen_requests = 0
        for _ in range(20):
            seen = views(target_python, target.pid)
            assert_agree(seen)
            in_flight = [
                task for task in seen.periscope["tasks"]
                if any(frame["function"] == "handle" for frame in task["coroutine_stack"])
            ]
            seen_requests = max(seen_requests, len(in_flight))
            if seen_requests >= 4:
                break
        assert seen_requests >= 4, "no moment with requests in flight"
        request = in_flight[0]
        assert [frame["function"] for frame in request["coroutine_stack"]][:3] == ["sleep", "handle", "app"]
        assert request["coroutine_stack"][1]["source"] == "await asyncio.sleep(delay)"
    finally:
        load.stop()
    assert load.done > 0


CHURN = """
import asyncio, random

async def short(n):
    await asyncio.sleep(random.random() / 100)
    return n

async def main():
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        async with asyncio.TaskGroup() as tg:
            for k in range(50):
                tg.create_task(short(k), name=f"churn-{n}-{k}")

asyncio.run(main())
"""


def test_reading_a_target_that_creates_and_ends_tasks_all_the_time_never_fails(spawn, target_python):
    """Tasks freed while the list is walked: every read returns (torn or not), with sane tasks."""
    target = spawn(CHURN, python=target_python)
    target.wait_for_line("ready")
    process = RemoteProcess.open(target.pid)
    try:
        reader = TaskReader(process)
        seen = 0
        for _ in range(300):
            snapshot = reader.read()
            seen += len(snapshot.tasks)
            for task in snapshot.tasks:
                assert isinstance(task.name, str) and task.id > 0
                assert task.name == "Task-1" or task.name.startswith("churn-") or task.torn
                assert len(task.coroutine_stack) < 64
    finally:
        process.close()
    assert seen > 0
