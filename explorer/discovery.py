"""Find the CPython processes on this machine and say, for each, whether periscope can attach.

A process counts as Python when one of its mapped files whose name contains "python" has a
``.PyRuntime`` ELF section (a ``python3.x`` executable or a ``libpython*.so`` an embedder loaded);
``explorer.elf`` finds it from ``/proc/PID/maps`` and the file, without touching memory. When
the maps of another user's process cannot be read, the executable's name decides instead.

Listing never writes to, signals or stops a process. The only memory it reads is the one int32
that says whether remote debugging is enabled, and only in processes of the current user that
passed every other check (a supported minor, readable); for other processes the environment and the
command line give a hint instead.

``ProcessScanner`` is meant to be called repeatedly (the TUI rescans every ~2 s): ELF results
are cached by file identity (in ``explorer.elf``), runtime flags per process, and psutil
``Process`` objects are kept so that CPU % covers the time since the previous scan.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import psutil

from explorer import elf, versions
from explorer.errors import (
    NotAPythonProcess,
    PeriscopeError,
    PermissionDenied,
    ProcessGone,
    TargetNotReady,
    UnsupportedPython,
)
from explorer.memory import MemoryFault, has_cap_sys_ptrace, process_start_time, yama_scope
from explorer.remote import RemoteProcess

SUPPORTED = versions.SUPPORTED_MINORS
DISABLE_VARIABLE = "PYTHON_DISABLE_REMOTE_DEBUG"
DISABLE_XOPTION = "disable-remote-debug"

# Executable names that look like an interpreter, for processes whose maps cannot be read.
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?t?")

# Errors psutil and /proc raise when a process exits (or turns zombie) while we look at it.
_GONE = (psutil.NoSuchProcess, ProcessGone, FileNotFoundError, ProcessLookupError)


@dataclass(frozen=True)
class ProcessInfo:
    """One Python process as periscope sees it, and whether (and why not) it can attach."""

    pid: int
    ppid: int
    user: str
    uid: int
    cmdline: tuple[str, ...]
    exe: str | None
    """Path of the executable; None when the kernel does not let us read it."""
    name: str
    cpu_percent: float
    """CPU use since the previous scan (100 = one core); on the first scan, the average since start."""
    rss: int
    num_threads: int
    create_time: float
    """Start time (seconds since the epoch); with ``pid`` it names the process even after pid reuse."""
    python: str | None
    """Interpreter version, for example "3.14.10"; None when unknown. For another user's process
    whose files cannot be read, only major.minor ("3.15") guessed from the executable's name."""
    free_threaded: bool | None
    runtime_path: str | None
    """The mapped file that holds ``.PyRuntime`` (the executable or libpython), as the process sees it."""
    remote_debug_enabled: bool | None
    """The runtime's own flag when periscope read it; None when it did not (another user, unsupported version)."""
    attachable: bool
    reason: str | None
    """Why periscope cannot attach (None when it can)."""
    fix: str | None
    """What to do about ``reason`` (None when attachable or when nothing can be done)."""

    @property
    def command(self) -> str:
        """The command line as one string (the process name when the command line is empty)."""
        return " ".join(self.cmdline) if self.cmdline else f"[{self.name}]"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with every field, in a stable order (``cmdline`` as a list)."""
        data: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return data


@dataclass(frozen=True)
class Verdict:
    """Whether periscope can attach, and if not why and what to do."""

    attachable: bool
    reason: str | None = None
    fix: str | None = None


ATTACHABLE = Verdict(True)


# --- facts about periscope's own process and the kernel ----------------------------------------


@dataclass(frozen=True)
class Attacher:
    """What the kernel's ptrace access check looks at on periscope's side."""

    pid: int
    uid: int
    gid: int
    euid: int
    has_ptrace_capability: bool
    yama_scope: int | None

    @classmethod
    def current(cls) -> Attacher:
        """Describe this process (read on every scan: capabilities and Yama can change)."""
        return cls(
            pid=os.getpid(),
            uid=os.getuid(),
            gid=os.getgid(),
            euid=os.geteuid(),
            has_ptrace_capability=has_cap_sys_ptrace(),
            yama_scope=yama_scope(),
        )


# --- the pieces of a verdict ------------------------------------------------------------------


def version_verdict(version_hex: int | None, free_threaded: bool | None) -> Verdict:
    """Can periscope's protocol speak to this interpreter version and build? (explorer.versions decides.)"""
    refused = versions.unsupported(version_hex, free_threaded)
    if refused is not None:
        return Verdict(False, refused.reason, refused.fix)
    return ATTACHABLE


def _is_descendant(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is a parent, grandparent, ... of ``pid`` (for Yama scope 1)."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = psutil.Process(pid).ppid()
        except psutil.Error:
            return False
        if pid == ancestor:
            return True
    return False


def _dumpable(pid: int, euid: int) -> bool | None:
    """Whether the process is dumpable; None when /proc cannot tell (root-owned processes).

    The kernel makes the files in /proc/PID (not the directory) owned by root while a process
    is not dumpable.
    """
    if euid == 0:
        return None
    try:
        return os.stat(f"/proc/{pid}/status").st_uid == euid
    except OSError:
        return None


def permission_verdict(
    attacher: Attacher, pid: int, user: str, uids: Sequence[int], gids: Sequence[int]
) -> Verdict:
    """Would the kernel let periscope read and write this process's memory (ptrace attach access)?

    ``uids`` and ``gids`` are the target's (real, effective, saved) ids. The kernel wants them all
    equal to the attacher's real ids and the target dumpable, or CAP_SYS_PTRACE; Yama may be
    stricter. A process that named a tracer with PR_SET_PTRACER cannot be seen from outside.
    """
    scope = attacher.yama_scope
    capability = attacher.has_ptrace_capability
    if scope == 3:
        return Verdict(
            False,
            "kernel.yama.ptrace_scope is 3: the kernel lets no process attach",
            "reboot with a lower kernel.yama.ptrace_scope (it cannot be lowered until then)",
        )
    if capability:
        return ATTACHABLE
    if scope == 2:
        return Verdict(
            False,
            "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may attach",
            "run periscope with CAP_SYS_PTRACE (for example with sudo)",
        )
    same_ids = all(uid == attacher.uid for uid in uids) and all(gid == attacher.gid for gid in gids)
    if not same_ids:
        return Verdict(
            False,
            f"owned by another user ({user})",
            f"run periscope as {user} or with CAP_SYS_PTRACE (for example with sudo)",
        )
    if _dumpable(pid, uids[1]) is False:
        return Verdict(
            False,
            "the process is not dumpable (setuid/setgid, file capabilities or prctl(PR_SET_DUMPABLE, 0))",
            "run periscope with CAP_SYS_PTRACE (for example with sudo)",
        )
    if scope == 1 and not _is_descendant(pid, attacher.pid):
        return Verdict(
            False,
            "kernel.yama.ptrace_scope is 1: only a parent process may attach",
            "run periscope with CAP_SYS_PTRACE (for example with sudo), or set kernel.yama.ptrace_scope to 0",
        )
    return ATTACHABLE


def interpreter_options(cmdline: Sequence[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """The one-letter flags and ``-X`` options of a ``python`` command line, before the script.

    ``["python3.14", "-E", "-X", "dev", "app.py", "-X", "x"]`` gives ``({"E"}, ("dev",))``.
    """
    flags: set[str] = set()
    xoptions: list[str] = []
    args = list(cmdline[1:])
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--" or arg == "-" or not arg.startswith("-"):
            break
        index += 1
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":
                index += 1
            continue
        for position in range(1, len(arg)):
            letter = arg[position]
            if letter in "cmWX":  # options that take an argument, attached or next
                value = arg[position + 1 :]
                if not value and index < len(args):
                    value = args[index]
                    index += 1
                if letter == "X":
                    xoptions.append(value)
                if letter in "cm":  # the rest belongs to the command or module
                    return frozenset(flags), tuple(xoptions)
                break
            flags.add(letter)
    return frozenset(flags), tuple(xoptions)


def _has_disable_xoption(xoptions: Iterable[str]) -> bool:
    # Only the hyphenated spelling counts; "-X disable_remote_debug" is ignored by CPython.
    return any(option.partition("=")[0] == DISABLE_XOPTION for option in xoptions)


def disabled_verdict(
    cmdline: Sequence[str], environ: dict[str, str] | None, is_python_command: bool = True
) -> Verdict:
    """The verdict for a process whose remote debugging is off, naming what switched it off.

    ``is_python_command`` says whether ``cmdline`` is a ``python`` command line (not an embedder's).
    """
    flags, xoptions = interpreter_options(cmdline) if is_python_command else (frozenset(), ())
    ignores_environment = bool(flags & {"E", "I"})
    if environ is not None and DISABLE_VARIABLE in environ and not ignores_environment:
        return Verdict(
            False,
            f"remote debugging disabled by {DISABLE_VARIABLE}",
            f"restart it without {DISABLE_VARIABLE} in its environment",
        )
    if _has_disable_xoption(xoptions):
        return Verdict(
            False,
            f"remote debugging disabled by -X {DISABLE_XOPTION}",
            f"restart it without -X {DISABLE_XOPTION}",
        )
    return Verdict(
        False,
        "remote debugging is disabled in this process",
        f"restart it without {DISABLE_VARIABLE} or -X {DISABLE_XOPTION} "
        "(and under a CPython built with remote debugging)",
    )


def disabled_hint(cmdline: Sequence[str], environ: dict[str, str] | None, is_python_command: bool) -> bool:
    """Guess from the command line and environment whether remote debugging is off.

    Used only when periscope does not read the runtime's flag (another user's process).
    """
    if not is_python_command:
        return environ is not None and DISABLE_VARIABLE in environ
    flags, xoptions = interpreter_options(cmdline)
    if _has_disable_xoption(xoptions):
        return True
    return environ is not None and DISABLE_VARIABLE in environ and not flags & {"E", "I"}


class ShuttingDown(TargetNotReady):
    """The runtime is finalizing: the process is on its way out."""


def read_remote_debug_flag(pid: int) -> bool:
    """Read the runtime's ``remote_debugging_enabled`` flag (memory read only, never a write).

    Raises TargetNotReady (ShuttingDown while finalizing), PermissionDenied, ProcessGone or
    UnsupportedPython.
    """
    with RemoteProcess.open(pid) as process:
        try:
            if process.is_finalizing():
                raise ShuttingDown(f"process {pid} is shutting down")
            return process.remote_debugging_enabled()
        except MemoryFault:
            process.memory.ensure_alive()  # raises ProcessGone when it exited meanwhile
            raise TargetNotReady(f"process {pid}: its interpreter state is not readable yet") from None


def _looks_like_python(*names: str | None) -> bool:
    return any(name and _PYTHON_NAME.fullmatch(os.path.basename(name)) for name in names)


def _version_hex_from_name(*names: str | None) -> int | None:
    for name in names:
        match = re.fullmatch(r"python(\d+)\.(\d+)t?", os.path.basename(name or ""))
        if match:
            return int(match[1]) << 24 | int(match[2]) << 16 | 0xFF00 | 0xF0
    return None


# --- the scanner --------------------------------------------------------------------------------


class ProcessScanner:
    """Lists the Python processes of this machine; keep one and call ``scan()`` repeatedly.

    Between scans it keeps the psutil ``Process`` of each Python process (so CPU % covers the
    time since the previous scan) and the runtime flag of each process it has read. Use one
    scanner from one thread at a time.
    """

    def __init__(self, *, include_self: bool = False) -> None:
        self.include_self = include_self
        self._processes: dict[int, psutil.Process] = {}
        self._flags: dict[tuple[int, float], bool] = {}

    def scan(self) -> list[ProcessInfo]:
        """Every Python process visible to this user, sorted by pid; processes that exit are skipped."""
        attacher = Attacher.current()
        found = []
        seen = set()
        for pid in psutil.pids():
            if pid == attacher.pid and not self.include_self:
                continue
            info = self._inspect(pid, attacher)
            if info is not None:
                found.append(info)
                seen.add(pid)
        for pid in list(self._processes):
            if pid not in seen:
                del self._processes[pid]
        live = {(info.pid, info.create_time) for info in found}
        for key in list(self._flags):
            if key not in live:
                del self._flags[key]
        return found

    def inspect(self, pid: int) -> ProcessInfo | None:
        """Describe one process; None when it is not a Python process or no longer exists."""
        return self._inspect(pid, Attacher.current())

    def _process(self, pid: int) -> tuple[psutil.Process, bool]:
        """The psutil Process for ``pid`` (reused from the last scan unless the pid was reused), and
        whether it is new."""
        process = self._processes.get(pid)
        if process is not None and process.is_running():
            return process, False
        process = psutil.Process(pid)
        self._processes[pid] = process
        return process, True

    def _inspect(self, pid: int, attacher: Attacher) -> ProcessInfo | None:
        try:
            return self._describe(pid, attacher)
        except _GONE:
            self._processes.pop(pid, None)
            return None
        except psutil.AccessDenied:
            # The kernel hides even the basics (name, ids) of this process: nothing to show.
            self._processes.pop(pid, None)
            return None

    def _describe(self, pid: int, attacher: Attacher) -> ProcessInfo | None:
        started = process_start_time(pid)
        if started is None:
            return None
        image: elf.RuntimeImage | None = None
        hidden = False  # the kernel hides its maps or files: the executable's name decides
        try:
            with open(f"/proc/{pid}/maps", "rb") as handle:
                raw_maps = handle.read()
        except PermissionError:
            hidden = True
        else:
            if b"python" not in raw_maps:
                return None  # cheap pre-check: no mapped file can have "python" in its name
            try:
                image = elf.find_runtime(pid)
            except NotAPythonProcess:
                return None
            except PermissionDenied:
                hidden = True

        process, first_sight = self._process(pid)
        with process.oneshot():
            name = process.name()
            cmdline = tuple(process.cmdline())
            exe = _maybe(process.exe)
            if hidden and not _looks_like_python(exe, cmdline[0] if cmdline else None, name):
                return None
            uids = tuple(process.uids())
            gids = tuple(process.gids())
            user = _username(process, uids[0])
            ppid = process.ppid()
            rss = process.memory_info().rss
            num_threads = process.num_threads()
            create_time = process.create_time()
            cpu_percent = self._cpu_percent(process, create_time, first_sight)

        is_python_command = _looks_like_python(cmdline[0] if cmdline else None, exe)
        remote_flag: bool | None = None
        if image is None:  # hidden
            version_hex = _version_hex_from_name(exe, cmdline[0] if cmdline else None, name)
            free_threaded = None
            verdict = permission_verdict(attacher, pid, user, uids, gids)
            if verdict.attachable:  # the kernel check looked fine, yet the files were unreadable
                verdict = Verdict(
                    False,
                    "the kernel does not let periscope read its memory map or executable",
                    "run periscope as the process's user or with CAP_SYS_PTRACE",
                )
        else:
            version_hex = image.version_hex
            free_threaded = image.free_threaded
            verdict = version_verdict(version_hex, free_threaded)
            if verdict.attachable:
                verdict = permission_verdict(attacher, pid, user, uids, gids)
            if verdict.attachable:
                verdict, remote_flag = self._remote_debug_verdict(
                    process, attacher, uids, create_time, cmdline, is_python_command
                )
        if process_start_time(pid) != started or not process.is_running():
            raise ProcessGone(f"process {pid} exited")  # or its pid now names another process
        return ProcessInfo(
            pid=pid,
            ppid=ppid,
            user=user,
            uid=uids[0],
            cmdline=cmdline,
            exe=exe,
            name=name,
            cpu_percent=cpu_percent,
            rss=rss,
            num_threads=num_threads,
            create_time=create_time,
            python=elf.version_string(version_hex),
            free_threaded=free_threaded,
            runtime_path=image.path if image is not None else None,
            remote_debug_enabled=remote_flag,
            attachable=verdict.attachable,
            reason=verdict.reason,
            fix=verdict.fix,
        )

    def _remote_debug_verdict(
        self,
        process: psutil.Process,
        attacher: Attacher,
        uids: Sequence[int],
        create_time: float,
        cmdline: Sequence[str],
        is_python_command: bool,
    ) -> tuple[Verdict, bool | None]:
        """Is remote debugging on? From the runtime's flag for our own user's processes, else a hint."""
        own = all(uid == attacher.uid for uid in uids) and attacher.euid == attacher.uid
        key = (process.pid, create_time)
        flag: bool | None = self._flags.get(key)
        if flag is None and own:
            try:
                flag = read_remote_debug_flag(process.pid)
            except ShuttingDown:
                return Verdict(False, "the interpreter is shutting down", "wait for it to exit or to finish shutting down"), None
            except TargetNotReady:
                return Verdict(False, "the interpreter is starting up", "try again in a moment"), None
            except UnsupportedPython as error:
                return Verdict(False, str(error), f"restart it under {versions.SUPPORTED_CHOICE}"), None
            except PermissionDenied as error:
                return Verdict(False, str(error), "run periscope as the process's user or with CAP_SYS_PTRACE"), None
            except ProcessGone:
                raise
            except PeriscopeError as error:
                return Verdict(False, str(error), None), None
            self._flags[key] = flag
        if flag is None:
            environ = _maybe(process.environ)
            if disabled_hint(cmdline, environ, is_python_command):
                return disabled_verdict(cmdline, environ, is_python_command), None
            return ATTACHABLE, None
        if flag:
            return ATTACHABLE, True
        return disabled_verdict(cmdline, _maybe(process.environ), is_python_command), False

    @staticmethod
    def _cpu_percent(process: psutil.Process, create_time: float, first: bool) -> float:
        """CPU % since the previous call for this process; the average since start on the first."""
        percent = process.cpu_percent(interval=None)
        if not first:
            return percent
        times = process.cpu_times()
        elapsed = time.time() - create_time
        if elapsed <= 0:
            return 0.0
        return round(100.0 * (times.user + times.system) / elapsed, 1)


def _maybe(read: Any) -> Any:
    """Call a psutil accessor; None when the kernel does not let us read that field."""
    try:
        return read()
    except psutil.AccessDenied:
        return None


def _username(process: psutil.Process, uid: int) -> str:
    try:
        return process.username()
    except (KeyError, psutil.AccessDenied):
        return str(uid)


def scan() -> list[ProcessInfo]:
    """One-off scan of this machine's Python processes (CPU % is the average since each started)."""
    return ProcessScanner().scan()
