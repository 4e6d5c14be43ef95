"""Read every thread's Python stack from outside a CPython 3.14+ process; no code runs in the target.

The reader follows each thread state's frame chain (``current_frame`` -> ``previous`` ...) the way
``sys._current_frames()`` sees it, including the frames below *interpreter entry frames* (where C
called back into Python: thread bootstrap, ``Context.run``, ``sorted(key=...)``), which CPython
3.14's own ``_remote_debugging.RemoteUnwinder`` stops at.

It is built to be polled while the target runs at full speed:

* each thread's data-stack chunks (``tstate.datastack_chunk``) are copied in one read each and
  frames are resolved from the local copy; only the frames that live elsewhere (generators and
  coroutines in their objects, interpreter entry frames on the C stack) are read one by one,
  right after the copy for those the thread's last walks met (an event loop's coroutines take
  turns within microseconds);
* code objects (file name, qualified name, decoded line table, bytecode bounds) are cached by
  address and dropped when an interpreter's ``code_object_generation`` changes (it goes up when
  a code object is destroyed, the only way an address could come to mean another code object);
* every frame is validated (owner, executable tag and type, ``instr_ptr`` inside the bytecode,
  no loops, depth bound, and the chain must end at the root of the thread's data stack, where
  its first frame lives). Frames that returned between reading ``current_frame`` and copying
  the data stack (their executable is already NULL) are skipped: the chain below them is the
  stack as copied. A thread whose stack is otherwise inconsistent is read again a few times; if
  it never reads clean, its best frames come back with ``torn=True``. Reading never raises for a
  race: the errors are :class:`~explorer.errors.ProcessGone` (the process exited),
  :class:`~explorer.errors.PermissionDenied`, and :class:`~explorer.errors.TargetNotReady` for an
  interpreter that is still starting or already gone while the process lives.

Thread names are not in the thread state: they come from the target's own ``threading._active``
(explorer.threadnames), read from memory like everything else, so they are whole (``/proc``'s
``comm`` cuts them at 15 bytes) and the main thread has its name too. A thread state that is not
bound to an OS thread yet or any more (native id 0, no frames: a thread being created or torn
down) is left out.
"""

from __future__ import annotations

import struct
import time
from collections import namedtuple

from explorer.errors import TargetNotReady
from explorer.linetable import LineTable
from explorer.memory import MemoryFault
from explorer.remote import InterpreterRef, RemoteProcess, ThreadRef

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from explorer.values import ValueReader

MAX_DEPTH = 4096
"""Frames followed per thread before the stack is reported as truncated."""
ATTEMPTS = 8
"""Reads of one thread before a stack that keeps changing is returned as torn."""
LIST_ATTEMPTS = 8
"""Reads of the interpreter and thread lists in a row before pausing between reads."""
LIST_PATIENCE = 0.5
"""Seconds of thread lists that changed while being read before TargetNotReady."""
NOT_READY_WAIT = 0.05
"""Seconds to wait for an interpreter that is starting up or shutting down before reporting it."""
MAX_CHUNK = 64 * 1024 * 1024
MAX_CHUNKS = 1024
MAX_STRING_CHARS = 1 << 20
MAX_LINETABLE = 1 << 24
MAX_CODE_UNITS = 1 << 24
MAX_CACHED_CODES = 100_000
MAX_CACHED_NAMES = 10_000
MAX_PREFETCH = 32
NAME_TTL = 1.0
"""Seconds thread names are reused before threading._active is read again (threads may rename
themselves); a thread not seen at the last read makes it read at once."""

# The frame owner values (enum _frameowner), the RESUME opcodes and the compact str header
# differ between minors: they come from the target's explorer.versions.Layout.
# _PyStackRef tag bits of the GIL build: 0 and 1 (deferred) carry a pointer; 2 is invalid, 3 an int.

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_CHUNK_HEADER = struct.Struct("<QQ")  # previous, size (then top, then the frames)


# Immutable records as namedtuple subclasses, not dataclasses: see explorer.elf (start-up time).
# Defaults are given to namedtuple(); the class body only documents the fields.


class FrameInfo(namedtuple("FrameInfo", "filename function lineno is_entry", defaults=(False,))):
    """One Python frame: where the thread is in one function."""

    __slots__ = ()
    filename: str
    function: str
    """The qualified name (``Class.method``, ``outer.<locals>.inner``)."""
    lineno: int | None
    """The line of the instruction running (for callers: the call); None for code without a location."""
    is_entry: bool  # default False
    """C code called this frame (an interpreter entry frame sits directly below it)."""


class ThreadStack(
    namedtuple(
        "ThreadStack",
        "native_id thread_id name holds_gil is_main interpreter_id frames attached torn truncated frame_refs",
        defaults=(False, False, ()),
    )
):
    """One thread state of the target and its Python frames, innermost first."""

    __slots__ = ()
    native_id: int
    """The kernel thread id in this (the reader's) pid namespace."""
    thread_id: int
    """``threading.get_ident()`` of the thread (its pthread_t)."""
    name: str | None
    """The name in the target's ``threading`` module; None for a thread that ``threading`` does not list."""
    holds_gil: bool
    is_main: bool
    """The main thread of the main interpreter."""
    interpreter_id: int
    """0 for the main interpreter; subinterpreters have other ids."""
    frames: tuple[FrameInfo, ...]
    attached: bool
    """The thread is attached to its interpreter (running Python, or about to)."""
    torn: bool  # default False
    """The stack kept changing while it was read: frames may be incomplete."""
    truncated: bool  # default False
    """The stack is deeper than MAX_DEPTH frames; the outermost ones are missing."""
    frame_refs: tuple[tuple[int, int], ...]  # default ()
    """(frame address, code object address) of each of ``frames``, for reading locals (explorer.values)."""

    @property
    def in_subinterpreter(self) -> bool:
        """Whether this thread state belongs to a subinterpreter."""
        return self.interpreter_id != 0


class _Torn(Exception):
    """A value read from the target does not make sense (yet): the thread's stack is changing."""


class _Code:
    """What the reader keeps of one code object, and the FrameInfo of each offset seen."""

    __slots__ = ("filename", "qualname", "start", "size", "first_traceable", "lines", "frames")

    def __init__(
        self, filename: str, qualname: str, start: int, size: int, first_traceable: int, lines: LineTable
    ) -> None:
        self.filename = filename
        self.qualname = qualname
        self.start = start
        self.size = size
        self.first_traceable = first_traceable
        """Byte offset of the first RESUME: a frame before it is incomplete (CPython hides it)."""
        self.lines = lines
        self.frames: dict[int, FrameInfo] = {}

    def frame(self, offset: int) -> FrameInfo:
        frame = self.frames[offset] = FrameInfo(self.filename, self.qualname, self.lines.line_at(offset))
        return frame


class _Walk:
    """The result of one attempt at a thread's stack."""

    __slots__ = ("frames", "refs", "torn", "truncated", "faulted", "reason")

    def __init__(self) -> None:
        self.frames: list[FrameInfo] = []
        self.refs: list[tuple[int, int]] = []
        self.torn = False
        self.truncated = False
        self.faulted = False
        self.reason = ""
        """Why the attempt is torn (for diagnostics)."""

    def tear(self, reason: str) -> None:
        self.torn = True
        self.reason = self.reason or reason


def _frame_struct(fields: dict[str, tuple[int, str]]) -> tuple[struct.Struct, dict[str, int]]:
    """One Struct that unpacks the named fields of a frame, and each field's index in its result.

    ``fields`` maps a name to (offset, struct code); offsets come from the target's table.
    """
    layout = sorted(fields.items(), key=lambda item: item[1][0])
    fmt, position, index = "<", 0, {}
    for number, (name, (offset, code)) in enumerate(layout):
        if offset < position:
            raise ValueError(f"frame field {name} at {offset:#x} overlaps the previous field")
        fmt += f"{offset - position}x{code}" if offset > position else code
        position = offset + struct.calcsize("<" + code)
        index[name] = number
    return struct.Struct(fmt), index


class StackReader:
    """Reads all threads' stacks of one target again and again, keeping caches between samples."""

    def __init__(self, process: RemoteProcess, values: ValueReader | None = None) -> None:
        self.process = process
        self.memory = process.memory
        self._values = values
        """The value reader thread names are read with (its caches shared with the caller's reads
        of locals); None: a new one for each read of the names."""
        o = process.offsets
        ts, fr, co = o.thread_state, o.interpreter_frame, o.code_object
        # Plain ints: attribute access on the offsets table is too slow for the frame loop.
        self._ts_interp = ts.interp
        self._ts_current_frame = ts.current_frame
        self._ts_chunk = ts.datastack_chunk
        self._ts_low = min(ts.interp, ts.current_frame, ts.datastack_chunk)
        self._ts_span = max(ts.interp, ts.current_frame, ts.datastack_chunk) + 8 - self._ts_low
        # One unpack per frame: (executable, previous, instr_ptr, owner) in the table's order.
        self._frame, index = _frame_struct(
            {"executable": (fr.executable, "Q"), "previous": (fr.previous, "Q"), "instr_ptr": (fr.instr_ptr, "Q"), "owner": (fr.owner, "B")}
        )
        self._fr_index = (index["executable"], index["previous"], index["instr_ptr"], index["owner"])
        self._fr_span = self._frame.size
        self._ob_type = o.pyobject.ob_type
        self._ob_size = o.pyobject.size  # PyVarObject.ob_size follows the PyObject header
        self._co_size = co.size
        self._co_filename = co.filename
        self._co_qualname = co.qualname
        self._co_linetable = co.linetable
        self._co_firstlineno = co.firstlineno
        self._co_code = co.co_code_adaptive
        self._tp_name = o.type_object.tp_name
        self._str_length = o.unicode_object.length
        self._str_state = o.unicode_object.state
        self._str_header = o.unicode_object.asciiobject_size
        layout = o.layout
        self._owner_generator = layout.owner_generator
        self._owner_interpreter = layout.owner_interpreter
        self._owner_max = layout.owner_max
        self._resume_opcodes = layout.resume_opcodes
        # Compact non-ASCII strings have utf8_length and utf8 (two more words) after PyASCIIObject.
        self._compact_extra = layout.compact_unicode_extra
        # _PyStackRef tag bits: which low bits are a tag, and which tags carry a pointer.
        self._tag_mask = layout.stackref_tag_mask
        self._pointer_tags = layout.stackref_pointer_tags
        # The root chunk skips data[0] (so that popping the last frame never frees it): a
        # thread's first frame sits after the three header words and one slot.
        self._root_frame_offset = layout.root_frame_offset
        self._chunk_read = layout.data_stack_chunk_size
        self._bytes_size = o.bytes_object.ob_size
        self._bytes_data = o.bytes_object.ob_sval
        self._codes: dict[int, _Code] = {}
        self._strings: dict[int, str] = {}
        self._type_is_code: dict[int, bool] = {}
        self._generations: dict[int, int] = {}
        self._names: dict[int, str] = {}
        self._names_for: set[int] = set()
        self._names_read = -NAME_TTL
        # Per thread state: the frames outside the data stack that its last walk read one by one.
        self._outside: dict[int, list[int]] = {}
        self.samples = 0
        """Calls of :meth:`read` so far."""
        self.retries = 0
        """Thread reads repeated because the stack changed under the reader."""
        self.torn_threads = 0
        """Threads returned with ``torn=True``."""
        self.cache_resets = 0
        """Times the code cache was dropped because a code object was destroyed in the target."""

    # -- samples ---------------------------------------------------------------------------

    def read(self) -> list[ThreadStack]:
        """Every thread of every interpreter, the main interpreter's main thread first.

        Raises ProcessGone, PermissionDenied, or TargetNotReady while the interpreter is not
        (or no longer) initialised; races with the running target never raise.
        """
        self.samples += 1
        listing = self._list_threads()
        stacks: list[ThreadStack] = []
        for interp, ref in listing:
            stack = self._read_thread(interp, ref)
            if stack is not None and (stack.frames or ref.target_native_id):
                stacks.append(stack)
        # Names after the stacks: reading them takes a while, and the stacks come first.
        names = self._threading_names({stack.thread_id for stack in stacks})
        stacks = [stack._replace(name=names.get(stack.thread_id)) if stack.interpreter_id == 0 else stack for stack in stacks]
        stacks.sort(key=lambda stack: (stack.interpreter_id != 0, not stack.is_main))
        return stacks

    def list_threads(self) -> list[tuple[InterpreterRef, ThreadRef]]:
        """Every thread state of every interpreter, without their stacks (the cheap first step of :meth:`read`).

        Also drops the code cache when a code object was destroyed. A sampler lists the threads
        now and then and reads single stacks with :meth:`read_thread` in between.
        """
        return self._list_threads()

    def check_code_cache(self, interpreters: list[InterpreterRef]) -> None:
        """Drop the code cache if a code object of these interpreters was destroyed since the last check."""
        self._check_generations(interpreters)

    def read_thread(self, interp: InterpreterRef, ref: ThreadRef) -> ThreadStack | None:
        """The stack of one thread of :meth:`list_threads` (retried while torn); None when that thread is gone."""
        return self._read_thread(interp, ref)

    def _list_threads(self) -> list[tuple[InterpreterRef, ThreadRef]]:
        start = time.monotonic()
        deadline = start + NOT_READY_WAIT
        attempt = 0
        while True:
            attempt += 1
            try:
                interpreters = self.process.interpreters()
                self._check_generations(interpreters)
                return [(interp, ref) for interp in interpreters for ref in self.process.threads(interp)]
            except MemoryFault:
                # A thread state or interpreter freed while we followed the list: read it again,
                # at once a few times, then with short pauses (a loaded machine may have
                # preempted us in the middle of every walk so far).
                self.memory.ensure_alive()
                if time.monotonic() - start > LIST_PATIENCE:
                    raise TargetNotReady(
                        f"process {self.process.pid}: its thread list kept changing while being read", "try again"
                    ) from None
                if attempt >= LIST_ATTEMPTS:
                    time.sleep(0.001)
            except TargetNotReady:
                # Starting up or finishing: an exiting process must read as gone, not as not-ready.
                self.memory.ensure_alive()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)

    def _check_generations(self, interpreters: list[InterpreterRef]) -> None:
        current = {interp.address: self.process.code_object_generation(interp) for interp in interpreters}
        if current != self._generations:
            if self._codes:
                self.cache_resets += 1
            self._codes.clear()
            self._strings.clear()
            self._generations = current
        elif len(self._codes) > MAX_CACHED_CODES:
            self._codes.clear()
            self._strings.clear()

    def _threading_names(self, idents: set[int]) -> dict[int, str]:
        """{ident: name} from the target's ``threading`` module (at most NAME_TTL old, unless a
        new thread appeared); empty when it cannot be read."""
        from explorer.threadnames import thread_names
        from explorer.values import Unsupported, ValueReader

        now = time.monotonic()
        if now - self._names_read < NAME_TTL and idents <= self._names_for:
            return self._names
        try:
            self._names = thread_names(self._values or ValueReader(self.process))
        except (Unsupported, MemoryFault, TargetNotReady):
            self._names = {}
        self._names_for, self._names_read = idents, now
        return self._names

    def _read_thread(self, interp: InterpreterRef, ref: ThreadRef) -> ThreadStack | None:
        best: _Walk | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
            walk = self._walk(interp.address, ref.address)
            if walk is None:
                return None  # the thread state was freed and reused: the thread is gone
            if not walk.torn:
                best = walk
                break
            if best is None or len(walk.frames) >= len(best.frames):
                best = walk
        assert best is not None
        if best.torn:
            self.torn_threads += 1
            if best.faulted:
                self.memory.ensure_alive()
        host_pid = self.process.pid
        is_main = ref.is_main or (interp.is_main and ref.native_id == host_pid)
        return ThreadStack(
            native_id=ref.native_id,
            thread_id=ref.thread_id,
            name=None,
            holds_gil=ref.holds_gil,
            is_main=is_main,
            interpreter_id=ref.interpreter_id,
            frames=tuple(best.frames),
            attached=ref.attached,
            torn=best.torn,
            truncated=best.truncated,
            frame_refs=tuple(best.refs),
        )

    # -- one thread ------------------------------------------------------------------------

    def _walk(self, interp_address: int, tstate: int) -> _Walk | None:
        """One attempt at a thread's frames; None when the thread state is no longer this interpreter's."""
        walk = _Walk()
        low = self._ts_low
        try:
            raw = self.memory.read(tstate + low, self._ts_span)
        except MemoryFault:
            walk.tear("thread state unreadable")
            walk.faulted = True
            return walk
        if _U64.unpack_from(raw, self._ts_interp - low)[0] != interp_address:
            return None
        address = _U64.unpack_from(raw, self._ts_current_frame - low)[0]
        if not address:
            return walk
        try:
            chunks = self._read_chunks(_U64.unpack_from(raw, self._ts_chunk - low)[0], address)
        except (MemoryFault, _Torn) as error:
            chunks = []
            walk.tear(f"data stack: {error}")
            walk.faulted = isinstance(error, MemoryFault)
        # Read the frames that lived outside the data stack last time (coroutines, entry frames)
        # right after the copy, not when the walk reaches them: a coroutine that yields in between
        # would cut the chain short.
        span = self._fr_span
        read = self.memory.read
        prefetched: dict[int, bytes] = {}
        for outside_address in self._outside.get(tstate, ()):
            try:
                prefetched[outside_address] = read(outside_address, span)
            except MemoryFault:
                pass
        # Pass 1: follow the chain as fast as possible, so that frames outside the copy are read
        # as close as possible to the moment of the copy.
        unpack = self._frame.unpack_from
        i_executable, i_previous, i_instr, i_owner = self._fr_index
        outside: list[int] = []
        chain: list[tuple[int, tuple[int, ...]]] = []
        seen: set[int] = set()
        try:
            while address:
                if address in seen:
                    walk.tear("loop")  # frames relinked while we copied them
                    break
                if len(seen) >= MAX_DEPTH:
                    walk.truncated = True
                    break
                seen.add(address)
                for start, end, data in chunks:
                    if start <= address and address + span <= end:
                        fields = unpack(data, address - start)
                        break
                else:  # a generator, coroutine or entry frame, or a chunk we could not copy
                    outside.append(address)
                    data = prefetched.get(address)
                    fields = unpack(data if data is not None else read(address, span))
                chain.append((address, fields))
                address = fields[i_previous]
        except MemoryFault as error:
            walk.tear(f"MemoryFault: {error}")
            walk.faulted = True
        # Pass 2: check each frame and resolve its code object (stable: cached or read now).
        frames = walk.frames
        codes = self._codes
        last: tuple[_Code, int] | None = None  # the code and offset of frames[-1]
        bottom = 0  # the address of the outermost Python frame
        owner_interpreter, owner_max, owner_generator = self._owner_interpreter, self._owner_max, self._owner_generator
        tag_mask, pointer_tags = self._tag_mask, self._pointer_tags
        try:
            for frame_address, fields in chain:
                owner = fields[i_owner]
                if owner >= owner_interpreter:
                    if owner > owner_max:
                        walk.tear(f"owner {owner}")
                    elif last is not None:
                        frames[-1] = self._entry_frame(*last)  # C called the frame above
                        last = None
                    continue
                executable = fields[i_executable]
                if executable & tag_mask not in pointer_tags or executable < 4096:
                    # NULL executables before any live frame: those frames returned between our
                    # read of current_frame and the copy of the data stack, and the chain below
                    # them is the stack as copied. Anywhere else the chain is inconsistent.
                    if frames or walk.torn or executable & ~tag_mask:
                        walk.tear(f"executable {executable:#x}")
                    last = None
                    continue
                executable &= ~tag_mask
                code = codes.get(executable)
                if code is None:
                    code = self._load_code(executable)
                offset = fields[i_instr] - code.start
                if not 0 <= offset < code.size:
                    walk.tear(f"instr_ptr outside {code.qualname} ({offset} of {code.size})")
                    last = None
                    continue
                if offset < code.first_traceable and owner != owner_generator:
                    # Incomplete: the shim frame of a class's __init__ call (code "__init__"), or a
                    # frame still in its prologue. sys._current_frames() skips these too.
                    last = None
                    continue
                frame = code.frames.get(offset)
                frames.append(frame if frame is not None else code.frame(offset))
                walk.refs.append((frame_address, executable))
                last = (code, offset)
                bottom = frame_address
        except (MemoryFault, _Torn, ValueError, UnicodeDecodeError) as error:
            walk.tear(f"{type(error).__name__}: {error}")
            walk.faulted = walk.faulted or isinstance(error, MemoryFault)
        if len(self._outside) > MAX_CACHED_NAMES:
            self._outside.clear()
        # Remember the last walks' outside frames (a loop's coroutines take turns on one thread).
        remembered = self._outside.get(tstate, [])
        self._outside[tstate] = list(dict.fromkeys(outside + remembered))[:MAX_PREFETCH]
        if chain and not walk.torn and not walk.truncated:
            # The thread's outermost live frame is the first one pushed on its data stack: slot 1
            # of the root chunk. A chain that ends elsewhere (or has no live frame at all) went
            # through a frame that changed after the copy: a coroutine that yielded, an entry
            # frame on the C stack that was popped and reused.
            root = chunks[-1][0] if chunks else 0
            if not root or bottom != root + self._root_frame_offset:
                walk.tear(f"chain ends at {bottom:#x}, not at the root of the data stack {root:#x}")
        return walk

    @staticmethod
    def _entry_frame(code: _Code, offset: int) -> FrameInfo:
        """The FrameInfo of a frame that C code called (cached under the offset's complement)."""
        frame = code.frames.get(~offset)
        if frame is None:
            frame = code.frames[~offset] = FrameInfo(code.filename, code.qualname, code.lines.line_at(offset), True)
        return frame

    def _read_chunks(self, address: int, current_frame: int) -> list[tuple[int, int, bytes]]:
        """Copy the thread's data-stack chunks: [(start, end of the copy, bytes)], newest first.

        Of the newest chunk only the part up to the innermost frame is copied when that frame is
        in it: a smaller copy is a quicker one, and a more consistent one.
        """
        chunks: list[tuple[int, int, bytes]] = []
        read = self.memory.read
        span = self._fr_span
        chunk_read = self._chunk_read
        while address:
            if len(chunks) >= MAX_CHUNKS:
                raise _Torn("too many data-stack chunks")
            used = current_frame + span - address
            partial = not chunks and _CHUNK_HEADER.size <= used <= chunk_read
            data = read(address, used if partial else chunk_read)
            previous, size = _CHUNK_HEADER.unpack_from(data)
            if not chunk_read <= size <= MAX_CHUNK:
                raise _Torn(f"data-stack chunk of {size} bytes")
            if size > chunk_read and not partial:
                data += read(address + chunk_read, size - chunk_read)
            chunks.append((address, address + len(data), data))
            address = previous
        return chunks

    # -- code objects and strings ----------------------------------------------------------

    def _load_code(self, address: int) -> _Code:
        """Read, check and cache the code object at ``address``; _Torn if it is not one."""
        raw = self.memory.read(address, self._co_size)
        if not self._is_code_type(_U64.unpack_from(raw, self._ob_type)[0]):
            raise _Torn(f"the executable at {address:#x} is not a code object")
        units = _I64.unpack_from(raw, self._ob_size)[0]
        if not 0 < units <= MAX_CODE_UNITS:
            raise _Torn(f"code object at {address:#x} claims {units} code units")
        firstlineno = _I32.unpack_from(raw, self._co_firstlineno)[0]
        bytecode = self.memory.read(address + self._co_code, units * 2)
        code = _Code(
            filename=self._read_str(_U64.unpack_from(raw, self._co_filename)[0]),
            qualname=self._read_str(_U64.unpack_from(raw, self._co_qualname)[0]),
            start=address + self._co_code,
            size=units * 2,
            first_traceable=_first_traceable(bytecode, self._resume_opcodes),
            lines=LineTable(self._read_bytes(_U64.unpack_from(raw, self._co_linetable)[0]), firstlineno),
        )
        self._codes[address] = code
        return code

    def _is_code_type(self, type_address: int) -> bool:
        verdict = self._type_is_code.get(type_address)
        if verdict is None:
            name_address = self.memory.read_u64(type_address + self._tp_name)
            verdict = self.memory.read(name_address, 5) == b"code\0"
            self._type_is_code[type_address] = verdict
        return verdict

    def _read_str(self, address: int) -> str:
        """A str object of the target (compact, as all code-object names are)."""
        text = self._strings.get(address)
        if text is not None:
            return text
        header = self.memory.read(address, self._str_header)
        length = _I64.unpack_from(header, self._str_length)[0]
        state = _U32.unpack_from(header, self._str_state)[0]
        kind = (state >> 2) & 7
        compact, ascii_only = (state >> 5) & 1, (state >> 6) & 1
        if not 0 <= length <= MAX_STRING_CHARS or not compact or kind not in (1, 2, 4):
            raise _Torn(f"not a compact str at {address:#x}")
        if ascii_only:
            text = self.memory.read(address + self._str_header, length).decode("ascii")
        else:
            data = self.memory.read(address + self._str_header + self._compact_extra, length * kind)
            encoding = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
            text = data.decode(encoding, "surrogatepass")
        self._strings[address] = text
        return text

    def _read_bytes(self, address: int) -> bytes:
        header = self.memory.read(address, self._bytes_data)
        size = _I64.unpack_from(header, self._bytes_size)[0]
        if not 0 <= size <= MAX_LINETABLE:
            raise _Torn(f"bytes object at {address:#x} claims {size} bytes")
        return self.memory.read(address + self._bytes_data, size)


def _first_traceable(bytecode: bytes, resume_opcodes: frozenset[int]) -> int:
    """Byte offset of the first RESUME in a code object's bytecode (its size if there is none)."""
    for offset in range(0, len(bytecode) - 1, 2):
        if bytecode[offset] in resume_opcodes:
            return offset
    return len(bytecode)


def read_stacks(pid: int) -> tuple[str, list[ThreadStack]]:
    """Open ``pid``, read every thread's stack once and close: (the target's Python version, stacks)."""
    process = RemoteProcess.open(pid)
    try:
        return process.version, StackReader(process).read()
    finally:
        process.close()


__all__ = ["FrameInfo", "MAX_DEPTH", "StackReader", "ThreadStack", "read_stacks"]
