"""The session's side of the stream from a real CPython 3.14 or 3.15 target: frames are decoded off the
event loop (a frame of a hundred threads takes milliseconds) and dispatched in the order they
came, and ``Session.bytes_received`` counts what was read from the agent's socket."""

from __future__ import annotations

import asyncio
import threading

from explorer import session as session_module
from explorer.attach import attach

MANY_THREADS = """
import threading, time

def worker(n):
    label = "worker %d" % n
    while True:
        time.sleep(0.05)

for n in range(100):
    threading.Thread(target=worker, args=(n,), name="w%d" % n, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


async def test_frames_are_decoded_off_the_event_loop_and_keep_their_order(spawn, monkeypatch):
    target = spawn(MANY_THREADS)
    target.wait_for_line("ready")
    decoded_on: list[threading.Thread] = []
    real_decode = session_module._decode

    def recording_decode(decoder, data):
        decoded_on.append(threading.current_thread())
        return real_decode(decoder, data)

    monkeypatch.setattr(session_module, "_decode", recording_decode)
    loop_thread = threading.current_thread()
    session = await attach(target.pid, rate=20.0)
    try:
        frames = [await session.next_frame(timeout=10) for _ in range(5)]
        assert len(frames[-1].threads) >= 101
        assert [frame.seq for frame in frames] == sorted(frame.seq for frame in frames)
        # Requests and streamed frames interleave; each answer still comes back whole and in order.
        results = await asyncio.gather(*(session.eval(f"print({n}); {n} * 2") for n in range(5)))
        assert [result.value.repr for result in results] == ["0", "2", "4", "6", "8"]
        assert [result.output for result in results] == [f"{n}\n" for n in range(5)]
    finally:
        await session.detach()
    assert decoded_on and loop_thread not in decoded_on


async def test_bytes_received_counts_what_the_agent_sent(spawn):
    target = spawn(MANY_THREADS)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=10.0)
    try:
        first = session.bytes_received
        assert first > 0  # at least the handshake
        seen = [first]
        for _ in range(3):
            await session.next_frame(timeout=10)
            seen.append(session.bytes_received)
        assert seen[-1] > first
        assert seen == sorted(seen)
        # A 100-thread frame is kilobytes: three of them add up to well over the handshake.
        assert seen[-1] - first > 3 * 1000
    finally:
        await session.detach()
