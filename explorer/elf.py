"""Find a process's CPython runtime (the ``.PyRuntime`` ELF section) without touching its memory.

Reads ``/proc/PID/maps`` and the mapped ELF files (opened as the target sees them, through
``/proc/PID/root``, or through ``/proc/PID/map_files`` for deleted files) with pyelftools.
Results per file are cached by file identity, so repeated scans of many processes are cheap.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS  # noqa: F401  (documents the flags pyelftools exposes)
from elftools.elf.elffile import ELFFile

from explorer.errors import NotAPythonProcess, PermissionDenied, ProcessGone
from explorer.memory import process_exited, process_start_time

COOKIE = b"xdebugpy"
RUNTIME_SECTION = ".PyRuntime"
# The part of the section's file data we keep: the whole 3.14 debug-offsets table (760 bytes)
# and room for later versions' larger tables.
STATIC_HEADER_SIZE = 1024

_PYTHON_NAME = re.compile(r"python(\d+)\.(\d+)")


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    deleted: bool


@dataclass(frozen=True)
class ElfRuntimeInfo:
    """What an ELF file says about the CPython runtime in it (independent of any process)."""

    section_vaddr: int
    section_size: int
    section_offset: int
    is_pie_or_shared: bool
    load_segments: tuple[tuple[int, int, int], ...]  # (p_vaddr, p_offset, p_align) of each PT_LOAD
    static_header: bytes
    version_hex: int | None
    has_debug_offsets: bool
    free_threaded: bool | None


@dataclass(frozen=True)
class RuntimeImage:
    """Where a process's CPython runtime lives, found from its maps and ELF file (no memory read)."""

    pid: int
    path: str
    opened_path: str
    section_address: int
    section_size: int
    version_hex: int | None
    has_debug_offsets: bool
    free_threaded: bool | None
    static_header: bytes

    @property
    def version(self) -> str | None:
        """The interpreter version as a string, for example ``"3.14.10"`` (None when unknown)."""
        return version_string(self.version_hex)

    @property
    def version_info(self) -> tuple[int, int] | None:
        """(major, minor), or None when unknown."""
        if self.version_hex is None:
            return None
        return (self.version_hex >> 24) & 0xFF, (self.version_hex >> 16) & 0xFF


def version_string(version_hex: int | None) -> str | None:
    """Format a ``PY_VERSION_HEX`` value: 0x030E0AF0 -> "3.14.10", 0x030E00C1 -> "3.14.0rc1"."""
    if version_hex is None:
        return None
    major = (version_hex >> 24) & 0xFF
    minor = (version_hex >> 16) & 0xFF
    micro = (version_hex >> 8) & 0xFF
    level = (version_hex >> 4) & 0xF
    serial = version_hex & 0xF
    if micro == 0xFF:  # only major.minor known (taken from a file name)
        return f"{major}.{minor}"
    text = f"{major}.{minor}.{micro}"
    if level != 0xF:
        text += {0xA: "a", 0xB: "b", 0xC: "rc"}.get(level, "?") + str(serial)
    return text


def read_maps(pid: int) -> list[Mapping]:
    """Parse /proc/PID/maps; raises ProcessGone or PermissionDenied."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} does not exist (any more)") from None
    except PermissionError:
        raise PermissionDenied(
            f"cannot read /proc/{pid}/maps: the process belongs to another user or is not dumpable; "
            "run periscope as the target's user, or as root / with CAP_SYS_PTRACE"
        ) from None
    except ProcessLookupError:
        raise ProcessGone(f"process {pid} exited") from None
    maps = []
    for line in raw.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        start, _, end = parts[0].partition("-")
        path = parts[5]
        deleted = path.endswith(" (deleted)")
        if deleted:
            path = path[: -len(" (deleted)")]
        maps.append(
            Mapping(int(start, 16), int(end, 16), parts[1], int(parts[2], 16), int(parts[4]), path, deleted)
        )
    return maps


_cache: dict[tuple[int, int, int, int], ElfRuntimeInfo | None] = {}


def _read_at_vaddr(elf: ELFFile, stream: BinaryIO, vaddr: int, size: int) -> bytes | None:
    for segment in elf.iter_segments():
        if segment["p_type"] != "PT_LOAD":
            continue
        start = segment["p_vaddr"]
        if start <= vaddr and vaddr + size <= start + segment["p_filesz"]:
            stream.seek(segment["p_offset"] + vaddr - start)
            return stream.read(size)
    return None


def _py_version_symbol(elf: ELFFile, stream: BinaryIO) -> int | None:
    """``Py_Version`` (exported since 3.11): the runtime's PY_VERSION_HEX."""
    for name in (".dynsym", ".symtab"):
        table = elf.get_section_by_name(name)
        if table is None or not hasattr(table, "get_symbol_by_name"):
            continue
        symbols = table.get_symbol_by_name("Py_Version")
        if symbols:
            data = _read_at_vaddr(elf, stream, symbols[0]["st_value"], 4)
            if data and len(data) == 4:
                return struct.unpack("<I", data)[0]
    return None


def inspect_elf(path: str) -> ElfRuntimeInfo | None:
    """Describe the CPython runtime in the ELF file at ``path``; None when it has none.

    Cached by file identity (device, inode, size, mtime). Raises OSError when it cannot be opened.
    """
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _cache:
        return _cache[key]
    info = None
    with open(path, "rb") as stream:
        try:
            elf = ELFFile(stream)
            section = elf.get_section_by_name(RUNTIME_SECTION)
            if section is not None and section["sh_type"] != "SHT_NOBITS":
                stream.seek(section["sh_offset"])
                header = stream.read(min(STATIC_HEADER_SIZE, section["sh_size"]))
                version_hex: int | None = None
                free_threaded: bool | None = None
                has_offsets = header[:8] == COOKIE and len(header) >= 24
                if has_offsets:
                    version_hex, free = struct.unpack_from("<QQ", header, 8)
                    free_threaded = bool(free)
                if version_hex is None:
                    version_hex = _py_version_symbol(elf, stream)
                if version_hex is None:
                    match = _PYTHON_NAME.search(os.path.basename(path))
                    if match:
                        version_hex = (int(match[1]) << 24) | (int(match[2]) << 16) | 0xFF00 | 0xF0
                loads = tuple(
                    (seg["p_vaddr"], seg["p_offset"], seg["p_align"])
                    for seg in elf.iter_segments()
                    if seg["p_type"] == "PT_LOAD"
                )
                info = ElfRuntimeInfo(
                    section_vaddr=section["sh_addr"],
                    section_size=section["sh_size"],
                    section_offset=section["sh_offset"],
                    is_pie_or_shared=elf["e_type"] == "ET_DYN",
                    load_segments=loads,
                    static_header=header,
                    version_hex=version_hex,
                    has_debug_offsets=has_offsets,
                    free_threaded=free_threaded,
                )
        except (ELFError, struct.error, ValueError):
            info = None
    if len(_cache) > 4096:
        _cache.clear()
    _cache[key] = info
    return info


def _load_bias(info: ElfRuntimeInfo, mappings: list[Mapping]) -> int | None:
    """The load bias of a PIE executable or shared library from its mappings."""
    page = 4096
    for vaddr, offset, _align in info.load_segments:
        # The PT_LOAD that holds the section: its page-aligned file offset names the mapping.
        seg_size_guess = None  # the segment's extent is bounded by the next segment's start
        if vaddr > info.section_vaddr:
            continue
        later = [v for v, _, _ in info.load_segments if v > vaddr]
        seg_size_guess = (min(later) - vaddr) if later else None
        if seg_size_guess is not None and info.section_vaddr >= vaddr + seg_size_guess:
            continue
        for mapping in mappings:
            if mapping.offset == offset & ~(page - 1):
                return mapping.start - (vaddr & ~(page - 1))
    if info.load_segments and mappings:
        # CPython's own formula: first mapping + section address - first PT_LOAD's aligned vaddr.
        vaddr, _, align = info.load_segments[0]
        align = align or page
        return mappings[0].start - (vaddr & ~(align - 1))
    return None


def _candidate_paths(pid: int, path: str, mappings: list[Mapping]) -> list[str]:
    first = mappings[0]
    candidates = []
    if not first.deleted:
        candidates.append(f"/proc/{pid}/root{path}")
    candidates.append(f"/proc/{pid}/map_files/{first.start:x}-{first.end:x}")
    try:
        if os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") == path:
            candidates.append(f"/proc/{pid}/exe")
    except OSError:
        pass
    return candidates


def find_runtime(pid: int, maps: list[Mapping] | None = None) -> RuntimeImage:
    """Locate the ``.PyRuntime`` section of process ``pid``.

    Raises NotAPythonProcess when no mapped file has one, PermissionDenied when the process's
    files cannot be read, ProcessGone when it does not exist.
    """
    if maps is None:
        maps = read_maps(pid)
    by_file: dict[str, list[Mapping]] = {}
    for mapping in maps:
        if mapping.path.startswith("/") and mapping.inode:
            by_file.setdefault(mapping.path, []).append(mapping)
    # CPython's rule: candidates are files whose name contains "python"; then any other ELF
    # (an embedder that links libpython statically) as a last resort.
    names = list(by_file)
    primary = [p for p in names if "python" in os.path.basename(p)]
    denied = False
    for path in primary:
        mappings = by_file[path]
        if os.path.basename(path).endswith(".so") and ".cpython-" in os.path.basename(path):
            continue  # an extension module: never holds the runtime
        info = None
        opened = ""
        for candidate in _candidate_paths(pid, path, mappings):
            try:
                info = inspect_elf(candidate)
                opened = candidate
                break
            except PermissionError:
                denied = True
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{pid}"):
                    raise ProcessGone(f"process {pid} exited") from None
            except OSError as error:
                if error.errno == errno.ESRCH:
                    raise ProcessGone(f"process {pid} exited") from None
        if info is None:
            continue
        if info.is_pie_or_shared:
            bias = _load_bias(info, mappings)
            if bias is None:
                continue
            address = bias + info.section_vaddr
        else:
            address = info.section_vaddr
        return RuntimeImage(
            pid=pid,
            path=path,
            opened_path=opened,
            section_address=address,
            section_size=info.section_size,
            version_hex=info.version_hex,
            has_debug_offsets=info.has_debug_offsets,
            free_threaded=info.free_threaded,
            static_header=info.static_header,
        )
    if denied:
        raise PermissionDenied(
            f"cannot open the executable of process {pid} through /proc/{pid}/root: "
            "run periscope as the target's user, or as root / with CAP_SYS_PTRACE"
        )
    if process_exited(pid, process_start_time(pid)):
        # A zombie (exited, not yet reaped) has an empty map: it is gone, not "not Python".
        raise ProcessGone(f"process {pid} exited")
    raise NotAPythonProcess(f"process {pid} is not a CPython process (no mapped file has a {RUNTIME_SECTION} section)")
