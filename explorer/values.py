"""Read the values of a CPython target's variables from outside: frame locals and module globals.

The counterpart of the stack reader (explorer.stacks) for values: nothing runs in the target and
nothing is written; every value is decoded from the target's memory, so it works while every
thread sits in C (a long ``time.sleep``, ``input()``, a lock), when the agent cannot get in.

* Locals come from a frame's ``localsplus`` slots, named by its code object's
  ``co_localsplusnames`` (cells and free variables are followed to their contents; unbound names
  and hidden comprehension variables without a value are left out, as ``frame.f_locals`` does).
  Module globals come from ``sys.modules[name].__dict__``.
* None, bool, int (any size), float, complex, str (every compact kind, and the legacy layout of
  str subclasses), bytes, bytearray and the exact tuple, list, dict (combined and split tables),
  set and frozenset are formatted as the target's ``repr()`` would, within the agent's bounds
  (``repr_chars``, ``items``, ``depth``), with the agent's cut marks. Classes read as
  ``<class 'module.Name'>``, functions as their repr, modules as ``<module 'name'>`` (without
  the file the target's repr names). Any other object reads as ``<module.Type object at 0x...>``
  plus, at the top level, the items of its instance ``__dict__`` (a materialised dict, inline
  values with the type's shared keys, or a ``tp_dictoffset`` dict).
* Everything the target controls is untrusted: every length, count and pointer is bounded before
  it is used, and reads are capped. The target keeps running while it is read, so each variable
  is read, then the memory it depends on (its slot, the containers' headers and item arrays) is
  read again: a variable whose memory changed is read again a few times and, if it never reads
  the same twice, comes back with ``torn=True`` rather than a value that never existed.

Facts about the object layout that ``_Py_DebugOffsets`` does not give live in the version layer
(:data:`explorer.versions.OBJECT_LAYOUTS`), like every other per-minor fact.
"""

from __future__ import annotations

import struct
import time
from collections import namedtuple

from explorer.memory import MemoryFault, PageCache, process_cpu_ns
from explorer.remote import RemoteProcess
from explorer.versions import OBJECT_LAYOUTS, ObjectLayout, object_layout_for, split_version

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------

DEFAULT_LIMITS = {"repr_chars": 200, "items": 10, "depth": 3, "locals": 100, "module_vars": 1000}
"""The agent's preview bounds (payloads/agent/previews.py DEFAULT_LIMITS), so that both sources look alike."""
ATTEMPTS = 4
"""Reads of one variable before a value that keeps changing is returned as torn."""
FRAME_ATTEMPTS = 4
"""Reads of a frame's locals, or a module's variables, while threads take the GIL and let it go."""
RETRY_SECONDS = 0.05
"""No careful read starts again once the careful reads so far took this long: a read that long,
on a target that ran Python during each one, will not find it quiet either (100 threads x 20
frames with locals take some 0.2 s to read, and a thread that wakes every 50 ms made each of the
four attempts in vain)."""
MAX_LOCALS = 65_535
"""More localsplus names than this: not a code object (CPython's own limit is far lower)."""
MAX_ENTRIES = 1 << 26
"""Container sizes above this are garbage (a torn or hostile read)."""
MAX_SCAN_BYTES = 1 << 20
"""Bytes of a dict's entries or a set's table read while looking for the items shown."""
MAX_INT_DIGITS = 20_000
"""Digits (30 bits each) of an int decoded; bigger ones show as ``<int with N bits>``."""
MAX_INT_STR_DIGITS = 4300  # sys.get_int_max_str_digits(): the target's own repr() refuses beyond it
_LOG2_10 = 3.321928094887362  # math.log2(10), without importing math (start-up time)
MAX_NAME = 256
"""Bytes of a type's C name (tp_name) read."""
HEAD = 64
"""Bytes read at an object's address first: small objects need no second read."""
MERGE_GAP = 256
"""Regions to check again that are at most this far apart are read in one go."""

# tp_flags bits (Include/object.h)
TPFLAGS_INLINE_VALUES = 1 << 2
TPFLAGS_MANAGED_DICT = 1 << 4
TPFLAGS_HEAPTYPE = 1 << 9
TPFLAGS_LONG_SUBCLASS = 1 << 24
TPFLAGS_LIST_SUBCLASS = 1 << 25
TPFLAGS_TUPLE_SUBCLASS = 1 << 26
TPFLAGS_BYTES_SUBCLASS = 1 << 27
TPFLAGS_UNICODE_SUBCLASS = 1 << 28
TPFLAGS_DICT_SUBCLASS = 1 << 29
TPFLAGS_TYPE_SUBCLASS = 1 << 31
# localspluskinds bits (Include/internal/pycore_code.h)
CO_FAST_ARGUMENT = 0x02 | 0x04 | 0x08  # CO_FAST_ARG_POS | CO_FAST_ARG_KW | CO_FAST_ARG_VAR
CO_FAST_HIDDEN = 0x10
CO_FAST_CELL = 0x40
CO_FAST_FREE = 0x80
# _PyStackRef tag bits of the GIL build: 0 and 1 carry a pointer, 3 a tagged int (never a local).
TAG_MASK = 3
DICT_KEYS_GENERAL, DICT_KEYS_UNICODE, DICT_KEYS_SPLIT = 0, 1, 2

# The builtin types decoded here, by their tp_name; each must be a static (non-heap) type, and
# carry its subclass flag where CPython has one, so that a user class called "int" is not one.
_BUILTINS = {
    b"NoneType": ("none", 0),
    b"bool": ("bool", TPFLAGS_LONG_SUBCLASS),
    b"int": ("int", TPFLAGS_LONG_SUBCLASS),
    b"float": ("float", 0),
    b"complex": ("complex", 0),
    b"str": ("str", TPFLAGS_UNICODE_SUBCLASS),
    b"bytes": ("bytes", TPFLAGS_BYTES_SUBCLASS),
    b"bytearray": ("bytearray", 0),
    b"tuple": ("tuple", TPFLAGS_TUPLE_SUBCLASS),
    b"list": ("list", TPFLAGS_LIST_SUBCLASS),
    b"dict": ("dict", TPFLAGS_DICT_SUBCLASS),
    b"set": ("set", 0),
    b"frozenset": ("frozenset", 0),
    b"cell": ("cell", 0),
    b"module": ("module", 0),
    b"function": ("function", 0),
    b"type": ("type", TPFLAGS_TYPE_SUBCLASS),
    b"<dummy key> type": ("dummy", 0),
}
_OPEN_CLOSE = {
    "dict": ("{", "}"),
    "list": ("[", "]"),
    "tuple": ("(", ")"),
    "set": ("{", "}"),
    "frozenset": ("frozenset({", "})"),
}
_EMPTY = {"dict": "{}", "list": "[]", "tuple": "()", "set": "set()", "frozenset": "frozenset()"}
_CONTAINERS = frozenset(_OPEN_CLOSE)
_MUTABLE = frozenset({"list", "dict", "set", "bytearray"})
_IMMUTABLE_SCALARS = frozenset({"none", "bool", "int", "float", "complex", "str", "bytes"})
MAX_CACHED = 100_000
"""Immortal objects' texts and types remembered by one reader."""
_ELLIPSIS = "\u2026"

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_C128 = struct.Struct("<dd")


class OutsideValue(
    namedtuple("OutsideValue", "type_name repr address length cut torn attrs", defaults=(None, False, False, None))
):
    """One value read from the target's memory, formatted like the agent's previews."""

    __slots__ = ()
    type_name: str
    """``module.QualName`` of its class (builtins without a module), as the agent names it."""
    repr: str
    """What the target's ``repr()`` gives, within the bounds; ``<T object at 0x...>`` for other objects."""
    address: int
    """The object's address in the target (``id()`` there)."""
    length: int | None  # default None
    """``len()`` of strings, bytes and the builtin containers."""
    cut: bool  # default False
    """The repr was shortened (a bound: characters, items or depth), as the agent marks ``cut``."""
    torn: bool  # default False
    """The value kept changing while it was read: ``repr`` says so and is not a value."""
    attrs: tuple[tuple[str, OutsideValue], ...] | None  # default None
    """The items of an object's instance ``__dict__`` (other objects only; None when it has none)."""


class OutsideLocal(namedtuple("OutsideLocal", "name value argument")):
    """One local variable of a frame, read from outside."""

    __slots__ = ()
    name: str
    value: OutsideValue
    argument: bool
    """A parameter of the function (positional, keyword, ``*args`` or ``**kwargs``)."""


class Unsupported(Exception):
    """The target's CPython minor has no entry in explorer.versions.OBJECT_LAYOUTS."""


class _Torn(Exception):
    """What was read does not make sense (yet): the object is changing, or freed."""


_READ_ERRORS = (MemoryFault, _Torn, UnicodeDecodeError, ValueError, OverflowError, struct.error)
"""What reading a changing or garbage object can raise (ProcessGone and PermissionDenied go on up)."""


class _Type(namedtuple("_Type", "kind name flags basicsize dictoffset heap")):
    """What the reader needs of one type object."""

    __slots__ = ()


class _Pass:
    """One attempt at one variable: the mutable memory it read (to check it again), the cut mark."""

    __slots__ = ("regions", "cut", "immortal", "mutable")

    def __init__(self) -> None:
        self.regions: list[tuple[int, bytes]] = []
        self.cut = False
        self.mutable = False
        """Parts of the value can change in place (a list, dict, set, bytearray, instance dict)."""
        self.immortal: list[tuple[dict[Any, Any], Any, Any]] = []
        """Immortal objects met, to remember once the read is checked: (cache, key, what)."""


TORN_TEXT = "<changed while read>"


def _as_torn(item: _T, value: OutsideValue) -> _T:
    """``item`` (a local, a (name, value) pair or a (frame, local) pair) with its value marked torn."""
    torn = OutsideValue(value.type_name, TORN_TEXT, value.address, torn=True)
    if isinstance(item, OutsideLocal):
        return item._replace(value=torn)  # type: ignore[return-value]
    if isinstance(item[1], OutsideLocal):  # type: ignore[index]
        return (item[0], item[1]._replace(value=torn))  # type: ignore[index, return-value]
    return (item[0], torn)  # type: ignore[index, return-value]


def _bytearray_repr(data: bytes) -> str:
    """``repr(bytearray(data))`` as CPython writes it (Objects/bytearrayobject.c), which differs
    from bytes' repr: a ``'`` is always escaped, even between double quotes."""
    quote = '"' if b"'" in data and b'"' not in data else "'"
    out = []
    for byte in data:
        if byte in (0x27, 0x5C):  # ' and \
            out.append("\\" + chr(byte))
        elif byte == 0x09:
            out.append("\\t")
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x0D:
            out.append("\\r")
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(chr(byte))
    return f"bytearray(b{quote}{''.join(out)}{quote})"


def _quiet(before: tuple[int, ...] | None, after: tuple[int, ...] | None) -> bool:
    """Whether no thread ran Python between two ``ValueReader._python_state()`` readings."""
    return before is not None and before == after and not after[0]


def layout_for(version_hex: int) -> ObjectLayout:
    """The object layout of a target version (explorer.versions); Unsupported for one periscope does not know."""
    layout = object_layout_for(version_hex)
    if layout is None:
        major, minor = split_version(version_hex)
        raise Unsupported(f"reading values of CPython {major}.{minor} is not supported")
    return layout


class ValueReader:
    """Reads and formats variables of one target; keep one per read (it caches type objects)."""

    def __init__(self, process: RemoteProcess, limits: dict[str, int] | None = None) -> None:
        self.process = process
        self._direct = process.memory
        self._pages = PageCache(process.memory)
        """Pages of the target read during one read that is checked as a whole (see _paged)."""
        self.memory: Any = self._direct
        """What reads go through: the process itself, or the pages during a read that is checked as a whole."""
        self._spell_values: dict[tuple[int, int], tuple[OutsideValue, bool]] = {}
        """Values formatted from the pages ((address, depth) -> (value, has mutable parts)): an
        object that several frames or threads name is formatted once per read (see _paged)."""
        self._spell_texts: dict[int, str] = {}
        """The same for numbers and strings inside containers: address -> repr (not cut)."""
        o = process.offsets
        self.layout = layout_for(o.version_hex)
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self._repr_chars = self.limits["repr_chars"]
        self._items = self.limits["items"]
        self._depth = self.limits["depth"]
        self._ob_type = o.pyobject.ob_type
        self._tp_name = o.type_object.tp_name
        self._tp_flags = o.type_object.tp_flags
        self._type_span = max(self._tp_name, self._tp_flags, self.layout.tp_basicsize, self.layout.tp_dictoffset, self.layout.tp_dict) + 8
        self._tuple_size, self._tuple_items = o.tuple_object.ob_size, o.tuple_object.ob_item
        self._list_size, self._list_items = o.list_object.ob_size, o.list_object.ob_item
        self._set_used, self._set_mask, self._set_table = o.set_object.used, o.set_object.mask, o.set_object.table
        self._dict_keys, self._dict_values = o.dict_object.ma_keys, o.dict_object.ma_values
        self._float = o.float_object.ob_fval
        self._lv_tag, self._digits = o.long_object.lv_tag, o.long_object.ob_digit
        self._bytes_size, self._bytes_data = o.bytes_object.ob_size, o.bytes_object.ob_sval
        self._str_length, self._str_state = o.unicode_object.length, o.unicode_object.state
        self._ascii_size = o.unicode_object.asciiobject_size
        self._localsplus = o.interpreter_frame.localsplus
        self._executable = o.interpreter_frame.executable
        self._co_names, self._co_kinds = o.code_object.localsplusnames, o.code_object.localspluskinds
        self._types: dict[int, _Type] = {}
        # Texts of immortal objects (None, True, small ints, the identifiers code uses as names):
        # they are never freed, so their address always means the same value.
        self._immortal: dict[int, str] = {}
        self._immortal_texts: dict[tuple[int, int], str] = {}
        self._immortal_values: dict[int, OutsideValue] = {}
        self._validate = True
        """Check each value by reading it again (off while the target is known to be quiet)."""
        self._pending: list[tuple[dict[Any, Any], Any, Any]] = []
        self._last_state: tuple[int, ...] | None = None
        """The target's state after the previous read: the next read's "before"."""
        self._mutable: set[int] = set()
        """ids of the values read since the last _settled() try that have mutable parts."""
        self._keep: list[OutsideValue] = []  # keeps those ids valid
        o_interp = o.interpreter_state
        self._interp: int | None = None
        self._gil_locked, self._gil_holder = o_interp.gil_runtime_state_locked, o_interp.gil_runtime_state_holder
        self._gil_base = min(self._gil_locked, self._gil_holder)
        self._gil_span = max(self._gil_locked + self.layout.gil_switch_number, self._gil_holder) + 8 - self._gil_base
        self._current_frame = o.thread_state.current_frame
        self._instr_ptr = o.interpreter_frame.instr_ptr
        self._cached_keys: dict[int, int] = {}
        """Per class (address): its shared keys (``ht_cached_keys``), read once per reader."""
        self._immortal_mask = self.layout.immortal_bits
        self._code_names: dict[int, tuple[tuple[str, ...], bytes]] = {}
        self.retries = 0
        """Variables read again because their memory changed while they were read."""
        self.torn = 0
        """Variables returned with ``torn=True``."""

    # -- what callers ask for --------------------------------------------------------------

    def frame_locals(self, frame_address: int, code_address: int) -> list[OutsideLocal] | None:
        """The bound locals (cells followed) of one frame, in ``co_localsplusnames`` order.

        None when the frame no longer runs that code (it returned while being read) or its code
        object cannot be read. At most ``limits["locals"]`` variables.
        """
        return self._settled(lambda: self._frame_locals(frame_address, code_address), lambda local: local.value)

    def stack_locals(self, frame_refs: tuple[tuple[int, int], ...]) -> list[list[OutsideLocal] | None]:
        """:meth:`frame_locals` of every frame of one thread (``ThreadStack.frame_refs``), read
        together: the check that no thread ran Python meanwhile is made once for the stack."""
        return self.stacks_locals([frame_refs])[0]

    def stacks_locals(self, stacks: list[tuple[tuple[int, int], ...]]) -> list[list[list[OutsideLocal] | None]]:
        """:meth:`stack_locals` of several threads (one ``frame_refs`` each), read together: the
        check that no thread ran Python meanwhile is made once, and an object that several
        frames or threads name is read once."""
        per_frame: list[list[OutsideLocal] | None] = []

        def read() -> list[tuple[int, OutsideLocal]]:
            per_frame.clear()
            flat: list[tuple[int, OutsideLocal]] = []
            for frame_refs in stacks:
                for frame_address, code_address in frame_refs:
                    found = self._frame_locals(frame_address, code_address)
                    per_frame.append(found)
                    if found:
                        index = len(per_frame) - 1
                        flat.extend([(index, local) for local in found])
            return flat

        flat = self._settled(read, lambda pair: pair[1].value) or []
        every_frame: list[list[OutsideLocal] | None] = [None if found is None else [] for found in per_frame]
        for index, local in flat:
            frame_result = every_frame[index]
            if frame_result is not None:
                frame_result.append(local)
        result = []
        start = 0
        for frame_refs in stacks:
            result.append(every_frame[start : start + len(frame_refs)])
            start += len(frame_refs)
        return result

    def _frame_locals(self, frame_address: int, code_address: int) -> list[OutsideLocal] | None:
        try:
            names, kinds = self._code_locals(code_address)
        except _READ_ERRORS:
            return None
        count = len(names)
        slots = self._read_slots(frame_address, code_address, count)
        if slots is None:
            return None
        result: list[OutsideLocal] = []
        for index in range(count):
            if len(result) >= self.limits["locals"]:
                break
            kind = kinds[index]
            value = self._local(frame_address, index, kind, slots)
            if value is not None:
                result.append(OutsideLocal(names[index], value, bool(kind & CO_FAST_ARGUMENT)))
        # A frame that returned meanwhile may have had its memory reused by another function.
        # (Read from the pages, the frame is as it was: the check of the whole read covers it.)
        if self.memory is not self._pages and self._read_slots(frame_address, code_address, 0) is None:
            return None
        return result

    def module_globals(self, name: str = "__main__") -> list[tuple[str, OutsideValue]] | None:
        """The variables of module ``name`` (dunder names left out), or None when it is not imported."""
        return self._settled(lambda: self._module_globals(name), lambda pair: pair[1])

    def _module_globals(self, name: str) -> list[tuple[str, OutsideValue]] | None:
        module_dict = self.module_dict(name)
        if module_dict is None:
            return None
        try:
            pairs = self._dict_pairs(module_dict, self.limits["module_vars"] * 2, _Pass())
        except _READ_ERRORS:
            return None
        result = []
        for key, value in pairs:
            key_name = self._key_name(key)
            if key_name is None or (key_name.startswith("__") and key_name.endswith("__")):
                continue
            result.append((key_name, self.value(value)))
            if len(result) >= self.limits["module_vars"]:
                break
        return result

    def _settled(self, read: Callable[[], list[_T] | None], value_of: Callable[[_T], OutsideValue]) -> list[_T] | None:
        """``read()``, trusting what changes in place only if no thread ran Python meanwhile.

        Only the thread holding the GIL changes objects. When the GIL was free before and after
        the read, with the same last holder, switch count, and that thread's frame and
        instruction, and the target used no CPU time meanwhile, nothing changed while it was
        read: one read is the truth. Otherwise every
        value is read twice, which catches most changes but not all: a loop that refills a list
        brings back the same sizes at the same addresses (freed memory is reused at once), and a
        writer the OS stops half-way shows the same half-made state twice. So values with parts
        that change in place (containers, bytearrays, instance dicts) are then kept only if the
        target was quiet around that careful read (repeated while the GIL is taken and let go
        again), and read as torn while a thread runs Python; numbers and strings, immutable,
        need the double read only.
        """
        before = self._last_state or self._python_state()
        self._start_try(validate=False)
        result = self._paged(before, read)
        after = self._python_state()
        self._last_state = after
        if result is not None and _quiet(before, after):
            for cache, key, known in self._pending:
                cache[key] = known
            return result
        careful_since = time.monotonic()
        for attempt in range(FRAME_ATTEMPTS):
            before = self._python_state()
            self._start_try(validate=True)
            result = read()
            if result is None or not self._mutable:
                break
            after = self._last_state = self._python_state()
            if _quiet(before, after):
                break
            running = after is None or after[0]
            if not running:
                self.retries += 1
            # Torn: a thread runs Python now (it may be changing these very objects), or this was
            # the last attempt, or the attempts so far took too long for another to be quiet.
            if running or attempt == FRAME_ATTEMPTS - 1 or time.monotonic() - careful_since > RETRY_SECONDS:
                self.torn += len(self._mutable)
                result = [_as_torn(item, value_of(item)) if id(value_of(item)) in self._mutable else item for item in result]
                break
        self._validate = True
        self._last_state = None
        return result

    def quiet_read(self, read: Callable[[], _T]) -> tuple[_T, bool]:
        """``read()``, and whether no thread ran Python while it ran (what it read did not change)."""
        before = self._python_state()
        result = self._paged(before, read)
        return result, _quiet(before, self._python_state())

    def _paged(self, state: tuple[int, ...] | None, read: Callable[[], _T]) -> _T:
        """``read()`` through the page cache, when the target was quiet (``state``) before it.

        A read whose result is kept only if no thread ran Python around it (the first try of
        :meth:`_settled`, :meth:`quiet_read`) reads each page of the target once and formats each
        object once: if the check after it finds the target quiet, nothing changed meanwhile
        and a page copied at the start of the read is what the target holds at its end. The
        pages live for this one read only (a target that runs and comes back to the very same
        state between two reads would pass the check with pages from before). Reads checked
        byte by byte against the target (the validated tries) never go through the cache.
        """
        if state is None or state[0]:
            return read()  # a thread holds the GIL: this read will not be trusted as a whole
        self.memory = self._pages
        try:
            return read()
        finally:
            self.memory = self._direct
            self._pages.clear()
            self._spell_values.clear()
            self._spell_texts.clear()

    def _start_try(self, *, validate: bool) -> None:
        self._validate = validate
        self._mutable.clear()
        self._keep.clear()
        self._pending.clear()

    def _python_state(self) -> tuple[int, ...] | None:
        """(GIL locked, last holder, switch count, the holder's current frame and instruction,
        the CPU time the target used), or None.

        The GIL fields alone miss a holder that took the GIL again, ran, and came back to the
        same call (a loop around ``time.sleep``): the switch count only moves when the holder
        changes. Its CPU time moves whenever any of its threads ran.
        """
        cpu = process_cpu_ns(self.process.pid)
        if cpu is None:
            return None
        try:
            if self._interp is None:
                self._interp = self.process.main_interpreter().address
            gil = self._direct.read(self._interp + self._gil_base, self._gil_span)
            locked = _I32.unpack_from(gil, self._gil_locked - self._gil_base)[0]
            holder = _U64.unpack_from(gil, self._gil_holder - self._gil_base)[0]
            switches = _U64.unpack_from(gil, self._gil_locked + self.layout.gil_switch_number - self._gil_base)[0]
            frame = self._direct.read_u64(holder + self._current_frame) if holder else 0
            instruction = self._direct.read_u64(frame + self._instr_ptr) if frame else 0
        except MemoryFault:
            return None
        return (locked, holder, switches, frame, instruction, cpu)

    def module_dict(self, name: str) -> int | None:
        """The address of ``sys.modules[name].__dict__``, or None."""
        interp = self.process.main_interpreter()
        try:
            modules = self.memory.read_u64(interp.address + self.process.offsets.interpreter_state.imports_modules)
            module = self.dict_lookup(modules, name) if modules else None
            if module is None or self._type(module).kind != "module":
                return None
            return self.memory.read_u64(module + self.layout.module_dict) or None
        except _READ_ERRORS:
            return None

    def module_imported(self, name: str) -> bool | None:
        """Whether ``name`` is a key of the main interpreter's ``sys.modules``; None when it cannot be read now.

        One bounded walk of the dict (its keys compared as text, never trusted as anything else).
        """
        try:
            interp = self.process.main_interpreter()
            modules = self.memory.read_u64(interp.address + self.process.offsets.interpreter_state.imports_modules)
            if not modules:
                return False  # the import system is not set up yet
            if self._type(modules).kind != "dict":
                return None
            return any(self._key_name(key) == name for key, _ in self._dict_pairs(modules, MAX_ENTRIES, _Pass()))
        except _READ_ERRORS:
            return None

    def dict_lookup(self, dict_address: int, key: str) -> int | None:
        """The value stored under the str ``key`` in a dict of the target (read once), or None."""
        for key_address, value in self._dict_pairs(dict_address, MAX_ENTRIES, _Pass()):
            if self._key_name(key_address) == key:
                return value
        return None

    def dict_lookup_safe(self, dict_address: int, key: str) -> int | None:
        """:meth:`dict_lookup` that gives None, not an error, when the dict cannot be read."""
        try:
            return self.dict_lookup(dict_address, key)
        except _READ_ERRORS:
            return None

    def attribute(self, address: int, name: str) -> int | None:
        """The address of the instance attribute ``name`` of an object (from its ``__dict__``), or None."""
        try:
            head = self._head(address)
            kind_type = self._type_at(_U64.unpack_from(head, self._ob_type)[0])
            for key, value in self._instance_pairs(address, head, kind_type, MAX_ENTRIES, _Pass()) or ():
                if self._key_name(key) == name:
                    return value
        except _READ_ERRORS:
            return None
        return None

    def text(self, address: int, limit: int = 1 << 16) -> str | None:
        """A str object's text (at most ``limit`` characters), or None when it is not a str."""
        cached = self._immortal_texts.get((address, limit))
        if cached is not None:
            return cached
        try:
            head = self._head(address)
            if self._type_at(_U64.unpack_from(head, self._ob_type)[0]).kind != "str":
                return None
            text = self._str_text(address, head, limit)[0]
        except _READ_ERRORS:
            return None
        if self._is_immortal(head) and len(self._immortal_texts) < MAX_CACHED:
            try:
                # Not memory in the middle of reuse: read again from the target, never from the pages.
                settled = self._direct.read(address, len(head)) == head
            except MemoryFault:
                settled = False
            if settled:
                self._immortal_texts[address, limit] = text
        return text

    def dict_items(self, address: int, limit: int) -> list[tuple[int, int]] | None:
        """(key, value) addresses of the first ``limit`` items of a dict (read once), or None."""
        try:
            if self._type(address).kind != "dict":
                return None
            return self._dict_pairs(address, limit, _Pass())
        except _READ_ERRORS:
            return None

    def int_value(self, address: int) -> int | None:
        """The value of an exact int of the target, or None."""
        try:
            head = self._head(address)
            if self._type_at(_U64.unpack_from(head, self._ob_type)[0]).kind != "int":
                return None
            return self._int(address, head)
        except _READ_ERRORS:
            return None

    def value(self, address: int, *, slot: int = 0, raw: int | None = None) -> OutsideValue:
        """One object, formatted; read again while it changes, ``torn`` if it never settles.

        ``slot`` is the address of the pointer that names it (a local's slot, a cell's contents)
        and ``raw`` what that pointer held when read: it is checked again with the object's own
        memory, and followed anew when it changed.
        """
        if self.memory is self._pages:
            spell = self._spell_values.get((address, 0))
            if spell is not None:  # named by another frame or thread in this same read
                known, mutable = spell
                if mutable:
                    self._mutable.add(id(known))
                    self._keep.append(known)
                return known
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
            work = _Pass()
            try:
                if slot:
                    if attempt or raw is None:
                        raw = self.memory.read_u64(slot)
                        address = raw & ~TAG_MASK
                    work.regions.append((slot, _U64.pack(raw)))
                    if not address or raw & TAG_MASK == TAG_MASK:
                        break  # unbound meanwhile
                value = self._top(address, work)
            except _READ_ERRORS:
                continue
            if not self._validate:
                # Read while nothing should run Python: _settled() checks that, then keeps it.
                self._pending.extend(work.immortal)
                if work.mutable:
                    self._mutable.add(id(value))
                    self._keep.append(value)
                return value
            if self._unchanged(work.regions):
                for cache, key, known in work.immortal:
                    cache[key] = known
                if work.mutable:
                    self._mutable.add(id(value))  # it has parts a stopped writer could be changing
                    self._keep.append(value)
                return value
        self.torn += 1
        return OutsideValue("?", TORN_TEXT, address, torn=True)

    # -- frames ------------------------------------------------------------------------------

    def _code_locals(self, code_address: int) -> tuple[tuple[str, ...], bytes]:
        cached = self._code_names.get(code_address)
        if cached is not None:
            return cached
        read_u64 = self.memory.read_u64
        names_tuple = read_u64(code_address + self._co_names)
        kinds_bytes = read_u64(code_address + self._co_kinds)
        if self._type(names_tuple).kind != "tuple" or self._type(kinds_bytes).kind != "bytes":
            raise _Torn("not a code object")
        count = self.memory.read_i64(names_tuple + self._tuple_size)
        if not 0 <= count <= MAX_LOCALS:
            raise _Torn(f"{count} local names")
        kinds = self._bytes_data_of(kinds_bytes, count)
        pointers = struct.unpack(f"<{count}Q", self.memory.read(names_tuple + self._tuple_items, 8 * count)) if count else ()
        names = []
        for pointer in pointers:
            text = self.text(pointer, MAX_NAME)
            if text is None:
                raise _Torn("a local name is not a str")
            names.append(text)
        result = (tuple(names), kinds)
        self._code_names[code_address] = result
        return result

    def _bytes_data_of(self, address: int, size: int) -> bytes:
        actual = self.memory.read_i64(address + self._bytes_size)
        if actual != size:
            raise _Torn(f"localspluskinds has {actual} bytes for {size} names")
        return self.memory.read(address + self._bytes_data, size)

    def _read_slots(self, frame_address: int, code_address: int, count: int) -> tuple[int, ...] | None:
        """The frame's localsplus slots, or None when the frame no longer runs ``code_address``."""
        low = min(self._executable, self._localsplus)
        try:
            raw = self.memory.read(frame_address + low, max(self._executable + 8, self._localsplus + 8 * count) - low)
        except MemoryFault:
            return None
        if _U64.unpack_from(raw, self._executable - low)[0] & ~TAG_MASK != code_address:
            return None
        return struct.unpack_from(f"<{count}Q", raw, self._localsplus - low)

    def _local(self, frame_address: int, index: int, kind: int, slots: tuple[int, ...]) -> OutsideValue | None:
        raw = slots[index]
        pointer = raw & ~TAG_MASK
        if raw & TAG_MASK == TAG_MASK or not pointer:
            return None  # unbound (or an interpreter-internal tagged int)
        if kind & (CO_FAST_CELL | CO_FAST_FREE):
            try:
                if self._type(pointer).kind == "cell":
                    contents = self.memory.read_u64(pointer + self.layout.cell_ref)
                    if not contents:
                        return None  # an empty cell: unbound
                    return self.value(contents, slot=pointer + self.layout.cell_ref, raw=contents)
            except _READ_ERRORS:
                self.torn += 1
                return OutsideValue("?", TORN_TEXT, pointer, torn=True)
            # Before MAKE_CELL the slot holds the value itself (a frame still in its prologue).
        return self.value(pointer, slot=frame_address + self._localsplus + 8 * index, raw=raw)

    # -- objects -----------------------------------------------------------------------------

    def _unchanged(self, regions: list[tuple[int, bytes]]) -> bool:
        """Whether every region still holds what was read; regions close together are read as one."""
        read = self.memory.read
        ordered = sorted(regions)
        index = 0
        try:
            while index < len(ordered):
                start, data = ordered[index]
                end = start + len(data)
                group = index + 1
                while group < len(ordered) and ordered[group][0] <= end + MERGE_GAP:
                    end = max(end, ordered[group][0] + len(ordered[group][1]))
                    group += 1
                now = read(start, end - start)
                for address, expected in ordered[index:group]:
                    if now[address - start : address - start + len(expected)] != expected:
                        return False
                index = group
        except MemoryFault:
            return False
        return True

    def _is_immortal(self, head: bytes) -> bool:
        """Whether an object's reference count says it is immortal (never freed)."""
        return _U64.unpack_from(head, 0)[0] & self._immortal_mask == self._immortal_mask

    def _type(self, address: int) -> _Type:
        """The type of the object at ``address`` (cached by type address)."""
        type_address = self.memory.read_u64(address + self._ob_type)
        return self._type_at(type_address)

    def _type_at(self, type_address: int) -> _Type:
        known = self._types.get(type_address)
        if known is not None:
            return known
        raw = self.memory.read(type_address, self._type_span)
        flags = _U64.unpack_from(raw, self._tp_flags)[0]
        name = self._c_string(_U64.unpack_from(raw, self._tp_name)[0])
        heap = bool(flags & TPFLAGS_HEAPTYPE)
        kind = "other"
        builtin = _BUILTINS.get(name)
        if builtin is not None and not heap and (flags & builtin[1]) == builtin[1]:
            kind = builtin[0]
        display = name.decode("utf-8", "replace")
        if heap:
            display = self._heap_type_name(type_address, display)
        basicsize = _I64.unpack_from(raw, self.layout.tp_basicsize)[0]
        dictoffset = _I64.unpack_from(raw, self.layout.tp_dictoffset)[0]
        if not 0 <= basicsize < 1 << 24:
            raise _Torn(f"type at {type_address:#x} has basic size {basicsize}")
        found = _Type(kind, display, flags, basicsize, dictoffset, heap)
        if len(self._types) < 100_000:
            self._types[type_address] = found
        return found

    def _heap_type_name(self, type_address: int, name: str) -> str:
        """``module.QualName`` of a class (``__module__`` from its dict, builtins left out)."""
        try:
            qualname = self.text(self.memory.read_u64(type_address + self.layout.ht_qualname), MAX_NAME) or name
            type_dict = self.memory.read_u64(type_address + self.layout.tp_dict)
            module = self.dict_lookup(type_dict, "__module__") if type_dict else None
            module_name = self.text(module, MAX_NAME) if module else None
        except _READ_ERRORS:
            return name
        if module_name and module_name != "builtins":
            return f"{module_name}.{qualname}"
        return qualname

    def _c_string(self, address: int) -> bytes:
        for size in (MAX_NAME, 64, 16):
            try:
                data = self.memory.read(address, size)
            except MemoryFault:
                continue
            end = data.find(b"\0")
            if end >= 0:
                return data[:end]
        raise _Torn(f"no type name at {address:#x}")

    def _head(self, address: int) -> bytes:
        try:
            return self.memory.read(address, HEAD)
        except MemoryFault:
            return self.memory.read(address, 32)  # an object at the very end of a mapping

    def _top(self, address: int, work: _Pass, depth: int = 0) -> OutsideValue:
        """One value as a variable shows it: formatted, cut to ``repr_chars``, and (at depth 0)
        the instance attributes of an object."""
        known = self._immortal_values.get(address)
        if known is not None:
            return known
        if self.memory is self._pages:
            spell = self._spell_values.get((address, depth))
            if spell is not None:
                value, mutable = spell
                work.cut = work.cut or value.cut
                work.mutable = work.mutable or mutable
                return value
            mutable = work.mutable
            work.mutable = False
            value = self._format_top(address, work, depth)
            if len(self._spell_values) < MAX_CACHED:
                self._spell_values[address, depth] = (value, work.mutable)
            work.mutable = work.mutable or mutable
            return value
        return self._format_top(address, work, depth)

    def _format_top(self, address: int, work: _Pass, depth: int) -> OutsideValue:
        head = self._head(address)
        kind_type = self._type_at(_U64.unpack_from(head, self._ob_type)[0])
        limit = self._repr_chars
        cut = work.cut
        work.cut = False
        text = self._fmt(address, depth, limit, (), work, head)
        if len(text) > limit:
            text = text[:limit] + _ELLIPSIS
            work.cut = True
        length = None
        attrs = None
        kind = kind_type.kind
        if kind in _CONTAINERS or kind in ("str", "bytes", "bytearray"):
            length = self._length(head, kind)
        elif kind == "other" and depth == 0:
            pairs = self._instance_pairs(address, head, kind_type, self._items, work)
            if pairs is not None:
                attrs = tuple(
                    (self._key_name(key) or self._fmt(key, 1, limit, (), work), self._top(value, work, 1)) for key, value in pairs
                )
        value = OutsideValue(kind_type.name, text, address, length, work.cut, False, attrs)
        if kind in _IMMUTABLE_SCALARS and not work.cut and self._is_immortal(head) and len(self._immortal_values) < MAX_CACHED:
            work.immortal.append((self._immortal_values, address, value))
        work.cut = work.cut or cut
        return value

    def _length(self, head: bytes, kind: str) -> int:
        """``len()`` of a str, bytes, bytearray or builtin container, from its head."""
        if kind == "str":
            offset = self._str_length
        elif kind in ("bytes", "bytearray"):
            offset = self._bytes_size
        elif kind == "tuple":
            offset = self._tuple_size
        elif kind == "list":
            offset = self._list_size
        elif kind == "dict":
            offset = 16  # ma_used follows the object header
        else:
            offset = self._set_used
        return _I64.unpack_from(head, offset)[0]

    def _fmt(self, address: int, depth: int, budget: int, path: tuple[int, ...], work: _Pass, head: bytes = b"") -> str:
        """The repr of one object, bounded as the agent bounds it (``Previews._fmt``)."""
        cached = self._immortal.get(address)
        if cached is not None:
            return cached
        if self.memory is self._pages:
            # A number or string met before in this read (a text shorter than the budget is
            # what any budget at least as large gives).
            cached = self._spell_texts.get(address)
            if cached is not None and len(cached) <= budget:
                return cached
        head = head or self._head(address)
        kind_type = self._type_at(_U64.unpack_from(head, self._ob_type)[0])
        kind = kind_type.kind
        if kind in _CONTAINERS:
            work.regions.append((address + self._ob_type, head[self._ob_type : self._ob_type + 8]))
            return self._fmt_container(address, head, kind, depth, budget, path, work)
        # Freed objects' memory is reused at once (pymalloc hands out the last block freed): the
        # bytes a value was made of are checked again with the rest, its type first.
        work.regions.append((address + self._ob_type, head[self._ob_type : self._ob_type + 8]))
        if kind in _IMMUTABLE_SCALARS:
            cut = work.cut
            work.cut = False
            text = self._fmt_scalar(address, head, kind_type, budget, work)
            if not work.cut:
                if self._is_immortal(head) and len(self._immortal) < MAX_CACHED:
                    work.immortal.append((self._immortal, address, text))
                if self.memory is self._pages and len(self._spell_texts) < MAX_CACHED:
                    self._spell_texts[address] = text
            work.cut = work.cut or cut
            return text
        return self._fmt_scalar(address, head, kind_type, budget, work)

    def _fmt_scalar(self, address: int, head: bytes, kind_type: _Type, budget: int, work: _Pass) -> str:
        """The repr of an object that is not a container (None ... str, classes, functions, others)."""
        kind = kind_type.kind
        if kind == "none":
            return "None"
        if kind == "int" or kind == "bool":
            number = self._int(address, head, work)
            if kind == "bool":
                if number not in (0, 1):
                    raise _Torn("a bool that is neither True nor False")
                return "True" if number else "False"
            if number is None or abs(number).bit_length() > MAX_INT_STR_DIGITS * _LOG2_10:
                work.cut = True
                return f"<int with {self._int_bits(address, head)} bits>"
            return repr(number)
        if kind == "float":
            work.regions.append((address + self._float, head[self._float : self._float + 8]))
            return repr(_F64.unpack_from(head, self._float)[0])
        if kind == "complex":
            cval = self.layout.complex_cval
            work.regions.append((address + cval, head[cval : cval + 16]))
            real, imag = _C128.unpack_from(head, cval)
            return repr(complex(real, imag))
        if kind == "str":
            text, cut = self._str_text(address, head, budget + 1, work)
            if cut:
                work.cut = True
            return repr(text)
        if kind == "bytes":
            size = _I64.unpack_from(head, self._bytes_size)[0]
            if not 0 <= size <= MAX_ENTRIES:
                raise _Torn(f"bytes of size {size}")
            wanted = min(size, budget + 1)
            if wanted < size:
                work.cut = True
            end = self._bytes_data + wanted
            data = head[self._bytes_data : end] if end <= len(head) else self.memory.read(address + self._bytes_data, wanted)
            work.regions.append((address + self._bytes_size, head[self._bytes_size : self._bytes_size + 8]))
            work.regions.append((address + self._bytes_data, data))
            return repr(data)
        if kind == "bytearray":
            work.mutable = True
            return self._bytearray(address, head, budget, work)
        if kind == "type":
            return f"<class '{self._type_at(address).name}'>"
        if kind == "function":
            qualname = self.text(_U64.unpack_from(head, self.layout.function_qualname)[0], MAX_NAME)
            if qualname is not None:
                return f"<function {qualname} at {address:#x}>"
        if kind == "module":
            name = self.text(_U64.unpack_from(head, self.layout.module_name)[0], MAX_NAME)
            if name is not None:
                return f"<module {name!r}>"  # the name only: the target's repr adds its file or "(built-in)"
        return f"<{kind_type.name} object at {address:#x}>"

    def _int(self, address: int, head: bytes, work: _Pass | None = None) -> int | None:
        """An int's value; None when it has more than MAX_INT_DIGITS digits."""
        tag = _U64.unpack_from(head, self._lv_tag)[0]
        sign, count = tag & 3, tag >> 3
        if sign == 3 or count > MAX_ENTRIES:
            raise _Torn(f"int tag {tag:#x}")
        if work is not None:
            work.regions.append((address + self._lv_tag, head[self._lv_tag : self._lv_tag + 8]))
        if count > MAX_INT_DIGITS:
            return None
        end = self._digits + 4 * count
        data = head[self._digits : end] if end <= len(head) else self.memory.read(address + self._digits, 4 * count)
        if work is not None and data:
            work.regions.append((address + self._digits, data))
        shift = self.layout.long_shift
        top = 1 << shift
        number = 0
        for digit in reversed(struct.unpack(f"<{count}I", data)):
            if digit >= top:
                raise _Torn("int digit out of range")
            number = (number << shift) | digit
        if sign == 1:
            if number:
                raise _Torn("a zero int with digits")
            return 0
        return -number if sign == 2 else number

    def _int_bits(self, address: int, head: bytes) -> int:
        count = _U64.unpack_from(head, self._lv_tag)[0] >> 3
        if not count:
            return 0
        top = self.memory.read_u32(address + self._digits + 4 * (count - 1))
        return (count - 1) * self.layout.long_shift + top.bit_length()

    def _str_text(self, address: int, head: bytes, limit: int, work: _Pass | None = None) -> tuple[str, bool]:
        """(the first ``limit`` characters of a str, whether it has more)."""
        length = _I64.unpack_from(head, self._str_length)[0]
        state = _U32.unpack_from(head, self._str_state)[0]
        kind, compact, ascii_only = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not 0 <= length <= MAX_ENTRIES or kind not in (1, 2, 4) or (ascii_only and kind != 1):
            raise _Torn(f"not a str at {address:#x}")
        wanted = min(length, limit)
        if compact:
            data_address = address + (self._ascii_size if ascii_only else self.layout.compact_unicode_size)
        else:
            data_address = self.memory.read_u64(address + self.layout.legacy_unicode_data)
        size = wanted * kind
        offset = data_address - address
        if compact and offset + size <= len(head):
            data = head[offset : offset + size]
        else:
            data = self.memory.read(data_address, size)
        if work is not None:
            work.regions.append((address + self._str_length, head[self._str_length : self._str_length + 8]))
            work.regions.append((address + self._str_state, head[self._str_state : self._str_state + 4]))
            if data:
                work.regions.append((data_address, data))
        if ascii_only:
            text = data.decode("ascii")
        elif kind == 1:
            text = data.decode("latin-1")
        elif kind == 2:
            text = data.decode("utf-16-le", "surrogatepass")
            if len(text) != wanted:  # code units that form a surrogate pair are two characters here
                text = "".join(map(chr, struct.unpack(f"<{wanted}H", data)))
        else:
            text = data.decode("utf-32-le", "surrogatepass")
        return text, wanted < length

    def _bytearray(self, address: int, head: bytes, budget: int, work: _Pass) -> str:
        size = _I64.unpack_from(head, self._bytes_size)[0]
        start = _U64.unpack_from(head, self.layout.bytearray_start)[0]
        if not 0 <= size <= MAX_ENTRIES:
            raise _Torn(f"bytearray of size {size}")
        work.regions.append((address + self._bytes_size, head[self._bytes_size : self.layout.bytearray_start + 8]))
        wanted = min(size, budget + 1)
        if wanted < size:
            work.cut = True
        data = self.memory.read(start, wanted) if wanted else b""
        if wanted:
            work.regions.append((start, data))
        return _bytearray_repr(data) if self.layout.bytearray_escapes_quote else f"bytearray({data!r})"

    # -- containers --------------------------------------------------------------------------

    def _fmt_container(
        self, address: int, head: bytes, kind: str, depth: int, budget: int, path: tuple[int, ...], work: _Pass
    ) -> str:
        open_, close = _OPEN_CLOSE[kind]
        if kind in _MUTABLE:
            work.mutable = True
        if address in path:
            return open_ + "..." + close  # a container that contains itself, as repr() shows it
        size = self._length(head, kind)
        if not 0 <= size <= MAX_ENTRIES:
            raise _Torn(f"{kind} of size {size}")
        if size == 0:
            if kind in _MUTABLE:
                work.regions.append((address + 16, _I64.pack(size)) if kind in ("dict", "list") else (address + self._set_used, _I64.pack(size)))
            return _EMPTY[kind]
        if depth >= self._depth:
            work.cut = True
            return open_ + "..." + close
        path = path + (address,)
        parts: list[str] = []
        used = len(open_)
        if kind == "dict":
            for key, value in self._dict_pairs(address, self._items, work, head):
                if used > budget:
                    break
                part = self._fmt(key, depth + 1, budget - used, path, work) + ": " + self._fmt(value, depth + 1, budget - used, path, work)
                parts.append(part)
                used += len(part) + 2
        else:
            for item in self._sequence_items(address, kind, size, work):
                if used > budget:
                    break
                part = self._fmt(item, depth + 1, budget - used, path, work)
                parts.append(part)
                used += len(part) + 2
        if len(parts) < size:
            work.cut = True
            parts.append("...")
        if kind == "tuple" and size == 1 and len(parts) == 1:
            return "(" + parts[0] + ",)"
        return open_ + ", ".join(parts) + close

    def _sequence_items(self, address: int, kind: str, size: int, work: _Pass) -> list[int]:
        """Addresses of the first ``items`` elements of a tuple, list, set or frozenset."""
        count = min(size, self._items)
        read = self.memory.read
        if kind == "tuple":
            work.regions.append((address + self._tuple_size, _I64.pack(size)))
            data = read(address + self._tuple_items, 8 * count)
            work.regions.append((address + self._tuple_items, data))
        elif kind == "list":
            # ob_size, ob_item, allocated
            span = self.layout.list_allocated + 8 - self._list_size
            header = read(address + self._list_size, span)
            size_now = _I64.unpack_from(header, 0)[0]
            items = _U64.unpack_from(header, self._list_items - self._list_size)[0]
            allocated = _I64.unpack_from(header, self.layout.list_allocated - self._list_size)[0]
            if size_now != size or not 0 <= size <= allocated or not items:
                raise _Torn("list changed size")
            work.regions.append((address + self._list_size, header))
            data = read(items, 8 * count)
            work.regions.append((items, data))
        else:
            return self._set_keys(address, size, count, work)
        pointers = struct.unpack(f"<{count}Q", data)
        if not all(pointers):
            raise _Torn(f"{kind} with a NULL item")
        return list(pointers)

    def _set_keys(self, address: int, size: int, count: int, work: _Pass) -> list[int]:
        header = self.memory.read(address + self._set_used, max(self._set_used, self._set_mask, self._set_table) + 8 - self._set_used)
        used = _I64.unpack_from(header, 0)[0]
        mask = _I64.unpack_from(header, self._set_mask - self._set_used)[0]
        table = _U64.unpack_from(header, self._set_table - self._set_used)[0]
        if mask < 0 or mask + 1 > MAX_ENTRIES or (mask + 1) & mask or used > mask + 1 or used != size:
            raise _Torn(f"set mask {mask}, {used} of {size} items")
        work.regions.append((address + self._set_used, header))
        keys: list[int] = []
        block = 64
        index = 0
        scanned = 0
        while index <= mask and len(keys) < count and scanned < MAX_SCAN_BYTES:
            entries = min(block, mask + 1 - index)
            data = self.memory.read(table + 16 * index, 16 * entries)
            work.regions.append((table + 16 * index, data))
            scanned += len(data)
            for position in range(entries):
                key = _U64.unpack_from(data, 16 * position)[0]
                if key and self._type(key).kind != "dummy":
                    keys.append(key)
                    if len(keys) >= count:
                        break
            index += entries
            block = min(block * 4, 4096)
        return keys

    def _dict_pairs(self, address: int, limit: int, work: _Pass, head: bytes = b"") -> list[tuple[int, int]]:
        """(key, value) addresses of a dict's first ``limit`` items, in iteration order."""
        end = self._dict_values + 8  # ma_used .. ma_values
        header = head[16:end] if len(head) >= end else self.memory.read(address + 16, end - 16)
        used = _I64.unpack_from(header, 0)[0]
        keys = _U64.unpack_from(header, self._dict_keys - 16)[0]
        values = _U64.unpack_from(header, self._dict_values - 16)[0]
        if not 0 <= used <= MAX_ENTRIES or not keys:
            raise _Torn(f"dict with {used} items")
        work.regions.append((address + 16, header))
        return self._keys_pairs(keys, values, min(limit, used), work)

    def _keys_pairs(self, keys: int, values: int, limit: int, work: _Pass) -> list[tuple[int, int]]:
        layout = self.layout
        head = self.memory.read(keys, layout.dk_indices)
        log2_size, log2_index_bytes, kind = head[layout.dk_log2_size], head[layout.dk_log2_index_bytes], head[layout.dk_kind]
        nentries = _I64.unpack_from(head, layout.dk_nentries)[0]
        if log2_size > 30 or not log2_size <= log2_index_bytes <= log2_size + 3 or kind > DICT_KEYS_SPLIT:
            raise _Torn("dict keys header")
        if not 0 <= nentries <= (1 << log2_size):
            raise _Torn(f"dict keys with {nentries} entries")
        work.regions.append((keys, head))
        entries = keys + layout.dk_indices + (1 << log2_index_bytes)
        width = 24 if kind == DICT_KEYS_GENERAL else 16
        key_at = 8 if kind == DICT_KEYS_GENERAL else 0
        pairs: list[tuple[int, int]] = []
        if values:
            # A split table: values[] and the insertion order live in PyDictValues.
            vhead = self.memory.read(values, layout.values_items)
            capacity, size, valid = vhead[layout.values_capacity], vhead[layout.values_size], vhead[layout.values_valid]
            if not valid or size > capacity or size > nentries + 1 or kind != DICT_KEYS_SPLIT and kind != DICT_KEYS_UNICODE:
                raise _Torn("split dict values")
            body = self.memory.read(values + layout.values_items, 8 * capacity + size)
            work.regions.append((values, vhead + body))
            order = body[8 * capacity :]
            key_data = self.memory.read(entries, width * max(nentries, max(order, default=0) + 1))
            for index in order:
                if len(pairs) >= limit:
                    break
                value = _U64.unpack_from(body, 8 * index)[0]
                key = _U64.unpack_from(key_data, width * index + key_at)[0]
                if value and key:
                    pairs.append((key, value))
            return pairs
        index = 0
        scanned = 0
        block = min(nentries, max(limit + 4, 8))
        while index < nentries and len(pairs) < limit and scanned < MAX_SCAN_BYTES:
            count = min(block, nentries - index)
            data = self.memory.read(entries + width * index, width * count)
            work.regions.append((entries + width * index, data))
            scanned += len(data)
            for position in range(count):
                key = _U64.unpack_from(data, width * position + key_at)[0]
                value = _U64.unpack_from(data, width * position + key_at + 8)[0]
                if key and value:
                    pairs.append((key, value))
                    if len(pairs) >= limit:
                        break
            index += count
            block = min(block * 4, 4096)
        return pairs

    def _instance_pairs(
        self, address: int, head: bytes, kind_type: _Type, limit: int, work: _Pass
    ) -> list[tuple[int, int]] | None:
        """(key, value) addresses of an object's instance ``__dict__``; None when it has none."""
        layout = self.layout
        flags = kind_type.flags
        work.mutable = True  # an object's attributes can change in place
        if flags & TPFLAGS_MANAGED_DICT:
            pointer = self.memory.read_u64(address + layout.managed_dict)
            work.regions.append((address + layout.managed_dict, _U64.pack(pointer)))
            if pointer:
                return self._dict_pairs(pointer, limit, work)
            if flags & TPFLAGS_INLINE_VALUES and kind_type.heap:
                type_address = _U64.unpack_from(head, self._ob_type)[0]
                keys = self._cached_keys.get(type_address)
                if keys is None:
                    keys = self._cached_keys[type_address] = self.memory.read_u64(type_address + layout.ht_cached_keys)
                if not keys:
                    return None
                # _keys_pairs checks the values' "valid" byte (0 once a dict took them over).
                return self._keys_pairs(keys, address + kind_type.basicsize, limit, work)
            return None
        if kind_type.dictoffset > 0:
            if kind_type.dictoffset >= kind_type.basicsize:
                raise _Torn("tp_dictoffset outside the object")
            pointer = self.memory.read_u64(address + kind_type.dictoffset)
            work.regions.append((address + kind_type.dictoffset, _U64.pack(pointer)))
            if pointer and self._type(pointer).kind == "dict":
                return self._dict_pairs(pointer, limit, work)
        return None

    def _key_name(self, address: int) -> str | None:
        """A dict key as a variable name: the text of a str key (at most MAX_NAME characters)."""
        return self.text(address, MAX_NAME)


__all__ = ["DEFAULT_LIMITS", "OBJECT_LAYOUTS", "ObjectLayout", "OutsideLocal", "OutsideValue", "Unsupported", "ValueReader", "layout_for"]
