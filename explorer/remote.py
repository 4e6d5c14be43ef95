"""A validated, read-only view of a CPython 3.14+ process: its runtime, interpreters and threads.

``RemoteProcess.open(pid)`` finds ``_PyRuntime`` (explorer.elf), opens the process's memory
(explorer.memory), reads the debug-offsets table from the live process and validates it
(explorer.offsets). Nothing here writes to the target; remote exec lives in explorer.remote_exec.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import namedtuple

from explorer import elf, offsets as offsets_module, versions
from explorer.errors import (
    NotAPythonProcess,
    PermissionDenied,
    ProcessGone,
    RemoteDebuggingDisabled,
    TargetNotReady,
    UnsupportedPython,
)
from explorer.memory import MemoryFault, ProcessMemory, explain_permission

MAX_INTERPRETERS = 256
MAX_THREADS = 10_000
# _status.active: attached to the interpreter (running Python or holding the GIL); the same bit
# in every minor periscope knows (explorer.versions checks that they agree).
STATUS_ACTIVE: int = versions.common("status_active")  # type: ignore[assignment]


# Immutable records as namedtuple subclasses, not dataclasses: see explorer.elf (start-up time).


class InterpreterRef(namedtuple("InterpreterRef", "address id")):
    """One interpreter of the target (the main one has id 0)."""

    __slots__ = ()
    address: int
    id: int

    @property
    def is_main(self) -> bool:
        """Whether this is the main interpreter."""
        return self.id == 0


class ThreadRef(
    namedtuple(
        "ThreadRef",
        "address interpreter_id native_id target_native_id thread_id status current_frame is_main holds_gil",
    )
):
    """One thread state of the target, as read at one moment."""

    __slots__ = ()
    address: int
    interpreter_id: int
    native_id: int
    target_native_id: int
    thread_id: int
    status: int
    current_frame: int
    is_main: bool
    holds_gil: bool

    @property
    def attached(self) -> bool:
        """Whether the thread is attached to its interpreter (running Python code, or about to)."""
        return bool(self.status & STATUS_ACTIVE)

    @property
    def running_python(self) -> bool:
        """Best guess that the thread will reach an eval-breaker check soon (it holds the GIL)."""
        return self.holds_gil


def _uncached_open_check(pid: int) -> None:
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessGone(f"no process with pid {pid}", "check the pid (periscope ps lists the Python processes)")


class RemoteProcess:
    """Read-only access to one CPython target of a supported minor; create with :meth:`open`, release with :meth:`close`."""

    def __init__(self, pid: int, image: elf.RuntimeImage, memory: ProcessMemory, offsets: offsets_module.DebugOffsets) -> None:
        self.pid = pid
        self.image = image
        self.memory = memory
        self.offsets = offsets
        self.runtime = image.section_address
        self._ns_map: dict[int, int] | None = None
        self._in_child_pidns: bool | None = None

    @classmethod
    def open(cls, pid: int) -> RemoteProcess:
        """Validate that ``pid`` is a CPython process of a supported minor that periscope can read, and open it.

        Raises ProcessGone, NotAPythonProcess, UnsupportedPython or PermissionDenied.
        """
        if pid <= 0:
            raise ProcessGone(f"no process with pid {pid}", "check the pid (periscope ps lists the Python processes)")
        _uncached_open_check(pid)
        image = elf.find_runtime(pid)
        if not image.has_debug_offsets:
            refused = versions.unsupported(image.version_hex, None, image.version)
            reason = refused.reason if refused else f"CPython {image.version}: periscope supports {versions.SUPPORTED_TEXT}"
            fix = refused.fix if refused else f"restart it under {versions.SUPPORTED_CHOICE}"
            raise UnsupportedPython(f"process {pid}: {reason}", fix, version=image.version)
        # Check the file's table first: it names the version even when memory cannot be read.
        static_version, static_free = offsets_module.peek_version(image.static_header)
        known = versions.layout_for(static_version, static_free)
        if known is None:
            offsets_module.parse(image.static_header, section_size=image.section_size)  # raises why
        memory = ProcessMemory(pid)
        try:
            table_size = known.table_size if known is not None else versions.LARGEST_TABLE
            try:
                live = memory.read(image.section_address, table_size)
            except MemoryFault:
                raise NotAPythonProcess(
                    f"process {pid}: the CPython runtime section is not readable at {image.section_address:#x}"
                ) from None
            table = offsets_module.parse(live, section_size=image.section_size)
        except BaseException:
            memory.close()
            raise
        return cls(pid, image, memory, table)

    @property
    def version(self) -> str:
        """The target's CPython version, for example ``"3.14.10"``."""
        return self.offsets.version

    def close(self) -> None:
        """Release the memory descriptors."""
        self.memory.close()

    def __enter__(self) -> RemoteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runtime ---------------------------------------------------------------------------

    def is_finalizing(self) -> bool:
        """Whether the runtime is shutting down (never inject then)."""
        return self.memory.read_u64(self.runtime + self.offsets.runtime_state.finalizing) != 0

    def interpreters(self) -> list[InterpreterRef]:
        """All interpreters, the main one first; TargetNotReady while there are none yet."""
        o = self.offsets
        address = self.memory.read_u64(self.runtime + o.runtime_state.interpreters_head)
        if address == 0:
            raise TargetNotReady(f"process {self.pid}: the interpreter is not initialised yet", "try again in a moment")
        found: list[InterpreterRef] = []
        seen: set[int] = set()
        while address and address not in seen and len(found) < MAX_INTERPRETERS:
            seen.add(address)
            found.append(InterpreterRef(address, self.memory.read_i64(address + o.interpreter_state.id)))
            address = self.memory.read_u64(address + o.interpreter_state.next)
        found.sort(key=lambda interp: (interp.id != 0, interp.id))
        return found

    def main_interpreter(self) -> InterpreterRef:
        """The main interpreter (id 0)."""
        interpreters = self.interpreters()
        if not interpreters[0].is_main:
            raise TargetNotReady(f"process {self.pid}: the main interpreter is not in the runtime's list")
        return interpreters[0]

    def remote_debugging_enabled(self, interpreter: InterpreterRef | None = None) -> bool:
        """The runtime's own flag: False when started with PYTHON_DISABLE_REMOTE_DEBUG or -X disable-remote-debug."""
        interp = interpreter or self.main_interpreter()
        return self.memory.read_i32(interp.address + self.offsets.debugger_support.remote_debugging_enabled) == 1

    def require_remote_debugging(self) -> None:
        """Raise RemoteDebuggingDisabled (with the fix) when the target refuses remote scripts."""
        if not self.remote_debugging_enabled():
            raise RemoteDebuggingDisabled(*disabled_reason(self.pid))

    def code_object_generation(self, interpreter: InterpreterRef) -> int:
        """Counter that goes up whenever a code object is destroyed (cache invalidation)."""
        return self.memory.read_u64(interpreter.address + self.offsets.interpreter_state.code_object_generation)

    def gil_holder(self, interpreter: InterpreterRef) -> int:
        """Address of the thread state holding the GIL of this interpreter, or 0."""
        o = self.offsets.interpreter_state
        locked = self.memory.read_i32(interpreter.address + o.gil_runtime_state_locked)
        if not locked:
            return 0
        return self.memory.read_u64(interpreter.address + o.gil_runtime_state_holder)

    # -- threads ---------------------------------------------------------------------------

    def host_tid(self, target_tid: int) -> int:
        """Map a thread id from the target's pid namespace to this (host) namespace."""
        if self._in_child_pidns is None:
            self._in_child_pidns = len(_nspid(f"/proc/{self.pid}/status")) > 1
        if not self._in_child_pidns:
            return target_tid
        if self._ns_map is None or target_tid not in self._ns_map:
            mapping = {}
            try:
                for task in os.listdir(f"/proc/{self.pid}/task"):
                    ids = _nspid(f"/proc/{self.pid}/task/{task}/status")
                    if ids:
                        mapping[ids[-1]] = ids[0]
            except OSError:
                pass
            self._ns_map = mapping
        return self._ns_map.get(target_tid, target_tid)

    def threads(self, interpreter: InterpreterRef | None = None) -> list[ThreadRef]:
        """Thread states of one interpreter (default: every interpreter), the main thread first.

        Raises MemoryFault when the list changed under the reader (a thread state was freed
        mid-walk): read it again.
        """
        interpreters = [interpreter] if interpreter else self.interpreters()
        result: list[ThreadRef] = []
        for interp in interpreters:
            result.extend(self._threads_of(interp))
        return result

    def _threads_of(self, interp: InterpreterRef) -> list[ThreadRef]:
        o = self.offsets
        ts = o.thread_state
        read = self.memory.read
        main = self.memory.read_u64(interp.address + o.interpreter_state.threads_main)
        holder = self.gil_holder(interp)
        address = self.memory.read_u64(interp.address + o.interpreter_state.threads_head)
        span = max(ts.prev, ts.next, ts.interp, ts.current_frame, ts.thread_id, ts.native_thread_id, ts.status) + 8
        threads: list[ThreadRef] = []
        seen: set[int] = set()
        previous_address = 0
        while address and len(threads) < MAX_THREADS:
            if address in seen:
                raise MemoryFault(errno.EAGAIN, f"the thread list of interpreter {interp.id} loops (changed while read)")
            seen.add(address)
            raw = read(address, span)
            # A thread state freed while we walk (threads exit at any time) has a garbage next
            # pointer: without these checks the list would end early or run into freed memory.
            # The head's prev may name a thread created since we read the head; that is fine.
            (owner,) = struct.unpack_from("<Q", raw, ts.interp)
            (prev_address,) = struct.unpack_from("<Q", raw, ts.prev)
            if owner != interp.address or (previous_address and prev_address != previous_address):
                raise MemoryFault(errno.EAGAIN, f"the thread list of interpreter {interp.id} changed while it was read")
            previous_address = address
            (next_address,) = struct.unpack_from("<Q", raw, ts.next)
            (frame,) = struct.unpack_from("<Q", raw, ts.current_frame)
            (thread_id,) = struct.unpack_from("<Q", raw, ts.thread_id)
            (native,) = struct.unpack_from("<Q", raw, ts.native_thread_id)
            (status,) = struct.unpack_from("<I", raw, ts.status)
            threads.append(
                ThreadRef(
                    address=address,
                    interpreter_id=interp.id,
                    native_id=self.host_tid(native),
                    target_native_id=native,
                    thread_id=thread_id,
                    status=status,
                    current_frame=frame,
                    is_main=address == main and interp.is_main,
                    holds_gil=address == holder,
                )
            )
            address = next_address
        if main and main not in seen and self.memory.read_u64(interp.address + o.interpreter_state.threads_main) == main:
            # The list ended early: its head was freed and reused for a thread state still being
            # set up (next still NULL) while we read it.
            raise MemoryFault(errno.EAGAIN, f"the thread list of interpreter {interp.id} ended early (changed while read)")
        # The main thread first, then in creation order (the list is newest first).
        threads.reverse()
        threads.sort(key=lambda thread: not thread.is_main)
        return threads

    def thread_by_native_id(self, native_id: int) -> ThreadRef:
        """The thread with this native id (host or target namespace); ProcessGone-safe lookup."""
        for thread in self.threads():
            if native_id in (thread.native_id, thread.target_native_id):
                return thread
        raise LookupError(f"process {self.pid} has no Python thread with native id {native_id}")


def _nspid(status_path: str) -> list[int]:
    try:
        with open(status_path) as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return [int(part) for part in line.split()[1:]]
    except OSError:
        pass
    return []


def disabled_reason(pid: int) -> tuple[str, str]:
    """Why remote debugging is off in ``pid`` (from its environment and command line), and the fix."""
    environ: bytes = b""
    cmdline: list[bytes] = []
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except OSError:
        pass
    if any(arg.startswith(b"disable-remote-debug") for arg in cmdline) or b"-Xdisable-remote-debug" in cmdline:
        return "remote debugging disabled by -X disable-remote-debug", "restart the target without that option"
    if any(entry.startswith(b"PYTHON_DISABLE_REMOTE_DEBUG=") for entry in environ.split(b"\0")):
        return "remote debugging disabled by PYTHON_DISABLE_REMOTE_DEBUG", "restart the target without that variable"
    return (
        "remote debugging is disabled in the target (PYTHON_DISABLE_REMOTE_DEBUG, -X disable-remote-debug, "
        "or a build --without-remote-debug)",
        "restart it with remote debugging enabled",
    )


__all__ = [
    "InterpreterRef",
    "NotAPythonProcess",
    "PermissionDenied",
    "ProcessGone",
    "RemoteProcess",
    "ThreadRef",
    "disabled_reason",
    "explain_permission",
]
