"""What the provenance rule for precompiled agent code costs the attach (``python -m tests.bench provenance``).

Figures, not assertions. The same single-threaded spinning target (bench_agent's SPIN, which
reports every stretch its loop was held up) is attached to, in turns, in three ways:

* **precompiled**: the target runs periscope's own interpreter, whose code is trusted for every
  target (cached after the first attach);
* **compiled in the target**: the target runs a copy of that interpreter that other users may
  write, so periscope trusts no compiler for it and the target compiles the agent itself;
* **another user's interpreter** (as root only): an unused uid runs a copy it owns; its own
  executable compiles the agent, as that uid, for that uid's processes (the first attach
  compiles, the rest hit the cache).

For each: attach to the first frame, and the target's longest stall (the longest stretch its loop
was held up) per attach; the medians and maxima of ATTACHES attaches, plus the cold compile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from explorer import compiled_agent as compiled_agent_module
from explorer.attach import attach
from tests import targets
from tests.bench import describe, load_average, median_ms
from tests.bench.bench_agent import SPIN, _pauses

ATTACHES = 15


async def _attach_once(target: targets.Target) -> tuple[float, float, str]:
    start = time.perf_counter()
    session = await attach(target.pid, rate=2, timeout=30)
    await session.next_frame(timeout=30)
    end = time.perf_counter()
    await session.detach()
    stall = max(_pauses(target, start, end), default=0.0)
    return end - start, stall, session.agent_code


def _untrusted_copy(folder: Path) -> str:
    """A copy of the target interpreter that group and others may write (its library through a symlink)."""
    real = os.path.realpath(targets.target_python())
    prefix = Path(real).parent.parent
    (folder / "bin").mkdir(parents=True)
    (folder / "lib").symlink_to(prefix / "lib")
    copy = folder / "bin" / os.path.basename(real)
    shutil.copyfile(real, copy)
    copy.chmod(0o777)
    return str(copy)


async def _main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {targets.target_python()}")
    saved = {name: os.environ.get(name) for name in ("XDG_CACHE_HOME",)}
    work = Path(tempfile.mkdtemp(prefix="bench-provenance-", dir="/var/tmp"))
    work.chmod(0o755)
    spawned: list[targets.Target] = []
    try:
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
        ways: dict[str, targets.Target] = {}
        ways["precompiled (periscope's own interpreter)"] = targets.spawn(SPIN)
        ways["compiled in the target (no trusted compiler)"] = targets.spawn(
            SPIN, python=_untrusted_copy(work / "untrusted"), env={"PERISCOPE_TARGET_PYTHON": "/nonexistent"}
        )
        cold: dict[str, tuple[float, str]] = {}
        if os.geteuid() == 0:
            from tests.attacker import as_user, owned_dir, unused_uid, user_python

            uid = unused_uid()
            python = user_python(targets.target_python(), owned_dir(work, "home", uid), uid)
            scripts = owned_dir(work, "scripts", uid)
            (scripts / "spin.py").write_text(SPIN.lstrip("\n"))
            ways["another user's interpreter (compiled as that user)"] = targets.spawn(
                argv=[*as_user(uid), python, str(scripts / "spin.py")], cwd="/"
            )
        spawned.extend(ways.values())
        for target in ways.values():
            target.wait_for_line("ready")
            try:
                os.setpriority(os.PRIO_PROCESS, target.pid, -10)
            except OSError:
                pass
        for name, target in ways.items():  # the first attach: a cold cache (compiles where a compiler is trusted)
            elapsed, _, code = await _attach_once(target)
            cold[name] = (elapsed, code)
        results: dict[str, tuple[list[float], list[float], set[str]]] = {name: ([], [], set()) for name in ways}
        for _ in range(ATTACHES):
            for name, target in ways.items():  # in turns: every way sees the same machine load
                elapsed, stall, code = await _attach_once(target)
                results[name][0].append(elapsed)
                results[name][1].append(stall)
                results[name][2].add(code)
        print(f"  single-threaded spinning target, {ATTACHES} attaches each (after one with a cold cache):")
        for name, (times, stalls, codes) in results.items():
            print(f"    {name}  [{', '.join(sorted(codes))}]")
            print(f"      first attach (cold cache)   {cold[name][0] * 1000:7.2f} ms [{cold[name][1]}]")
            print(f"      attach to first frame       {describe(times)}, max {max(times) * 1000:.2f}")
            print(f"      target's longest stall      median {median_ms(stalls):.2f} ms, max {max(stalls) * 1000:.2f}")
        compiled_agent_module._code_memo.clear()
    finally:
        for target in spawned:
            target.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


def main() -> None:
    try:
        asyncio.run(_main())
    finally:
        targets.stop_all()
