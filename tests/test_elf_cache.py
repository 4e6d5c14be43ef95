"""The on-disk cache of ``explorer.elf.inspect_elf``: only the first look at an interpreter binary
imports pyelftools; a changed file is parsed again; a damaged entry is ignored and rewritten;
the results are the same with and without the cache; the directory stays small.

Every test points ``XDG_CACHE_HOME`` at its own temporary directory and starts with an empty
in-memory cache, so the disk cache is what is under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorer import elf, pythons

PYENV_311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
PARSE = elf._parse_elf  # the parser itself, uncounted
DEBIAN_311 = "/usr/bin/python3.11"

# Prints whether pyelftools was imported, then the result: run in a fresh interpreter.
PROBE = """
import sys
from explorer import elf
info = elf.inspect_elf(sys.argv[1])
print("elftools" in sys.modules)
print(repr(info))
"""


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty private cache directory and an empty in-memory cache."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.setattr(elf, "_cache", {})
    return home


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths pyelftools parsed during the test (the real parser, counted)."""
    seen: list[str] = []

    def counting(path, stream):
        seen.append(path)
        return PARSE(path, stream)

    monkeypatch.setattr(elf, "_parse_elf", counting)
    yield seen


def forget_memory() -> None:
    """Drop the in-memory cache, as a new periscope process starts without one."""
    elf._cache.clear()


def entries(home: Path) -> list[Path]:
    directory = Path(elf.disk_cache_dir())
    assert directory == home / "periscope" / "elf-cache"
    return sorted(directory.iterdir()) if directory.exists() else []


def parse_directly(path: str) -> elf.ElfRuntimeInfo | None:
    """The parser's answer with no cache involved."""
    with open(path, "rb") as stream:
        return PARSE(path, stream)


def interesting_files(target_python: str) -> list[str]:
    """Real ELF files of every kind inspect_elf meets: static 3.14, shared libpython, Debian's
    3.11, an ELF without a runtime, and a file that is not ELF at all."""
    files = [target_python, shutil.which("sleep") or "/bin/sleep", __file__]
    if os.access(DEBIAN_311, os.R_OK):
        files.append(DEBIAN_311)
    libpython = Path(PYENV_311).resolve().parent.parent / "lib" / "libpython3.11.so.1.0"
    if libpython.exists():
        files.append(str(libpython))
    return files


def test_the_directory_is_the_one_under_pythons_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Path(elf.disk_cache_dir()) == pythons.cache_dir() / "elf-cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Path(elf.disk_cache_dir()) == pythons.cache_dir() / "elf-cache" == tmp_path / "home/.cache/periscope/elf-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty means unset, for both
    assert Path(elf.disk_cache_dir()) == pythons.cache_dir() / "elf-cache"


def test_second_process_does_not_import_pyelftools(cache_home: Path, target_python: str) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}

    def probe() -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, target_python], capture_output=True, text=True, env=env, timeout=60, check=True
        )
        return result.stdout.splitlines()

    imported_first, first = probe()
    imported_second, second = probe()
    assert imported_first == "True"  # the cold run parses with pyelftools...
    assert imported_second == "False"  # ...the warm one reads the entry it left
    assert second == first == repr(parse_directly(target_python))
    assert len(entries(cache_home)) == 1


def test_results_are_identical_with_and_without_the_cache(cache_home: Path, parses: list[str], target_python: str) -> None:
    files = interesting_files(target_python)
    fresh = [parse_directly(path) for path in files]
    assert fresh[0] is not None and fresh[0].has_debug_offsets  # the 3.14 interpreter
    assert fresh[1] is None and fresh[2] is None  # an ELF without a runtime, and a Python file
    assert [elf.inspect_elf(path) for path in files] == fresh  # parsed, and written to disk
    assert parses == files
    forget_memory()
    assert [elf.inspect_elf(path) for path in files] == fresh  # read back from disk
    assert parses == files  # nothing parsed again
    assert len(entries(cache_home)) == len(files)


def test_a_changed_file_is_parsed_again(cache_home: Path, parses: list[str], target_python: str, tmp_path: Path) -> None:
    copy = tmp_path / "python3.14"
    shutil.copy2(target_python, copy)
    before = elf.inspect_elf(str(copy))
    assert before == parse_directly(target_python) and before is not None
    # Another mtime, same content and size.
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    forget_memory()
    assert elf.inspect_elf(str(copy)) == before
    assert len(parses) == 2
    # The same inode rewritten with another program (another size): the old answer must not come back.
    inode = copy.stat().st_ino
    with open(copy, "r+b") as handle, open(shutil.which("sleep") or "/bin/sleep", "rb") as other:
        handle.write(other.read())
        handle.truncate()
    assert copy.stat().st_ino == inode
    forget_memory()
    assert elf.inspect_elf(str(copy)) is None
    assert len(parses) == 3
    forget_memory()
    assert elf.inspect_elf(str(copy)) is None
    assert len(parses) == 3  # the new answer is cached in its turn


def corruptions(data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    return {
        "empty": b"",
        "truncated": data[:middle],
        "one byte flipped": data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :],
        "zero-filled": bytes(len(data)),
        "garbage": os.urandom(len(data)),
        "longer": data + b"\0",
        "older format": data[:7] + b"\0" + data[8:],
    }


def test_a_damaged_entry_is_ignored_and_rewritten(cache_home: Path, parses: list[str], target_python: str) -> None:
    expected = elf.inspect_elf(target_python)
    (entry,) = entries(cache_home)
    good = entry.read_bytes()
    for name, damaged in corruptions(good).items():
        entry.write_bytes(damaged)
        forget_memory()
        assert elf.inspect_elf(target_python) == expected, name
        assert entry.read_bytes() == good, name  # rewritten whole
    assert len(parses) == 1 + len(corruptions(good))
    # An entry that is whole but about another file (the wrong key inside) is not used either.
    forget_memory()
    other = elf.inspect_elf(shutil.which("sleep") or "/bin/sleep")
    (other_entry,) = [path for path in entries(cache_home) if path != entry]
    entry.write_bytes(other_entry.read_bytes())
    forget_memory()
    assert other is None and elf.inspect_elf(target_python) == expected
    assert entry.read_bytes() == good


def test_an_unusable_cache_only_costs_time(cache_home: Path, parses: list[str], target_python: str) -> None:
    expected = parse_directly(target_python)
    # An entry that cannot be read or replaced (a directory in its place).
    assert elf.inspect_elf(target_python) == expected
    (entry,) = entries(cache_home)
    entry.unlink()
    entry.mkdir()
    forget_memory()
    assert elf.inspect_elf(target_python) == expected
    assert entry.is_dir() and [path.name for path in entries(cache_home)] == [entry.name]  # no temporary left
    # No cache directory at all: a file where it should be.
    shutil.rmtree(cache_home)
    cache_home.write_text("a file where the cache directory should be")
    forget_memory()
    assert elf.inspect_elf(target_python) == expected
    forget_memory()
    assert elf.inspect_elf(target_python) == expected
    assert len(parses) == 4


def test_the_entry_count_is_bounded(
    cache_home: Path, parses: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(elf, "DISK_CACHE_ENTRIES", 8)
    program = shutil.which("true") or "/bin/true"
    copies = []
    for number in range(20):
        copy = tmp_path / f"true-{number}"
        shutil.copy2(program, copy)  # a new inode each: a new identity each
        copies.append(str(copy))
        assert elf.inspect_elf(str(copy)) is None
        assert len(entries(cache_home)) <= 8
    assert len(parses) == 20
    # The newest entries survive the pruning.
    forget_memory()
    assert elf.inspect_elf(copies[-1]) is None
    assert len(parses) == 20


def test_one_entry_for_a_binary_seen_through_any_process_root(cache_home: Path, parses: list[str], target_python: str) -> None:
    through_root = f"/proc/{os.getpid()}/root{target_python}"
    assert elf.inspect_elf(target_python) == elf.inspect_elf(through_root)
    forget_memory()
    assert elf.inspect_elf(through_root) is not None
    assert len(parses) == 1 and len(entries(cache_home)) == 1


addresses = st.integers(min_value=0, max_value=(1 << 64) - 1)
infos = st.builds(
    elf.ElfRuntimeInfo,
    section_vaddr=addresses,
    section_size=addresses,
    section_offset=addresses,
    is_pie_or_shared=st.booleans(),
    load_segments=st.lists(st.tuples(addresses, addresses, addresses), max_size=12).map(tuple),
    static_header=st.binary(max_size=elf.STATIC_HEADER_SIZE),
    version_hex=st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1),
    has_debug_offsets=st.booleans(),
    free_threaded=st.none() | st.booleans(),
)
keys = st.tuples(addresses, addresses, st.integers(min_value=0, max_value=(1 << 63) - 1), st.integers(-(1 << 63), (1 << 63) - 1))
paths = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=200).map(lambda s: "/" + s)


@given(key=keys, path=paths, info=st.none() | infos)
def test_entries_round_trip(key: tuple[int, int, int, int], path: str, info: elf.ElfRuntimeInfo | None) -> None:
    data = elf._encode(key, path, info)
    assert elf._decode(data, key, path) == (True, info)
    other_key = (key[0], key[1], key[2], key[3] ^ 1)
    assert elf._decode(data, other_key, path) == (False, None)
    assert elf._decode(data, key, path + "x") == (False, None)


@given(key=keys, info=st.none() | infos, data=st.data())
def test_any_damage_is_detected(key: tuple[int, int, int, int], info: elf.ElfRuntimeInfo | None, data: st.DataObject) -> None:
    entry = bytearray(elf._encode(key, "/usr/bin/python3.14", info))
    position = data.draw(st.integers(0, len(entry) - 1))
    entry[position] ^= data.draw(st.integers(1, 255))
    assert elf._decode(bytes(entry), key, "/usr/bin/python3.14") == (False, None)
    cut = data.draw(st.integers(0, len(entry) - 1))
    assert elf._decode(elf._encode(key, "/usr/bin/python3.14", info)[:cut], key, "/usr/bin/python3.14") == (False, None)

