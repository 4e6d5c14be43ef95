"""CPython's own asyncio tools as a reference: ``python -m asyncio ps`` / ``pstree`` run and parsed,
and ``periscope tasks --json`` run beside them on a target frozen with SIGSTOP, so that all three
see the same moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

TREE_BRANCHES = ("└── ", "├── ")


@dataclass(frozen=True)
class PsRow:
    """One row of ``python -m asyncio ps``: a task, and one task that awaits it (or none)."""

    task_id: int
    name: str
    awaiter_id: int  # 0: nobody awaits the task


@dataclass
class Views:
    """What periscope and CPython's tools said about one frozen moment of a target."""

    periscope: dict
    ps: list[PsRow]
    pstree: list[str]
    periscope_tree: list[str]


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Stop the target (SIGSTOP) for the duration, so that several readers see the same moment."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def run_ps(python: str, pid: int, command: str) -> str:
    """Output of ``python -m asyncio ps|pstree PID`` (the target interpreter's own tool)."""
    result = subprocess.run(
        [python, "-m", "asyncio", command, str(pid)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def parse_ps(output: str) -> list[PsRow]:
    """Rows of the ``ps`` table (task names without spaces, as in these tests)."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = []
    for line in lines[start:]:
        fields = line.split()
        if not fields:
            continue
        rows.append(PsRow(task_id=int(fields[1], 16), name=fields[2], awaiter_id=int(fields[-1], 16)))
    return rows


def tree_paths(lines: list[str]) -> Counter:
    """Every node of a pstree-style drawing as the path of labels from its root (a multiset)."""
    paths: Counter = Counter()
    stack: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        position = min(line.find(branch) for branch in TREE_BRANCHES if branch in line)
        depth = position // 4
        label = line[position + 4 :]
        del stack[depth:]
        stack.append(label)
        paths[tuple(stack)] += 1
    return paths


def periscope(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``periscope`` command (this checkout) and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=timeout
    )


def views(python: str, pid: int) -> Views:
    """periscope tasks --json and --tree, asyncio ps and pstree, all on the target stopped at one moment."""
    with frozen(pid):
        ours = periscope("tasks", str(pid), "--json")
        our_tree = periscope("tasks", str(pid), "--tree")
        ps = run_ps(python, pid, "ps")
        pstree = run_ps(python, pid, "pstree")
    assert ours.returncode == 0, ours.stderr
    assert our_tree.returncode == 0, our_tree.stderr
    return Views(json.loads(ours.stdout), parse_ps(ps), pstree.splitlines(), our_tree.stdout.splitlines())


def assert_agree(seen: Views) -> None:
    """periscope and CPython's tools agree: same tasks (ids, names, count), same await edges, same tree."""
    tasks = seen.periscope["tasks"]
    assert not seen.periscope["torn"]
    ours = {(task["id"], task["name"]) for task in tasks}
    theirs = {(row.task_id, row.name) for row in seen.ps}
    assert ours == theirs
    assert len(tasks) == len(ours)
    our_edges = {(task["id"], awaiter) for task in tasks for awaiter in task["awaited_by"]}
    their_edges = {(row.task_id, row.awaiter_id) for row in seen.ps if row.awaiter_id}
    assert our_edges == their_edges
    assert tree_paths(seen.periscope_tree) == tree_paths(seen.pstree)
