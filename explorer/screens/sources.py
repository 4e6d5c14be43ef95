"""Source lines for stack frames, read from the files as the target process sees them.

A frame's file name is the target's to choose (``compile(source, "/etc/shadow", "exec")``), so
the file it names is opened as hostile: without blocking (a FIFO), only if it is a regular file of
a bounded size (not ``/dev/zero``), read with that bound, and, when periscope runs as another user
than the target (root), only if the target's own user could read it: periscope never shows a line
that the process it looks at could not have read itself.
"""

from __future__ import annotations

import os
import stat

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Files larger than this are not read (a generated module, a data file named .py)."""


def _credentials(pid: int) -> tuple[int, set[int]] | None:
    """The target's effective uid and all its group ids (None when unreadable)."""
    uid, groups = None, set()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    uid = int(line.split()[2])
                elif line.startswith("Gid:"):
                    groups.add(int(line.split()[2]))
                elif line.startswith("Groups:"):
                    groups.update(int(part) for part in line.split()[1:])
    except (OSError, ValueError, IndexError):
        return None
    return None if uid is None else (uid, groups)


def readable_by(info: os.stat_result, uid: int, groups: set[int]) -> bool:
    """Whether a user with ``uid`` and ``groups`` may read the file ``info`` describes (mode bits)."""
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def read_source(path: str, reader: tuple[int, set[int]] | None) -> list[str] | None:
    """The lines of the regular file at ``path``, or None: not regular, too large, or (``reader``:
    the target's uid and groups) not readable by the target's user. Never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            return None
        if reader is not None and not readable_by(info, *reader):
            return None
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            return None  # grew past the bound while read
        return b"".join(chunks).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    finally:
        os.close(fd)


class SourceLines:
    """Reads and caches the source files of one process's frames.

    A path in a frame belongs to the target's mount namespace, so the file is opened through
    ``/proc/PID/root`` first and by its plain path when that is not allowed. See the module's
    docstring for what is read at all.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._files: dict[str, list[str] | None] = {}
        self._reader: tuple[int, set[int]] | None = None
        self._reader_known = False

    def line(self, filename: str, lineno: int) -> str | None:
        """Line ``lineno`` (1-based) of ``filename``, stripped; None when the file cannot be read."""
        lines = self._files.get(filename, ())
        if lines == ():
            lines = self._read(filename)
            self._files[filename] = lines
        if not lines or not 1 <= lineno <= len(lines):
            return None
        return lines[lineno - 1].strip()

    def _target_reader(self) -> tuple[int, set[int]] | None:
        """The target's credentials when they differ from periscope's (None: periscope's own rights apply)."""
        if not self._reader_known:
            found = _credentials(self.pid)
            if found is None:
                self._reader = (-1, set())  # unknown: read nothing as somebody else
            elif found[0] != os.geteuid():
                self._reader = found
            self._reader_known = True
        return self._reader

    def _read(self, filename: str) -> list[str] | None:
        if not filename or filename.startswith("<"):
            return None
        reader = self._target_reader()
        for path in (f"/proc/{self.pid}/root{filename}", filename):
            lines = read_source(path, reader)
            if lines is not None:
                return lines
        return None


class NoSources:
    """Source lines of a process on another machine: none (its files are not this machine's)."""

    def line(self, filename: str, lineno: int) -> str | None:
        """Always None: a file of that name here is another file."""
        return None
