"""Pure units for the debug-offsets parser and validator (explorer.offsets).

The table comes from another process, so it is untrusted input: whatever the bytes, ``parse``
either returns a table whose write targets lie inside their structs, or raises UnsupportedPython
(never any other exception). Versions other than 3.14 and 3.15 final, GIL build, are refused by name.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer import elf, offsets
from explorer.errors import UnsupportedPython

V3_14_10 = 0x030E0AF0
SECTION_SIZE = 0x4D4C8

# The 92 values of CPython 3.14.10's table (protocol notes §4), in layout order.
VALUES_3_14_10 = [
    0x4D4C8, 0x310, 0x328,
    0x37248, 0x1C70, 0x1C68, 0x1CB0, 0x1CC0, 0x1CF0, 0x1E08, 0x1DF8, 0x1E00, 0x10, 0x1E68, 0, 0x1E78, 0x1E70, 0x1F38, 0,
    0x340, 0x0, 0x8, 0x10, 0x48, 0x98, 0xA0, 0xE8, 0x20,
    0x58, 0x8, 0x0, 0x38, 0x50, 0x4A, 0x40, 0,
    0xD8, 0x70, 0x78, 0x80, 0x88, 0x44, 0x34, 0x60, 0x68, 0xD0, 0,
    0x10, 0x8,
    0x1A0, 0x18, 0x58, 0xA8,
    0x28, 0x20, 0x10,
    0x28, 0x18, 0x10,
    0xC8, 0x18, 0x28, 0x20,
    0x30, 0x20, 0x28,
    0x18, 0x10,
    0x20, 0x10, 0x18,
    0x28, 0x10, 0x20,
    0x40, 0x20, 0x10, 0x28,
    0x108, 0xC0,
    0xA0, 0x18, 0x48, 0x43,
    0x0, 0x8,
    0x18, 0x130, 0x1F8C, 0x0, 0x4, 0x200,
]  # fmt: skip
V3_15_2 = 0x030F02F0
SECTION_SIZE_3_15_2 = 0x549C8

# The 108 values of CPython 3.15.2's table, in layout order (read from Debian's 3.15.2 binary; the
# field names from the DWARF of its _remote_debugging module).
VALUES_3_15_2 = [
    0x549C8, 0x390, 0x3A8,
    0x373C0, 0x1C68, 0x1C60, 0x1CA8, 0x1CB8, 0x1CE8, 0x1DA8, 0x1D98, 0x1DA0, 0x10, 0x1E38, 0, 0x1E48, 0x1E40, 0x1F08, 0,
    0x378, 0x0, 0x8, 0x10, 0x48, 0x50, 0x58, 0x60, 0xB0, 0xB8, 0x100, 0x20, 0x24, 0x28, 0x88, 0x120,
    0x0,
    0x58, 0x8, 0x0, 0x38, 0x50, 0x4A, 0x40, 0,
    0xD8, 0x70, 0x78, 0x80, 0x88, 0x44, 0x34, 0x60, 0x68, 0xD0, 0,
    0x10, 0x8,
    0x1A8, 0x18, 0x58, 0xA8, 0x20, 0x120,
    0x3B0, 0x378,
    0x28, 0x20, 0x10,
    0x28, 0x18, 0x10,
    0xC8, 0x18, 0x28, 0x20,
    0x30, 0x20, 0x28,
    0x18, 0x10,
    0x20, 0x10, 0x18,
    0x28, 0x10, 0x20,
    0x40, 0x20, 0x10, 0x28, 0x38,
    0xB0, 0x70, 0x78, 0x460, 0x68,
    0xA0, 0x18, 0x48, 0x43,
    0x0, 0x8,
    0x18, 0x158, 0x1F5C, 0x0, 0x4, 0x200,
]  # fmt: skip
DOCUMENTED = {(3, 14): VALUES_3_14_10, (3, 15): VALUES_3_15_2}
FIELD_COUNT = len(VALUES_3_14_10)
TABLE_SIZE = offsets.table_size(offsets.LAYOUT_3_14)


def build(values: list[int] | None = None, *, version: int = V3_14_10, free_threaded: int = 0, cookie: bytes = elf.COOKIE) -> bytes:
    """A table as the target would hold it."""
    values = VALUES_3_14_10 if values is None else values
    return offsets.HEADER.pack(cookie, version, free_threaded) + struct.pack(f"<{len(values)}Q", *values)


def with_field(group: str, name: str, value: int) -> bytes:
    """The 3.14.10 table with one field changed."""
    position = 0
    for group_name, fields in offsets.LAYOUT_3_14:
        if group_name == group:
            position += fields.index(name)
            break
        position += len(fields)
    values = list(VALUES_3_14_10)
    values[position] = value
    return build(values)


def assert_write_targets_inside(table: offsets.DebugOffsets) -> None:
    """What remote exec relies on when it writes into a thread state."""
    debugger = table.debugger_support
    tstate_size = table.thread_state.size
    support = debugger.remote_debugger_support
    assert debugger.eval_breaker + 8 <= tstate_size
    assert support + debugger.debugger_pending_call + 4 <= tstate_size
    assert support + debugger.debugger_script_path + 512 <= tstate_size
    assert debugger.debugger_script_path_size == 512
    assert debugger.remote_debugging_enabled + 4 <= table.interpreter_state.size


# -- the real and the documented table ---------------------------------------------------------


def test_layout_has_92_fields_and_760_bytes() -> None:
    assert FIELD_COUNT == 92
    assert TABLE_SIZE == 760


def test_documented_table_parses() -> None:
    table = offsets.parse(build(), section_size=SECTION_SIZE)
    assert table.version == "3.14.10"
    assert table.free_threaded is False
    assert table.thread_state.native_thread_id == 0xA0
    assert table.interpreter_state.threads_main == 0x1CC0
    assert table.debugger_support.remote_debugging_enabled == 0x1F8C
    assert table.tuple_object.ob_item == 0x20
    assert_write_targets_inside(table)


def test_315_layout_has_108_fields_and_888_bytes() -> None:
    assert len(VALUES_3_15_2) == sum(len(fields) for _, fields in offsets.LAYOUT_3_15) == 108
    assert offsets.table_size(offsets.LAYOUT_3_15) == 888


def test_documented_315_table_parses() -> None:
    table = offsets.parse(build(VALUES_3_15_2, version=V3_15_2), section_size=SECTION_SIZE_3_15_2)
    assert table.version == "3.15.2"
    assert table.layout.name == "3.15"
    assert table.thread_state.native_thread_id == 0xB8
    assert table.thread_state.base_frame == 0x50
    assert table.interpreter_state.threads_main == 0x1CB8
    assert table.debugger_support.remote_debugging_enabled == 0x1F5C
    assert table.gen_object.gi_iframe == 0x48
    assert_write_targets_inside(table)


def test_a_314_table_under_a_315_version_is_refused() -> None:
    """A table shorter than the minor's layout is refused, not read past its end."""
    with pytest.raises(UnsupportedPython, match=r"3\.15\.2.*truncated"):
        offsets.parse(build(version=V3_15_2))


def test_binary_table_matches_documented_fields(target_python: str, target_minor: tuple[int, int]) -> None:
    """The table in the target binary's .PyRuntime section has the documented values of its minor."""
    info = elf.inspect_elf(target_python)
    assert info is not None and info.has_debug_offsets
    table = offsets.parse(info.static_header, section_size=info.section_size)
    assert table.layout.minor == target_minor
    parsed = [value for _, fields in table.groups.items() for value in fields.values()]
    assert parsed == DOCUMENTED[target_minor]


def test_group_attribute_errors() -> None:
    table = offsets.parse(build())
    with pytest.raises(AttributeError):
        table.no_such_group  # noqa: B018
    with pytest.raises(AttributeError):
        table.thread_state.no_such_field  # noqa: B018


# -- versions and builds that are refused ------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        (0x030D00F0, "3.13.0"),  # 3.13: cookie present, different layout
        (0x030D07F0, "3.13.7"),
        (0x031000F0, "3.16.0"),
        (0x030F00A3, "3.15.0a3"),
        (0x030E00C1, "3.14.0rc1"),
        (0x020700F0, "2.7.0"),
    ],
)
def test_other_minor_versions_are_refused(version: int, shown: str) -> None:
    with pytest.raises(UnsupportedPython) as caught:
        offsets.parse(build(version=version))
    assert caught.value.version == shown
    assert shown in str(caught.value) and "CPython 3.14 and 3.15" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_313_header_is_refused_before_its_layout_is_read() -> None:
    """A 3.13 table is shorter and laid out differently: only its header may be trusted."""
    with pytest.raises(UnsupportedPython, match="3.13"):
        offsets.parse(build(version=0x030D00F0)[:200])


@pytest.mark.parametrize("version", [0x030E00A1, 0x030E00B3, 0x030E00C2])
def test_pre_releases_are_refused(version: int) -> None:
    with pytest.raises(UnsupportedPython, match="pre-release"):
        offsets.parse(build(version=version))


def test_free_threaded_is_refused() -> None:
    with pytest.raises(UnsupportedPython, match="free-threaded"):
        offsets.parse(build(free_threaded=1))


@pytest.mark.parametrize(
    "data",
    [
        b"\x01" + b"\0" * 1023,  # what 3.11 and 3.12 have at the start of _PyRuntime
        b"",
        b"xdebugpy",
        b"xdebugpy" + b"\0" * 8,
        b"XDEBUGPY" + bytes(752),
    ],
)
def test_no_cookie_means_pre_313(data: bytes) -> None:
    with pytest.raises(UnsupportedPython, match="3.12 or older"):
        offsets.parse(data)


def test_truncated_table() -> None:
    with pytest.raises(UnsupportedPython, match="truncated"):
        offsets.parse(build()[: TABLE_SIZE - 1])


# -- sanity checks ------------------------------------------------------------------------------


def test_section_size_mismatch() -> None:
    with pytest.raises(UnsupportedPython, match="section size"):
        offsets.parse(build(), section_size=SECTION_SIZE + 8)


@pytest.mark.parametrize(
    ("group", "name", "value"),
    [
        ("thread_state", "size", 0),
        ("thread_state", "size", 1 << 20),
        ("thread_state", "native_thread_id", 0x340),  # == size: outside
        ("interpreter_state", "threads_main", 0x37248),
        ("code_object", "linetable", 1 << 63),
        ("pyobject", "ob_type", 0),
        ("llist_node", "prev", 16),
        ("debugger_support", "debugger_script_path_size", 511),
        ("debugger_support", "eval_breaker", 0x340 - 4),  # 8 bytes would cross the end
        ("debugger_support", "eval_breaker", 0x19),  # misaligned
        ("debugger_support", "eval_breaker", 0x130),  # overlaps the pending flag
        ("debugger_support", "remote_debugger_support", 0x340 - 512),  # the path buffer would cross the end
        ("debugger_support", "debugger_pending_call", 0x8),  # overlaps the path buffer
        ("debugger_support", "debugger_pending_call", 0x2),  # misaligned
        ("debugger_support", "debugger_pending_call", 0x300),  # outside the thread state
        ("debugger_support", "remote_debugging_enabled", 0x37248 - 2),
        ("debugger_support", "remote_debugging_enabled", 0x1F8D),
    ],
)
def test_inconsistent_tables_are_refused(group: str, name: str, value: int) -> None:
    with pytest.raises(UnsupportedPython, match="not the layout periscope knows"):
        offsets.parse(with_field(group, name, value))


# -- untrusted input: hypothesis ----------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(data: bytes, section_size: int | None = None) -> offsets.DebugOffsets | None:
    """parse(); None when refused. Any exception other than UnsupportedPython fails the test."""
    try:
        table = offsets.parse(data, section_size=section_size)
    except UnsupportedPython as error:
        assert str(error) and "\n" not in str(error)
        return None
    assert_write_targets_inside(table)
    return table


@FAST
@given(st.binary(max_size=1200))
def test_random_bytes(data: bytes) -> None:
    parse_or_refuse(data)


@FAST
@given(st.binary(max_size=1200))
def test_random_bytes_after_the_cookie(tail: bytes) -> None:
    parse_or_refuse(elf.COOKIE + tail)


@FAST
@given(
    version=st.integers(0, 2**64 - 1) | st.sampled_from([V3_14_10, 0x030E00F0, 0x030D00F0, 0x030E00C1]),
    free_threaded=st.integers(0, 2**64 - 1) | st.just(0),
    length=st.integers(0, TABLE_SIZE + 64),
)
def test_random_headers_and_lengths(version: int, free_threaded: int, length: int) -> None:
    data = (build(version=version, free_threaded=free_threaded) + bytes(64))[:length]
    table = parse_or_refuse(data)
    if table is not None:
        assert (version >> 16) == 0x030E and (version >> 4) & 0xF == 0xF
        assert free_threaded == 0 and length >= TABLE_SIZE


@FAST
@given(
    st.lists(
        st.tuples(
            st.integers(0, FIELD_COUNT - 1),
            st.integers(0, 2**64 - 1) | st.integers(0, 0x40000) | st.sampled_from([0, 1, 8, 512, 0x340]),
        ),
        min_size=1,
        max_size=8,
    ),
    st.none() | st.just(SECTION_SIZE) | st.integers(0, 2**32),
)
def test_mutated_fields(changes: list[tuple[int, int]], section_size: int | None) -> None:
    values = list(VALUES_3_14_10)
    for index, value in changes:
        values[index] = value
    parse_or_refuse(build(values), section_size)


@FAST
@given(st.lists(st.integers(0, 2**64 - 1), min_size=FIELD_COUNT, max_size=FIELD_COUNT))
def test_entirely_random_fields(values: list[int]) -> None:
    parse_or_refuse(build(values))
