"""Decode CPython's location table (``co_linetable``, the 3.11+ format) into line numbers.

The stack reader copies a code object's ``co_linetable`` bytes out of a target process and asks
this module which source line an instruction belongs to. The format (Objects/locations.md in
CPython) is a sequence of entries; each starts with a byte whose top bit is set:

* bits 3-6: the entry kind; bits 0-2: the number of 2-byte code units covered, minus one;
* kinds 0-9 ("short form"): same line, one column byte follows;
* kinds 10-12 ("one-line form"): line += kind - 10, two column bytes follow;
* kind 13 ("no column info"): line += signed varint;
* kind 14 ("long form"): line += signed varint, then end-line delta, start and end column (varints);
* kind 15: no location (line None); the running line does not change.

This module is pure standard library and imports nothing from periscope, so that CPython 3.14
itself can run it as a script (``python3.14 explorer/linetable.py``) to check it against
``code.co_lines()`` over a whole standard library.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

CODE_UNIT = 2  # bytes per instruction code unit (_Py_CODEUNIT)
NO_LOCATION = 15
LONG_FORM = 14
NO_COLUMNS = 13
ONE_LINE_0 = 10


class LineTableError(ValueError):
    """The location table is malformed (truncated, or an entry without its leading byte)."""


def _read_varint(table: bytes, position: int) -> tuple[int, int]:
    """An unsigned varint at ``position`` (6 data bits a byte, 0x40 = more): (value, next position)."""
    try:
        byte = table[position]
    except IndexError:
        raise LineTableError(f"varint runs past the end of the table at byte {position}") from None
    position += 1
    value = byte & 0x3F
    shift = 6
    while byte & 0x40:
        try:
            byte = table[position]
        except IndexError:
            raise LineTableError(f"varint runs past the end of the table at byte {position}") from None
        position += 1
        value |= (byte & 0x3F) << shift
        shift += 6
    return value, position


def _read_signed_varint(table: bytes, position: int) -> tuple[int, int]:
    """A signed varint: the unsigned value v means v >> 1, negated when v & 1."""
    value, position = _read_varint(table, position)
    if value & 1:
        return -(value >> 1), position
    return value >> 1, position


def iter_entries(table: bytes, firstlineno: int) -> Iterator[tuple[int, int, int | None]]:
    """Every entry of the table, unmerged: (start byte, end byte, line or None).

    Like CPython (Objects/codeobject.c, ``advance``), the next entry starts at the next byte with
    the top bit set; a line-number varint that runs past the end raises LineTableError.
    """
    line = firstlineno
    address = 0
    position = 0
    size = len(table)
    while position < size:
        first = table[position]
        kind = (first >> 3) & 0x0F
        end = address + ((first & 0x07) + 1) * CODE_UNIT
        if kind == NO_LOCATION:
            yield address, end, None
        else:
            if kind == LONG_FORM or kind == NO_COLUMNS:
                delta, _ = _read_signed_varint(table, position + 1)
                line += delta
            elif kind >= ONE_LINE_0:
                line += kind - ONE_LINE_0
            yield address, end, line
        address = end
        position += 1
        while position < size and not table[position] & 0x80:
            position += 1


def co_lines(table: bytes, firstlineno: int) -> Iterator[tuple[int, int, int | None]]:
    """The same ranges as CPython's ``code.co_lines()``: consecutive entries with one line merged."""
    current: list | None = None
    for start, end, line in iter_entries(table, firstlineno):
        if current is not None and current[2] == line:
            current[1] = end
            continue
        if current is not None:
            yield current[0], current[1], current[2]
        current = [start, end, line]
    if current is not None:
        yield current[0], current[1], current[2]


class LineTable:
    """A decoded location table: ``line_at(byte_offset)`` answers in O(log n).

    Decoding happens on the first lookup; a malformed table decodes as far as it is valid and
    answers None beyond that.
    """

    __slots__ = ("_table", "_firstlineno", "_starts", "_ends", "_lines", "error")

    def __init__(self, table: bytes, firstlineno: int) -> None:
        self._table = table
        self._firstlineno = firstlineno
        self._starts: list[int] | None = None
        self._ends: list[int] = []
        self._lines: list[int | None] = []
        self.error: str | None = None
        """Why decoding stopped early, or None for a well-formed table."""

    def _decode(self) -> list[int]:
        starts: list[int] = []
        try:
            for start, end, line in co_lines(self._table, self._firstlineno):
                starts.append(start)
                self._ends.append(end)
                self._lines.append(line)
        except LineTableError as error:
            self.error = str(error)
        self._starts = starts
        return starts

    def line_at(self, offset: int) -> int | None:
        """The line of the instruction at byte ``offset`` into the bytecode (None: no location or out of range)."""
        starts = self._starts if self._starts is not None else self._decode()
        index = bisect.bisect_right(starts, offset) - 1
        if index < 0 or offset >= self._ends[index]:
            return None
        return self._lines[index]


def _expand(ranges: list[tuple[int, int, int | None]]) -> list[int | None]:
    """One line per code unit, from (start, end, line) ranges."""
    lines: list[int | None] = []
    for start, end, line in ranges:
        lines.extend([line] * ((end - start) // CODE_UNIT))
    return lines


def _check_stdlib(root: str | None = None, limit: int | None = None) -> int:
    """Compare this decoder with ``co_lines()`` for every code object of every stdlib module.

    Run by the interpreter under test (``python3.14 explorer/linetable.py [ROOT]``); prints one
    summary line and returns the number of mismatches (each one is also printed).
    """
    import os
    import sys
    import sysconfig
    import warnings

    root = root or sysconfig.get_paths()["stdlib"]
    merged = sys.version_info >= (3, 12)
    files = code_objects = instructions = mismatches = 0
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("site-packages", "__pycache__"))
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as handle:
                    source = handle.read()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    top = compile(source, path, "exec", dont_inherit=True)
            except (SyntaxError, ValueError, OSError, UnicodeDecodeError):
                continue  # test fixtures with deliberate syntax errors (lib2to3 data, badsyntax_*)
            files += 1
            stack = [top]
            while stack:
                code = stack.pop()
                stack.extend(const for const in code.co_consts if hasattr(const, "co_lines"))
                code_objects += 1
                expected = list(code.co_lines())
                got = list(co_lines(code.co_linetable, code.co_firstlineno))
                instructions += len(code.co_code) // CODE_UNIT
                if merged:
                    same = expected == got
                else:  # before 3.12, co_lines() did not merge equal-line ranges: compare unit by unit
                    same = _expand(expected) == _expand(got)
                if not same:
                    mismatches += 1
                    print(f"MISMATCH {path}:{code.co_firstlineno} {code.co_qualname}", file=sys.stderr)
                    continue
                table = LineTable(code.co_linetable, code.co_firstlineno)
                for start, end, line in expected:
                    for offset in range(start, end, CODE_UNIT):
                        if table.line_at(offset) != line:
                            mismatches += 1
                            print(f"MISMATCH {path}:{code.co_firstlineno} {code.co_qualname} @{offset}", file=sys.stderr)
                            break
            if limit is not None and files >= limit:
                break
        if limit is not None and files >= limit:
            break
    print(
        f"checked {files} files, {code_objects} code objects, {instructions} instructions "
        f"under Python {sys.version.split()[0]}: {mismatches} mismatches"
    )
    return mismatches


if __name__ == "__main__":
    import sys as _sys

    _sys.exit(1 if _check_stdlib(_sys.argv[1] if len(_sys.argv) > 1 else None) else 0)
