"""Locating ``_PyRuntime`` in real processes: the static non-PIE 3.14 binary, pyenv's shared
libpython3.11 (ET_DYN, so a load bias applies), Debian's 3.11, and a runtime whose file was
deleted after it started.

Ground truth comes from the target itself: the dynamic loader's address of the exported
``_PyRuntime`` symbol (through ctypes) and ``sys.hexversion``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from explorer import elf
from explorer.errors import NotAPythonProcess, ProcessGone
from explorer.memory import ProcessMemory
from tests.targets import Target

Spawn = Callable[..., Target]

PYENV_311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
DEBIAN_311 = "/usr/bin/python3.11"

# Prints what the loader and the interpreter know, then waits.
REPORT = """
import ctypes, sys, time
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
print(f"runtime {runtime:#x} {sys.hexversion:#x}", flush=True)
time.sleep(120)
"""


def start_reporting(spawn: Spawn, **kwargs) -> tuple[Target, int, int]:
    """Start REPORT; return the target, its _PyRuntime address and its sys.hexversion."""
    target = spawn(REPORT, **kwargs)
    _, address, version = target.wait_for_line("runtime ").split()
    return target, int(address, 16), int(version, 16)


def elf_type(path: str) -> str:
    with open(path, "rb") as handle:
        return ELFFile(handle)["e_type"]


def section_vaddr(path: str) -> int:
    with open(path, "rb") as handle:
        return ELFFile(handle).get_section_by_name(".PyRuntime")["sh_addr"]


def test_static_non_pie_314(spawn: Spawn, target_python: str) -> None:
    target, runtime, version = start_reporting(spawn)
    image = elf.find_runtime(target.pid)
    assert os.path.realpath(image.path) == os.path.realpath(target_python)
    assert elf_type(target_python) == "ET_EXEC"
    # Non-PIE: the address is the section's own, with no relocation.
    assert image.section_address == section_vaddr(target_python) == runtime
    assert image.has_debug_offsets and image.free_threaded is False
    assert image.version_hex == version
    with ProcessMemory(target.pid) as memory:
        assert memory.read(image.section_address, 8) == elf.COOKIE


@pytest.mark.skipif(not os.access(PYENV_311, os.X_OK), reason="pyenv's 3.11.7 is not installed")
def test_shared_libpython_311(spawn: Spawn) -> None:
    target, runtime, version = start_reporting(spawn, python=PYENV_311)
    image = elf.find_runtime(target.pid)
    assert os.path.basename(image.path).startswith("libpython3.11.so")
    assert elf_type(image.opened_path) == "ET_DYN"
    # A shared object: the section address is relocated by the library's load bias.
    assert image.section_address == runtime != section_vaddr(image.opened_path)
    assert not image.has_debug_offsets  # 3.11 has no debug-offsets table
    assert image.version_hex == version
    assert image.version == "3.11.7"


@pytest.mark.skipif(not os.access(DEBIAN_311, os.X_OK), reason="Debian's python3.11 is not installed")
def test_debian_311_executable(spawn: Spawn) -> None:
    target, runtime, version = start_reporting(spawn, python=DEBIAN_311)
    image = elf.find_runtime(target.pid)
    assert image.section_address == runtime
    assert not image.has_debug_offsets
    assert image.version_hex == version


def test_deleted_runtime_file(spawn: Spawn, target_python: str, tmp_path: Path) -> None:
    """The binary is removed after start (as in a package upgrade): maps shows it as "(deleted)"
    and the runtime is read through /proc/PID/map_files or /proc/PID/exe."""
    copy = tmp_path / "python3.14-copy"
    shutil.copy2(target_python, copy)
    home = str(Path(target_python).resolve().parent.parent)
    target, runtime, version = start_reporting(spawn, python=str(copy), env={"PYTHONHOME": home})
    copy.unlink()
    maps = elf.read_maps(target.pid)
    assert any(m.deleted and m.path == str(copy) for m in maps)
    image = elf.find_runtime(target.pid, maps)
    assert image.path == str(copy)
    assert image.opened_path.startswith((f"/proc/{target.pid}/map_files/", f"/proc/{target.pid}/exe"))
    assert image.section_address == runtime
    assert image.version_hex == version
    with ProcessMemory(target.pid) as memory:
        assert memory.read(image.section_address, 8) == elf.COOKIE


def test_not_python(spawn: Spawn) -> None:
    target = spawn(argv=["sleep", "60"])
    with pytest.raises(NotAPythonProcess):
        elf.find_runtime(target.pid)


def test_no_such_process() -> None:
    with open("/proc/sys/kernel/pid_max") as handle:
        pid_max = int(handle.read())
    with pytest.raises(ProcessGone):
        elf.find_runtime(pid_max + 1)


def test_version_string() -> None:
    assert elf.version_string(0x030E0AF0) == "3.14.10"
    assert elf.version_string(0x030E00C1) == "3.14.0rc1"
    assert elf.version_string(0x030D00A2) == "3.13.0a2"
    assert elf.version_string(None) is None
