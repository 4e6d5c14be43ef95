"""Protocol v2 on a real idle target of a hundred threads (PROTOCOL.md, *Deltas and the view*):
after the first frame, the stream carries a small fraction of a full frame per frame, the picture
periscope puts together is the one a full ``sample`` gives, unchanged threads are the same model
objects from frame to frame, and the view leaves every thread but the focused one brief."""

from __future__ import annotations

import json

import msgpack

from explorer import wire
from explorer.attach import attach

IDLE = """
import json, threading, time

def worker(n):
    label = "worker %d" % n
    items = list(range(n % 7))
    while True:
        time.sleep(0.05)

ids = []
for n in range(100):
    thread = threading.Thread(target=worker, args=(n,), name="w%d" % n, daemon=True)
    thread.start()
    ids.append(thread.native_id)
print("ready " + json.dumps(ids), flush=True)
while True:
    time.sleep(0.05)
"""


def _picture(frame):  # type: ignore[no-untyped-def]
    """What an idle target's frame shows that does not move: each thread and where it waits."""
    return {
        t.thread_id: (t.name, t.native_id, t.depth, [(f.qualname, f.lineno) for f in t.frames[:1]])
        for t in frame.threads
        if not t.is_agent
    }


async def test_an_idle_hundred_threads_stream_a_small_fraction_of_a_full_frame(spawn):
    target = spawn(IDLE)
    target.wait_for_line("ready ")
    session = await attach(target.pid, rate=20.0, timeout=30)
    try:
        raw = await session.request("sample", timeout=30)
        full_size = len(msgpack.packb(raw, use_bin_type=True))
        full = wire.decode_frame(raw)
        assert len(full.threads) >= 101 and all(t.frames and t.frames[0].locals for t in full.threads if t.name and t.name.startswith("w"))
        first = await session.next_frame(timeout=30)
        start_bytes, start_seq = session.bytes_received, first.seq
        frame = first
        for _ in range(10):
            frame = await session.next_frame(timeout=30)
        sent = frame.seq - start_seq
        per_frame = (session.bytes_received - start_bytes) / sent
        # The view is every thread in detail (as watch asks), so a full frame is the sample's size;
        # on an idle target each delta is the frame's header and nothing else changes.
        assert per_frame < full_size / 20, (per_frame, full_size)
        print(f"full frame {full_size} bytes, then {per_frame:.0f} bytes per frame")
        assert _picture(frame) == _picture(full)
        assert frame.module("__main__").get("ids") is not None
        later = await session.next_frame(timeout=30)
        same = sum(a is b for a, b in zip(frame.threads, later.threads))
        assert same >= 95  # unchanged threads are the very same objects
    finally:
        await session.detach()


async def test_the_view_keeps_one_thread_in_detail_and_the_others_brief(spawn):
    target = spawn(IDLE)
    ids = json.loads(target.wait_for_line("ready ").split(" ", 1)[1])
    session = await attach(target.pid, rate=20.0, timeout=30)
    try:
        await session.next_frame(timeout=30)
        focus = ids[5]
        await session.set_view(focus=focus, frame=0)
        while True:
            frame = await session.next_frame(timeout=30)
            if all(t.brief for t in frame.threads if t.native_id != focus):
                break
        focused = frame.thread(focus)
        assert focused is not None and not focused.brief
        assert focused.frames[0].qualname == "worker" and len(focused.frames) == focused.depth > 1
        assert {v.name for v in focused.frames[0].locals or ()} >= {"n", "label", "items"}
        others = [t for t in frame.threads if t.native_id != focus]
        assert len(others) >= 100
        assert all(len(t.frames) == 1 and t.frames[0].locals is None for t in others)
        assert all(t.depth >= 1 for t in others)
        # Back to every thread in detail: the next frames carry locals for all of them again.
        await session.set_view(focus=None)
        while True:
            frame = await session.next_frame(timeout=30)
            if not any(t.brief for t in frame.threads):
                break
        worker = frame.thread(ids[7])
        assert worker is not None and worker.frames[0].local("label").repr == "'worker 7'"
    finally:
        await session.detach()


async def test_a_resync_sends_the_whole_frame_again(spawn):
    target = spawn(IDLE)
    target.wait_for_line("ready ")
    session = await attach(target.pid, rate=20.0, timeout=30)
    try:
        before = await session.next_frame(timeout=30)
        await session.request("resync")
        start = session.bytes_received  # every frame before the full one came before the answer
        after = await session.next_frame(timeout=30, after=session.latest.seq)
        # The full frame after the resync: every thread again, the same picture.
        assert session.bytes_received - start > 100 * 50
        assert _picture(after) == _picture(before)
    finally:
        await session.detach()
