"""Every fact about CPython that differs between minors, in one table keyed by (major, minor, free_threaded).

Nothing else in periscope compares versions: the readers ask :func:`layout_for` for the
:class:`Layout` of a target (the field list of its ``_Py_DebugOffsets`` table, and the few facts
that table does not describe), and every front end words an unsupported version with
:func:`unsupported` (the same reason and fix in ``ps`` and in every command).

Supporting the next minor is one more ``Layout`` in ``LAYOUTS`` (read from the new minor's
``Include/internal/pycore_debug_offsets.h`` and checked on its binary: the DWARF of the
``_remote_debugging`` extension module lists ``_Py_DebugOffsets`` member by member), one more
entry in ``SUPPORTED_MINORS``, and a test run: the suite runs every target-facing test once per
supported minor.

This module imports nothing from periscope and nothing heavy: the CLI's start-up path uses it.
"""

from __future__ import annotations

from collections import namedtuple

DEFAULT_MINOR = (3, 14)
"""The minor periscope starts its demo under, and the one tools and tests use when none is named."""
SUPPORTED_MINORS = ((3, 14), (3, 15))
"""The CPython minors periscope attaches to, oldest first."""

TableLayout = tuple[tuple[str, tuple[str, ...]], ...]

# CPython 3.14's _Py_DebugOffsets: 92 uint64 fields after the 24-byte header, grouped by the
# struct they describe. Fields named "size" (or ending in "_size") are sizes; the rest are byte
# offsets into their group's struct.
DEBUG_OFFSETS_3_14: TableLayout = (
    ("runtime_state", ("size", "finalizing", "interpreters_head")),
    (
        "interpreter_state",
        (
            "size", "id", "next", "threads_head", "threads_main", "gc", "imports_modules", "sysdict",
            "builtins", "ceval_gil", "gil_runtime_state", "gil_runtime_state_enabled",
            "gil_runtime_state_locked", "gil_runtime_state_holder", "code_object_generation",
            "tlbc_generation",
        ),
    ),
    (
        "thread_state",
        ("size", "prev", "next", "interp", "current_frame", "thread_id", "native_thread_id", "datastack_chunk", "status"),
    ),
    (
        "interpreter_frame",
        ("size", "previous", "executable", "instr_ptr", "localsplus", "owner", "stackpointer", "tlbc_index"),
    ),
    (
        "code_object",
        (
            "size", "filename", "name", "qualname", "linetable", "firstlineno", "argcount", "localsplusnames",
            "localspluskinds", "co_code_adaptive", "co_tlbc",
        ),
    ),
    ("pyobject", ("size", "ob_type")),
    ("type_object", ("size", "tp_name", "tp_repr", "tp_flags")),
    ("tuple_object", ("size", "ob_item", "ob_size")),
    ("list_object", ("size", "ob_item", "ob_size")),
    ("set_object", ("size", "used", "table", "mask")),
    ("dict_object", ("size", "ma_keys", "ma_values")),
    ("float_object", ("size", "ob_fval")),
    ("long_object", ("size", "lv_tag", "ob_digit")),
    ("bytes_object", ("size", "ob_size", "ob_sval")),
    ("unicode_object", ("size", "state", "length", "asciiobject_size")),
    ("gc", ("size", "collecting")),
    ("gen_object", ("size", "gi_name", "gi_iframe", "gi_frame_state")),
    ("llist_node", ("next", "prev")),
    (
        "debugger_support",
        (
            "eval_breaker", "remote_debugger_support", "remote_debugging_enabled", "debugger_pending_call",
            "debugger_script_path", "debugger_script_path_size",
        ),
    ),
)

# CPython 3.15's table: 108 fields (888 bytes). Fields are inserted in the middle (thread_state,
# a new err_stackitem group, type_object, a new heap_type_object group, unicode_object, gc), so
# every group after thread_state moves. Checked member by member against the DWARF of 3.15.2's
# _remote_debugging module and against the values in its .PyRuntime section.
DEBUG_OFFSETS_3_15: TableLayout = (
    DEBUG_OFFSETS_3_14[0],
    DEBUG_OFFSETS_3_14[1],
    (
        "thread_state",
        (
            "size", "prev", "next", "interp", "current_frame", "base_frame", "last_profiled_frame",
            "last_profiled_frame_seq", "thread_id", "native_thread_id", "datastack_chunk", "status",
            "holds_gil", "gil_requested", "current_exception", "exc_state",
        ),
    ),
    ("err_stackitem", ("exc_value",)),
    DEBUG_OFFSETS_3_14[3],
    DEBUG_OFFSETS_3_14[4],
    DEBUG_OFFSETS_3_14[5],
    ("type_object", ("size", "tp_name", "tp_repr", "tp_flags", "tp_basicsize", "tp_dictoffset")),
    ("heap_type_object", ("size", "ht_cached_keys")),
    *DEBUG_OFFSETS_3_14[7:14],
    ("unicode_object", ("size", "state", "length", "asciiobject_size", "compactunicodeobject_size")),
    ("gc", ("size", "collecting", "frame", "generation_stats_size", "generation_stats")),
    *DEBUG_OFFSETS_3_14[16:],
)


class AsyncioFacts(namedtuple(
    "AsyncioFacts",
    "task_layout fut_state num_cancels fut_waiter exception frame_yield_from frame_executing frame_cleared await_slot",
)):
    """Task and coroutine layout facts that neither ``_Py_DebugOffsets`` nor ``.AsyncioDebug`` give (explorer.tasks)."""

    __slots__ = ()
    task_layout: tuple[int, int, int, int, int, int, int]
    """The task fields of ``.AsyncioDebug`` these facts were measured with (size, name, awaited_by,
    is_task, awaited_by_is_set, coro, node): the task offsets below are used only when the
    target's table says the same."""
    fut_state: int
    """int32 ``fut_state`` in the task: 0 pending, 1 cancelled, 2 finished."""
    num_cancels: int
    """int32 ``task_num_cancels_requested``."""
    fut_waiter: int
    """``task_fut_waiter``: the future the task waits on, or NULL."""
    exception: int
    """``fut_exception``: the exception of a finished task, or NULL."""
    frame_yield_from: int
    """``gi_frame_state`` of a coroutine suspended in an ``await``."""
    frame_executing: int
    """``gi_frame_state`` of a coroutine running now."""
    frame_cleared: int
    """``gi_frame_state`` of a coroutine that finished (its frame is gone)."""
    await_slot: int
    """Bytes below a suspended frame's ``stackpointer`` where the awaited object is."""


# Measured on Debian's 3.14.10 and on 3.15.2 (in-process with ctypes against task.cancel(),
# task._fut_waiter, task.exception(), cr_suspended, and out of process against
# `python -m asyncio ps`). The task object layout is the same in both; the frame states were
# renumbered in 3.15 and its suspended frames keep one more slot above the awaited object.
ASYNCIO_3_14 = AsyncioFacts(
    task_layout=(0xA8, 0x88, 0x60, 0x6C, 0x6D, 0x80, 0x98),
    fut_state=0x68, num_cancels=0x70, fut_waiter=0x78, exception=0x30,
    frame_yield_from=-1, frame_executing=0, frame_cleared=4, await_slot=8,
)
ASYNCIO_3_15 = ASYNCIO_3_14._replace(frame_yield_from=2, frame_executing=4, frame_cleared=5, await_slot=16)


class Layout(
    namedtuple(
        "Layout",
        "minor debug_offsets owner_generator owner_interpreter owner_max resume_opcodes magic "
        "compact_unicode_extra outside_sizes stackref_tag_mask stackref_pointer_tags root_frame_offset "
        "data_stack_chunk_size status_active asyncio",
    )
):
    """What periscope must know about one CPython minor beyond what its debug-offsets table says."""

    __slots__ = ()
    minor: tuple[int, int]
    debug_offsets: TableLayout
    """The ``_Py_DebugOffsets`` field list, in order."""
    owner_generator: int
    """``FRAME_OWNED_BY_GENERATOR`` of ``enum _frameowner`` (Include/internal/pycore_interpframe_structs.h)."""
    owner_interpreter: int
    """``FRAME_OWNED_BY_INTERPRETER``: the entry frame C code pushes when it calls Python."""
    owner_max: int
    """The largest owner value (3.14 also has ``FRAME_OWNED_BY_CSTACK``; 3.15 dropped it)."""
    resume_opcodes: frozenset[int]
    """RESUME and the forms it takes in place (specialized, instrumented): a code object's first
    traceable instruction (Objects/codeobject.c ``_co_firsttraceable``)."""
    magic: int
    """The bytecode magic number (Include/internal/pycore_magic_number.h, ``importlib.util.MAGIC_NUMBER``)."""
    compact_unicode_extra: int
    """Bytes between a compact non-ASCII str's PyASCIIObject header and its data (utf8_length, utf8)."""
    outside_sizes: frozenset[str]
    """``group.field`` sizes that describe another struct, so they may exceed their group's size."""
    stackref_tag_mask: int
    """The low bits of a ``_PyStackRef`` (``f_executable``) that are a tag, not part of the pointer."""
    stackref_pointer_tags: frozenset[int]
    """Tags that mean the rest is an object pointer (GIL build: 0 plain, 1 deferred; 3 is an int)."""
    root_frame_offset: int
    """Where a thread's first frame lies in its root data-stack chunk: after the chunk header
    (previous, size, top) and the one slot the root chunk skips (Python/pystate.c ``push_chunk``)."""
    data_stack_chunk_size: int
    """``DATA_STACK_CHUNK_SIZE``: the smallest data-stack chunk CPython allocates."""
    status_active: int
    """The ``_status.active`` bit of a thread state: attached to its interpreter."""
    asyncio: AsyncioFacts
    """What the asyncio task reader needs beyond the target's ``.AsyncioDebug`` table."""

    @property
    def name(self) -> str:
        """``"3.15"``."""
        return minor_name(self.minor)

    @property
    def table_size(self) -> int:
        """Bytes of the debug-offsets table: the 24-byte header plus one uint64 per field."""
        return 24 + 8 * sum(len(fields) for _, fields in self.debug_offsets)


LAYOUTS: dict[tuple[int, int, bool], Layout] = {
    (3, 14, False): Layout(
        minor=(3, 14),
        debug_offsets=DEBUG_OFFSETS_3_14,
        owner_generator=1,
        owner_interpreter=3,
        owner_max=4,  # FRAME_OWNED_BY_CSTACK
        resume_opcodes=frozenset({128, 196, 245}),  # RESUME, RESUME_CHECK, INSTRUMENTED_RESUME
        magic=3627,
        compact_unicode_extra=16,
        outside_sizes=frozenset(),
        stackref_tag_mask=3,
        stackref_pointer_tags=frozenset({0, 1}),
        root_frame_offset=3 * 8 + 8,
        data_stack_chunk_size=16 * 1024,
        status_active=1 << 4,
        asyncio=ASYNCIO_3_14,
    ),
    (3, 15, False): Layout(
        minor=(3, 15),
        debug_offsets=DEBUG_OFFSETS_3_15,
        owner_generator=1,
        owner_interpreter=3,
        owner_max=3,
        # RESUME, RESUME_CHECK, RESUME_CHECK_JIT, INSTRUMENTED_RESUME (3.15.2's opcode module).
        resume_opcodes=frozenset({128, 200, 201, 244}),
        magic=3666,
        compact_unicode_extra=16,  # the table says so too: compactunicodeobject_size - asciiobject_size
        outside_sizes=frozenset({"gc.generation_stats_size"}),  # the size of the gc_stats struct
        # Unchanged from 3.14 (the _status bit order from 3.15.2's DWARF; the others checked by
        # reading 3.15.2 targets' stacks frame for frame against their own view).
        stackref_tag_mask=3,
        stackref_pointer_tags=frozenset({0, 1}),
        root_frame_offset=3 * 8 + 8,
        data_stack_chunk_size=16 * 1024,
        status_active=1 << 4,
        asyncio=ASYNCIO_3_15,
    ),
}
"""Layouts periscope knows, keyed by (major, minor, free_threaded)."""

LARGEST_TABLE = max(layout.table_size for layout in LAYOUTS.values())
"""Bytes to read from a target to be sure to have its whole debug-offsets table."""

_NAMES = [f"{major}.{minor}" for major, minor in SUPPORTED_MINORS]
SUPPORTED_TEXT = "CPython " + (" and ".join([", ".join(_NAMES[:-1]), _NAMES[-1]]) if len(_NAMES) > 1 else _NAMES[0])
"""``"CPython 3.14 and 3.15"``: what periscope supports, in the words every message uses."""
SUPPORTED_CHOICE = "CPython " + (" or ".join([", ".join(_NAMES[:-1]), _NAMES[-1]]) if len(_NAMES) > 1 else _NAMES[0])
"""``"CPython 3.14 or 3.15"``: the same, as the choice a fix offers."""


def minor_name(version: tuple[int, int]) -> str:
    """``(3, 15)`` -> ``"3.15"``."""
    return f"{version[0]}.{version[1]}"


def split_version(version_hex: int) -> tuple[int, int]:
    """(major, minor) of a ``PY_VERSION_HEX`` value."""
    return (version_hex >> 24) & 0xFF, (version_hex >> 16) & 0xFF


def is_final(version_hex: int) -> bool:
    """Whether ``version_hex`` is a final release (not an alpha, beta or release candidate)."""
    return (version_hex >> 4) & 0xF == 0xF


class Unsupported(namedtuple("Unsupported", "reason fix")):
    """Why periscope cannot attach to an interpreter version or build, and what to do."""

    __slots__ = ()
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason}; {self.fix}"


def unsupported(version_hex: int | None, free_threaded: bool | None = False, name: str | None = None) -> Unsupported | None:
    """None when periscope can attach to this version and build; otherwise the one reason and fix.

    ``name`` is the version as text ("3.15.2") when the caller has it; ``version_hex`` with a
    micro of 0xFF means only major.minor is known (taken from an executable's name).
    """
    fix = f"restart it under {SUPPORTED_CHOICE}"
    if version_hex is None:
        return Unsupported(f"CPython of unknown version: periscope supports {SUPPORTED_TEXT}", fix)
    major, minor = split_version(version_hex)
    shown = name or (minor_name((major, minor)) if (version_hex >> 8) & 0xFF == 0xFF else None) or _text(version_hex)
    if (major, minor) not in SUPPORTED_MINORS:
        return Unsupported(f"CPython {shown}: periscope supports {SUPPORTED_TEXT}", fix)
    if free_threaded:
        return Unsupported(
            f"CPython {shown} is a free-threaded build ({major}.{minor}t): "
            f"periscope supports the default (GIL) build of {SUPPORTED_TEXT}",
            f"restart it under the default (GIL) build of CPython {major}.{minor}",
        )
    if not is_final(version_hex):
        return Unsupported(
            f"CPython {shown} is a pre-release, whose layout may differ: periscope supports final releases of {SUPPORTED_TEXT}",
            f"restart it under a final CPython {major}.{minor} release",
        )
    if (major, minor, False) not in LAYOUTS:  # pragma: no cover - SUPPORTED_MINORS and LAYOUTS agree
        return Unsupported(f"CPython {shown}: periscope supports {SUPPORTED_TEXT}", fix)
    return None


def common(field: str) -> object:
    """A fact every known layout shares, for code that needs it before it knows the target's minor.

    Raises LookupError if the minors disagree: then the caller must ask the target's layout.
    """
    values = {getattr(layout, field) for layout in LAYOUTS.values()}
    if len(values) != 1:
        raise LookupError(f"the minors differ in {field}: ask the target's layout")
    return values.pop()


def layout_for(version_hex: int, free_threaded: bool) -> Layout | None:
    """The layout of a supported version and build; None otherwise (ask :func:`unsupported` why)."""
    if unsupported(version_hex, free_threaded) is not None:
        return None
    major, minor = split_version(version_hex)
    return LAYOUTS[(major, minor, bool(free_threaded))]


# Object layouts for reading values from outside (explorer.values): the offsets and constants of
# the builtin objects that _Py_DebugOffsets does not give (x86-64, GIL build). Each was checked on
# the real binaries with ctypes (3.14.10, 3.15.2).


class ObjectLayout(namedtuple(
    "ObjectLayout",
    "long_shift dk_log2_size dk_log2_index_bytes dk_kind dk_nentries dk_indices "
    "values_capacity values_size values_valid values_items "
    "complex_cval bytearray_start list_allocated cell_ref module_dict module_name function_qualname "
    "tp_basicsize tp_dict tp_dictoffset ht_qualname ht_cached_keys managed_dict "
    "compact_unicode_size legacy_unicode_data immortal_bits gil_switch_number bytearray_escapes_quote",
)):
    """Offsets (bytes) and constants of one CPython minor's objects."""

    __slots__ = ()


_LAYOUT_3_14 = ObjectLayout(
    long_shift=30,  # PYLONG_BITS_IN_DIGIT on 64-bit builds (configure --enable-big-digits=30)
    # PyDictKeysObject: dk_refcnt, dk_log2_size (u8), dk_log2_index_bytes (u8), dk_kind (u8),
    # dk_version (u32), dk_usable, dk_nentries, dk_indices[]; entries after the indices.
    dk_log2_size=8, dk_log2_index_bytes=9, dk_kind=10, dk_nentries=24, dk_indices=32,
    # PyDictValues: capacity, size, embedded, valid (u8 each), then values[capacity], then the
    # insertion order (size bytes).
    values_capacity=0, values_size=1, values_valid=3, values_items=8,
    complex_cval=16,  # PyComplexObject.cval: real, imag (double)
    bytearray_start=40,  # PyByteArrayObject.ob_start
    list_allocated=32,  # PyListObject.allocated
    cell_ref=16,  # PyCellObject.ob_ref
    module_dict=16,  # PyModuleObject.md_dict
    module_name=48,  # PyModuleObject.md_name
    function_qualname=40,  # PyFunctionObject.func_qualname
    tp_basicsize=32, tp_dict=264, tp_dictoffset=288,
    ht_qualname=872, ht_cached_keys=880,  # PyHeapTypeObject
    managed_dict=-24,  # MANAGED_DICT_OFFSET: the dict pointer in the pre-header
    compact_unicode_size=0x38,  # PyCompactUnicodeObject (asciiobject_size + utf8_length + utf8)
    legacy_unicode_data=0x38,  # PyUnicodeObject.data.any (str subclasses)
    # _Py_IMMORTAL_INITIAL_REFCNT (3 << 30) in the low 32 bits of ob_refcnt (_Py_IsImmortal
    # tests the top bit; both are required here, and the read must check out, before trusting it)
    immortal_bits=3 << 30,
    gil_switch_number=8,  # _gil_runtime_state.switch_number, after "locked" (int, padded)
    bytearray_escapes_quote=True,  # bytearray's own repr: b"'" shows as bytearray(b"\'")
)

OBJECT_LAYOUTS: dict[tuple[int, int, bool], ObjectLayout] = {
    (3, 14, False): _LAYOUT_3_14,
    # 3.15 inserts one pointer into PyHeapTypeObject before ht_name (ht_name 864, ht_qualname 880).
    # PyModuleObject loses a field before md_name (md_name 40).
    # 3.15 writes a bytearray's repr with bytes' repr: b"'" shows as bytearray(b"'").
    (3, 15, False): _LAYOUT_3_14._replace(ht_qualname=880, ht_cached_keys=888, module_name=40, bytearray_escapes_quote=False),
}
"""Object layouts, keyed like :data:`LAYOUTS`."""


def object_layout_for(version_hex: int, free_threaded: bool = False) -> ObjectLayout | None:
    """The object layout of a supported version and build; None otherwise."""
    if unsupported(version_hex, free_threaded) is not None:
        return None
    major, minor = split_version(version_hex)
    return OBJECT_LAYOUTS.get((major, minor, bool(free_threaded)))


def _text(version_hex: int) -> str:
    major, minor = split_version(version_hex)
    micro = (version_hex >> 8) & 0xFF
    level = (version_hex >> 4) & 0xF
    serial = version_hex & 0xF
    text = f"{major}.{minor}.{micro}"
    if level != 0xF:
        text += {0xA: "a", 0xB: "b", 0xC: "rc"}.get(level, "?") + str(serial)
    return text
