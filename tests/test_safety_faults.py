"""Faults on either side: periscope killed with SIGKILL while it streams or while an eval runs
(the target counts on, and the agent is gone within 2 s, as the target itself saw it), and the
target killed while periscope attaches or streams (periscope says it exited and stays usable)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from explorer.errors import ProcessGone
from explorer.attach import AttachState, attach
from explorer.session import SessionClosed
from tests.agent_helpers import WatchedTarget, kill, periscope_process, start_watched, usage

REMOVAL_BOUND = 2.0
"""Seconds from periscope's death until the agent has removed itself, in the target's clock."""


@pytest.mark.parametrize("doing", ["streaming", "evaluating"])
def test_periscope_killed_the_target_counts_on_and_the_agent_leaves(spawn, tmp_path, doing):
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    descriptors = watched.descriptors()
    if doing == "streaming":
        periscope = periscope_process("watch", str(watched.pid), "--interval", "0.05")
        assert periscope.stdout is not None
        assert json.loads(periscope.stdout.readline())["pid"] == watched.pid  # frames are flowing
        attached = watched.wait_for(lambda state: state["agent"])
    else:
        periscope = periscope_process("eval", str(watched.pid), "while True: pass")
        # The agent's thread, its worker and the eval's thread.
        attached = watched.wait_for(lambda state: state["agent"] and state["threads"] == quiet["threads"] + 3)
    try:
        counted = watched.wait_for_counter_beyond(attached["counter"])["counter"]  # counting while attached
        killed_at = time.monotonic()  # the clock the target stamps its states with
    finally:
        kill(periscope)
    # Stopping the eval takes ctypes, and loading it makes libffi hold its own library open for
    # good (unless the target had loaded ctypes): the one thing the agent cannot take back.
    libffi = 1 if doing == "evaluating" and not any("libffi" in path for path in descriptors) else 0
    back = watched.wait_until_back_to(quiet, extra_fds=libffi)
    assert all("libffi" in path for path in watched.descriptors() - descriptors)
    assert back["since"] - killed_at <= REMOVAL_BOUND, f"the agent took {back['since'] - killed_at:.2f} s to leave"
    assert back["counter"] > counted
    watched.wait_for_counter_beyond(back["counter"])


async def _still_usable(spawn, tmp_path) -> None:
    """periscope (this process) attaches to a fresh target, reads a frame and detaches."""
    other = start_watched(spawn, tmp_path / "other")
    quiet = other.quiet()
    async with await attach(other.pid, rate=0) as session:
        assert (await session.sample()).main_thread is not None
    other.wait_until_back_to(quiet)


def _kill(watched: WatchedTarget) -> None:
    """SIGKILL the target and leave it unreaped: a zombie, as under a slow parent."""
    watched.target.proc.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("when", [AttachState.INJECTED, AttachState.STARTING], ids=["injecting", "starting"])
async def test_target_killed_mid_attach(spawn, tmp_path, when):
    (tmp_path / "first").mkdir()
    watched = start_watched(spawn, tmp_path / "first")
    before = usage()

    def kill_at(step):
        if step.state is when and watched.target.proc.returncode is None:
            _kill(watched)

    with pytest.raises(ProcessGone, match=f"process {watched.pid} exited"):
        await attach(watched.pid, rate=0, timeout=30, progress=kill_at)
    assert list(watched.tmpdir.iterdir()) == []  # periscope removed what it staged
    assert usage().fds == before.fds
    (tmp_path / "other").mkdir()
    await _still_usable(spawn, tmp_path)


async def test_target_killed_mid_stream(spawn, tmp_path):
    (tmp_path / "first").mkdir()
    watched = start_watched(spawn, tmp_path / "first")
    before = usage()
    session = await attach(watched.pid, rate=20)
    await session.next_frame(timeout=10)
    waiting = session.start_eval("import time; time.sleep(60)")
    _kill(watched)
    with pytest.raises(SessionClosed, match=f"process {watched.pid} exited"):
        while True:
            await session.next_frame(timeout=10)
    with pytest.raises(SessionClosed, match="exited"):
        await waiting  # a request in flight fails too, at once
    await session.detach(timeout=2)
    assert usage().fds == before.fds
    (tmp_path / "other").mkdir()
    await _still_usable(spawn, tmp_path)
