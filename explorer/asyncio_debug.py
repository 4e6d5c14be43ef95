"""Where a CPython process's ``_asyncio`` module describes its task objects: the ``.AsyncioDebug`` table.

CPython's ``_asyncio`` extension (or the interpreter binary, where ``_asyncio`` is built in, as in
3.15) carries an ELF section, ``.AsyncioDebug``: 13 uint64 giving the size and field offsets of
its task object and where each interpreter and thread state keeps its task list, running loop
and running task. This module finds it in the target's mapped files (parsed with a small bounded
ELF reader: the file is the target's, so hostile input), computes its address, and validates the
table before the task reader (explorer.tasks) trusts any of it. Nothing here reads task memory.
"""

from __future__ import annotations

import os
import struct
from collections import namedtuple

from explorer.elf import read_maps
from explorer.errors import PeriscopeError
from explorer.remote import RemoteProcess

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO

    from explorer.elf import Mapping

ASYNCIO_SECTION = b".AsyncioDebug"
ASYNCIO_TABLE_SIZE = 13 * 8
MAX_ELF_SECTIONS = 4096
MAX_ELF_SEGMENTS = 256
MAX_SHSTRTAB = 1 << 20


class AsyncioOffsets(namedtuple(
    "AsyncioOffsets",
    "task_size task_name task_awaited_by task_is_task task_awaited_by_is_set task_coro task_node"
    " interp_size interp_tasks_head tstate_size tstate_running_loop tstate_running_task tstate_tasks_head",
)):
    """The ``.AsyncioDebug`` table of a target, validated."""

    __slots__ = ()


_section_cache: dict[tuple[int, int, int, int], tuple[int, int, tuple[tuple[int, int, int], ...]] | None] = {}


def _elf_section(path: str, name: bytes) -> tuple[int, int, tuple[tuple[int, int, int], ...]] | None:
    """(e_type, sh_addr of section ``name``, PT_LOADs as (p_vaddr, p_offset, p_memsz)) of an ELF64 file, or None.

    A small bounded parser of the target's file (hostile input): the section table, its names and
    the program headers, nothing else. Cached by file identity.
    """
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _section_cache:
            return _section_cache[key]
        result = _parse_elf_section(handle, st.st_size, name)
    if len(_section_cache) > 256:
        _section_cache.clear()
    _section_cache[key] = result
    return result


def _parse_elf_section(handle: BinaryIO, file_size: int, name: bytes) -> tuple[int, int, tuple[tuple[int, int, int], ...]] | None:
    """What :func:`_elf_section` returns, from an open file of ``file_size`` bytes."""

    def read_at(offset: int, size: int) -> bytes | None:
        if offset < 0 or size < 0 or offset + size > file_size:
            return None
        handle.seek(offset)
        data = handle.read(size)
        return data if len(data) == size else None

    header = read_at(0, 64)
    if header is None or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
        return None
    e_type = struct.unpack_from("<H", header, 16)[0]
    e_phoff, e_shoff = struct.unpack_from("<QQ", header, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", header, 54)
    if e_shentsize != 64 or not 0 < e_shnum <= MAX_ELF_SECTIONS or e_shstrndx >= e_shnum:
        return None
    if e_phentsize != 56 or e_phnum > MAX_ELF_SEGMENTS:
        return None
    sections = read_at(e_shoff, 64 * e_shnum)
    segments = read_at(e_phoff, 56 * e_phnum)
    if sections is None or segments is None:
        return None
    str_offset, str_size = struct.unpack_from("<QQ", sections, 64 * e_shstrndx + 24)
    if str_size > MAX_SHSTRTAB:
        return None
    names = read_at(str_offset, str_size)
    if names is None:
        return None
    address = None
    for index in range(e_shnum):
        sh_name, sh_type = struct.unpack_from("<II", sections, 64 * index)
        if names[sh_name : sh_name + len(name) + 1] == name + b"\0" and sh_type == 1:  # SHT_PROGBITS
            sh_addr, _sh_offset, sh_size = struct.unpack_from("<QQQ", sections, 64 * index + 16)
            if sh_size >= ASYNCIO_TABLE_SIZE:
                address = sh_addr
            break
    if address is None:
        return None
    loads = []
    for index in range(e_phnum):
        p_type = struct.unpack_from("<I", segments, 56 * index)[0]
        if p_type == 1:  # PT_LOAD
            p_offset, p_vaddr = struct.unpack_from("<QQ", segments, 56 * index + 8)
            p_memsz = struct.unpack_from("<Q", segments, 56 * index + 40)[0]
            loads.append((p_vaddr, p_offset, p_memsz))
    return e_type, address, tuple(loads)


def find_asyncio_section(process: RemoteProcess) -> int | None:
    """Address of the ``.AsyncioDebug`` table in the target, or None when no mapped file has one.

    Looks in the mapped ``_asyncio`` extension first, then in the file that holds the runtime
    (``_asyncio`` built in). Files are opened as the target sees them (``/proc/PID/root``, or
    ``/proc/PID/map_files`` for a deleted one).
    """
    pid = process.pid
    by_file: dict[str, list[Mapping]] = {}
    for mapping in read_maps(pid):
        if mapping.path.startswith("/") and mapping.inode:
            by_file.setdefault(mapping.path, []).append(mapping)
    candidates = [path for path in by_file if os.path.basename(path).startswith("_asyncio")]
    if process.image.path in by_file:
        candidates.append(process.image.path)
    for path in candidates:
        mappings = by_file[path]
        found = None
        for opened in _openable(pid, path, mappings):
            try:
                found = _elf_section(opened, ASYNCIO_SECTION)
                break
            except OSError:
                continue
        if found is None:
            continue
        e_type, sh_addr, loads = found
        if e_type == 2:  # ET_EXEC: no relocation
            return sh_addr
        for vaddr, offset, memsz in loads:
            if vaddr <= sh_addr < vaddr + memsz:
                for mapping in mappings:
                    if mapping.offset == offset & ~0xFFF:
                        return mapping.start - (vaddr & ~0xFFF) + sh_addr
    return None


def _openable(pid: int, path: str, mappings: list[Mapping]) -> list[str]:
    """Paths to open a mapped file by, as the target sees it."""
    first = mappings[0]
    paths = [] if first.deleted else [f"/proc/{pid}/root{path}"]
    paths.append(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}")
    return paths


def asyncio_imported(pid: int) -> bool:
    """Whether the target has an ``_asyncio`` extension file mapped.

    Only a fallback, for when the target's ``sys.modules`` cannot be read: where ``_asyncio`` is
    built into the interpreter (3.15) no such file exists even after ``import asyncio``.
    """
    try:
        return any(os.path.basename(mapping.path).startswith("_asyncio") for mapping in read_maps(pid))
    except PeriscopeError:
        return False


def parse_asyncio_offsets(data: bytes, interp_size: int, tstate_size: int) -> AsyncioOffsets | None:
    """The validated table, or None when it does not describe structs this interpreter could have."""
    if len(data) < ASYNCIO_TABLE_SIZE:
        return None
    table = AsyncioOffsets(*struct.unpack_from("<13Q", data))
    task_fields = (table.task_name, table.task_awaited_by, table.task_is_task, table.task_awaited_by_is_set, table.task_coro)
    if not 0 < table.task_size < 4096 or any(field >= table.task_size for field in task_fields):
        return None
    if table.task_node + 16 > table.task_size or table.task_node % 8:
        return None
    if table.interp_size != interp_size or table.interp_tasks_head + 16 > interp_size:
        return None
    if not tstate_size <= table.tstate_size < 1 << 20:
        return None
    for field in (table.tstate_running_loop, table.tstate_running_task):
        if field + 8 > table.tstate_size:
            return None
    if table.tstate_tasks_head + 16 > table.tstate_size:
        return None
    return table


__all__ = ["ASYNCIO_SECTION", "AsyncioOffsets", "asyncio_imported", "find_asyncio_section", "parse_asyncio_offsets"]
