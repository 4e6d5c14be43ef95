"""Read and write another process's memory: ``/proc/PID/mem``, with process_vm_readv/writev as fallback.

``/proc/PID/mem`` with a kept-open descriptor is the cheapest per call from Python (about 2 µs for
a small read). Both need ptrace "attach" access to the target. A read that fails because the
address is not (or no longer) mapped raises :class:`MemoryFault`, which stack readers treat as a
torn sample; a vanished process raises :class:`~explorer.errors.ProcessGone`, guarded against pid
reuse by the process start time.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from explorer.errors import PermissionDenied, ProcessGone

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    import ctypes

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
MAX_READ = 64 * 1024 * 1024
CAP_SYS_PTRACE = 19
PF_EXITING = 0x4  # task flag: the process is exiting


class MemoryFault(OSError):
    """An address of the target could not be read or written (unmapped, freed, or out of range)."""


# ctypes, the iovec structure and libc, loaded on first use: most runs read through
# /proc/PID/mem and never need them, and importing ctypes costs start-up time.
_IOVec: type[ctypes.Structure] | None = None
_libc: ctypes.CDLL | None = None


def _vm_api() -> tuple[type[ctypes.Structure], ctypes.CDLL]:
    """The iovec structure and a libc whose process_vm_readv/writev have their prototypes set."""
    global _IOVec, _libc
    if _IOVec is None or _libc is None:
        import ctypes

        class IOVec(ctypes.Structure):
            _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("process_vm_readv", "process_vm_writev"):
            function = getattr(libc, name)
            function.restype = ctypes.c_ssize_t
            function.argtypes = [
                ctypes.c_int,
                ctypes.POINTER(IOVec),
                ctypes.c_ulong,
                ctypes.POINTER(IOVec),
                ctypes.c_ulong,
                ctypes.c_ulong,
            ]
        _IOVec, _libc = IOVec, libc
    return _IOVec, _libc


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onwards of /proc/PID/stat (index 0 is the state letter); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if the process is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_exited(pid: int, start_time: int | None) -> bool:
    """Whether the process that had ``start_time`` is gone: exited (also a zombie not yet reaped) or replaced."""
    fields = _stat_fields(pid)
    if fields is None or int(fields[19]) != start_time:
        return True
    # A zombie (Z) or dead (X) process keeps its /proc entry but has no memory any more; one that
    # is exiting (PF_EXITING in the flags, field 9) is about to lose it.
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)


def process_cpu_ns(pid: int) -> int | None:
    """CPU time all threads of process ``pid`` have used so far, in nanoseconds; None when unreadable.

    From the process's CPU-time clock (``clock_gettime`` of ``MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED)``), which Linux lets any process read; about 1 µs. A thread's share is
    counted when it leaves the CPU (and at each scheduler tick while it runs), so a thread that
    woke, ran and went back to sleep has always moved it.
    """
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except (OSError, OverflowError):
        return None


def has_cap_sys_ptrace() -> bool:
    """Whether this process has CAP_SYS_PTRACE in its effective set."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except OSError:
        pass
    return False


def yama_scope() -> int | None:
    """kernel.yama.ptrace_scope, or None when Yama is not present."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def explain_permission(pid: int) -> tuple[str, str | None]:
    """Why this user may not read process ``pid``, and the fix: a PermissionDenied's reason and fix."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/status") as handle:
            uids = next(line for line in handle if line.startswith("Uid:")).split()[1:]
    except (OSError, StopIteration):
        owner, uids = -1, []
    me = os.geteuid()
    capable = has_cap_sys_ptrace()
    scope = yama_scope()
    if uids and int(uids[0]) != me and not capable:
        return (
            f"process {pid} belongs to uid {uids[0]}, not to you (uid {me})",
            "run periscope as that user, or as root / with CAP_SYS_PTRACE",
        )
    if uids and owner != int(uids[0]) and owner == 0 and not capable:
        return (
            f"process {pid} is not dumpable (setuid/setcap binary or prctl(PR_SET_DUMPABLE, 0))",
            "run periscope as root / with CAP_SYS_PTRACE",
        )
    if scope == 3:
        return "Yama ptrace_scope is 3: no process may attach until reboot", None
    if scope == 2 and not capable:
        return "Yama ptrace_scope is 2: only CAP_SYS_PTRACE may attach", "run periscope as root or with that capability"
    if scope == 1 and not capable:
        return (
            "Yama ptrace_scope is 1: only a parent may attach",
            "run periscope with CAP_SYS_PTRACE, or set kernel.yama.ptrace_scope=0 (sysctl)",
        )
    if not capable and os.path.exists("/.dockerenv"):
        return f"not permitted to read process {pid}", "in a container, add --cap-add=SYS_PTRACE"
    return f"not permitted to read process {pid}", "run periscope as its user, or as root / with CAP_SYS_PTRACE"


class _TypedReads:
    """Integers read through the class's own ``read(address, size)``."""

    def read(self, address: int, size: int) -> bytes:
        raise NotImplementedError

    def read_u64(self, address: int) -> int:
        """An unsigned 64-bit integer (also pointers)."""
        return _U64.unpack(self.read(address, 8))[0]

    def read_i64(self, address: int) -> int:
        """A signed 64-bit integer."""
        return _I64.unpack(self.read(address, 8))[0]

    def read_u32(self, address: int) -> int:
        """An unsigned 32-bit integer."""
        return _U32.unpack(self.read(address, 4))[0]

    def read_i32(self, address: int) -> int:
        """A signed 32-bit integer."""
        return _I32.unpack(self.read(address, 4))[0]


class ProcessMemory(_TypedReads):
    """Access to one process's address space, valid only while that same process lives."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_time = process_start_time(pid)
        if self.start_time is None:
            raise ProcessGone(f"process {pid} does not exist")
        self._fd: int | None = None
        self._write_fd: int | None = None
        self._use_vm = False
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGone(f"process {pid} exited") from None
        except PermissionError:
            self._check_vm_fallback()
        except OSError as error:
            if error.errno in (errno.ESRCH,):
                raise ProcessGone(f"process {pid} exited") from None
            self._check_vm_fallback()

    def _check_vm_fallback(self) -> None:
        """/proc/PID/mem cannot be opened: try process_vm_readv, which has the same rules."""
        self._use_vm = True
        import ctypes

        iovec, libc = _vm_api()
        buffer = ctypes.create_string_buffer(1)
        local = iovec(ctypes.cast(buffer, ctypes.c_void_p), 1)
        remote = iovec(0, 1)  # address 0 is never mapped: EFAULT means we are allowed
        result = libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        code = ctypes.get_errno() if result < 0 else 0
        if code == errno.EPERM:
            raise PermissionDenied(*explain_permission(self.pid))
        if code == errno.ESRCH:
            raise ProcessGone(f"process {self.pid} exited")

    def ensure_alive(self) -> None:
        """Raise ProcessGone if the process exited or its pid now names another process."""
        if process_exited(self.pid, self.start_time):
            raise ProcessGone(f"process {self.pid} exited")

    def read(self, address: int, size: int) -> bytes:
        """Read exactly ``size`` bytes at ``address``; MemoryFault if any of it is unreadable."""
        if size <= 0:
            return b""
        if not 0 < address < 1 << 63 or size > MAX_READ:
            raise MemoryFault(errno.EFAULT, f"bad read of {size} bytes at {address:#x}")
        if self._use_vm:
            return self._vm_read(address, size)
        assert self._fd is not None
        try:
            data = os.pread(self._fd, size, address)
        except OSError as error:
            if error.errno in (errno.EIO, errno.EFAULT, errno.EINVAL):
                raise MemoryFault(error.errno, f"cannot read {size} bytes at {address:#x}") from None
            if error.errno == errno.ESRCH:
                raise ProcessGone(f"process {self.pid} exited") from None
            if error.errno in (errno.EPERM, errno.EACCES):
                raise PermissionDenied(*explain_permission(self.pid)) from None
            raise
        except OverflowError:
            raise MemoryFault(errno.EFAULT, f"address {address:#x} out of range") from None
        if len(data) != size:
            if not data:
                # 0 bytes, no errno: the address space we opened is gone (the target exited, is
                # exiting, or exec'd another program). An unmapped address gives EIO instead.
                self.ensure_alive()
                raise ProcessGone(f"process {self.pid} exited")
            raise MemoryFault(errno.EFAULT, f"short read at {address:#x}: {len(data)} of {size} bytes")
        return data

    def _vm_read(self, address: int, size: int) -> bytes:
        import ctypes

        iovec, libc = _vm_api()
        buffer = ctypes.create_string_buffer(size)
        local = iovec(ctypes.cast(buffer, ctypes.c_void_p), size)
        remote = iovec(address, size)
        result = libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if result < 0:
            self._raise_vm_error(ctypes.get_errno(), f"cannot read {size} bytes at {address:#x}")
        if result != size:
            raise MemoryFault(errno.EFAULT, f"short read at {address:#x}: {result} of {size} bytes")
        return buffer.raw

    def _raise_vm_error(self, code: int, what: str) -> None:
        """Turn a process_vm_readv/writev errno into the matching typed error."""
        if code == errno.ESRCH:
            raise ProcessGone(f"process {self.pid} exited")
        if code == errno.EPERM:
            raise PermissionDenied(*explain_permission(self.pid))
        raise MemoryFault(code, what)

    def write(self, address: int, data: bytes) -> None:
        """Write ``data`` at ``address`` (all of it, or raise)."""
        if not 0 < address < 1 << 63:
            raise MemoryFault(errno.EFAULT, f"bad write at {address:#x}")
        self.ensure_alive()
        if not self._use_vm and self._write_fd is None:
            try:
                self._write_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError):
                raise ProcessGone(f"process {self.pid} exited") from None
            except PermissionError:
                self._use_vm = True
        if self._use_vm:
            import ctypes

            iovec, libc = _vm_api()
            buffer = ctypes.create_string_buffer(data, len(data))
            local = iovec(ctypes.cast(buffer, ctypes.c_void_p), len(data))
            remote = iovec(address, len(data))
            result = libc.process_vm_writev(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if result < 0:
                self._raise_vm_error(ctypes.get_errno(), f"cannot write {len(data)} bytes at {address:#x}")
            written = result
        else:
            assert self._write_fd is not None
            try:
                written = os.pwrite(self._write_fd, data, address)
            except OSError as error:
                if error.errno == errno.ESRCH:
                    raise ProcessGone(f"process {self.pid} exited") from None
                raise MemoryFault(error.errno or errno.EFAULT, f"cannot write at {address:#x}") from None
        if written != len(data):
            if not written:
                # As for reads: 0 bytes means the address space we opened is gone.
                self.ensure_alive()
                raise ProcessGone(f"process {self.pid} exited")
            raise MemoryFault(errno.EFAULT, f"short write at {address:#x}: {written} of {len(data)} bytes")

    def close(self) -> None:
        """Release the descriptors (idempotent)."""
        for name in ("_fd", "_write_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PAGE = 4096
"""Bytes of one cached page: the kernel's unit of mapping, so a page reads whole or not at all."""
MAX_PAGES = 4096
"""Pages a :class:`PageCache` keeps (16 MiB) before it starts again empty."""
MAX_PAGED_READ = 4 * PAGE
"""Reads larger than this go to the process directly, uncached."""


class PageCache(_TypedReads):
    """Reads of one process served from whole pages, each read once: many small reads become a few.

    A page copied once goes on being served as it was: the cache is a picture of the target at the
    moment each page was first read, and is only right while nothing in the target writes to
    those pages. The owner knows when that holds (explorer.values: no thread ran Python) and
    calls :meth:`clear` when it may not. A page that cannot be read raises MemoryFault, as the
    small read in it would (mappings and their permissions are whole pages).
    """

    def __init__(self, memory: ProcessMemory) -> None:
        self.memory = memory
        self.pid = memory.pid
        self._pages: dict[int, bytes] = {}
        self.page_reads = 0
        """Pages read from the process so far."""

    def clear(self) -> None:
        """Forget every page (the target may have changed)."""
        self._pages.clear()

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at ``address``, from the cached pages (read on first use); MemoryFault if unreadable."""
        if size <= 0:
            return b""
        if not 0 < address < 1 << 63 or size > MAX_READ:
            raise MemoryFault(errno.EFAULT, f"bad read of {size} bytes at {address:#x}")
        first = address & ~(PAGE - 1)
        offset = address - first
        if offset + size <= PAGE:
            page = self._pages.get(first)
            if page is None:
                page = self._page(first)
            return page[offset : offset + size]
        if size > MAX_PAGED_READ:
            return self.memory.read(address, size)
        pages = []
        for start in range(first, address + size, PAGE):
            page = self._pages.get(start)
            pages.append(page if page is not None else self._page(start))
        return b"".join(pages)[offset : offset + size]

    def _page(self, start: int) -> bytes:
        if len(self._pages) >= MAX_PAGES:
            self._pages.clear()
        page = self._pages[start] = self.memory.read(start, PAGE)
        self.page_reads += 1
        return page

    def ensure_alive(self) -> None:
        """Raise ProcessGone if the process exited (as ProcessMemory.ensure_alive)."""
        self.memory.ensure_alive()
