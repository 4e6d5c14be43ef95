"""``periscope watch`` lines (explorer/commands/watch.py, FrameLines): the same bytes as
``json.dumps(frame_json(...))`` of every frame, with a thread's text made once while the thread
is the same model object, on a real target whose names and values try to pass for the line's
own keys."""

from __future__ import annotations

import json

from explorer import oneshot
from explorer.commands.watch import FrameLines
from explorer.model import frame_json

TARGET = r'''
import threading, time
label = '"threads": [], "pid": 0'
def idle(tag):
    text = '"threads": []' + tag
    time.sleep(3600)
def busy():
    n = 0
    while True:
        n += 1
        time.sleep(0.02)
for i in range(5):
    threading.Thread(target=idle, args=(str(i),), name='"threads": [] %d' % i, daemon=True).start()
threading.Thread(target=busy, name="busy", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.05)
'''


def test_watch_lines_are_the_frames_json_and_unchanged_threads_are_not_made_again(spawn) -> None:
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = oneshot.attach(target.pid, rate=20, timeout=30)
    lines = FrameLines()
    reused = 0
    try:
        count = 0
        for frame in session.frames():
            before = dict(lines.threads)
            line = lines.line(target.pid, session.hello, frame)
            assert line == json.dumps(frame_json(target.pid, session.hello, frame))
            assert json.loads(line)["pid"] == target.pid
            for key, (thread, text) in lines.threads.items():
                known = before.get(key)
                if known is not None and known[0] is thread:
                    assert known[1] is text
                    reused += 1
            count += 1
            if count == 15:
                break
    finally:
        session.detach()
    assert reused >= 5 * 10  # the idle threads, frame after frame
