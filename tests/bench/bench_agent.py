"""The injected agent: what it costs a busy target, how big and how fast its frames are, and how
quickly it attaches.

Figures, not assertions (``python -m tests.bench agent``):

* throughput of a CPU-bound 3.14 target, in one run, in alternating phases: not attached, the
  agent streaming at 2 (the default), 5 and 20 frames a second, and py-spy sampling it at its
  default rate (goal: >= 99% at 5 Hz); on a shared 2-core machine these swing by +-10-20%
  between phases, so the agent's own CPU time per phase is printed too (a steadier figure);
* frame size, build time and encode time for 100 threads x 20 frames with locals;
* attach-to-first-frame latency on a target with 4 busy threads (goal: median <= 30 ms), with and
  without the agent's short GIL switch interval during start-up (``session.FAST_START``, taken in
  turns so that both see the same machine load), next to ``py-spy dump`` and ``pystack remote``
  one-shot times and ``periscope snapshot`` on the same target;
* the target's pause: a single-threaded target that spins and reports every stretch of more than
  0.5 ms in which its loop did not run, during attach-to-first-frame and, for comparison, during
  as long a stretch without attaching;
* the agent's code: compiling it with the target's interpreter into a cold cache, and a cached
  lookup.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import msgpack

from explorer import attach as attach_module
from explorer import compiled_agent as compiled_agent_module
from explorer.attach import attach
from payloads import agent as agent_codec
from tests import targets
from tests.bench import describe, load_average, median_ms, time_calls, time_command

PHASE = 3.0
ROUNDS = 3
ATTACHES = 15
COMMAND_RUNS = 10

CPU_BOUND = '''
import sys, threading, time
SETTINGS = {"size": 200, "name": "cpu-bound"}
count = 0

def work():
    global count
    data = list(range(200))
    while True:
        total = 0
        for value in data:
            total += value * value
        count += 1

def report():
    while True:
        time.sleep(0.1)
        sys.stdout.write(f"count {count} {time.monotonic()}\\n")

threading.Thread(target=report, name="reporter", daemon=True).start()
sys.stdout.write("ready\\n")
work()
'''

WIDE = '''
import sys, threading
stop = threading.Event()
ready = threading.Barrier(101)

def level(depth, tag):
    local_text = f"thread {tag} depth {depth}"
    local_list = list(range(depth))
    local_dict = {"depth": depth, "tag": tag}
    if depth <= 1:
        ready.wait()
        stop.wait()
    else:
        level(depth - 1, tag)

for i in range(100):
    threading.Thread(target=level, args=(20, i), name=f"worker-{i}", daemon=True).start()
ready.wait()
sys.stdout.write("ready\\n")
while not stop.wait(0.05):  # the main thread wakes now and then, so it can pick the agent up
    pass
'''

BUSY4 = '''
import sys, threading, time
def spin(n):
    total = 0
    while True:
        total += n
for i in range(4):
    threading.Thread(target=spin, args=(i,), name=f"busy-{i}", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.5)
'''


def _tool(name: str) -> str | None:
    for directory in (os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


class Counter:
    """Reads the CPU-bound target's ``count N T`` lines and turns them into iterations per second."""

    def __init__(self, target: targets.Target) -> None:
        self.target = target
        self.samples: list[tuple[float, int]] = []

    def pump(self) -> None:
        try:
            self.target.wait_for_line("\x00", timeout=0.05)
        except TimeoutError:
            pass
        for line in self.target.lines[len(self.samples) + self._skipped :]:
            if line.startswith("count "):
                _, count, stamp = line.split()
                self.samples.append((float(stamp), int(count)))
            else:
                self._skipped += 1

    _skipped = 0

    def rate_between(self, start: float, end: float) -> float:
        inside = [(t, c) for t, c in self.samples if start <= t <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)


async def _phase(counter: Counter, seconds: float) -> tuple[float, float]:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        counter.pump()
        await asyncio.sleep(0.05)
    counter.pump()
    return start + 0.3, time.monotonic()  # skip the first 0.3 s (switching in or out)


async def _throughput() -> None:
    target = targets.spawn(CPU_BOUND)
    target.wait_for_line("ready")
    counter = Counter(target)
    spy = _tool("py-spy")
    results: dict[str, list[float]] = {}
    cpu_share: dict[int, list[float]] = {}

    def record(name: str, window: tuple[float, float]) -> None:
        results.setdefault(name, []).append(counter.rate_between(*window))

    for _ in range(ROUNDS):
        record("not attached", await _phase(counter, PHASE))
        session = await attach(target.pid, rate=2)
        for hz in (2, 5, 20):
            await session.set_rate(hz)
            before = (await session.sample()).agent_cpu
            window = await _phase(counter, PHASE)
            after = (await session.sample()).agent_cpu
            record(f"agent at {hz} Hz" + (" (default)" if hz == 2 else ""), window)
            cpu_share.setdefault(hz, []).append((after - before) / (window[1] - window[0] + 0.3))
        await session.detach()
        record("not attached", await _phase(counter, PHASE))
        if spy:
            process = subprocess.Popen(
                [spy, "record", "--pid", str(target.pid), "--duration", str(int(PHASE) + 1), "--output", os.devnull, "--format", "raw"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(0.5)
            record("py-spy record (100 Hz, default)", await _phase(counter, PHASE - 0.5))
            process.wait(timeout=30)
    target.stop()
    baseline = statistics.median(results["not attached"])
    print(f"  throughput of a CPU-bound target ({ROUNDS} rounds of {PHASE:.0f} s phases, iterations/s, median):")
    for name, rates in results.items():
        rate = statistics.median(rates)
        print(f"    {name:<34} {rate:12.0f}   {100 * rate / baseline:6.1f}% of not attached")
    if not spy:
        print("    py-spy record                      not installed (pip install '.[bench]')")
    for hz, shares in cpu_share.items():
        print(f"    agent's own CPU time at {hz:>2} Hz: {100 * statistics.median(shares):.2f}% of one core")


async def _frames() -> None:
    target = targets.spawn(WIDE)
    target.wait_for_line("ready", timeout=60)
    session = await attach(target.pid, rate=0)
    try:
        raws = []
        frames = []
        for _ in range(12):
            raw = await session.request("sample")
            raws.append(raw)
        for _ in range(6):
            frames.append(await session.sample())
        sizes = [len(msgpack.packb(raw, use_bin_type=True)) for raw in raws]
        build = [raw["build_ms"] for raw in raws[2:]]
        encode = [raw["encode_ms"] for raw in raws[2:]]
        last = raws[-1]
        stack_frames = sum(len(t["stack"]) for t in last["threads"])
        with_locals = sum(1 for t in last["threads"] for f in t["stack"] if f["locals"] is not None)
        print(f"  100 threads x 20 frames with locals ({len(last['threads'])} threads, {stack_frames} frames, "
              f"{with_locals} with locals, truncated={last['truncated']}):")
        print(f"    frame size        median {statistics.median(sizes) / 1024:8.1f} KiB (bound {session.hello.limits['frame_bytes'] / 1024:.0f} KiB)")
        print(f"    build in target   median {statistics.median(build):8.2f} ms (max {max(build):.2f})")
        print(f"    encode in target  median {statistics.median(encode):8.2f} ms (max {max(encode):.2f}, codec {session.hello.codec})")
        start = time.perf_counter()
        for raw in raws:
            agent_codec.encode(raw)
        ours = (time.perf_counter() - start) / len(raws) * 1000
        start = time.perf_counter()
        for raw in raws:
            msgpack.packb(raw, use_bin_type=True)
        theirs = (time.perf_counter() - start) / len(raws) * 1000
        print(f"    same frame, in periscope's Python {sys.version.split()[0]}: agent codec {ours:.2f} ms, msgpack (C) {theirs:.2f} ms")
        start = time.perf_counter()
        decoded = 0
        from explorer import wire

        for raw in raws:
            decoder = wire.Decoder()
            decoder.feed(msgpack.packb(raw, use_bin_type=True))
            decoded += len(list(decoder))
        print(f"    decode into the model in periscope: {(time.perf_counter() - start) / len(raws) * 1000:.2f} ms per frame")
    finally:
        await session.detach()
        target.stop()


IDLE = '''
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.005)
'''


def _spread(timings: list[float]) -> str:
    """``describe`` plus the maximum."""
    return f"{describe(timings)}, max {max(timings) * 1000:.2f}"


async def _attach_once(pid: int, fast_start: bool) -> tuple[float, int | None, str]:
    attach_module.FAST_START = fast_start
    try:
        start = time.perf_counter()
        session = await attach(pid, rate=2)
        await session.next_frame(timeout=30)
        elapsed = time.perf_counter() - start
    finally:
        attach_module.FAST_START = True
    await session.detach()
    return elapsed, session.injected_via, session.agent_code


async def _attach_latency() -> float:
    idle = targets.spawn(IDLE)
    idle.wait_for_line("ready")
    timings: dict[bool, list[float]] = {True: [], False: []}
    codes = set()
    for _ in range(ATTACHES):
        for fast in (True, False):
            elapsed, _, code = await _attach_once(idle.pid, fast)
            timings[fast].append(elapsed)
            codes.add(code)
    idle.stop()
    print(f"  agent code: {', '.join(sorted(codes))}")
    print("  attach to first frame, single-threaded target (main in a 5 ms sleep loop):")
    print(f"    short switch interval at start-up (default) {_spread(timings[True])}")
    print(f"    target's switch interval left alone        {_spread(timings[False])}")
    target = targets.spawn(BUSY4)
    target.wait_for_line("ready")
    timings = {True: [], False: []}
    via = []
    for _ in range(ATTACHES):
        for fast in (True, False):
            elapsed, injected_via, _ = await _attach_once(target.pid, fast)
            timings[fast].append(elapsed)
            via.append(injected_via)
    main_share = sum(1 for v in via if v == target.pid) / len(via)
    print("  attach to first frame, target with 4 busy threads, in-process (goal: median <= 30 ms):")
    print(f"    short switch interval at start-up (default) {_spread(timings[True])}")
    print(f"    target's switch interval left alone        {_spread(timings[False])}")
    print(f"    (injected through a busy worker {100 * (1 - main_share):.0f}% of the time)")
    print(f"\n  whole commands on the same target (pid {target.pid}), {COMMAND_RUNS} runs each:")
    pid = str(target.pid)
    spy = _tool("py-spy")
    stack = _tool("pystack")
    commands: dict[str, list[str] | None] = {
        "python -c pass (start-up floor)": [sys.executable, "-c", "pass"],
        "periscope snapshot": [sys.executable, "-m", "explorer", "snapshot", pid],
        "periscope snapshot --json": [sys.executable, "-m", "explorer", "snapshot", "--json", pid],
        "py-spy dump": [spy, "dump", "--pid", pid] if spy else None,
        "py-spy dump --locals": [spy, "dump", "--locals", "--pid", pid] if spy else None,
        "pystack remote": [stack, "remote", pid] if stack else None,
        "pystack remote --locals": [stack, "remote", "--locals", pid] if stack else None,
    }
    for name, argv in commands.items():
        if argv is None:
            print(f"    {name:<32} not installed (pip install '.[bench]')")
            continue
        try:
            print(f"    {name:<32} {describe(time_command(argv, COMMAND_RUNS))}")
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"    {name:<32} failed: {error}")
    target.stop()
    return median_ms(timings[True])


SPIN = '''
import resource, sys, time
clock, cpu = time.perf_counter, time.thread_time

def blocked():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw

sys.stdout.write("ready\\n")
last, last_cpu, waits = clock(), cpu(), blocked()
while True:
    now, now_cpu = clock(), cpu()
    if now - last > 0.0002:
        # wall time, CPU time of this thread, and whether it blocked (waited for the GIL)
        sys.stdout.write("gap %.6f %.6f %.6f %d\\n" % (last, now, now_cpu - last_cpu, blocked() - waits))
        waits = blocked()
        now, now_cpu = clock(), cpu()
    last, last_cpu = now, now_cpu
'''


def _pauses(target: targets.Target, start: float, end: float) -> list[float]:
    """Seconds the spinning target's loop was held up inside [start, end], one entry per stretch.

    A stretch counts with the CPU time its thread spent outside the loop (running the agent's
    bootstrap, for instance) plus, when the thread blocked, the rest of it (waiting for the GIL).
    A stretch in which the thread neither ran nor blocked is the machine's scheduler, not the
    agent, and does not count.
    """
    try:
        target.wait_for_line("\x00", timeout=0.2)  # collects the lines printed so far
    except TimeoutError:
        pass
    pauses = []
    for line in target.lines:
        if line.startswith("gap "):
            _, begin, stop, busy, waited = line.split()
            if float(stop) >= start and float(begin) <= end:
                wall, ran = float(stop) - float(begin), float(busy)
                pauses.append(wall if int(waited) else ran)
    return [p for p in pauses if p > 0.0002]


async def _pause() -> None:
    target = targets.spawn(SPIN)
    target.wait_for_line("ready")
    try:
        # Less noise from the rest of the machine: the gaps should be the agent's, not the scheduler's.
        os.setpriority(os.PRIO_PROCESS, target.pid, -10)
        priority = "nice -10"
    except OSError:
        priority = "default priority"
    longest: dict[str, list[float]] = {"attach": [], "attach, interval left alone": [], "no attach": []}
    total: dict[str, list[float]] = {key: [] for key in longest}
    window = 0.03
    for _ in range(ATTACHES):
        for name in longest:
            start = time.perf_counter()
            if name == "no attach":
                await asyncio.sleep(window)
            else:
                attach_module.FAST_START = name == "attach"
                try:
                    session = await attach(target.pid, rate=2)
                    await session.next_frame(timeout=30)
                finally:
                    attach_module.FAST_START = True
            end = time.perf_counter()
            if name != "no attach":
                window = end - start
                await session.detach()
            pauses = _pauses(target, start, end)
            longest[name].append(max(pauses, default=0.0))
            total[name].append(sum(pauses))
    target.stop()
    print(f"  single-threaded spinning target ({priority}): its loop held up by the agent (see _pauses), {ATTACHES} each:")
    for name in longest:
        print(
            f"    {name:<28} longest median {median_ms(longest[name]):6.2f} ms (max {max(longest[name]) * 1000:.2f}),"
            f" all together median {median_ms(total[name]):6.2f} ms"
        )


async def _code_cache() -> None:
    from explorer.remote import RemoteProcess

    target = targets.spawn(IDLE)
    target.wait_for_line("ready")
    with RemoteProcess.open(target.pid) as process:
        version_hex = process.offsets.version_hex
    saved = os.environ.get("XDG_CACHE_HOME")
    cold = []
    with tempfile.TemporaryDirectory(prefix="periscope-bench-cache-") as folder:
        os.environ["XDG_CACHE_HOME"] = folder
        try:
            for _index in range(3):
                shutil.rmtree(os.path.join(folder, "periscope"), ignore_errors=True)
                compiled_agent_module._code_memo.clear()
                start = time.perf_counter()
                code = compiled_agent_module.agent_code(target.pid, version_hex)
                cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            session = await attach(target.pid, rate=2)
            await session.next_frame(timeout=30)
            first = time.perf_counter() - start
            await session.detach()
            compiled_agent_module._code_memo.clear()
            cached = time_calls(lambda: compiled_agent_module.agent_code(target.pid, version_hex), 20)
        finally:
            if saved is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = saved
    target.stop()
    print(f"  compile the agent with the target's interpreter (cold cache, {len(code.data) // 1024} KiB of marshal data): {_spread(cold)}")
    print(f"  attach to first frame with that fresh cache entry: {first * 1000:.2f} ms")
    print(f"  cached lookup: {describe(cached)}")


async def _main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {targets.target_python()}")
    print("\nThroughput:")
    await _throughput()
    print("\nFrames:")
    await _frames()
    print("\nAttach:")
    await _attach_latency()
    print("\nTarget pause:")
    await _pause()
    print("\nAgent code:")
    await _code_cache()


def main() -> None:
    try:
        asyncio.run(_main())
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
