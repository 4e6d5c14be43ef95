"""The location-table decoder against the interpreters' own ``co_lines()``.

The decisive check runs the decoder inside each supported CPython (3.14, 3.15) over its whole standard library; the
Hypothesis tests build valid tables entry by entry and compare with the host interpreter, whose
``co_lines()`` reads the same format (3.11+).
"""

from __future__ import annotations

import dis
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from explorer import linetable
from explorer.linetable import CODE_UNIT, LineTable, co_lines, iter_entries

LINETABLE_SCRIPT = Path(linetable.__file__)
NOP = dis.opmap["NOP"]


def _unsigned_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        chunk = value & 0x3F
        value >>= 6
        if value:
            out.append(chunk | 0x40)
        else:
            out.append(chunk)
            return bytes(out)


def _signed_varint(value: int) -> bytes:
    return _unsigned_varint((-value << 1) | 1 if value < 0 else value << 1)


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, int | None]]]:
    """A valid location table, its first line, and the expected (units, line) of every entry."""
    firstlineno = draw(st.integers(1, 5000))
    line = firstlineno
    table = bytearray()
    expected: list[tuple[int, int | None]] = []
    for _ in range(draw(st.integers(0, 40))):
        units = draw(st.integers(1, 8))
        kind = draw(st.sampled_from([0, 5, 9, 10, 11, 12, 13, 14, 15]))
        table.append(0x80 | kind << 3 | (units - 1))
        if kind <= 9:
            table.append(draw(st.integers(0, 127)))
        elif kind <= 12:
            line += kind - 10
            table += bytes([draw(st.integers(0, 127)), draw(st.integers(0, 127))])
        elif kind in (13, 14):
            delta = draw(st.integers(1 - line, 100_000))  # never below line 1
            line += delta
            table += _signed_varint(delta)
            if kind == 14:
                for _ in range(3):
                    table += _unsigned_varint(draw(st.integers(0, 10_000)))
        expected.append((units, None if kind == 15 else line))
    return bytes(table), firstlineno, expected


def _host_code(table: bytes, firstlineno: int, units: int):
    code = (lambda: None).__code__
    return code.replace(co_code=bytes([NOP, 0]) * units, co_linetable=table, co_firstlineno=firstlineno)


@given(tables())
@settings(max_examples=300, deadline=None)
def test_generated_tables_match_the_model_and_the_host_interpreter(case) -> None:
    table, firstlineno, expected = case
    entries = list(iter_entries(table, firstlineno))
    assert [((end - start) // CODE_UNIT, line) for start, end, line in entries] == expected
    units = sum(count for count, _ in expected)
    host = _host_code(table, firstlineno, units)
    host_ranges = list(host.co_lines())
    ours = list(co_lines(table, firstlineno))
    if sys.version_info >= (3, 12):
        assert ours == host_ranges
    decoded = LineTable(table, firstlineno)
    for start, end, line in host_ranges:
        for offset in range(start, end, CODE_UNIT):
            assert decoded.line_at(offset) == line
    assert decoded.line_at(units * CODE_UNIT) is None
    assert decoded.line_at(-2) is None


@given(st.binary(max_size=200), st.integers(0, 10_000), st.integers(-4, 2000))
@settings(max_examples=300, deadline=None)
def test_garbage_tables_never_raise_from_line_at(table: bytes, firstlineno: int, offset: int) -> None:
    decoded = LineTable(table, firstlineno)
    line = decoded.line_at(offset)
    assert line is None or isinstance(line, int)


def test_real_functions_of_the_host_interpreter() -> None:
    def sample(a):
        total = 0
        for i in range(a):
            if i % 2:
                total += i
            else:
                total -= 1
        return (
            total
        )

    code = sample.__code__
    decoded = LineTable(code.co_linetable, code.co_firstlineno)
    seen = set()
    for start, end, line in code.co_lines():
        for offset in range(start, end, CODE_UNIT):
            assert decoded.line_at(offset) == line
            seen.add(line)
    first = code.co_firstlineno
    assert {first + 2, first + 4, first + 6, first + 8} <= seen


def test_decoder_agrees_with_co_lines_over_the_whole_stdlib(target_python: str, target_minor: tuple[int, int]) -> None:
    """Run this module as a script under the target minor: every stdlib code object, every instruction."""
    result = subprocess.run(
        [target_python, "-I", str(LINETABLE_SCRIPT)], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert f"under Python {target_minor[0]}.{target_minor[1]}." in summary and summary.endswith(": 0 mismatches"), summary
    files = int(summary.split()[1])
    code_objects = int(summary.split()[3])
    assert files > 500 and code_objects > 15_000, summary
