"""Attach and detach again and again: neither the target nor periscope may grow threads or
descriptors, and their memory stays within noise. Twenty cycles in ``make test``, a hundred in
``make soak``."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

import pytest

from explorer.attach import attach
from tests.agent_helpers import Usage, WatchedTarget, start_watched, usage

WARM_UP = 10
"""Cycles before the first reading: the first attaches import _socket and friends in the target
and fill caches on both sides."""
OBJECTS_PER_CYCLE = 20
"""Python memory blocks either side may keep per cycle (caches filling up); a leaked session,
agent module or frame is hundreds."""
RSS_PER_CYCLE = 256 * 1024
"""Resident memory per cycle beyond noise (allocator arenas); the agent's code is far larger."""
RSS_NOISE = 4 * 1024 * 1024


async def _cycles(pid: int, count: int) -> None:
    """Attach, take a streamed frame and an eval's result, detach: ``count`` times."""
    for _ in range(count):
        session = await attach(pid, rate=20)
        try:
            await session.next_frame(timeout=30)
            assert (await session.eval("counter > 0")).value.repr == "True"
        finally:
            await session.detach()


def _reading(watched: WatchedTarget) -> tuple[Usage, int, Usage, int, list[str]]:
    """(target usage, target Python blocks, our usage, our Python blocks, our non-pool threads).

    The target's threads and descriptors are the ones it counted itself: seen from outside, its
    own loop holds a descriptor now and then (listing /proc/self/fd and its TMPDIR, rewriting its
    state file), and a count taken at that moment is one too many."""
    asked = time.monotonic()
    state = watched.wait_for(lambda s: not s["agent"] and s["blocks_at"] > asked)
    target = Usage(threads=state["tasks"], fds=state["fds"], rss=usage(watched.pid).rss)
    gc.collect()
    ours = sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))
    return target, state["blocks"], usage(), sys.getallocatedblocks(), ours


@pytest.mark.parametrize("count", [20, pytest.param(100, marks=pytest.mark.soak)])
async def test_attach_detach_cycles_leave_nothing_behind(spawn, tmp_path, count):
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    await _cycles(watched.pid, WARM_UP)
    target_before, target_blocks_before, ours_before, our_blocks_before, our_threads = _reading(watched)
    await _cycles(watched.pid, count)
    target_after, target_blocks_after, ours_after, our_blocks_after, our_threads_after = _reading(watched)
    watched.wait_until_back_to(quiet)
    target, ours = target_after.growth(target_before), ours_after.growth(ours_before)
    figures = (
        f"{count} cycles: target threads {target.threads:+d}, fds {target.fds:+d}, RSS {target.rss / 1024:+.0f} KiB, "
        f"Python blocks {target_blocks_after - target_blocks_before:+d}; periscope threads {ours.threads:+d}, "
        f"fds {ours.fds:+d}, RSS {ours.rss / 1024:+.0f} KiB, Python blocks {our_blocks_after - our_blocks_before:+d}"
    )
    print(figures)
    assert (target.threads, target.fds) == (0, 0), figures
    assert target_blocks_after - target_blocks_before <= OBJECTS_PER_CYCLE * count, figures
    assert target.rss <= RSS_NOISE + RSS_PER_CYCLE * count, figures
    # periscope: the same threads besides asyncio's worker pool (bounded by its size), the same
    # descriptors, and no more memory than noise.
    pool = asyncio.get_running_loop()._default_executor
    assert our_threads_after == our_threads, figures
    assert pool is None or ours_after.threads - len(our_threads_after) <= pool._max_workers + 1, figures
    assert ours.fds == 0, figures
    assert our_blocks_after - our_blocks_before <= OBJECTS_PER_CYCLE * count, figures
    assert ours.rss <= RSS_NOISE + RSS_PER_CYCLE * count, figures
