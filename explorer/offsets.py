"""The ``_Py_DebugOffsets`` table at the start of ``_PyRuntime``, parsed and validated as untrusted input.

CPython 3.14+ describes its own internal struct layouts in this table: periscope reads it from
the target, checks it (cookie, version, build, sizes, every offset inside its struct) and refuses
anything it does not know, with a typed error that names the version. Which fields a minor's
table has comes from explorer.versions.
"""

from __future__ import annotations

import struct
from collections import namedtuple

from explorer import versions
from explorer.elf import COOKIE, version_string
from explorer.errors import UnsupportedPython

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Mapping

MappingProxyType = type(type.__dict__)  # as the types module defines it, without importing types (start-up time)

# The field lists live in the version layer; these names stay for readers of this module.
LAYOUT_3_14 = versions.DEBUG_OFFSETS_3_14
LAYOUT_3_15 = versions.DEBUG_OFFSETS_3_15
HEADER = struct.Struct("<8sQQ")
MAX_STRUCT_SIZE = 1 << 20


def table_size(layout: tuple[tuple[str, tuple[str, ...]], ...]) -> int:
    """Bytes of a table with this layout (header plus one uint64 per field)."""
    return HEADER.size + 8 * sum(len(fields) for _, fields in layout)


# Layouts periscope knows, keyed by (major, minor, free_threaded).
LAYOUTS = {key: layout.debug_offsets for key, layout in versions.LAYOUTS.items()}


class DebugOffsets(namedtuple("DebugOffsets", "version_hex free_threaded groups layout")):
    """A validated debug-offsets table: ``offsets.groups["thread_state"]["next"]`` or ``offsets.thread_state.next``.

    An immutable namedtuple record rather than a dataclass: see explorer.elf (start-up time).
    """

    __slots__ = ()
    version_hex: int
    free_threaded: bool
    groups: Mapping[str, Mapping[str, int]]
    layout: versions.Layout
    """What the version layer knows about this minor beyond the table."""

    @property
    def version(self) -> str:
        """The target's version, for example ``"3.14.10"``."""
        return version_string(self.version_hex) or "?"

    def __getattr__(self, name: str) -> _Group:
        try:
            return _Group(self.groups[name])
        except KeyError:
            raise AttributeError(name) from None


class _Group:
    """Attribute access to one group's fields (``offsets.thread_state.native_thread_id``)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, int]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> int:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None


def peek_version(data: bytes) -> tuple[int, bool]:
    """(version_hex, free_threaded) from the header; UnsupportedPython when there is no cookie."""
    if len(data) < HEADER.size or data[:8] != COOKIE:
        raise UnsupportedPython(
            f"this CPython has no debug-offsets table (CPython 3.12 or older): periscope supports {versions.SUPPORTED_TEXT}",
            f"restart it under {versions.SUPPORTED_CHOICE}",
        )
    _, version_hex, free_threaded = HEADER.unpack_from(data)
    return version_hex, bool(free_threaded)


def parse(data: bytes, *, section_size: int | None = None) -> DebugOffsets:
    """Parse and validate a debug-offsets table read from a target; raise UnsupportedPython if unusable."""
    version_hex, free_threaded = peek_version(data)
    name = version_string(version_hex)
    refused = versions.unsupported(version_hex, free_threaded, name)
    if refused is not None:
        raise UnsupportedPython(refused.reason, refused.fix, version=name)
    known = versions.layout_for(version_hex, free_threaded)
    assert known is not None
    layout = known.debug_offsets
    size = table_size(layout)
    if len(data) < size:
        raise UnsupportedPython(f"CPython {name}: debug-offsets table truncated ({len(data)} of {size} bytes)", version=name)
    values = struct.unpack_from(f"<{(size - HEADER.size) // 8}Q", data, HEADER.size)
    groups: dict[str, Mapping[str, int]] = {}
    position = 0
    for group, fields in layout:
        groups[group] = MappingProxyType(dict(zip(fields, values[position : position + len(fields)])))
        position += len(fields)
    offsets = DebugOffsets(version_hex, free_threaded, MappingProxyType(groups), known)
    problem = _validate(offsets, section_size)
    if problem:
        raise UnsupportedPython(
            f"CPython {name}: its debug-offsets table is not the layout periscope knows ({problem}); "
            "it may be a patched or unusual build",
            version=name,
        )
    return offsets


def _validate(offsets: DebugOffsets, section_size: int | None) -> str | None:
    """The first inconsistency in the table, or None."""
    groups = offsets.groups
    outside = offsets.layout.outside_sizes
    for group, fields in groups.items():
        if "size" not in fields:
            continue
        struct_size = fields["size"]
        if not 0 < struct_size < MAX_STRUCT_SIZE:
            return f"{group}.size = {struct_size:#x}"
        for field, value in fields.items():
            if field == "size":
                continue
            if field.endswith("_size"):
                if value > struct_size and f"{group}.{field}" not in outside:
                    return f"{group}.{field} = {value:#x} exceeds {struct_size:#x}"
            elif value >= struct_size:
                return f"{group}.{field} = {value:#x} outside {struct_size:#x}"
    if section_size is not None and groups["runtime_state"]["size"] != section_size:
        return f"runtime size {groups['runtime_state']['size']:#x} != section size {section_size:#x}"
    if (groups["pyobject"]["size"], groups["pyobject"]["ob_type"]) != (16, 8):
        return "unexpected PyObject layout"
    if (groups["llist_node"]["next"], groups["llist_node"]["prev"]) != (0, 8):
        return "unexpected llist_node layout"
    debugger = groups["debugger_support"]
    tstate_size = groups["thread_state"]["size"]
    if debugger["debugger_script_path_size"] != 512:
        return f"debugger_script_path_size = {debugger['debugger_script_path_size']}"
    # Remote exec WRITES these fields, so each must lie wholly inside its struct, be aligned, and
    # not overlap another: (start, end) in the thread state.
    support = debugger["remote_debugger_support"]
    breaker = (debugger["eval_breaker"], debugger["eval_breaker"] + 8)
    pending = (support + debugger["debugger_pending_call"], support + debugger["debugger_pending_call"] + 4)
    path = (support + debugger["debugger_script_path"], support + debugger["debugger_script_path"] + 512)
    if breaker[1] > tstate_size or breaker[0] % 8:
        return "eval_breaker outside the thread state or misaligned"
    if pending[1] > tstate_size or path[1] > tstate_size or pending[0] % 4:
        return "debugger support fields outside the thread state or misaligned"
    for first, second in ((breaker, pending), (breaker, path), (pending, path)):
        if first[0] < second[1] and second[0] < first[1]:
            return "debugger support fields overlap"
    enabled = debugger["remote_debugging_enabled"]
    if enabled + 4 > groups["interpreter_state"]["size"] or enabled % 4:
        return "remote_debugging_enabled outside the interpreter state or misaligned"
    return None
