"""Previews within one frame: an object shown under several names is formatted once."""

from __future__ import annotations

from explorer.attach import attach

TARGET = '''
import sys, threading, time

class Counted:
    calls = 0
    def __repr__(self):
        Counted.calls += 1
        return "Counted(%d)" % Counted.calls

SHARED = Counted()

def inner(obj):
    while True:
        time.sleep(0.01)

def middle(obj):
    inner(obj)

def outer(obj):
    middle(obj)

threading.Thread(target=outer, args=(SHARED,), name="holder", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.02)
'''


async def test_an_object_under_several_names_is_formatted_once_per_frame(spawn):
    """The same object as a local of three frames and as a module variable: its ``__repr__``
    (the target's own code, which here counts its calls) runs once per frame, and every place
    shows that one result."""
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=10)
    try:
        seen: list[set[str]] = []
        while len(seen) < 3:
            frame = await session.next_frame(timeout=30)
            holder = next((t for t in frame.threads if t.name == "holder"), None)
            module = frame.module("__main__")
            if holder is None or module is None or module.get("SHARED") is None:
                continue
            shown = {f.local("obj").repr for f in holder.frames if f.function in ("inner", "middle", "outer")}
            shown.add(module.get("SHARED").repr)
            seen.append(shown)
        for shown in seen:
            assert len(shown) == 1, shown  # one call, shown four times
        calls = [int(next(iter(shown))[len("Counted(") : -1]) for shown in seen]
        assert calls == sorted(set(calls))  # later frames, later calls
    finally:
        await session.detach()
