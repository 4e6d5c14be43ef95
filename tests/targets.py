"""Start real target processes for tests, and make sure every one of them is stopped.

Every process started here is tracked; ``stop_all()`` (called by the ``spawn`` fixture and at
interpreter exit) kills whatever is left, also when a test fails.
"""

from __future__ import annotations

import atexit
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explorer.pythons import find_target_python
from explorer.versions import DEFAULT_MINOR, SUPPORTED_MINORS, minor_name

_live: list[subprocess.Popen] = []

MINORS_VARIABLE = "PERISCOPE_TEST_MINORS"
"""Set to a comma-separated list ("3.15") to run the target-facing tests against those minors only."""

_minor: tuple[int, int] = DEFAULT_MINOR


def test_minors() -> tuple[tuple[int, int], ...]:
    """The CPython minors the target-facing tests run against: every supported one, unless narrowed."""
    wanted = os.environ.get(MINORS_VARIABLE, "").replace(" ", "")
    if not wanted:
        return SUPPORTED_MINORS
    chosen = tuple(minor for minor in SUPPORTED_MINORS if minor_name(minor) in wanted.split(","))
    if not chosen:
        raise ValueError(f"{MINORS_VARIABLE}={wanted}: name one or more of {', '.join(map(minor_name, SUPPORTED_MINORS))}")
    return chosen


def use_minor(minor: tuple[int, int]) -> None:
    """Make ``minor`` the one that ``target_python()`` and ``spawn()`` use (the conftest fixture sets it)."""
    global _minor
    _minor = tuple(minor)  # type: ignore[assignment]


def current_minor() -> tuple[int, int]:
    """The minor that targets are started under now."""
    return _minor


@functools.cache
def python_for(minor: tuple[int, int]) -> str:
    """The CPython interpreter of ``minor`` (provisioned on first use, then cached)."""
    return find_target_python(minor)


def target_python() -> str:
    """The CPython interpreter that test targets run under: the one of the current minor."""
    return python_for(_minor)


def host_python311() -> str | None:
    """A CPython 3.11 interpreter of this machine, for 'old Python' targets (None if absent)."""
    for candidate in ("/usr/bin/python3.11", sys.executable if sys.version_info[:2] == (3, 11) else ""):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return None


@dataclass
class Target:
    """A started process: its Popen, pid, the script it runs and its collected stdout lines."""

    proc: subprocess.Popen
    script: Path | None
    owns_directory: bool = False
    lines: list[str] = field(default_factory=list)
    _buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        """Wait until the target prints a line starting with ``prefix``; return that line."""
        for line in self.lines:
            if line.startswith(prefix):
                return line
        # Complete lines that arrived with an earlier chunk but were not split off yet.
        found = self._split_lines(prefix)
        if found is not None:
            return found
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
            found = self._split_lines(prefix)
            if found is not None:
                return found
        stderr = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            stderr = self.proc.stderr.read().decode(errors="replace")
        raise TimeoutError(
            f"target {self.pid} did not print {prefix!r} within {timeout}s "
            f"(exit={self.proc.poll()}, stdout={self.lines[-5:]}, stderr={stderr[-2000:]})"
        )

    def _split_lines(self, prefix: str) -> str | None:
        """Move complete lines from the buffer to ``lines``; return the first that starts with ``prefix``."""
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        return None

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL), reap it, and remove its script directory."""
        _stop(self.proc)
        if self.owns_directory and self.script is not None:
            shutil.rmtree(self.script.parent, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    if proc in _live:
        _live.remove(proc)


def spawn(
    source: str | None = None,
    *,
    argv: Sequence[str] | None = None,
    python: str | None = None,
    env: dict[str, str] | None = None,
    python_args: Sequence[str] = (),
    args: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    script_name: str = "target.py",
    directory: str | os.PathLike[str] | None = None,
) -> Target:
    """Start ``source`` (dedented) as a script under the target interpreter, or run ``argv``.

    stdout is a pipe (use ``wait_for_line``); stderr is a pipe. The process is stopped by
    ``stop_all()`` if the test does not stop it.
    """
    script: Path | None = None
    if argv is None:
        assert source is not None
        folder = Path(directory or tempfile.mkdtemp(prefix="periscope-target-"))
        script = folder / script_name
        script.write_text(textwrap.dedent(source), encoding="utf-8")
        argv = [python or target_python(), *python_args, str(script), *args]
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHON_DISABLE_REMOTE_DEBUG")}
    child_env["PYTHONUNBUFFERED"] = "1"
    if env:
        child_env.update(env)
    proc = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        cwd=cwd,
    )
    _live.append(proc)
    return Target(proc=proc, script=script, owns_directory=directory is None and script is not None)


def stop_all() -> None:
    """Stop every process this module started that is still running."""
    for proc in list(_live):
        _stop(proc)


atexit.register(stop_all)


def version_prefix() -> str:
    """``"3.15."``: how the current minor's full versions start (for checking a reported version)."""
    return f"{minor_name(_minor)}."
