"""Debian's other builds of each minor: the debug build, the non-PIE build, and libpython embedded in C.

Each is provisioned by tests.variants from Debian's own packages (``python3.X-dbg``,
``python3.X-nopie``, ``libpython3.X`` and ``libpython3.X-dev``). The embedding host is a small C
program this test compiles with gcc against the shared library: it calls ``Py_InitializeFromConfig``
and runs a Python loop, so the runtime is found in ``libpython3.X.so``'s mapping, not in the
executable. Every build must be listed as attachable with its exact version and runtime file,
read frame for frame as the target itself reports its stacks, and answer ``eval`` with the
target's own values. Free-threaded builds (3.14t, 3.15t) are not obtainable here; their refusal
is checked on their table header (tests/test_versions.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from explorer import compiled_agent as compiled_agent_module
from explorer.discovery import ProcessScanner
from explorer.elf import find_runtime
from explorer.versions import minor_name
from tests import variants
from tests.test_stacks import REPORTER, _assert_same

HOST_C = r"""
#include <Python.h>

/* periscope's embedding test host: argv[1] is the Python home, argv[2] the code to run. */
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    PyStatus status = PyConfig_SetBytesString(&config, &config.home, argv[1]);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) Py_ExitStatusException(status);
    int failed = PyRun_SimpleString(argv[2]);
    if (Py_FinalizeEx() < 0) return 120;
    return failed ? 1 : 0;
}
"""

BODY = '''
import contextvars, threading

VALUES = {"answer": 42, "text": "h\\u00e9llo", "items": [1, 2.5, None], "nested": {"k": (1, 2)}}

def key_function(item):
    park()
    return item

def in_sorted():
    return sorted([3, 1, 2], key=key_function)

def deep(n):
    if n == 0:
        park()
    else:
        deep(n - 1)

def in_context():
    contextvars.copy_context().run(deep, 2)

def spin():  # a thread that runs Python, on one line: it picks up eval, and its stack stays put
    while True: pass

for name, target in (("sorted", in_sorted), ("ctx", in_context), ("spinner", spin)):
    threading.Thread(target=target, name=name, daemon=True).start()
print("values", json.dumps({k: repr(v) for k, v in VALUES.items()}), flush=True)
deep(1)
'''

PERISCOPE = [sys.executable, "-m", "explorer"]


def _version_hex(pid: int) -> int:
    from explorer.remote import RemoteProcess

    with RemoteProcess.open(pid) as process:
        return process.offsets.version_hex


@pytest.fixture
def builds(target_minor: tuple[int, int]) -> variants.Variants:
    """The debug, non-PIE and shared-library builds of this minor (provisioned once)."""
    return variants.provision(target_minor)


def _host(builds: variants.Variants, minor: tuple[int, int], folder: Path) -> Path:
    """Compile the embedding host against this minor's libpython (gcc, the prefix's loader and libc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing: install it (make setup does, as root: apt-get install gcc)")
    source = folder / "host.c"
    source.write_text(HOST_C)
    binary = folder / f"embed-host-{minor_name(minor)}"
    subprocess.run(
        [
            gcc, "-O1", "-o", str(binary), str(source),
            f"-I{builds.include}", f"-I{builds.prefix / 'include'}",
            f"-L{builds.libdir}", f"-lpython{minor_name(minor)}",
            f"-Wl,--dynamic-linker={builds.loader}",
            f"-Wl,--disable-new-dtags,-rpath,{builds.libdir}",
            # libpython's own libc is newer than the host's: its symbols resolve at run time
            "-Wl,--allow-shlib-undefined",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    return binary


def _start(spawn, tmp_path: Path, argv_for) -> tuple[object, Path, dict[str, str]]:
    """Start the reporter program under ``argv_for(script)``; return the target, its report and its values."""
    report = tmp_path / "stacks.json"
    script = tmp_path / "variant_target.py"
    script.write_text(REPORTER + f"\nstart_reporter({str(report)!r}, 4)\n" + BODY, encoding="utf-8")
    target = spawn(argv=argv_for(script))
    values = json.loads(target.wait_for_line("values ", timeout=60).split(" ", 1)[1])
    target.wait_for_line("ready main", timeout=60)
    return target, report, values


def _check_attachable(pid: int, minor: tuple[int, int], runtime_file: str) -> None:
    info = ProcessScanner().inspect(pid)
    assert info is not None
    assert info.attachable, (info.reason, info.fix)
    assert info.python is not None and info.python.startswith(f"{minor_name(minor)}.")
    assert info.runtime_path is not None and os.path.basename(info.runtime_path) == runtime_file
    assert info.remote_debug_enabled is True


def _check_stacks_and_values(pid: int, report: Path, values: dict[str, str]) -> None:
    stacks = _assert_same(report, pid)
    by_name = {stack.name: [frame.function for frame in stack.frames] for stack in stacks.values()}
    assert "key_function" in by_name["sorted"] and "in_sorted" in by_name["sorted"]
    assert by_name["ctx"].count("deep") == 3 and "in_context" in by_name["ctx"]
    assert by_name["spinner"][0] == "spin"
    expression = "{k: repr(v) for k, v in VALUES.items()}"
    done = subprocess.run([*PERISCOPE, "eval", str(pid), "--via", "any", expression], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import ast

    assert ast.literal_eval(done.stdout.strip()) == values


def test_the_debug_interpreter_may_compile_the_agent(spawn, builds: variants.Variants, tmp_path: Path) -> None:
    """Unlike an embedding host, a debug or non-PIE interpreter holds its runtime itself."""
    for binary in (builds.debug, builds.nopie):
        target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(60)\n", python=str(binary))
        target.wait_for_line("ready")
        compilers = [compiler.path for compiler in compiled_agent_module._compilers(target.pid, _version_hex(target.pid))]
        runs_itself = find_runtime(target.pid).opened_path
        assert compilers[0] == str(binary) or os.path.samefile(compilers[0], runs_itself), compilers
        target.stop()


def test_debug_build_attaches(spawn, builds: variants.Variants, target_minor: tuple[int, int], tmp_path: Path) -> None:
    target, report, values = _start(spawn, tmp_path, lambda script: [str(builds.debug), str(script)])
    runtime = os.path.basename(find_runtime(target.pid).path)
    assert runtime in (builds.debug.name, f"libpython{minor_name(target_minor)}d.so.1.0")
    _check_attachable(target.pid, target_minor, runtime)
    _check_stacks_and_values(target.pid, report, values)


def test_non_pie_build_attaches(spawn, builds: variants.Variants, target_minor: tuple[int, int], tmp_path: Path) -> None:
    with open(builds.nopie, "rb") as handle:
        header = handle.read(18)
    assert header[16] == 2  # e_type ET_EXEC: linked at a fixed address, not position independent
    target, report, values = _start(spawn, tmp_path, lambda script: [str(builds.nopie), str(script)])
    _check_attachable(target.pid, target_minor, builds.nopie.name)
    _check_stacks_and_values(target.pid, report, values)


def test_libpython_embedded_in_a_c_host_attaches(
    spawn, builds: variants.Variants, target_minor: tuple[int, int], tmp_path: Path
) -> None:
    host = _host(builds, target_minor, tmp_path)
    code = lambda script: [str(host), str(builds.prefix), f"exec(open({str(script)!r}).read())"]  # noqa: E731
    target, report, values = _start(spawn, tmp_path, code)
    # The runtime is in the shared library, not in the host executable.
    assert find_runtime(target.pid).path.endswith(f"libpython{minor_name(target_minor)}.so.1.0")
    # So the host is never run to compile the agent (it would start the program again); the
    # interpreter of the target's minor compiles it.
    compilers = [compiler.path for compiler in compiled_agent_module._compilers(target.pid, _version_hex(target.pid))]
    assert str(host) not in compilers and f"/proc/{target.pid}/exe" not in compilers
    assert compilers == [variants.pythons.find_target_python(target_minor, provision=False)]
    _check_attachable(target.pid, target_minor, f"libpython{minor_name(target_minor)}.so.1.0")
    _check_stacks_and_values(target.pid, report, values)
