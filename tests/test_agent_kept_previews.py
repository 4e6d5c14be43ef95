"""Previews and frame locals kept across frames (payloads/agent/previews.py, ``Previews.kept`` and
``same_locals``) are exactly what the agent would make afresh, whatever changes in between.

The differential test runs the agent's own code in a real CPython 3.14/3.15 process: one agent
keeps its previews from frame to frame, the other starts from nothing every time, and between
frames the target's containers are mutated in place (in and beyond the window a preview shows,
nested, through a tuple, by a locals write), rebound, emptied and filled again. Every frame, both
agents must show the same locals and module variables, and each kept ref must still lead to its
object. The end-to-end test does the same through a real session, against the target's own repr.
"""

from __future__ import annotations

import asyncio
import json

from explorer.attach import attach
from payloads.agent import agent_source

STRIP = r'''
def strip(node):  # a frame's data without the ids that differ from one agent to another
    if type(node) is dict:
        return {k: strip(v) for k, v in node.items() if k not in ("ref", "fid")}
    if type(node) is list:
        return [strip(v) for v in node]
    return node
'''

DIFFERENTIAL = r'''
import json, random, sys, threading, types

mod = types.ModuleType("_agent_under_test")
with open(sys.argv[1], encoding="utf-8") as source:
    exec(compile(source.read(), "<agent>", "exec"), mod.__dict__)

class Counted:
    calls = 0
    state = 0
    def __repr__(self):
        Counted.calls += 1
        return "Counted(%d)" % Counted.state

shared = [1, 2]
inner = [10, 20]
data = {"a": 1, "inner": inner, "text": "x" * 300, "shared": shared}
listed = list(range(15))  # longer than the 10 items a preview shows
through_tuple = ([1], "t", (2, [3]))
mixed = {1, 2, 3}
frozen = frozenset(["f", "g"])
deep = [[[[]]]]  # the innermost list is past the preview's depth
buffer = bytearray(b"ab")
cyclic = [0]
cyclic.append(cyclic)
module_list = [1, 2, 3]
scene = types.ModuleType("scene")  # the watched module: these very objects
scene.__dict__.update(shared=shared, data=data, listed=listed, through_tuple=through_tuple, mixed=mixed, frozen=frozen,
                      deep=deep, buffer=buffer, cyclic=cyclic, odd=Counted(), module_list=module_list, same=shared)
sys.modules["scene"] = scene
stop = threading.Event()
ready = threading.Event()

def holder(depth, a, b, c):
    local_int = depth * 1000
    local_str = "depth %d" % depth
    if depth:
        holder(depth - 1, a, b, c)
    else:
        ready.set()
        stop.wait()

threading.Thread(target=holder, args=(3, data, listed, shared), name="holder", daemon=True).start()
ready.wait()

step, stepped = threading.Semaphore(0), threading.Semaphore(0)

def callee(held):
    token = held
    stepped.release()
    step.acquire()  # every call waits here: a new frame at the same instruction as the last one

def looper():
    first = shared
    while True:
        try:  # the same value under one name, then the other: the same values, other names
            second = first
            del first
        except UnboundLocalError:
            first = second
            del second
        callee(inner)

threading.Thread(target=looper, name="looper", daemon=True).start()
stepped.acquire()
frames = []
frame = sys._current_frames()[[t.ident for t in threading.enumerate() if t.name == "holder"][0]]
while frame is not None:
    frames.append(frame)
    frame = frame.f_back

rng = random.Random(int(sys.argv[2]))
fresh_objects = [lambda: rng.randrange(300), lambda: "s%d" % rng.randrange(5), lambda: [rng.randrange(3)], lambda: None, lambda: (1, [2])]

def mutate():
    for _ in range(rng.randrange(4)):
        op = rng.randrange(17)
        value = rng.choice(fresh_objects)()
        if op == 0: shared.append(value)
        elif op == 1 and shared: shared.pop()
        elif op == 2 and shared: shared[rng.randrange(len(shared))] = value
        elif op == 3: inner.append(value)
        elif op == 4 and inner: inner[0] = value
        elif op == 5: data[rng.choice("abcd")] = value
        elif op == 6 and len(data) > 2: del data[rng.choice(list(data))]
        elif op == 7: listed[rng.randrange(len(listed))] = value  # in the window, or past it
        elif op == 8: through_tuple[0].append(value); through_tuple[2][1][:] = [value]
        elif op == 9: mixed.add(rng.randrange(6)); mixed.discard(rng.randrange(6))
        elif op == 10: deep[0][0][0].append(1) if not deep[0][0][0] else deep[0][0][0].clear()
        elif op == 11: buffer.append(65 + rng.randrange(3))
        elif op == 12: cyclic[0] = value
        elif op == 13: rng.choice(frames[:4]).f_locals["local_int"] = rng.randrange(3)  # a locals write rebinds
        elif op == 14: rng.choice(frames[:4]).f_locals["local_str"] = rng.choice(["same", "other", value])
        elif op == 15: module_list[rng.randrange(3)] = value
        elif op == 16: scene.rebound = value
    if rng.randrange(2):
        step.release()  # the looper takes one step: its locals swap names, its callee is a new frame
        stepped.acquire()
    Counted.state = rng.randrange(3)

''' + STRIP + r'''
def view(frame_map):
    stacks = [strip(t["stack"]) for t in frame_map["threads"] if t["name"] in ("holder", "looper")]
    return stacks, strip(frame_map["modules"])

kept = mod.Agent({"rate": 0, "modules": ["scene"]}, mod)
afresh = mod.Agent({"rate": 0, "modules": ["scene"]}, mod)
reused = 0
whole_threads = 0
last = None
for round_ in range(int(sys.argv[3])):
    mutate()
    ours = kept.run_job(kept._build_full_frame)
    kept.refs.end_frame()
    afresh.kept = None
    theirs = afresh.run_job(afresh._build_full_frame)
    afresh.refs.end_frame()
    if view(ours) != view(theirs):
        print("DIFF", round_, json.dumps(view(ours), default=repr), json.dumps(view(theirs), default=repr), flush=True)
        sys.exit(1)
    stack = [t for t in ours["threads"] if t["name"] == "holder"][0]["stack"]
    for entry, frame in zip(stack, frames):
        for name, preview in entry["locals"] or ():
            if "ref" in preview and kept.refs.get(preview["ref"]) is not frame.f_locals[name]:
                print("REF", round_, name, flush=True)
                sys.exit(1)
    if last is not None:
        reused += sum(1 for a, b in zip(stack, last) if a["locals"] is b["locals"])
    last = stack
    if round_ == 10:
        pinned = kept.refs.ref(shared, pin=True)  # as an expand would: it stays pinned while kept
    if round_ > 10 and kept.refs.seen.get(pinned) != -1:
        print("PIN", round_, flush=True)
        sys.exit(1)
    whole_threads += len((kept.kept or (0, 0, 0, {}))[3])
print("ok", json.dumps({"reused": reused, "counted": Counted.calls, "threads_kept": whole_threads}), flush=True)
'''


def test_kept_previews_and_locals_are_what_a_fresh_agent_makes(spawn, tmp_path) -> None:
    source = tmp_path / "agent.py"
    source.write_text(agent_source(), encoding="utf-8")
    for seed in (1, 2, 3):
        target = spawn(DIFFERENTIAL, args=[str(source), str(seed), "150"])
        line = target.wait_for_line("", timeout=120)
        assert line.startswith("ok "), line + target.proc.stderr.read().decode(errors="replace")[-2000:]
        figures = json.loads(line[3:])
        assert figures["reused"] > 0  # frames whose locals did not change were the last frame's lists
        assert figures["counted"] >= 2 * 150  # a repr of the target's runs every frame, in both agents
        assert figures["threads_kept"] > 150  # threads whose kept entries were checked at once (same_thread)


CHANGING = '''
import threading, time
items = [0, 1, 2]
table = {"k": [0]}

def blocked(seen, more):
    time.sleep(3600)

def change():
    n = 0
    while True:
        n += 1
        items[1] = n          # in place: the list is the same object
        table["k"][0] = -n    # nested, in place
        time.sleep(0.01)

threading.Thread(target=blocked, args=(items, table), name="blocked", daemon=True).start()
threading.Thread(target=change, name="change", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.05)
'''


async def test_a_blocked_frames_containers_changed_in_place_show_as_they_are_now(spawn) -> None:
    target = spawn(CHANGING)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=10, timeout=30)
    try:
        shown = []
        for _ in range(8):
            frame = await session.sample()
            thread = next(t for t in frame.threads if t.name == "blocked")
            entry = next(e for e in thread.frames if e.function == "blocked")
            values = {local.name: local.value.repr for local in entry.locals or ()}
            # What the target itself says now, right after: the counter only moves on.
            now = await session.eval("items[1], -table['k'][0]")
            seen_items = int(values["seen"].strip("[]").split(", ")[1])
            seen_table = -int(values["more"].split("[")[1].rstrip("]}"))
            current = [int(x) for x in now.value.repr.strip("()").split(", ")]
            assert 0 <= current[0] - seen_items <= 50 and 0 <= current[1] - seen_table <= 50, (values, now.value.repr)
            shown.append(seen_items)
            await asyncio.sleep(0.05)
        assert len(set(shown)) == len(shown)  # every sample saw the list as it then was
    finally:
        await session.detach()


CUT = r'''
import json, sys, threading, types

mod = types.ModuleType("_agent_under_test")
with open(sys.argv[1], encoding="utf-8") as source:
    exec(compile(source.read(), "<agent>", "exec"), mod.__dict__)

stop = threading.Event()
ready = threading.Barrier(4)

def level(depth, items):
    text = "depth %d" % depth
    if depth:
        level(depth - 1, items)
    else:
        ready.wait()
        stop.wait()

for n, depth in enumerate((0, 40, 40)):  # one shallow stack, that the cut leaves whole, and two deep ones
    threading.Thread(target=level, args=(depth, list(range(n + 3))), name="worker-%d" % n, daemon=True).start()
ready.wait()

''' + STRIP + r'''
def view(frame_map):
    return [strip(t["stack"]) for t in frame_map["threads"] if (t["name"] or "").startswith("worker-")]

kept = mod.Agent({"rate": 0, "modules": []}, mod)
for _ in range(3):  # whole threads kept from frame to frame, under the default size bound
    kept.run_job(kept._build_full_frame)
    kept.refs.end_frame()
candidates = len(kept.kept[3])
# Then a size bound that cuts every stack to its innermost frames: the kept threads' entries are
# the last frame's, with their locals read, and must be made again, cut where a fresh agent cuts.
limits = {"frame_bytes": int(sys.argv[2])}
kept.limits.update(limits)
afresh = mod.Agent({"rate": 0, "modules": [], "limits": limits}, mod)
afresh.run_job(afresh._build_full_frame)  # its worker thread started: each agent sees the other's
ours = kept.run_job(kept._build_full_frame)
afresh.kept = None
theirs = afresh.run_job(afresh._build_full_frame)
depths = sorted({len(stack) for stack in view(ours)})
same = view(ours) == view(theirs)
print("ok", json.dumps({"candidates": candidates, "truncated": ours["truncated"], "depths": depths, "same": same}), flush=True)
'''


def test_kept_threads_cut_by_the_size_bound_are_made_again(spawn, tmp_path) -> None:
    """A frame whose stacks no longer fit the size bound cuts every thread to its innermost
    frames: a thread kept from the last frame is made again, cut as a fresh agent cuts it."""
    source = tmp_path / "agent.py"
    source.write_text(agent_source(), encoding="utf-8")
    target = spawn(CUT, args=[str(source), "6000"])
    line = target.wait_for_line("", timeout=120)
    assert line.startswith("ok "), line + target.proc.stderr.read().decode(errors="replace")[-2000:]
    figures = json.loads(line[3:])
    assert figures["candidates"] == 3 and figures["truncated"]
    shallow, deep = figures["depths"][0], figures["depths"][-1]
    assert len(figures["depths"]) == 2 and shallow < deep < 40  # the deep ones cut to their innermost frames, the shallow one whole
    assert figures["same"]
