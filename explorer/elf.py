"""Find a process's CPython runtime (the ``.PyRuntime`` ELF section) without touching its memory.

Reads ``/proc/PID/maps`` and the mapped ELF files (opened as the target sees them, through
``/proc/PID/root``, or through ``/proc/PID/map_files`` for deleted files) with pyelftools.
Results per file are cached by file identity, in memory and on disk (one small file per
identity under ``explorer.pythons.cache_dir() / "elf-cache"``), so repeated scans of many
processes are cheap and only the first look at an interpreter binary imports pyelftools.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import namedtuple

from explorer.errors import NotAPythonProcess, PermissionDenied, ProcessGone
from explorer.memory import process_exited, process_start_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO

    from elftools.elf.elffile import ELFFile

COOKIE = b"xdebugpy"
RUNTIME_SECTION = ".PyRuntime"
# The part of the section's file data we keep: the whole debug-offsets table (3.14: 760 bytes,
# 3.15: 888) and room for later versions' larger tables.
STATIC_HEADER_SIZE = 1024

_PYTHON_NAME = r"python(\d+)\.(\d+)"  # compiled where used: only the ELF parser needs re


# The records below are namedtuple subclasses rather than frozen dataclasses: they lie on the
# path of ``periscope stack``, whose start-up time counts, and the dataclasses module (with the
# inspect, re, ast and dis it imports) and each dataclass's generated code cost more there than
# reading the stack does. They are immutable, compare and hash by value like frozen dataclasses,
# are cheap to create, and need no import. Being tuples, they also equal a plain tuple of the
# same values and serialise (json, msgpack) as arrays: convert them field by field. Defaults go
# in ``namedtuple(..., defaults=...)``, as a value assigned in the class body would replace the
# field; the annotations only document the field types.


class Mapping(namedtuple("Mapping", "start end perms offset inode path deleted")):
    """One line of /proc/PID/maps."""

    __slots__ = ()
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    deleted: bool


class ElfRuntimeInfo(
    namedtuple(
        "ElfRuntimeInfo",
        "section_vaddr section_size section_offset is_pie_or_shared load_segments static_header"
        " version_hex has_debug_offsets free_threaded",
    )
):
    """What an ELF file says about the CPython runtime in it (independent of any process)."""

    __slots__ = ()
    section_vaddr: int
    section_size: int
    section_offset: int
    is_pie_or_shared: bool
    load_segments: tuple[tuple[int, int, int], ...]  # (p_vaddr, p_offset, p_align) of each PT_LOAD
    static_header: bytes
    version_hex: int | None
    has_debug_offsets: bool
    free_threaded: bool | None


class RuntimeImage(
    namedtuple(
        "RuntimeImage",
        "pid path opened_path section_address section_size version_hex has_debug_offsets free_threaded static_header",
    )
):
    """Where a process's CPython runtime lives, found from its maps and ELF file (no memory read)."""

    __slots__ = ()
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
            f"cannot read /proc/{pid}/maps: the process belongs to another user or is not dumpable",
            "run periscope as the target's user, or as root / with CAP_SYS_PTRACE",
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

    Cached by file identity (device, inode, size, mtime): in memory, and on disk so that later
    runs need not import pyelftools. Raises OSError when it cannot be opened.
    """
    st = os.stat(path)
    key = _identity(st)
    if key in _cache:
        return _cache[key]
    with open(path, "rb") as stream:
        # The disk cache may only describe the file opened here: one replaced since the stat
        # above has another identity, and is parsed (and not stored on disk under this one).
        same = _identity(os.fstat(stream.fileno())) == key
        found, info = _read_disk_entry(key, path) if same else (False, None)
        if not found:
            info = _parse_elf(path, stream)
            if same:
                _write_disk_entry(key, path, info)
    if len(_cache) > 4096:
        _cache.clear()
    _cache[key] = info
    return info


def _parse_elf(path: str, stream: BinaryIO) -> ElfRuntimeInfo | None:
    """What the ELF file open in ``stream`` says about a CPython runtime in it (pyelftools)."""
    import re

    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(stream)
        section = elf.get_section_by_name(RUNTIME_SECTION)
        if section is None or section["sh_type"] == "SHT_NOBITS":
            return None
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
            match = re.search(_PYTHON_NAME, os.path.basename(path))
            if match:
                version_hex = (int(match[1]) << 24) | (int(match[2]) << 16) | 0xFF00 | 0xF0
        loads = tuple(
            (seg["p_vaddr"], seg["p_offset"], seg["p_align"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"
        )
        return ElfRuntimeInfo(
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
        return None


# -- the on-disk cache ---------------------------------------------------------------------
#
# One file per (file identity, path as the target names it): a header that repeats the key, the
# ElfRuntimeInfo (or "no runtime"), and a checksum of all of it. An entry that does not read back
# whole and matching is ignored and rewritten; entries are written to a temporary name and
# renamed into place, so readers never see half of one.

DISK_CACHE_ENTRIES = 256
"""Entries kept on disk; writing one more prunes the oldest down to three quarters of this."""
_DISK_MAGIC = b"PSCELF\x00\x01"  # the last byte is the format version
_DISK_HEAD = struct.Struct("<8sQQqqIB")  # magic, st_dev, st_ino, st_size, st_mtime_ns, path bytes, flags
_DISK_INFO = struct.Struct("<QQQQHH")  # section vaddr, size, offset, version_hex, PT_LOADs, header bytes
_DISK_LOAD = struct.Struct("<QQQ")  # p_vaddr, p_offset, p_align
_DISK_CHECK = struct.Struct("<Q")
# The checksum: the bytes as one integer modulo the Mersenne prime 2**61 - 1. Any corruption that
# is not a multiple of it is caught (random damage slips through with odds of 2**-61), and it
# needs no import: zlib or hashlib would cost start-up time, the only thing this cache saves.
_CHECK_MODULUS = (1 << 61) - 1
_HAS_INFO, _PIE_OR_SHARED, _HAS_OFFSETS, _HAS_VERSION, _HAS_FREE, _FREE = (1 << bit for bit in range(6))
_written = 0  # entries this process wrote (names its temporary files)


def disk_cache_dir() -> str:
    """Where inspect_elf keeps its results: ``explorer.cache.cache_path() / "elf-cache"``."""
    from explorer.cache import cache_path

    return os.path.join(cache_path(), "elf-cache")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _cache_key_path(path: str) -> bytes:
    """The path as the target names it: ``/proc/PID/root/usr/bin/x`` -> ``/usr/bin/x``.

    The file identity tells files apart, so the same binary seen through two processes' roots
    is one entry; the path stays in the key because the file name can give the version.
    """
    if path.startswith("/proc/"):
        pid, _, rest = path[len("/proc/") :].partition("/")
        if pid.isdigit() and rest.startswith("root/"):
            path = rest[len("root") :]
    return os.fsencode(path)


def _checksum(data: bytes) -> int:
    return int.from_bytes(data, "little") % _CHECK_MODULUS


def _disk_name(key: tuple[int, int, int, int], path: str) -> str:
    """The entry's file: the key's numbers and a checksum of the path (the entry holds the path itself)."""
    dev, ino, size, mtime_ns = key
    path_sum = _checksum(_cache_key_path(path))
    return os.path.join(disk_cache_dir(), f"{dev:x}-{ino:x}-{size:x}-{mtime_ns & (1 << 64) - 1:x}-{path_sum:x}")


def _encode(key: tuple[int, int, int, int], path: str, info: ElfRuntimeInfo | None) -> bytes:
    """One disk entry: header (key, path, flags), the info if there is one, then the checksum."""
    name = _cache_key_path(path)
    flags = 0
    body = b""
    if info is not None:
        flags |= _HAS_INFO
        flags |= _PIE_OR_SHARED if info.is_pie_or_shared else 0
        flags |= _HAS_OFFSETS if info.has_debug_offsets else 0
        flags |= _HAS_VERSION if info.version_hex is not None else 0
        if info.free_threaded is not None:
            flags |= _HAS_FREE | (_FREE if info.free_threaded else 0)
        body = _DISK_INFO.pack(
            info.section_vaddr,
            info.section_size,
            info.section_offset,
            info.version_hex or 0,
            len(info.load_segments),
            len(info.static_header),
        )
        body += b"".join(_DISK_LOAD.pack(*segment) for segment in info.load_segments) + info.static_header
    data = _DISK_HEAD.pack(_DISK_MAGIC, *key, len(name), flags) + name + body
    return data + _DISK_CHECK.pack(_checksum(data))


def _decode(data: bytes, key: tuple[int, int, int, int], path: str) -> tuple[bool, ElfRuntimeInfo | None]:
    """(True, info) for a whole entry about this file and path; (False, None) for anything else."""
    miss = (False, None)
    if len(data) < _DISK_HEAD.size + _DISK_CHECK.size:
        return miss
    body, (check,) = data[: -_DISK_CHECK.size], _DISK_CHECK.unpack_from(data, len(data) - _DISK_CHECK.size)
    if _checksum(body) != check:
        return miss
    magic, dev, ino, size, mtime_ns, name_size, flags = _DISK_HEAD.unpack_from(body)
    position = _DISK_HEAD.size + name_size
    if magic != _DISK_MAGIC or (dev, ino, size, mtime_ns) != key:
        return miss
    if body[_DISK_HEAD.size : position] != _cache_key_path(path):
        return miss
    if not flags & _HAS_INFO:
        return (True, None) if position == len(body) else miss
    if len(body) < position + _DISK_INFO.size:
        return miss
    vaddr, section_size, offset, version_hex, loads, header_size = _DISK_INFO.unpack_from(body, position)
    position += _DISK_INFO.size
    if len(body) != position + loads * _DISK_LOAD.size + header_size:
        return miss
    segments = tuple(_DISK_LOAD.unpack_from(body, position + i * _DISK_LOAD.size) for i in range(loads))
    position += loads * _DISK_LOAD.size
    return True, ElfRuntimeInfo(
        section_vaddr=vaddr,
        section_size=section_size,
        section_offset=offset,
        is_pie_or_shared=bool(flags & _PIE_OR_SHARED),
        load_segments=segments,
        static_header=body[position:],
        version_hex=version_hex if flags & _HAS_VERSION else None,
        has_debug_offsets=bool(flags & _HAS_OFFSETS),
        free_threaded=bool(flags & _FREE) if flags & _HAS_FREE else None,
    )


def _read_disk_entry(key: tuple[int, int, int, int], path: str) -> tuple[bool, ElfRuntimeInfo | None]:
    """The cached result for this file, as (found, info); a missing or unusable entry is not found."""
    try:
        with open(_disk_name(key, path), "rb") as handle:
            data = handle.read(1 << 16)
    except OSError:  # no entry yet, or an unreadable cache: parse the file instead
        return False, None
    return _decode(data, key, path)


def _write_disk_entry(key: tuple[int, int, int, int], path: str, info: ElfRuntimeInfo | None) -> None:
    """Store one result, atomically; a cache that cannot be written only costs the next run time."""
    global _written
    cache_path = _disk_name(key, path)
    directory = os.path.dirname(cache_path)
    _written += 1
    temporary = os.path.join(directory, f".{os.path.basename(cache_path)}.{os.getpid()}.{_written}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_encode(key, path, info))
            os.replace(temporary, cache_path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass  # already gone: nothing to clean up
            raise
        _prune(directory, keep=cache_path)
    except OSError:
        return  # read-only or full home, another user's directory: work without the disk cache


def _prune(directory: str, keep: str) -> None:
    """Keep at most DISK_CACHE_ENTRIES files in the directory, dropping the oldest written (never ``keep``)."""
    entries = []
    with os.scandir(directory) as listing:
        for entry in listing:
            if entry.path == keep:
                continue
            try:
                entries.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.path))
            except OSError:
                continue  # removed by another periscope meanwhile
    if len(entries) < DISK_CACHE_ENTRIES:
        return
    entries.sort()
    for _, stale in entries[: len(entries) + 1 - DISK_CACHE_ENTRIES * 3 // 4]:
        try:
            os.unlink(stale)
        except OSError:
            continue  # removed by another periscope meanwhile


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
            f"cannot open the executable of process {pid} through /proc/{pid}/root",
            "run periscope as the target's user, or as root / with CAP_SYS_PTRACE",
        )
    if process_exited(pid, process_start_time(pid)):
        # A zombie (exited, not yet reaped) has an empty map: it is gone, not "not Python".
        raise ProcessGone(f"process {pid} exited")
    raise NotAPythonProcess(
        f"process {pid} ({_program_name(pid)}) is not a Python program: no CPython interpreter is loaded in it",
        "run 'periscope ps' for the Python processes and their pids",
    )


def _program_name(pid: int) -> str:
    """The program's name as the kernel keeps it (``/proc/PID/comm``); the caller escapes it for display."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip() or "?"
    except OSError:
        return "?"
