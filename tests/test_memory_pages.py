"""The page cache the value reader reads through: the same bytes as direct reads, and never stale.

``explorer.memory.PageCache`` serves small reads from whole pages read once; the value reader
(explorer.values) uses it only for one read that it then checks as a whole. These tests run
against real targets: the bytes must be the target's own at every offset (within a page, across
page boundaries, larger than the cache serves), an unreadable address must fail as it does
directly, and a reader used again after the target ran must see the new values.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from explorer.memory import MAX_PAGED_READ, PAGE, MemoryFault, PageCache, ProcessMemory
from explorer.remote import RemoteProcess
from explorer.stacks import StackReader
from explorer.values import ValueReader
from tests.targets import Target

Spawn = Callable[..., Target]

PATTERN = """
import sys, time
blob = bytes((i * 7 + i // 256) % 256 for i in range(5 * 4096 + 123))
# A bytes object's data follows its header, whose size is that of b"" less its one NUL byte.
print("at", id(blob) + sys.getsizeof(b"") - 1, flush=True)
time.sleep(3600)
"""

EXPECTED = bytes((i * 7 + i // 256) % 256 for i in range(5 * 4096 + 123))


def _data_address(target: Target) -> int:
    line = target.wait_for_line("at ", timeout=60)
    return int(line.split()[1])


def test_pages_give_the_targets_own_bytes_at_every_offset(spawn: Spawn, target_python: str) -> None:
    """Reads within a page, across one and several page boundaries, and larger than the cache
    serves, give the bytes the target holds, as direct reads do."""
    target = spawn(PATTERN, python=target_python)
    start = _data_address(target)
    with ProcessMemory(target.pid) as memory:
        pages = PageCache(memory)
        first_boundary = (start + PAGE) & ~(PAGE - 1)
        cases = [
            (start, 8),
            (start + 100, 64),
            (first_boundary - 3, 8),  # 3 bytes in one page, 5 in the next
            (first_boundary - 1, 2 * PAGE + 2),  # three pages
            (start, MAX_PAGED_READ + 1),  # read directly
            (start + len(EXPECTED) - 16, 16),
        ]
        for address, size in cases:
            want = EXPECTED[address - start : address - start + size]
            assert pages.read(address, size) == want, (address - start, size)
            assert memory.read(address, size) == want
        assert pages.read_u64(start) == int.from_bytes(EXPECTED[:8], "little")
        assert pages.page_reads >= 2
        # Every later read of the same pages is served without reading the target again.
        reads = pages.page_reads
        assert pages.read(start + 1, 8) == EXPECTED[1:9]
        assert pages.page_reads == reads
        pages.clear()
        assert pages.read(start + 1, 8) == EXPECTED[1:9]
        assert pages.page_reads == reads + 1


def test_an_unreadable_address_fails_through_the_pages_as_directly(spawn: Spawn, target_python: str) -> None:
    target = spawn(PATTERN, python=target_python)
    _data_address(target)
    with ProcessMemory(target.pid) as memory:
        pages = PageCache(memory)
        for address in (PAGE, 0x10, (1 << 47) - PAGE):  # page zero and the top of user space: never mapped
            with pytest.raises(MemoryFault):
                memory.read(address, 8)
            with pytest.raises(MemoryFault):
                pages.read(address, 8)
        with pytest.raises(MemoryFault):
            pages.read(1 << 63, 8)


CHANGES = """
def wait_here():
    count = 0
    items = [0]
    while True:
        print("ready", count, flush=True)
        input()
        count += 1
        items[0] = count

wait_here()
"""


def _locals(reader: ValueReader, stacks: StackReader) -> dict[str, str]:
    (stack,) = stacks.read()
    per_frame = reader.stack_locals(stack.frame_refs)
    found = next(found for frame, found in zip(stack.frames, per_frame) if frame.function == "wait_here")
    assert found is not None
    return {local.name: local.value.repr for local in found}


def test_one_reader_reads_anew_after_the_target_ran(spawn: Spawn, target_python: str) -> None:
    """The target runs and comes back to the very same place (same thread, frame and
    instruction, so the same GIL state): a reader used again sees the new values, not pages or
    values kept from its previous read."""
    target = spawn(CHANGES, python=target_python, stdin=subprocess.PIPE)
    target.wait_for_line("ready 0", timeout=60)
    assert target.proc.stdin is not None
    with RemoteProcess.open(target.pid) as process:
        stacks = StackReader(process)
        reader = ValueReader(process)
        assert _locals(reader, stacks) == {"count": "0", "items": "[0]"}
        for count in (1, 2):
            target.proc.stdin.write(b"\n")
            target.proc.stdin.flush()
            target.wait_for_line(f"ready {count}", timeout=60)
            assert _locals(reader, stacks) == {"count": str(count), "items": f"[{count}]"}
