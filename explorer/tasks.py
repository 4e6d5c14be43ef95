"""Read every asyncio task of a CPython process from outside: names, states, coroutine stacks, await graph.

No code runs in the target, so this works while its event loop is blocked, like the stack reader.
CPython's ``_asyncio`` module publishes where its task objects keep their name, coroutine and
awaiters in an ELF section, ``.AsyncioDebug`` (13 uint64: the layout ``python -m asyncio ps``
reads), and links every live task into a list per thread (the thread that created it) and one
per interpreter (tasks whose thread has exited). The reader

* tells whether the target imported asyncio by looking for the key ``"asyncio"`` in its
  ``sys.modules`` (explorer.values), since a built-in ``_asyncio`` (3.15) has its section there
  from the start;
* takes that table from explorer.asyncio_debug, which finds it (in the mapped ``_asyncio``
  extension, or in the interpreter's own binary when ``_asyncio`` is built in, as in 3.15) and
  validates it as untrusted input;
* walks each list (bounded, loop-checked, each node's ``prev`` checked against the node before
  it, so that a task freed while it is read ends the walk as torn instead of leading into freed
  memory), and decodes each task from one copy of its object, reading the object again after
  following its pointers (a task that ended meanwhile is reported as torn, with nothing of what
  was read through it);
* follows each task's coroutine and the coroutines it awaits (``await`` targets of the same
  coroutine type, the way CPython's own tool does), innermost first, with file, line and the
  qualified function name;
* reads who awaits each task (``awaited_by``: one object, or a set), which gives the await graph:
  TaskGroup children point at the task that owns the group, ``gather`` children at the task
  that awaits the gather.

A few facts the debug tables do not give (the future's state and cancel count, the generator
frame states, where an awaited object sits on a suspended frame's stack) differ between CPython
minors: the reader takes them from the target's layout in the version layer
(:class:`explorer.versions.AsyncioFacts`) and compares no versions itself.

Every pointer, length and count read from the target is bounded; a task or list that changes
while it is read is reported (``torn``), never raised. The errors are
:class:`AsyncioUnavailable` (no asyncio, or a build without the section) and the stack reader's
(:class:`~explorer.errors.ProcessGone`, :class:`~explorer.errors.PermissionDenied`,
:class:`~explorer.errors.TargetNotReady`).
"""

from __future__ import annotations

import struct
from collections import namedtuple

from explorer.asyncio_debug import (
    ASYNCIO_SECTION,
    ASYNCIO_TABLE_SIZE,
    AsyncioOffsets,
    asyncio_imported,
    find_asyncio_section,
    parse_asyncio_offsets,
)
from explorer.errors import PeriscopeError, TargetNotReady
from explorer.linetable import LineTable
from explorer.memory import MemoryFault
from explorer.remote import InterpreterRef, RemoteProcess, ThreadRef
from explorer.stacks import FrameInfo
from explorer.versions import AsyncioFacts
from explorer.values import ValueReader


MAX_TASKS = 1_000_000
"""Tasks followed in one list before it is reported as torn (CPython's own tool stops at 65,536)."""
MAX_CHAIN = 1024
"""Coroutines followed from one task down its awaits."""
MAX_AWAITERS_TABLE = 1 << 16
"""Slots of an ``awaited_by`` set read at most."""
MAX_NAME_CHARS = 1024
NAME_PEEK = 64
"""Bytes of a task name's characters read with its header."""
MAX_STRING_CHARS = 1 << 20
MAX_LINETABLE = 1 << 24
MAX_CODE_UNITS = 1 << 24
MAX_TYPE_NAME = 256
MAX_CACHED_CODES = 100_000
LIST_ATTEMPTS = 4
"""Reads of one task list in a row before its best copy is returned as torn."""
PY_TPFLAGS_LONG_SUBCLASS = 1 << 24
PY_TPFLAGS_UNICODE_SUBCLASS = 1 << 28

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")


# -- records --------------------------------------------------------------------------------------


class AsyncioUnavailable(PeriscopeError):
    """The target's tasks cannot be read: it has not imported asyncio, or its build publishes no task layout.

    ``imported`` says whether asyncio is loaded at all.
    """

    def __init__(self, reason: str, fix: str | None = None, *, imported: bool) -> None:
        super().__init__(reason, fix)
        self.imported = imported
        """Whether the target has imported asyncio (False: it has no tasks to read)."""


class TaskInfo(namedtuple(
    "TaskInfo",
    "id name thread interpreter_id state cancel_requests coroutine_stack awaited_by waiting_on torn",
)):
    """One asyncio task, as read at one moment."""

    __slots__ = ()
    id: int
    """The task object's address: the id ``python -m asyncio ps`` shows."""
    name: str
    """``task.get_name()``: the name given, or ``Task-N``."""
    thread: int | None
    """Native id of the thread whose list holds the task (the one that created it); None: its thread exited."""
    interpreter_id: int
    state: str | None
    """``running`` (its thread's current task), ``pending``, ``cancelling`` (cancel requested, still
    pending), ``cancelled``, ``done``, ``failed`` (finished with an exception); None when this
    CPython's task layout is unknown to periscope."""
    cancel_requests: int | None
    """``task.cancelling()``."""
    coroutine_stack: tuple[FrameInfo, ...]
    """The task's coroutine and what it awaits, innermost first."""
    awaited_by: tuple[int, ...]
    """Ids of the tasks (or other futures) that wait for this one."""
    waiting_on: str | None
    """Type of the future the task waits on (``_asyncio.Future``, ``_GatheringFuture``, ...)."""
    torn: bool
    """Part of the task changed while it was read."""


class LoopThread(namedtuple("LoopThread", "native_id thread_id interpreter_id is_main running_loop current_task")):
    """One thread of the target and its event loop, if one runs in it now."""

    __slots__ = ()
    native_id: int
    thread_id: int
    interpreter_id: int
    is_main: bool
    running_loop: bool
    """An event loop runs in this thread (``asyncio.get_running_loop()`` would return it)."""
    current_task: int | None
    """Id of the task running in this thread now (``asyncio.current_task()``)."""


class TaskSnapshot(namedtuple("TaskSnapshot", "threads tasks torn")):
    """Every task of every interpreter and thread, in the order CPython's lists hold them."""

    __slots__ = ()
    threads: tuple[LoopThread, ...]
    tasks: tuple[TaskInfo, ...]
    torn: bool
    """A task list kept changing while it was read: tasks may be missing."""

    def by_id(self) -> dict[int, TaskInfo]:
        """The tasks keyed by id."""
        return {task.id: task for task in self.tasks}


# -- the reader ------------------------------------------------------------------------------------


class _Torn(Exception):
    """A value read from the target makes no sense (yet): the object is changing or gone."""


class _Code:
    """What the reader keeps of one code object."""

    __slots__ = ("filename", "qualname", "start", "size", "lines")

    def __init__(self, filename: str, qualname: str, start: int, size: int, lines: LineTable) -> None:
        self.filename = filename
        self.qualname = qualname
        self.start = start
        self.size = size
        self.lines = lines


class TaskReader:
    """Reads all asyncio tasks of one target again and again, keeping caches between reads."""

    def __init__(self, process: RemoteProcess) -> None:
        self.process = process
        self.memory = process.memory
        o = process.offsets
        layout = o.layout
        self._known = layout.asyncio
        self._untag = ~layout.stackref_tag_mask
        """Mask that clears a ``_PyStackRef``'s tag bits (harmless on a plain object pointer)."""
        self._owner_generator = layout.owner_generator
        self._compact_extra = layout.compact_unicode_extra
        self._table: AsyncioOffsets | None = None
        self._facts: AsyncioFacts | None = None
        self._ob_type = o.pyobject.ob_type
        self._ob_size = o.pyobject.size
        self._tp_name = o.type_object.tp_name
        self._tp_flags = o.type_object.tp_flags
        self._gen_size = o.gen_object.size
        self._gi_iframe = o.gen_object.gi_iframe
        self._gi_state = o.gen_object.gi_frame_state
        fr = o.interpreter_frame
        self._fr_executable = fr.executable
        self._fr_instr = fr.instr_ptr
        self._fr_stackpointer = fr.stackpointer
        self._fr_owner = fr.owner
        self._gen_span = max(self._gen_size, self._gi_iframe + max(fr.executable, fr.instr_ptr, fr.stackpointer) + 8,
                             self._gi_iframe + fr.owner + 1, self._gi_state + 1)
        co = o.code_object
        self._co = (co.size, co.filename, co.qualname, co.linetable, co.firstlineno, co.co_code_adaptive)
        self._lv_tag = o.long_object.lv_tag
        self._ob_digit = o.long_object.ob_digit
        u = o.unicode_object
        self._str = (u.length, u.state, u.asciiobject_size)
        self._bytes = (o.bytes_object.ob_size, o.bytes_object.ob_sval)
        s = o.set_object
        self._set = (s.size, s.used, s.table, s.mask)
        self._interp_size = o.interpreter_state.size
        self._tstate_size = o.thread_state.size
        self._codes: dict[int, _Code] = {}
        self._code_strings: dict[int, str] = {}
        self._type_names: dict[int, str] = {}
        self._type_flags: dict[int, int] = {}
        self._generations: dict[int, int] = {}
        self.torn_lists = 0
        """Task lists that never read consistently (counted over all reads)."""

    # -- set-up ---------------------------------------------------------------------------------

    def _ensure_table(self) -> AsyncioOffsets:
        if self._table is not None:
            return self._table
        pid = self.process.pid
        imported = self._asyncio_in_sys_modules()
        if imported is False:
            raise AsyncioUnavailable(f"process {pid} has not imported asyncio: it has no tasks", imported=False)
        address = find_asyncio_section(self.process)
        if address is None:
            if imported or asyncio_imported(pid):
                raise AsyncioUnavailable(
                    f"process {pid} imported asyncio, but its _asyncio module has no {ASYNCIO_SECTION.decode()} "
                    "section (a build without it), so its tasks cannot be read from outside",
                    imported=True,
                )
            raise AsyncioUnavailable(f"process {pid} has not imported asyncio: it has no tasks", imported=False)
        try:
            data = self.memory.read(address, ASYNCIO_TABLE_SIZE)
        except MemoryFault:
            raise AsyncioUnavailable(
                f"process {pid}: its {ASYNCIO_SECTION.decode()} section is not readable at {address:#x}", imported=True
            ) from None
        table = parse_asyncio_offsets(data, self._interp_size, self._tstate_size)
        if table is None:
            raise AsyncioUnavailable(
                f"process {pid}: its {ASYNCIO_SECTION.decode()} table is not a task layout periscope understands "
                "(an unusual build)",
                imported=True,
            )
        self._table = table
        facts = self._known
        layout = (table.task_size, table.task_name, table.task_awaited_by, table.task_is_task,
                  table.task_awaited_by_is_set, table.task_coro, table.task_node)
        self._facts = facts if facts.task_layout == layout else None
        return table

    def _asyncio_in_sys_modules(self) -> bool | None:
        """Whether ``"asyncio"`` is a key of the target's ``sys.modules`` (None: it kept changing while read).

        The ``.AsyncioDebug`` section cannot tell: where ``_asyncio`` is built into the interpreter
        (3.15) it is there before any import.
        """
        values = ValueReader(self.process)
        for _ in range(LIST_ATTEMPTS):
            imported = values.module_imported("asyncio")
            if imported is not None:
                return imported
            self.memory.ensure_alive()
        return None

    @property
    def facts(self) -> AsyncioFacts | None:
        """The per-minor facts in use (None: states are not shown), once the table was read."""
        return self._facts

    # -- a read ---------------------------------------------------------------------------------

    def read(self) -> TaskSnapshot:
        """Every task of every interpreter and thread; AsyncioUnavailable when there is no task layout to read."""
        table = self._ensure_table()
        interpreters_threads = self._list_threads()
        self._check_generations({interp.address: interp for interp, _ in interpreters_threads})
        threads: list[LoopThread] = []
        raw_lists: list[tuple[int | None, int, list[tuple[int, bytes]], bool]] = []
        current: dict[int, int] = {}
        for _interp, ref in interpreters_threads:
            try:
                head = self.memory.read(ref.address + table.tstate_running_loop, 8)
                loop = _U64.unpack(head)[0]
                task = self.memory.read_u64(ref.address + table.tstate_running_task) if loop else 0
            except MemoryFault:
                continue  # the thread exited meanwhile
            threads.append(LoopThread(ref.native_id, ref.thread_id, ref.interpreter_id, ref.is_main, bool(loop), task or None))
            if task:
                current[task] = ref.native_id
            entries, torn = self._read_list(ref.address + table.tstate_tasks_head)
            raw_lists.append((ref.native_id, ref.interpreter_id, entries, torn))
        seen_interps: set[int] = set()
        for interp, _ in interpreters_threads:
            if interp.address in seen_interps:
                continue
            seen_interps.add(interp.address)
            entries, torn = self._read_list(interp.address + table.interp_tasks_head)
            raw_lists.append((None, interp.id, entries, torn))
        tasks: list[TaskInfo] = []
        any_torn = False
        listed: set[int] = set()
        for thread, interpreter_id, entries, torn in raw_lists:
            any_torn = any_torn or torn
            for address, raw in entries:
                if address in listed:
                    continue
                listed.add(address)
                tasks.append(self._decode_task(address, raw, thread, interpreter_id, current))
        return TaskSnapshot(tuple(threads), tuple(tasks), any_torn)

    def _list_threads(self) -> list[tuple[InterpreterRef, ThreadRef]]:
        """Every thread state of every interpreter, read again while threads come and go."""
        for _ in range(LIST_ATTEMPTS * 4):
            try:
                return [(interp, ref) for interp in self.process.interpreters() for ref in self.process.threads(interp)]
            except MemoryFault:
                self.memory.ensure_alive()  # a thread state freed while the list was followed
        raise TargetNotReady(f"process {self.process.pid}: its thread list kept changing while being read", "try again")

    def _check_generations(self, interpreters: dict[int, InterpreterRef]) -> None:
        """Drop the code cache when a code object was destroyed in the target (its address may be reused)."""
        current = {address: self.process.code_object_generation(interp) for address, interp in interpreters.items()}
        if current != self._generations or len(self._codes) > MAX_CACHED_CODES:
            self._codes.clear()
            self._code_strings.clear()
            self._generations = current

    def _read_list(self, head: int) -> tuple[list[tuple[int, bytes]], bool]:
        """The tasks of one list as (address, copy of the task object); torn when it never read consistently."""
        best: list[tuple[int, bytes]] = []
        for _ in range(LIST_ATTEMPTS):
            entries, torn = self._walk_list(head)
            if not torn:
                return entries, False
            if len(entries) >= len(best):
                best = entries
        self.torn_lists += 1
        return best, True

    def _walk_list(self, head: int) -> tuple[list[tuple[int, bytes]], bool]:
        table = self._table
        assert table is not None
        node_offset, size = table.task_node, table.task_size
        read = self.memory.read
        entries: list[tuple[int, bytes]] = []
        seen: set[int] = set()
        try:
            node = _U64.unpack(read(head, 8))[0]
        except MemoryFault:
            return entries, True
        previous = head
        while node != head:
            if not node or node in seen or len(entries) >= MAX_TASKS or node < node_offset:
                return entries, True
            seen.add(node)
            address = node - node_offset
            try:
                raw = read(address, size)
            except MemoryFault:
                return entries, True
            next_node, prev_node = struct.unpack_from("<QQ", raw, node_offset)
            if prev_node != previous:
                return entries, True  # relinked or freed while we walked
            entries.append((address, raw))
            previous, node = node, next_node
        return entries, False

    # -- one task -------------------------------------------------------------------------------

    def _decode_task(self, address: int, raw: bytes, thread: int | None, interpreter_id: int,
                     current: dict[int, int]) -> TaskInfo:
        table = self._table
        assert table is not None
        torn = False
        name = "?"
        try:
            name = self._task_name(_U64.unpack_from(raw, table.task_name)[0] & self._untag)
        except (MemoryFault, _Torn, UnicodeDecodeError):
            torn = True
        frames: list[FrameInfo] = []
        coro = _U64.unpack_from(raw, table.task_coro)[0] & self._untag
        if coro:
            try:
                self._coro_chain(coro, frames)
            except (MemoryFault, _Torn, UnicodeDecodeError, ValueError):
                torn = True
        frames.reverse()
        awaited_by: tuple[int, ...] = ()
        pointer = _U64.unpack_from(raw, table.task_awaited_by)[0] & self._untag
        if pointer:
            if raw[table.task_awaited_by_is_set]:
                try:
                    awaited_by = self._set_members(pointer)
                except (MemoryFault, _Torn):
                    torn = True
            else:
                awaited_by = (pointer,)
        state: str | None = None
        cancels: int | None = None
        waiting_on: str | None = None
        facts = self._facts
        if facts is not None:
            fut_state = _I32.unpack_from(raw, facts.fut_state)[0]
            cancels = _I32.unpack_from(raw, facts.num_cancels)[0]
            if address in current:
                state = "running"
            elif fut_state == 0:
                state = "cancelling" if cancels > 0 else "pending"
            elif fut_state == 1:
                state = "cancelled"
            elif fut_state == 2:
                state = "failed" if _U64.unpack_from(raw, facts.exception)[0] else "done"
            else:
                torn = True
            waiter = _U64.unpack_from(raw, facts.fut_waiter)[0]
            if waiter:
                try:
                    waiting_on = self._type_name(self.memory.read_u64(waiter + self._ob_type))
                except (MemoryFault, _Torn, UnicodeDecodeError):
                    torn = True
        elif address in current:
            state = "running"
        if not torn and not self._unchanged(address, raw):
            # Ended (and perhaps reused) after the list was walked: what was read through its
            # pointers may come from freed memory, so none of it is shown.
            return TaskInfo(address, "?", thread, interpreter_id, None, None, (), (), None, True)
        return TaskInfo(address, name, thread, interpreter_id, state, cancels, tuple(frames), awaited_by, waiting_on, torn)

    def _unchanged(self, address: int, raw: bytes) -> bool:
        """The task at ``address`` still has the type, name, coroutine and awaiters of ``raw`` and is still linked.

        A task clears those fields and leaves its list when it is freed, so a task that ended
        while it was decoded fails this; one reused for a new task has a new name.
        """
        table = self._table
        assert table is not None
        try:
            now = self.memory.read(address, table.task_size)
        except MemoryFault:
            return False
        for field in (self._ob_type, table.task_name, table.task_coro, table.task_awaited_by):
            if now[field : field + 8] != raw[field : field + 8]:
                return False
        next_node, prev_node = struct.unpack_from("<QQ", now, table.task_node)
        return bool(next_node and prev_node)

    def _task_name(self, address: int) -> str:
        """``Task-N`` for a lazily numbered task, else its name; usually one read (names are short)."""
        if not address:
            raise _Torn("task without a name")
        length_at, state_at, header = self._str
        try:
            raw = self.memory.read(address, header + NAME_PEEK)
        except MemoryFault:  # the object ends right before an unmapped page: read it piece by piece
            raw = b""
        type_address = _U64.unpack_from(raw, self._ob_type)[0] if raw else self.memory.read_u64(address + self._ob_type)
        flags = self._flags(type_address)
        if flags & PY_TPFLAGS_LONG_SUBCLASS:
            number = self._read_int(address)
            if number <= 0:  # CPython numbers tasks from 1: this one is still being set up
                raise _Torn("a task whose name is not set yet")
            return f"Task-{number}"
        if not flags & PY_TPFLAGS_UNICODE_SUBCLASS:
            raise _Torn("task name neither int nor str")
        if raw:
            length = _I64.unpack_from(raw, length_at)[0]
            state = _U32.unpack_from(raw, state_at)[0]
            if 0 <= length <= NAME_PEEK and state & 0x60 == 0x60:  # compact ASCII, wholly in the copy
                return raw[header : header + length].decode("ascii")
        return self._read_str(address, MAX_NAME_CHARS)

    def _coro_chain(self, coro: int, frames: list[FrameInfo]) -> None:
        """Append the frames of ``coro`` and of the coroutines it awaits, outermost first."""
        facts = self._facts
        read = self.memory.read
        coro_type = 0
        seen: set[int] = set()
        while coro and len(frames) < MAX_CHAIN and coro not in seen:
            seen.add(coro)
            raw = read(coro, self._gen_span)
            type_address = _U64.unpack_from(raw, self._ob_type)[0]
            if coro_type and type_address != coro_type:
                return  # awaiting something else than a coroutine of the same kind (a future's iterator)
            if not coro_type:
                if self._type_name(type_address) not in ("coroutine", "generator"):
                    return  # a coroutine implemented in C or Cython: it has no interpreter frame to read
                coro_type = type_address
            state = struct.unpack_from("<b", raw, self._gi_state)[0]
            if facts is not None and state == facts.frame_cleared:
                return
            frame = self._gi_iframe
            executable = _U64.unpack_from(raw, frame + self._fr_executable)[0] & self._untag
            if not executable:
                return
            code = self._code(executable)
            offset = _U64.unpack_from(raw, frame + self._fr_instr)[0] - code.start
            line = code.lines.line_at(offset) if 0 <= offset < code.size else None
            frames.append(FrameInfo(code.filename, code.qualname, line))
            if facts is None or state != facts.frame_yield_from:
                return
            if raw[frame + self._fr_owner] != self._owner_generator:
                raise _Torn("a suspended coroutine that does not own its frame")
            stackpointer = _U64.unpack_from(raw, frame + self._fr_stackpointer)[0] & self._untag
            if not stackpointer:
                return
            coro = self.memory.read_u64(stackpointer - facts.await_slot) & self._untag

    def _set_members(self, address: int) -> tuple[int, ...]:
        size, used_at, table_at, mask_at = self._set
        raw = self.memory.read(address, size)
        used = _I64.unpack_from(raw, used_at)[0]
        mask = _I64.unpack_from(raw, mask_at)[0]
        table = _U64.unpack_from(raw, table_at)[0]
        slots = mask + 1
        if not 0 < slots <= MAX_AWAITERS_TABLE or slots & mask or not 0 <= used <= slots or not table:
            raise _Torn("awaited_by is not a set")
        data = self.memory.read(table, 16 * slots)
        members = []
        for index in range(slots):
            key, key_hash = struct.unpack_from("<Qq", data, 16 * index)
            if key and key_hash != -1:  # -1: the dummy left where a member was discarded
                members.append(key & self._untag)
        return tuple(members)

    # -- objects --------------------------------------------------------------------------------

    def _flags(self, type_address: int) -> int:
        flags = self._type_flags.get(type_address)
        if flags is None:
            flags = self.memory.read_u64(type_address + self._tp_flags)
            if len(self._type_flags) > 10_000:
                self._type_flags.clear()
            self._type_flags[type_address] = flags
        return flags

    def _type_name(self, type_address: int) -> str:
        """``tp_name`` of a type (``_asyncio.Future``), read as a bounded C string."""
        name = self._type_names.get(type_address)
        if name is None:
            pointer = self.memory.read_u64(type_address + self._tp_name)
            data = self.memory.read(pointer, MAX_TYPE_NAME)
            end = data.find(b"\0")
            name = data[: end if end >= 0 else MAX_TYPE_NAME].decode("utf-8", "backslashreplace")
            if len(self._type_names) > 10_000:
                self._type_names.clear()
            self._type_names[type_address] = name
        return name

    def _read_int(self, address: int) -> int:
        tag = self.memory.read_u64(address + self._lv_tag)
        digits = tag >> 3
        if digits > 4:
            raise _Torn("task number too large")
        value = 0
        if digits:
            data = self.memory.read(address + self._ob_digit, 4 * digits)
            for index in range(digits):
                value |= _U32.unpack_from(data, 4 * index)[0] << (30 * index)
        return -value if tag & 3 == 2 else value

    def _read_str(self, address: int, limit: int) -> str:
        """A compact str of the target, cut to ``limit`` characters."""
        length_at, state_at, header = self._str
        raw = self.memory.read(address, header)
        length = _I64.unpack_from(raw, length_at)[0]
        state = _U32.unpack_from(raw, state_at)[0]
        kind, compact, ascii_only = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not 0 <= length <= MAX_STRING_CHARS or not compact or kind not in (1, 2, 4):
            raise _Torn(f"not a compact str at {address:#x}")
        count = min(length, limit)
        if ascii_only:
            return self.memory.read(address + header, count).decode("ascii")
        data = self.memory.read(address + header + self._compact_extra, count * kind)
        return data.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind], "surrogatepass")

    def _code(self, address: int) -> _Code:
        code = self._codes.get(address)
        if code is not None:
            return code
        size, filename_at, qualname_at, linetable_at, firstlineno_at, bytecode_at = self._co
        raw = self.memory.read(address, size)
        if self._type_name(_U64.unpack_from(raw, self._ob_type)[0]) != "code":
            raise _Torn(f"the executable at {address:#x} is not a code object")
        units = _I64.unpack_from(raw, self._ob_size)[0]
        if not 0 < units <= MAX_CODE_UNITS:
            raise _Torn(f"code object at {address:#x} claims {units} code units")
        table_address = _U64.unpack_from(raw, linetable_at)[0]
        length_at, data_at = self._bytes
        table_size = _I64.unpack_from(self.memory.read(table_address + length_at, 8))[0]
        if not 0 <= table_size <= MAX_LINETABLE:
            raise _Torn("line table size")
        code = _Code(
            filename=self._code_string(_U64.unpack_from(raw, filename_at)[0]),
            qualname=self._code_string(_U64.unpack_from(raw, qualname_at)[0]),
            start=address + bytecode_at,
            size=units * 2,
            lines=LineTable(self.memory.read(table_address + data_at, table_size),
                            _I32.unpack_from(raw, firstlineno_at)[0]),
        )
        self._codes[address] = code
        return code

    def _code_string(self, address: int) -> str:
        text = self._code_strings.get(address)
        if text is None:
            text = self._code_strings[address] = self._read_str(address, MAX_STRING_CHARS)
        return text


def read_tasks(pid: int) -> tuple[str, TaskSnapshot]:
    """Open ``pid``, read its tasks once and close: (the target's Python version, the snapshot)."""
    process = RemoteProcess.open(pid)
    try:
        return process.version, TaskReader(process).read()
    finally:
        process.close()


__all__ = [
    "AsyncioUnavailable",
    "LoopThread",
    "TaskInfo",
    "TaskReader",
    "TaskSnapshot",
    "read_tasks",
]
