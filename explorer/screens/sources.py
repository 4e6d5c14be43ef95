"""Source lines for stack frames, read from the files as the target process sees them."""

from __future__ import annotations

import os

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Files larger than this are not read (a generated module, a data file named .py)."""


class SourceLines:
    """Reads and caches the source files of one process's frames.

    A path in a frame belongs to the target's mount namespace, so the file is opened through
    ``/proc/PID/root`` first and by its plain path when that is not allowed.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._files: dict[str, list[str] | None] = {}

    def line(self, filename: str, lineno: int) -> str | None:
        """Line ``lineno`` (1-based) of ``filename``, stripped; None when the file cannot be read."""
        lines = self._files.get(filename, ())
        if lines == ():
            lines = self._read(filename)
            self._files[filename] = lines
        if not lines or not 1 <= lineno <= len(lines):
            return None
        return lines[lineno - 1].strip()

    def _read(self, filename: str) -> list[str] | None:
        if not filename or filename.startswith("<"):
            return None
        for path in (f"/proc/{self.pid}/root{filename}", filename):
            try:
                if os.path.getsize(path) > MAX_FILE_BYTES:
                    return None
                with open(path, "rb") as handle:
                    return handle.read().decode("utf-8", errors="replace").splitlines()
            except OSError:
                continue
        return None
