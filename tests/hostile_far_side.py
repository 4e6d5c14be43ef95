"""A far side that lies (run as PERISCOPE_REMOTE_COMMAND by tests/test_security_remote.py): it
answers hello correctly, then sends what argv[1] names: terminal escapes in process rows and
command output, fields of the wrong type, a message announcing gigabytes, or (``profile-*``)
profile updates that lie about their stacks, threads and counts."""

import os
import struct
import sys

import msgpack

ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31m"
MODE = sys.argv[1]
out = sys.stdout.buffer


def send(message):
    out.write(msgpack.packb(message, use_bin_type=True))
    out.flush()


ROW = {
    "pid": 4242, "ppid": 1, "user": "root" + ESCAPES, "uid": 0, "cmdline": ["python", ESCAPES + "evil.py"],
    "exe": "/usr/bin/python3", "name": "python", "cpu_percent": 1.0, "rss": 1 << 20, "num_threads": 1,
    "create_time": 0.0, "python": "3.14.0" + ESCAPES, "free_threaded": False, "runtime_path": None,
    "remote_debug_enabled": True, "attachable": False, "reason": "no" + ESCAPES, "fix": None,
}

STATS = {"ticks": 1, "missed": 0, "samples": 1, "walks": 1, "reused": 0, "retries": 0, "torn": 0, "elapsed": 0.01}
GOOD = {"first": 0, "stacks": [[["hot", "/x.py", 3]]], "threads": [[7, None, True]], "counts": [[0, 7, 1, 0, 1]], "ticks": 1, "stats": STATS}
PROFILE_LIES = {
    "profile-skips-stacks": {**GOOD, "first": 5},
    "profile-unknown-stack": {**GOOD, "counts": [[0, 7, 1, 1, 1]]},
    "profile-unknown-thread": {**GOOD, "counts": [[0, 8, 1, 0, 1]]},
    "profile-line-type": {**GOOD, "stacks": [[["hot", "/x.py", "3"]]]},
    "profile-deep-stack": {**GOOD, "stacks": [[["f", "/x.py", 1]] * 5000]},
    "profile-tags": {**GOOD, "counts": [[0, 7, 9, 0, 1]]},
    "profile-negative-count": {**GOOD, "counts": [[0, 7, 1, 0, -4]]},
    "profile-no-stats": {**GOOD, "stats": None},
    "profile-good": GOOD,
}


def requests():
    unpacker = msgpack.Unpacker(raw=False)
    while chunk := os.read(0, 1 << 16):
        unpacker.feed(chunk)
        yield from unpacker


for request in requests():
    if request.get("op") == "hello":
        send({"t": "resp", "id": request["id"], "ok": True, "result": {"serve": 1, "periscope": "0", "host": "x", "python": "3"}})
    elif MODE == "escapes" and request.get("op") == "ps":
        send({"t": "resp", "id": request["id"], "ok": True, "result": [ROW]})
    elif MODE == "escapes" and request.get("op") == "run":
        send({"t": "resp", "id": request["id"], "ok": True, "result": {"status": 0, "stdout": "frame" + ESCAPES + "\n", "stderr": ESCAPES}})
    elif MODE == "escapes" and request.get("op") == "attach":
        send({"t": "resp", "id": request["id"], "ok": False, "error": {"type": "PermissionDenied", "message": "denied" + ESCAPES, "fix": None}})
    elif MODE in PROFILE_LIES and request.get("op") == "profile":
        send({"t": "update", "id": request["id"], **PROFILE_LIES[MODE]})
    elif MODE == "types":
        send({"t": "resp", "id": request["id"], "ok": True, "result": [{**ROW, "pid": "4242"}]})
    elif MODE == "huge":
        out.write(b"\xc6" + struct.pack(">I", 0xFFFFFFF0))  # bin 32 of almost 4 GiB ...
        try:
            for _ in range(80):  # ... of which 80 MiB come (more than periscope buffers)
                out.write(bytes(1 << 20))
            out.flush()
        except BrokenPipeError:
            break
