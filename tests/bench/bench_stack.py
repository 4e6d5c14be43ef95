"""Stack reading: periscope against py-spy, pystack and CPython 3.14's own RemoteUnwinder.

Figures, not assertions (``python -m tests.bench stack``):

* periscope's in-process snapshot (``StackReader.read()``, warm caches) of 8 threads x 30 frames,
  idle and busy (goal: under 5 ms), and of 50 threads;
* ``_remote_debugging.RemoteUnwinder.get_stack_trace()`` timed inside a 3.14 process on the same
  targets (it also stops at interpreter entry frames, so it returns fewer frames);
* whole commands on the 50-thread target, same run: ``periscope stack``, ``py-spy dump`` (which
  pauses the target by default; also ``--nonblocking``), ``pystack remote`` (pauses it too) and a
  3.14 one-liner driving RemoteUnwinder, printed with ratios to periscope.

``periscope stack`` is timed as a user runs it: from a wheel of this checkout installed (not
editable, bytecode compiled at install as pip does) into a virtual environment the benchmark
creates in its temporary directory, whose dependencies are those of this environment (a ``.pth``
file names its site-packages). The editable install of this environment is timed too, for
reference: its import finder adds start-up time that a normal install does not have. Both use a
private ELF cache (``XDG_CACHE_HOME`` in the temporary directory), which the warm-up runs fill;
the first run of a fresh cache (parses the interpreter with pyelftools) is timed on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from tests import targets
from tests.bench import command_environment, describe, load_average, median_ms, time_calls, time_command

SNAPSHOTS = 200
COMMAND_RUNS = 21
COLD_RUNS = 5
REPOSITORY = Path(__file__).resolve().parents[2]
# What a wheel is built from (pyproject.toml's packages and readme).
SOURCES = ("pyproject.toml", "README.md", "explorer", "widgets", "payloads")

PARKED = '''
import sys, threading
THREADS, DEPTH = int(sys.argv[1]), int(sys.argv[2])
stop = threading.Event()
started = threading.Barrier(THREADS)

def level(depth, main=False):
    if depth <= 1:
        started.wait()
        if main:
            print("ready", flush=True)
        stop.wait()
    else:
        level(depth - 1, main)

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH,), name=f"worker-{i}", daemon=True).start()
level(DEPTH, main=True)
'''

BUSY = '''
import sys, threading
THREADS, DEPTH = int(sys.argv[1]), int(sys.argv[2])

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def level(depth):
    if depth <= 1:
        while True:
            fib(4)
    else:
        level(depth - 1)

for i in range(THREADS - 1):
    threading.Thread(target=level, args=(DEPTH,), name=f"busy-{i}", daemon=True).start()
print("ready", flush=True)
level(DEPTH)
'''

# Runs under CPython 3.14: time RemoteUnwinder.get_stack_trace() in-process.
UNWINDER = '''
import json, statistics, sys, time, _remote_debugging
pid, repeat = int(sys.argv[1]), int(sys.argv[2])
unwinder = _remote_debugging.RemoteUnwinder(pid, all_threads=True)
timings, errors, result = [], 0, []
for _ in range(repeat + 1):
    start = time.perf_counter()
    try:
        result = unwinder.get_stack_trace()
    except (RuntimeError, OSError, UnicodeDecodeError):
        errors += 1
        continue
    timings.append(time.perf_counter() - start)
timings = timings[1:]
print(json.dumps({
    "median_ms": statistics.median(timings) * 1000, "n": len(timings), "errors": errors,
    "threads": len(result), "frames": sum(len(t.frame_info) for t in result),
}))
'''

UNWINDER_COMMAND = (
    "import sys, _remote_debugging; "
    "print(_remote_debugging.RemoteUnwinder(int(sys.argv[1]), all_threads=True).get_stack_trace())"
)


def _tool(name: str) -> str | None:
    """A benchmark tool from this virtual environment (the ``bench`` extra) or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _periscope_command() -> list[str]:
    script = _tool("periscope")
    return [script] if script else [sys.executable, "-m", "explorer"]


def _installed_periscope(workdir: Path) -> list[str]:
    """``periscope`` from a wheel of this checkout, installed as a user installs it.

    Builds the wheel from a copy of the sources (nothing is written into the checkout), creates
    a virtual environment without pip, installs the wheel there with this environment's pip
    (which compiles its bytecode), and lends it this environment's dependencies through a
    ``.pth`` file. Raises subprocess.CalledProcessError when a step fails (building needs
    setuptools from the package index, as pip's build isolation does).
    """
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPOSITORY / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    wheels = workdir / "wheels"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "check": True, "timeout": 600}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)], **quiet
    )
    (wheel,) = wheels.glob("pyperiscope-*.whl")
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        **quiet,
    )
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    # The dependencies (textual, psutil, pyelftools, msgpack) from this environment; only the
    # site-packages directory itself, whose own .pth files (the editable finder) are not run.
    Path(site_packages, "periscope-bench-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return [str(venv / "bin" / "periscope")]


def _installed_environment(cache_home: Path) -> dict[str, str]:
    """A user's environment: bytecode from the install's __pycache__, a private ELF cache."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["XDG_CACHE_HOME"] = str(cache_home)
    return env


def _time_cold(argv: list[str], env: dict[str, str], cache_home: Path, repeat: int) -> list[float]:
    """Runs of ``argv`` that each start from an empty ELF cache (the first look at an interpreter)."""
    timings = []
    for _ in range(repeat):
        shutil.rmtree(cache_home, ignore_errors=True)
        timings += time_command(argv, 1, warmup=0, env=env)
    shutil.rmtree(cache_home, ignore_errors=True)
    return timings


def _interleaved(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, list[float] | str]:
    """Time every command ``runs`` times, one run of each in turn, so that the shared machine's
    load falls on all of them alike; a command that fails gets its error message instead."""
    results: dict[str, list[float] | str] = {}
    for name, (argv, env) in commands.items():
        try:
            time_command(argv, 0, warmup=2, env=env)
            results[name] = []
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            results[name] = f"failed: {error}"
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            timings = results[name]
            if isinstance(timings, str):
                continue
            try:
                timings += time_command(argv, 1, warmup=0, env=env)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                results[name] = f"failed: {error}"
    return results


def _whole_commands(target_pid: int) -> None:
    """Whole commands on one target, interleaved: periscope installed and editable, the others."""
    print(f"\nWhole command on the 50-thread target (pid {target_pid}), {COMMAND_RUNS} runs each, interleaved:")
    pid = str(target_pid)
    with tempfile.TemporaryDirectory(prefix="periscope-bench-") as workdir:
        cache_home = Path(workdir, "cache")
        installed_env = _installed_environment(cache_home)
        plain_env = command_environment()
        editable_env = {**plain_env, "XDG_CACHE_HOME": str(cache_home)}
        commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        commands["python -c pass (this venv)"] = ([sys.executable, "-c", "pass"], plain_env)
        installed: list[str] | None
        try:
            installed = _installed_periscope(Path(workdir))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            detail = (error.stderr or b"").decode(errors="replace")[-300:] if isinstance(error.stderr, bytes) else ""
            print(f"  installed periscope: not measured, the wheel could not be built or installed: {error} {detail}")
            installed = None
        if installed:
            commands["python -c pass (installed venv)"] = ([str(Path(installed[0]).with_name("python")), "-c", "pass"], installed_env)
            commands["periscope stack (installed)"] = ([*installed, "stack", pid], installed_env)
            commands["periscope stack --json (installed)"] = ([*installed, "stack", "--json", pid], installed_env)
        commands["periscope stack (editable)"] = ([*_periscope_command(), "stack", pid], editable_env)
        commands["periscope stack --json (editable)"] = ([*_periscope_command(), "stack", "--json", pid], editable_env)
        missing = []
        for name, tool, argv in (
            ("py-spy dump", "py-spy", ["dump", "--pid", pid]),
            ("py-spy dump --nonblocking", "py-spy", ["dump", "--nonblocking", "--pid", pid]),
            ("pystack remote", "pystack", ["remote", pid]),
        ):
            path = _tool(tool)
            if path:
                commands[name] = ([path, *argv], plain_env)
            else:
                missing.append(name)
        commands["python3.14 RemoteUnwinder"] = ([targets.target_python(), "-c", UNWINDER_COMMAND, pid], plain_env)
        results = _interleaved(commands, COMMAND_RUNS)
        for name in missing:
            print(f"  {name:<46} not installed (pip install '.[bench]')")
        for name, timings in results.items():
            print(f"  {name:<46} {timings if isinstance(timings, str) else describe(timings)}")
        cold = [("periscope stack (installed)", installed, installed_env)] if installed else []
        cold.append(("periscope stack (editable)", _periscope_command(), editable_env))
        for label, prefix, env in cold:
            name = f"{label}, empty ELF cache"
            try:
                print(f"  {name:<46} {describe(_time_cold([*prefix, 'stack', pid], env, cache_home, COLD_RUNS))}")
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"  {name:<46} failed: {error}")
    medians = {name: median_ms(timings) for name, timings in results.items() if not isinstance(timings, str)}
    for ours_name in ("periscope stack (installed)", "periscope stack (editable)"):
        ours = medians.get(ours_name)
        if ours is None:
            continue
        print(f"  {ours_name}:")
        for name in ("py-spy dump", "py-spy dump --nonblocking", "pystack remote", "python3.14 RemoteUnwinder"):
            print(_ratio(ours, medians.get(name), name))


def _start(source: str, threads: int, depth: int) -> targets.Target:
    target = targets.spawn(source, args=[str(threads), str(depth)])
    target.wait_for_line("ready", timeout=60)
    return target


def _periscope_in_process(pid: int, label: str) -> float:
    with RemoteProcess.open(pid) as process:
        reader = StackReader(process)
        stacks = reader.read()
        frames = sum(len(stack.frames) for stack in stacks)
        timings = time_calls(reader.read, SNAPSHOTS, warmup=5)
        cold = time_calls(lambda: StackReader(process).read(), 30)
    torn = f", {reader.torn_threads} torn thread reads, {reader.retries} retries" if reader.retries else ""
    print(f"  periscope StackReader.read()  {label:<22} {describe(timings)}  [{len(stacks)} threads, {frames} frames{torn}]")
    print(f"  periscope, cold caches        {label:<22} {describe(cold)}")
    return median_ms(timings)


def _unwinder_in_process(pid: int, label: str) -> float | None:
    result = subprocess.run(
        [targets.target_python(), "-c", UNWINDER, str(pid), str(SNAPSHOTS)], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        print(f"  RemoteUnwinder               {label:<22} failed: {result.stderr.strip()[-300:]}")
        return None
    data = json.loads(result.stdout)
    errors = f", {data['errors']} errors" if data["errors"] else ""
    print(
        f"  RemoteUnwinder (in 3.14)      {label:<22} median {data['median_ms']:8.2f} ms (n={data['n']})"
        f"  [{data['threads']} threads, {data['frames']} frames{errors}]"
    )
    return data["median_ms"]


def _ratio(ours: float, theirs: float | None, name: str) -> str:
    if theirs is None:
        return f"    periscope / {name}: not measured"
    ratio = ours / theirs
    verdict = f"periscope {1 / ratio:.1f}x faster" if ratio < 1 else f"periscope {ratio:.1f}x slower"
    return f"    periscope / {name} = {ratio:.2f}  ({verdict})"


def main() -> None:
    print(f"load average {load_average()}, {os.cpu_count()} CPUs, target {targets.target_python()}")
    try:
        print("\nIn-process snapshot (reader already attached):")
        small = _start(PARKED, 8, 30)
        ours_small = _periscope_in_process(small.pid, "8 threads x 30, idle")
        theirs_small = _unwinder_in_process(small.pid, "8 threads x 30, idle")
        small.stop()
        busy = _start(BUSY, 8, 30)
        _periscope_in_process(busy.pid, "8 threads x 30, busy")
        _unwinder_in_process(busy.pid, "8 threads x 30, busy")
        busy.stop()
        big = _start(PARKED, 50, 10)
        ours_big = _periscope_in_process(big.pid, "50 threads x 10, idle")
        theirs_big = _unwinder_in_process(big.pid, "50 threads x 10, idle")
        print(_ratio(ours_small, theirs_small, "RemoteUnwinder, 8x30"))
        print(_ratio(ours_big, theirs_big, "RemoteUnwinder, 50 threads"))
        print(f"  goal: 8 threads x 30 frames under 5 ms -> {ours_small:.2f} ms")

        _whole_commands(big.pid)
        big.stop()
    finally:
        targets.stop_all()


if __name__ == "__main__":
    main()
