"""``periscope tasks PID``: print every asyncio task of a running process, read from outside.

The asyncio counterpart of ``periscope stack``: nothing runs in the target, so it works while the
event loop is blocked. For each task: its name, state, what it waits on, its coroutine stack
(innermost first, with the source line) and which tasks await it. ``--tree`` prints the await
graph the way ``python -m asyncio pstree`` does; ``--json`` prints one document.
"""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from explorer.screens.sources import SourceLines
    from explorer.tasks import TaskInfo, TaskSnapshot

NAME = "tasks"
HELP = "print every asyncio task of a running CPython 3.14 or 3.15 process: state, coroutine stack, who awaits it (read-only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="process id of the CPython 3.14 or 3.15 process")
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"pid", "python", "asyncio", "reason", "threads": [...], "tasks": [{"id", "name", '
        '"state", "coroutine_stack", "awaited_by", ...}]}',
    )
    output.add_argument("--tree", action="store_true", help="print the await graph as a tree (like python -m asyncio pstree)")


MAX_QUICK_PID_DIGITS = 18


def parse_quick(argv: list[str]) -> SimpleNamespace | None:
    """``PID``, ``PID --json`` and ``PID --tree`` (either order) without argparse, as ``periscope
    stack`` does; anything else returns None and argparse parses it with its usual messages."""
    options = [arg for arg in argv if arg in ("--json", "--tree")]
    rest = [arg for arg in argv if arg not in ("--json", "--tree")]
    if len(rest) != 1 or len(options) > 1:
        return None
    pid = rest[0]
    if not (pid.isascii() and pid.isdigit() and len(pid) <= MAX_QUICK_PID_DIGITS):
        return None
    return SimpleNamespace(command=NAME, pid=int(pid), json="--json" in options, tree="--tree" in options, run=run)


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    from explorer.remote import RemoteProcess
    from explorer.screens.sources import SourceLines
    from explorer.tasks import AsyncioUnavailable, TaskReader

    process = RemoteProcess.open(args.pid)
    unavailable: AsyncioUnavailable | None = None
    snapshot = None
    try:
        version = process.version
        try:
            snapshot = TaskReader(process).read()
        except AsyncioUnavailable as error:
            unavailable = error
    finally:
        process.close()
    # Names from the target may hold lone surrogates (undecodable file names): never fail on them.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    sources = SourceLines(args.pid)
    if args.json:
        import json

        json.dump(tasks_to_json(args.pid, version, snapshot, unavailable, sources), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif unavailable is not None:
        print(f"periscope: {unavailable.reason}", file=sys.stderr)
    elif args.tree:
        sys.stdout.write("".join(line + "\n" for line in format_tree(snapshot)))
    else:
        sys.stdout.write(format_tasks(args.pid, version, snapshot, sources))
    sys.stdout.flush()
    # A target without asyncio has no tasks: that is an answer. A build whose tasks cannot be read is not.
    return 1 if unavailable is not None and unavailable.imported else 0


def tasks_to_json(
    pid: int, version: str, snapshot: TaskSnapshot | None, unavailable: Any, sources: SourceLines
) -> dict[str, Any]:
    """The ``--json`` document (strings exactly as the target holds them)."""
    document: dict[str, Any] = {
        "pid": pid,
        "python": version,
        "asyncio": snapshot is not None,
        "reason": None if unavailable is None else unavailable.reason,
        "torn": bool(snapshot and snapshot.torn),
        "threads": [],
        "tasks": [],
    }
    if snapshot is None:
        return document
    document["threads"] = [
        {
            "native_id": thread.native_id,
            "thread_id": thread.thread_id,
            "interpreter_id": thread.interpreter_id,
            "is_main": thread.is_main,
            "running_loop": thread.running_loop,
            "current_task": thread.current_task,
        }
        for thread in snapshot.threads
    ]
    document["tasks"] = [
        {
            "id": task.id,
            "name": task.name,
            "thread": task.thread,
            "interpreter_id": task.interpreter_id,
            "state": task.state,
            "cancel_requests": task.cancel_requests,
            "waiting_on": task.waiting_on,
            "awaited_by": list(task.awaited_by),
            "torn": task.torn,
            "coroutine_stack": [
                {
                    "filename": frame.filename,
                    "function": frame.function,
                    "lineno": frame.lineno,
                    "source": None if frame.lineno is None else sources.line(frame.filename, frame.lineno),
                }
                for frame in task.coroutine_stack
            ],
        }
        for task in snapshot.tasks
    ]
    return document


def format_tasks(pid: int, version: str, snapshot: TaskSnapshot, sources: SourceLines) -> str:
    """The human-readable listing: per thread, each task with its state, awaiters and coroutine stack."""
    from explorer.text import visible

    names = {task.id: task.name for task in snapshot.tasks}
    lines = [f"Process {pid}: Python v{version}, {len(snapshot.tasks)} asyncio task{'s' if len(snapshot.tasks) != 1 else ''}"]
    if snapshot.torn:
        lines.append("(the task list changed while it was read: tasks may be missing; run it again)")
    for thread in snapshot.threads:
        if thread.running_loop:
            running = names.get(thread.current_task) if thread.current_task else None
            lines.append(
                f"Thread {thread.native_id}{' (main thread)' if thread.is_main else ''}: event loop running, "
                + (f"current task {visible(running)}" if running else "no task running")
            )
    groups: dict[int | None, list[TaskInfo]] = {}
    for task in snapshot.tasks:
        groups.setdefault(task.thread, []).append(task)
    for thread_id, tasks in groups.items():
        lines.append("")
        lines.append(f"Tasks of thread {thread_id}" if thread_id is not None else "Tasks whose thread has exited")
        for task in tasks:
            title = f"  {visible(task.name)} ({task.id:#x})"
            if task.state:
                title += f" [{task.state}]"
            if task.waiting_on:
                title += f" waiting on {visible(task.waiting_on)}"
            if task.awaited_by:
                title += ", awaited by " + ", ".join(
                    visible(names[awaiter]) if awaiter in names else f"{awaiter:#x}" for awaiter in task.awaited_by
                )
            if task.torn:
                title += " [changed while reading]"
            lines.append(title)
            for frame in task.coroutine_stack:
                where = frame.filename if frame.lineno is None else f"{frame.filename}:{frame.lineno}"
                lines.append(f"      {visible(frame.function)} ({visible(where)})")
                source = None if frame.lineno is None else sources.line(frame.filename, frame.lineno)
                if source:
                    lines.append(f"          {visible(source)}")
            if not task.coroutine_stack:
                lines.append("      (no coroutine frames)")
    lines.append("")
    return "\n".join(lines)


def format_tree(snapshot: TaskSnapshot) -> list[str]:
    """The await graph as ``python -m asyncio pstree`` draws it: a task, its coroutine frames
    (outermost first), and under the frame that awaits them, the tasks it waits for.

    Unlike pstree, a cycle (tasks awaiting each other) does not stop the drawing: the edge that
    closes it is shown as ``(cycle: name)``.
    """
    from explorer.text import visible

    tasks = snapshot.by_id()
    labels: dict[tuple[str, Any], str] = {("task", task.id): f"(T) {visible(task.name)}" for task in snapshot.tasks}
    children: dict[tuple[str, Any], list[tuple[str, Any]]] = {}
    coroutine_nodes: dict[tuple[str, Any], dict[str, tuple[str, Any]]] = {}
    counter = 0

    def frame_label(frame: Any) -> str:
        if frame.lineno is None:
            return f" {visible(frame.function)} {visible(frame.filename)}"
        return f" {visible(frame.function)} {visible(frame.filename)}:{frame.lineno}"

    def frame_node(parent: tuple[str, Any], label: str) -> tuple[str, Any]:
        nonlocal counter
        known = coroutine_nodes.setdefault(parent, {})
        if label not in known:
            counter += 1
            node = ("coro", counter)
            labels[node] = label
            children.setdefault(parent, []).append(node)
            known[label] = node
        return known[label]

    awaiting = set()
    for task in snapshot.tasks:
        for parent_id in task.awaited_by:
            parent = tasks.get(parent_id)
            if parent is None:
                continue
            awaiting.add(parent_id)
            node: tuple[str, Any] = ("task", parent_id)
            for frame in reversed(parent.coroutine_stack):
                node = frame_node(node, frame_label(frame))
            child = ("task", task.id)
            if child not in children.setdefault(node, []):
                children[node].append(child)
    for task in snapshot.tasks:
        if task.id not in awaiting:
            node = ("task", task.id)
            for frame in reversed(task.coroutine_stack):
                node = frame_node(node, frame_label(frame))
    all_children = {child for kids in children.values() for child in kids}
    roots = [node for node in labels if node not in all_children]
    if not roots and labels:
        roots = [next(iter(labels))]  # everything is in a cycle: start anywhere
    lines: list[str] = []

    def render(node: tuple[str, Any], prefix: str, last: bool, path: frozenset) -> None:
        branch = "└── " if last else "├── "
        if node in path:
            lines.append(f"{prefix}{branch}(cycle: {labels[node].removeprefix('(T) ')})")
            return
        lines.append(f"{prefix}{branch}{labels[node]}")
        kids = children.get(node, [])
        for index, kid in enumerate(kids):
            render(kid, prefix + ("    " if last else "│   "), index == len(kids) - 1, path | {node})

    for root in roots:
        render(root, "", True, frozenset())
    return lines
