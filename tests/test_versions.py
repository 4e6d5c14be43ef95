"""The version layer (explorer.versions) against the real interpreters of each supported minor.

Every per-minor fact periscope keeps is checked on the binary it describes: the bytecode magic
number and the RESUME opcodes from the interpreter itself, the debug-offsets table size from its
.PyRuntime section, and the precompiled agent a target of that minor accepts. The one message for
an unsupported version is the same wherever it is given.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from explorer import elf, offsets, versions
from explorer.discovery import version_verdict
from explorer.errors import UnsupportedPython
from explorer.compiled_agent import agent_code
from explorer.stacks import _first_traceable

FACTS = """
import dis, importlib.util, json, opcode, sys
names = {**getattr(opcode, "_specialized_opmap", {}), **dis.opmap}
print(json.dumps({
    "magic": int.from_bytes(importlib.util.MAGIC_NUMBER[:2], "little"),
    "resume": sorted(code for name, code in names.items() if "RESUME" in name),
    "minor": list(sys.version_info[:2]),
    "free_threaded": bool(sys._is_gil_enabled() is False) if hasattr(sys, "_is_gil_enabled") else False,
}))
"""


def _facts(python: str) -> dict:
    done = subprocess.run([python, "-I", "-c", FACTS], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_layout_facts_are_the_interpreters_own(target_python: str, target_minor: tuple[int, int]) -> None:
    facts = _facts(target_python)
    assert tuple(facts["minor"]) == target_minor and facts["free_threaded"] is False
    layout = versions.LAYOUTS[(*target_minor, False)]
    assert layout.magic == facts["magic"]
    assert layout.resume_opcodes == frozenset(facts["resume"])


def test_the_binarys_table_has_the_layouts_size(target_python: str, target_minor: tuple[int, int]) -> None:
    info = elf.inspect_elf(target_python)
    assert info is not None and info.has_debug_offsets
    table = offsets.parse(info.static_header, section_size=info.section_size)
    assert table.layout.minor == target_minor
    assert table.layout.table_size == offsets.table_size(table.layout.debug_offsets)
    # The compact str header in the table (3.15 states it) agrees with the layout's constant.
    unicode = table.groups["unicode_object"]
    if "compactunicodeobject_size" in unicode:
        assert unicode["compactunicodeobject_size"] - unicode["asciiobject_size"] == table.layout.compact_unicode_extra


def test_first_traceable_finds_resume_in_real_bytecode(target_python: str, target_minor: tuple[int, int]) -> None:
    """The RESUME set of the minor finds the first RESUME that the interpreter itself reports."""
    program = (
        "import dis, json\n"
        "def f(x):\n    y = x + 1\n    return y\n"
        "code = f.__code__.co_code\n"
        "first = next(i.offset for i in dis.get_instructions(f) if i.opname == 'RESUME')\n"
        "print(json.dumps([code.hex(), first]))\n"
    )
    done = subprocess.run([target_python, "-I", "-c", program], capture_output=True, text=True, timeout=60, check=True)
    code_hex, first = json.loads(done.stdout)
    layout = versions.LAYOUTS[(*target_minor, False)]
    assert _first_traceable(bytes.fromhex(code_hex), layout.resume_opcodes) == first


def test_precompiled_agent_carries_the_minors_magic(spawn, target_minor: tuple[int, int], tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    target = spawn("import sys, time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n")
    target.wait_for_line("ready")
    version_hex = offsets.peek_version(elf.find_runtime(target.pid).static_header)[0]
    code = agent_code(target.pid, version_hex)
    assert code is not None
    assert int.from_bytes(code.magic[:2], "little") == versions.LAYOUTS[(*target_minor, False)].magic
    assert code.cache_tag == f"cpython-{target_minor[0]}{target_minor[1]}"


@pytest.mark.parametrize(
    ("version_hex", "free_threaded"),
    [(0x030D07F0, False), (0x031000F0, False), (0x030F02F0, True), (0x030E0AF0, True), (0x030F00A3, False), (None, None)],
)
def test_one_message_everywhere(version_hex: int | None, free_threaded: bool | None) -> None:
    """ps (version_verdict) and the readers (offsets.parse) refuse with the same words."""
    refused = versions.unsupported(version_hex, free_threaded)
    assert refused is not None
    assert "CPython 3.14 and 3.15" in refused.reason and refused.fix.startswith("restart it under")
    verdict = version_verdict(version_hex, free_threaded)
    assert (verdict.attachable, verdict.reason, verdict.fix) == (False, refused.reason, refused.fix)
    if version_hex is not None:
        header = offsets.HEADER.pack(elf.COOKIE, version_hex, int(bool(free_threaded))) + bytes(1000)
        with pytest.raises(UnsupportedPython) as caught:
            offsets.parse(header)
        assert str(caught.value) == f"{refused.reason}; {refused.fix}"


def test_supported_minors_all_have_a_layout() -> None:
    for minor in versions.SUPPORTED_MINORS:
        layout = versions.LAYOUTS[(*minor, False)]
        assert layout.minor == minor and layout.name == versions.minor_name(minor)
        assert versions.layout_for(minor[0] << 24 | minor[1] << 16 | 0xF0, False) is layout
        assert versions.layout_for(minor[0] << 24 | minor[1] << 16 | 0xF0, True) is None  # free-threaded
        assert versions.object_layout_for(minor[0] << 24 | minor[1] << 16 | 0xF0) is versions.OBJECT_LAYOUTS[(*minor, False)]
    assert versions.SUPPORTED_TEXT == "CPython 3.14 and 3.15"
    assert versions.LARGEST_TABLE == 888


def test_common_facts_are_shared_or_refused() -> None:
    """A fact code uses before it knows the target's minor must be the same in every layout."""
    assert versions.common("status_active") == 1 << 4
    assert versions.common("root_frame_offset") == 32
    with pytest.raises(LookupError, match="magic"):
        versions.common("magic")


ASYNCIO_FACTS = """
import asyncio, ctypes, json, sys
gi_frame_state, fut_state, num_cancels, fut_waiter, exception = map(int, sys.argv[1:6])

def i32(obj, at):
    return ctypes.c_int32.from_address(id(obj) + at).value

def ptr(obj, at):
    return ctypes.c_void_p.from_address(id(obj) + at).value or 0

def frame_state(coro):
    return ctypes.c_int8.from_address(id(coro) + gi_frame_state).value

seen = {}

async def parked(future):
    await future

async def runs():
    seen["executing"] = frame_state(me)

async def fails():
    raise ValueError

async def main():
    global me
    future = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(parked(future))
    await asyncio.sleep(0)
    seen["yield_from"] = frame_state(task.get_coro())
    seen["pending"] = i32(task, fut_state)
    seen["waiter"] = ptr(task, fut_waiter) == id(future)
    task.cancel()
    seen["cancels"] = i32(task, num_cancels)
    await asyncio.gather(task, return_exceptions=True)
    seen["cancelled"] = i32(task, fut_state)
    me = runs()
    await me
    seen["cleared"] = frame_state(me)
    failed = asyncio.create_task(fails())
    await asyncio.gather(failed, return_exceptions=True)
    seen["finished"] = i32(failed, fut_state)
    seen["exception"] = ptr(failed, exception) == id(failed.exception())

asyncio.run(main())
print(json.dumps(seen))
"""


def test_asyncio_facts_are_the_interpreters_own(target_python: str, target_minor: tuple[int, int]) -> None:
    """The task reader's per-minor facts, read in a process of that minor from its own tasks and coroutines."""
    info = elf.inspect_elf(target_python)
    assert info is not None
    table = offsets.parse(info.static_header, section_size=info.section_size)
    facts = versions.LAYOUTS[(*target_minor, False)].asyncio
    where = [table.gen_object.gi_frame_state, facts.fut_state, facts.num_cancels, facts.fut_waiter, facts.exception]
    done = subprocess.run(
        [target_python, "-I", "-c", ASYNCIO_FACTS, *map(str, where)], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert seen == {
        "yield_from": facts.frame_yield_from, "pending": 0, "waiter": True, "cancels": 1, "cancelled": 1,
        "executing": facts.frame_executing, "cleared": facts.frame_cleared, "finished": 2, "exception": True,
    }
