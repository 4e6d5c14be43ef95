"""Bounded previews of target objects (the limits, the reprs, the children of an expanded value),
the refs they hand out (RefTable), and the last frame sent, to send the next one as a delta on it
(Baseline)."""

from .base import _chain, _compress, _f_code, _f_lasti, _f_locals, _is, _is_not, _islice_c, _repeat, time  # agent-part
from .codec import Encoded, encode, encode_around  # agent-part
from .reads import _NoneType, _dict_items, _dict_len, _error_text, _frame_locals_proxy, _islice, _member_type, _module_type, _type_dict, _type_mro, field, instance_dict, type_name  # agent-part
from .watchdog import Abandoned, PAUSED  # agent-part


DEFAULT_LIMITS = {
    "repr_chars": 200,  # length of one preview string
    "items": 10,  # container elements shown inside one preview
    "depth": 3,  # nesting shown inside one preview
    "locals": 100,  # locals per stack frame
    "module_vars": 1000,  # variables per watched module
    "stack_depth": 128,  # stack frames per thread (innermost first)
    "threads": 512,  # threads per frame
    "frame_bytes": 2 * 1024 * 1024,  # estimated encoded size of one frame
    "repr_budget": 0.1,  # seconds one __repr__ may take before its type is given up on
    "frame_budget": 0.5,  # CPU seconds of user __repr__ calls per frame
    "module_cpu": 0.005,  # CPU seconds per frame of the agent's own work on watched modules' variables
    "refs": 50000,  # objects held for lazy expansion
    "eval_output": 1 << 20,  # characters of print output kept per eval
    "await_timeout": 30.0,  # seconds eval code may run in the target's loop thread before it is stopped
}

_ELLIPSIS = "\u2026"
_FULL_REPR = 1 << 20  # characters of the whole repr an eval result or the value inspector may show
_SCALARS = frozenset([int, float, complex, bool, _NoneType, type(Ellipsis), type(NotImplemented)])
_C_REPR_SAFE = frozenset(
    [
        type(len),  # builtin_function_or_method
        type(lambda: None),  # function
        type((lambda: None).__code__),  # code
        type("".join),  # builtin method (same as builtin_function_or_method)
        type(object.__init__),  # wrapper_descriptor
        type(object().__str__),  # method-wrapper
        type(str.join),  # method_descriptor
        range,
    ]
)
_CONTAINERS = frozenset([list, tuple, dict, set, frozenset])
_NOT_EXPANDABLE = frozenset([int, float, complex, bool, _NoneType, str, bytes, bytearray, range])


class RefTable:
    """Objects that previews point at (ref id -> object), for lazy expansion. Bounded; cleared on detach.

    Refs seen in the last two frames stay; refs handed out by expand and eval stay pinned until
    the table is full, oldest first.
    """

    def __init__(self, limit):
        self.limit = limit
        self.objects = {}  # ref -> object
        self.by_id = {}  # id(object) -> ref
        self.seen = {}  # ref -> frame seq (or -1 when pinned)
        self.next_ref = 1
        self.seq = 0
        self.keep = frozenset()  # refs in periscope's view (expanded objects): they do not expire

    def ref(self, obj, pin=False):
        key = id(obj)
        ref = self.by_id.get(key)
        if ref is None or self.objects.get(ref) is not obj:
            if len(self.objects) >= self.limit:
                return None
            ref = self.next_ref
            self.next_ref += 1
            self.objects[ref] = obj
            self.by_id[key] = ref
        if pin:
            self.seen[ref] = -1
        elif self.seen.get(ref) != -1:
            self.seen[ref] = self.seq
        return ref

    def get(self, ref):
        return self.objects.get(ref)

    def touch(self, refs, objects):
        """Whether every ref of ``refs`` still leads to its object of ``objects``; if so, each
        counts as seen in this frame, as ``ref`` would have it (C-level passes, not a call per ref)."""
        if not all(map(_is, map(self.objects.get, refs), objects)):
            return False
        seen = self.seen
        if -1 in map(seen.get, refs):  # pinned ones stay pinned
            for ref in refs:
                if seen.get(ref) != -1:
                    seen[ref] = self.seq
        else:
            seen.update(zip(refs, _repeat(self.seq)))
        return True

    def end_frame(self):
        """Drop refs not seen in the last two frames (pinned ones stay until the table is full)."""
        self.seq += 1
        old = self.seq - 2
        keep = self.keep
        drop = [r for r, s in self.seen.items() if 0 <= s < old and r not in keep]
        if len(self.objects) > self.limit * 3 // 4:
            pinned = [r for r, s in self.seen.items() if s == -1]
            drop += pinned[: len(pinned) // 2]
        for ref in drop:
            obj = self.objects.pop(ref, None)
            self.seen.pop(ref, None)
            if obj is not None and self.by_id.get(id(obj)) == ref:
                del self.by_id[id(obj)]

    def clear(self):
        self.objects.clear()
        self.by_id.clear()
        self.seen.clear()


def _brief_sig(entry):
    """What a brief thread entry (header and innermost frame, no values) shows, as a plain tuple."""
    stack = entry["stack"]
    top = stack[0] if stack else None
    return (
        entry["native_id"], entry["name"], entry["daemon"], entry["main"], entry["agent"], entry["depth"], entry["stack_omitted"],
        None if top is None else (top["file"], top["line"], top["func"], top["qualname"]),
    )


def _encode_stack_entry(item, known):
    """``(item, its encoding, {local's name: (its preview, its encoding)})`` for a stack entry that
    changed since ``known`` (that tuple for the same frame in the last frame, or None): its locals
    that did not change (most of them, in a frame where one counter moved) are not encoded again.
    Equal previews and entries encode alike because the agent makes each with its keys in one
    order (``Previews.preview``, ``FrameBuilder._build_frame``)."""
    names = item["locals"]
    encodings = {}
    if not names:
        return item, Encoded(encode(item)), encodings, None
    before = {} if known is None else known[2]
    pieces = []
    for pair in names:
        old = before.get(pair[0])
        data = old[1] if old is not None and old[0] == pair[1] else encode(pair)
        encodings[pair[0]] = (pair[1], data)
        pieces.append(Encoded(data))
    data, around = encode_around(item, "locals", pieces, None if known is None else known[3])
    return item, Encoded(data), encodings, around


class Baseline:
    """The last frame sent on the stream, entry by entry, to send the next one as a delta on it
    (PROTOCOL.md, *Deltas and the view*). Pure data: no target object is kept here."""

    def __init__(self):
        self.seq = None  # None: the next frame goes out full
        self.threads = {}  # ident -> (brief signature or None, encoded entry, its bytes around the stack or None, the stack list, its entries' (fid, encoding) and their Encoded, by position)
        self.stack_entries = {}  # a detailed stack entry's fid -> (that entry, its encoding, its locals' encodings, its bytes around them)
        self.order = []
        self.modules = {}  # name -> encoded entry
        self.module_order = []

    def reset(self):
        """The next frame goes out full (a resync, or a new connection)."""
        self.seq = None

    def delta(self, frame, seq):
        """Turn ``frame`` (a full frame's map, numbered ``seq``) into a delta on this baseline, in
        place, and make it the new baseline. An unchanged brief thread is recognised by its
        signature, without encoding it; every other entry by its encoding, made of its stack
        entries' encodings, each one reused while that entry is equal to the last frame's."""
        full = self.seq is None
        old_threads = {} if full else self.threads
        old_entries = self.stack_entries
        stack_entries = {}
        threads = {}
        changed = []
        order = []
        for entry in frame["threads"]:
            ident = entry["ident"]
            order.append(ident)
            old = old_threads.get(ident)
            sig = _brief_sig(entry) if entry.get("brief") else None
            if sig is not None and old is not None and old[0] == sig:
                threads[ident] = old
                continue
            around = None
            stack = entry["stack"]
            kept = pieces = None
            if sig is None and stack:
                known = self.threads.get(ident)  # the bytes around the stack depend on the rest of the entry alone
                if known is not None and known[3] is not None and len(known[3]) == len(stack):
                    # Entries that are the last frame's own (kept by FrameBuilder) keep their
                    # encoding without a look: only the others are compared, and encoded if changed.
                    kept, pieces = list(known[4]), list(known[5])
                    positions = _compress(range(len(stack)), map(_is_not, stack, known[3]))
                else:
                    kept, pieces = [None] * len(stack), [None] * len(stack)
                    positions = range(len(stack))
                for position in positions:
                    item = stack[position]
                    fid = item.get("fid")
                    known = old_entries.get(fid)
                    if known is None or known[0] != item:
                        known = _encode_stack_entry(item, known)
                    kept[position] = (fid, known)
                    pieces[position] = known[1]
                stack_entries.update(kept)
                stack_entries.pop(None, None)
                known = self.threads.get(ident)
                data, around = encode_around(entry, "stack", pieces, None if known is None else known[2])
            else:
                data = encode(entry)
            threads[ident] = (sig, data, around, stack if kept is not None else None, kept, pieces)
            if old is None or old[1] != data:
                changed.append(Encoded(data))
        old_modules = {} if full else self.modules
        modules = {}
        changed_modules = []
        module_order = []
        for entry in frame["modules"]:
            name = entry["name"]
            module_order.append(name)
            data = encode(entry)
            modules[name] = data
            if old_modules.get(name) != data:
                changed_modules.append(Encoded(data))
        frame["base"] = self.seq
        frame["threads"] = changed
        frame["modules"] = changed_modules
        if not full:
            if order != self.order:
                frame["order"] = order
            if module_order != self.module_order:
                frame["module_order"] = module_order
        self.seq = seq
        self.threads = threads
        self.stack_entries = stack_entries
        self.order = order
        self.modules = modules
        self.module_order = module_order
        return frame


class KeptThread:
    """One thread's stack as the last frame showed it, every entry's locals kept across frames
    (``Previews.thread_memo``, ``Previews.same_thread``). It holds what the entries' own memos
    hold (their values and the containers their previews show), not the frames."""

    __slots__ = ("fids", "codes", "lastis", "depth", "stack", "knowns", "fid_knowns", "spent", "others", "frames_at", "totals", "names", "values", "sized",
                 "sizes", "seqs", "seq_flat", "dicts", "dict_flat", "ref_ids", "ref_objects")


class Previews:
    """Bounded previews of target objects; runs in a watched worker thread (user code may run)."""

    def __init__(self, agent, worker, limits, refs, cpu_deadline, kept=None):
        self.agent = agent
        self.worker = worker
        self.limits = limits
        self.refs = refs
        self.cpu_deadline = cpu_deadline  # the worker's thread CPU time at which user reprs stop
        self.repr_chars = limits["repr_chars"]
        self.items = limits["items"]
        self.depth = limits["depth"]
        self.bytes = 0  # estimated encoded size so far
        # One preview per object per job: the same object under several names (a Thread as
        # ``self`` in three frames of its thread) is formatted, and its __repr__ run, once. The
        # job holds the objects it saw until it ends, so an id is not reused meanwhile.
        self.seen = {}  # id -> (object, preview, its estimated size)
        # Across frames (``kept``, the last frame's ``pure``): a preview made of nothing but
        # numbers, strings, bytes and the builtin containers is a function of the objects in its
        # window (a container's length and the first ``items`` entries, to ``depth``), so while
        # those are the same objects, checked by identity with C-level reads, it is the same
        # preview. Anything else in it (a repr of the target's, a class, a function, a module, a
        # bytearray) is made again every frame. Each frame's previews hold their objects until
        # the next frame's are made, as the refs do.
        self.kept = kept  # id -> (object, preview, size, checks), or None: no memo across frames
        self.pure = None if kept is None else {}  # this job's, for the next frame
        self._checks = None  # (container, its length, the window shown or None) of the preview being made
        self._pure = False

    def preview(self, obj, pin=False, repr_chars=None):
        """``{"type", "repr", "ref"?, "len"?, "cut"?, "fail"?}`` for one object.

        An error while formatting it becomes its preview (``<preview failed: ...>``): one value
        never costs the frame. Within one job, an object shown again gets the same preview (the
        same dict: nothing changes a preview once it is made).
        """
        memo = not pin and repr_chars is None
        if memo:
            key = id(obj)
            known = self.seen.get(key)
            if known is not None and known[0] is obj:
                self.bytes += known[2]
                return known[1]
            if self.kept is not None:
                known = self.kept.get(key)
                if known is not None and known[0] is obj and self._same_window(known[3]):
                    result = known[1]
                    if "ref" not in result or self.refs.ref(obj) == result["ref"]:
                        self.bytes += known[2]
                        self.seen[key] = known
                        self.pure[key] = known
                        return result
        cls = type(obj)
        limit = repr_chars or self.repr_chars
        self._cut = False
        self._fail = False
        self._pure = True
        self._checks = [] if memo and self.pure is not None else None
        try:
            text = self._fmt(obj, 0, limit, ())
        except Abandoned:
            raise
        except BaseException as error:
            self._fail = True
            text = "<preview failed: %s>" % _error_text(error)
        if len(text) > limit:
            text = text[:limit] + _ELLIPSIS
            self._cut = True
        result = {"type": type_name(cls), "repr": text}
        # A cut string gets a ref too: not to expand, but for its whole repr (op eval_repr).
        if cls not in _NOT_EXPANDABLE or (self._cut and (cls is str or cls is bytes or cls is bytearray)):
            ref = self.refs.ref(obj, pin)
            if ref is not None:
                result["ref"] = ref
        if cls in _CONTAINERS or cls in (str, bytes, bytearray):
            result["len"] = len(obj)
        if self._cut:
            result["cut"] = True
        if self._fail:
            result["fail"] = True
        size = len(text) + len(result["type"]) + 24
        self.bytes += size
        if memo:
            self.seen[key] = (obj, result, size)
            checks, self._checks = self._checks, None
            if checks is not None and self._pure and not self._fail:
                self.pure[key] = (obj, result, size, checks)
        return result

    def same_locals(self, known, code, items, total):
        """Whether a frame's locals (``items``, ``total`` of them, read in C) are those of
        ``known`` (``frame_memo``, for the same frame id in the last frame): the same code, names
        and values by identity, every preview's window still the same objects and its ref still
        held. If so, they count as if made again."""
        if known[0] is not code or known[2] != total or len(items) != len(known[1]):
            return False
        if not all(map(_is, _chain(items), _chain(known[1]))) or not self._same_window(known[4]):
            return False
        refs = self.refs
        for obj, ref in known[5]:
            if refs.ref(obj) != ref:
                return False
        self.bytes += known[6]
        return True

    def frame_memo(self, code, items, total, named):
        """What ``same_locals`` checks the next frame's locals against, or None when one of them
        has no preview kept across frames (a repr of the target's, a class...)."""
        pure = self.pure
        checks = []
        refs = []
        spent = 0
        for name, value in items:
            kept = pure.get(id(value))
            if kept is None or kept[0] is not value:
                return None
            checks += kept[3]
            if "ref" in kept[1]:
                refs.append((value, kept[1]["ref"]))
            spent += len(name) + 8 + kept[2]
        return (code, items, total, named, checks, refs, spent)

    def thread_memo(self, frames, depth, stack, knowns):
        """What ``same_thread`` checks the next frame's stack of this thread against: ``frames``
        (the frames shown, innermost first, ``depth`` in all), ``stack`` (their entries, as sent)
        and each entry's ``frame_memo`` (``knowns``, None for an entry that has none: it is made
        again every frame). None when no entry has one."""
        limit = self.limits["locals"]
        if len(knowns) != len(stack) or len(frames) != len(stack) or knowns[1:].count(None) == len(knowns) - 1:
            return None
        memo = KeptThread()
        memo.totals = totals = []
        memo.names, memo.values = [], []
        memo.sized, memo.sizes, memo.seqs, memo.seq_flat, memo.dicts, memo.dict_flat = [], [], [], [], [], []
        memo.ref_ids, memo.ref_objects = [], []
        memo.frames_at = []  # the positions whose locals same_thread reads
        memo.others = []  # the positions made again every frame
        memo.knowns = [None] * len(stack)
        memo.fid_knowns = []
        memo.spent = 0
        for position, known in enumerate(knowns):
            # The innermost frame is the one that runs: it is checked on its own (same_locals),
            # so that a counter moving there costs one entry, not the whole stack's check.
            if position == 0 or known is None or known[2] > limit or len(known[1]) != known[2]:
                memo.others.append(position)
                continue
            memo.knowns[position] = known
            memo.fid_knowns.append((stack[position]["fid"], known))
            memo.spent += known[6]
            memo.frames_at.append(position)
            totals.append(known[2])
            memo.names += [pair[0] for pair in known[1]]
            memo.values += [pair[1] for pair in known[1]]
            for container, size, window in known[4]:
                memo.sized.append(container)
                memo.sizes.append(size)
                if window is None:
                    continue
                if type(container) is dict:
                    memo.dicts.append(container)
                    memo.dict_flat += _chain(window)
                else:
                    memo.seqs.append(container)
                    memo.seq_flat += window
            for obj, ref in known[5]:
                memo.ref_objects.append(obj)
                memo.ref_ids.append(ref)
        if not memo.frames_at:
            return None
        memo.fids = list(map(id, frames))
        memo.codes = list(map(_f_code, frames))
        memo.lastis = list(map(_f_lasti, frames))
        memo.depth = depth
        memo.stack = stack
        return memo

    def same_thread(self, memo, frames):
        """Whether a thread whose shown ``frames`` are ``memo``'s (by identity and position, see
        ``FrameBuilder._build_frame``) still has every frame's locals, and every container their
        previews show, as they were: ``same_locals`` for the whole stack at once, in a few C-level
        passes (no call per frame or per value), for the entries it kept (``knowns``)."""
        items = self.items
        try:
            proxies = list(map(_f_locals, [frames[i] for i in memo.frames_at]))
            if not all(map(_is, map(type, proxies), _repeat(_frame_locals_proxy))):
                return False
            # Names and values as two lists each (no pair made per local): the names, from the
            # code object or the frame's extra locals, are the very strings again while unchanged.
            if list(map(len, proxies)) != memo.totals:
                return False
            if not all(map(_is, _chain(map(_frame_locals_proxy.values, proxies)), memo.values)):
                return False
            if not all(map(_is, _chain(map(_frame_locals_proxy.keys, proxies)), memo.names)):
                return False
            if list(map(len, memo.sized)) != memo.sizes:
                return False
            now = list(_chain(map(_islice_c, memo.seqs, _repeat(0), _repeat(items))))
            if len(now) != len(memo.seq_flat) or not all(map(_is, now, memo.seq_flat)):
                return False
            now = list(_chain(_chain(map(_islice_c, map(_dict_items, memo.dicts), _repeat(0), _repeat(items)))))
            if len(now) != len(memo.dict_flat) or not all(map(_is, now, memo.dict_flat)):
                return False
        except Abandoned:
            raise
        except BaseException:  # a container changed size under a collection's finalizer: made again
            return False
        finally:
            proxies = now = None
        return self.refs.touch(memo.ref_ids, memo.ref_objects)

    def _same_window(self, checks):
        """Whether every container a kept preview was made from still has the same length and
        the same objects in the window it showed (C-level reads and identity only)."""
        items = self.items
        for container, size, window in checks:
            if len(container) != size:  # an exact builtin container: its own C length
                return False
            if window is not None:
                if type(container) is dict:
                    now = _islice(_dict_items(container), 0, items)
                    if len(now) != len(window) or not all(map(_is, _chain(now), _chain(window))):
                        return False
                else:
                    now = _islice(container, 0, items)
                    if len(now) != len(window) or not all(map(_is, now, window)):
                        return False
        return True

    def result_preview(self, obj, repr_chars):
        """The preview of an eval's result: every item up to ``repr_chars`` characters (not just
        the first ``items`` of a frame's preview); a cut one says how many characters it dropped."""
        return self.full_preview(obj, repr_chars, pin=True)

    def full_preview(self, obj, repr_chars, pin=False):
        """A preview up to ``repr_chars`` characters with the items and depth that fit (user
        ``__repr__`` calls as ever watched); ``dropped`` says how many characters were cut, and
        ``dropped_more`` that there were more than that (the whole repr was not made)."""
        limit = max(1, min(repr_chars, _FULL_REPR))
        saved = self.repr_chars, self.items, self.depth
        self.repr_chars = _FULL_REPR
        self.items = max(self.items, min(_FULL_REPR // 2, limit * 8 + 1000))
        self.depth = max(self.depth, 16)
        try:
            result = self.preview(obj, pin=pin, repr_chars=_FULL_REPR)
        finally:
            self.repr_chars, self.items, self.depth = saved
        text = result["repr"]
        if len(text) > limit:
            result["dropped"] = len(text) - limit
            if result.get("cut"):
                result["dropped_more"] = True
            result["repr"] = text[:limit] + _ELLIPSIS
            result["cut"] = True
        return result

    def _fmt(self, obj, depth, budget, path):
        cls = type(obj)
        if cls in _SCALARS:
            try:
                return repr(obj)
            except ValueError:  # an int beyond sys.get_int_max_str_digits()
                self._cut = True
                return "<int with %d bits>" % obj.bit_length()
        if cls is str or cls is bytes or cls is bytearray:
            if cls is bytearray:
                self._pure = False  # changes in place
            if len(obj) > budget:
                self._cut = True
                return repr(obj[: budget + 1])
            return repr(obj)
        if cls in _CONTAINERS:
            return self._fmt_container(obj, cls, depth, budget, path)
        self._pure = False  # a class, a function, a module or the target's own repr: made anew each frame
        if cls is type:
            return "<class '%s'>" % type_name(obj)
        if cls is _module_type:
            return _module_repr(obj)
        if cls in _C_REPR_SAFE:
            return repr(obj)
        return self.user_repr(obj)

    def _fmt_container(self, obj, cls, depth, budget, path):
        if cls is dict:
            open_, close = "{", "}"
        elif cls is list:
            open_, close = "[", "]"
        elif cls is tuple:
            open_, close = "(", ")"
        elif cls is set:
            open_, close = "{", "}"
        else:
            open_, close = "frozenset({", "})"
        key = id(obj)
        if key in path:
            return open_ + "..." + close  # a container that contains itself, as Python shows it
        size = len(obj)
        checks = self._checks
        if size == 0:
            if checks is not None:
                checks.append((obj, 0, None))
            return {set: "set()", frozenset: "frozenset()"}.get(cls, open_ + close)
        if depth >= self.depth:
            self._cut = True
            if checks is not None:
                checks.append((obj, size, None))
            return open_ + "..." + close
        path = path + (key,)
        try:
            # A single C-level copy: no user code runs, so another thread cannot mutate midway.
            if cls is dict:
                entries = _islice(_dict_items(obj), 0, self.items)
            else:
                entries = _islice(obj, 0, self.items)
        except RuntimeError:  # changed size during iteration (cannot happen with the GIL held)
            self._cut = True
            self._pure = False
            return open_ + "..." + close
        if checks is not None:
            checks.append((obj, size, entries))
        parts = []
        used = len(open_)
        for entry in entries:
            if used > budget:
                break
            if cls is dict:
                part = self._fmt(entry[0], depth + 1, budget - used, path) + ": " + self._fmt(entry[1], depth + 1, budget - used, path)
            else:
                part = self._fmt(entry, depth + 1, budget - used, path)
            parts.append(part)
            used += len(part) + 2
        if len(parts) < size:
            self._cut = True
            parts.append("...")
        if cls is tuple and size == 1 and len(parts) == 1:
            return "(" + parts[0] + ",)"
        return open_ + ", ".join(parts) + close

    def user_repr(self, obj):
        """``repr(obj)`` for an object whose ``__repr__`` may be the target's own code."""
        cls = type(obj)
        agent = self.agent
        if cls in agent.hung_types:
            self._fail = True
            return "<repr timed out>"
        if agent.values_paused:
            self._fail = True
            return "<%s>" % PAUSED
        if time.thread_time() > self.cpu_deadline:
            self._cut = True
            return "<%s object: repr skipped, time budget spent>" % type_name(cls)
        try:
            text = self.worker.call(cls, repr, obj)
        except Abandoned:
            raise
        except BaseException as error:
            self._fail = True
            return "<repr failed: %s>" % _error_text(error)
        if type(text) is not str:
            text = str.__str__(text)
        if len(text) > self.repr_chars * 4:
            self._cut = True
            text = text[: self.repr_chars * 4] + _ELLIPSIS
        return text

    # ---- children for lazy expansion ------------------------------------------------------

    def children(self, obj, kind, offset, limit):
        """The children of one object: items of a container, or attributes."""
        cls = type(obj)
        kinds = []
        if issubclass(cls, (dict, list, tuple, set, frozenset)):
            kinds.append("items")
        if cls not in _CONTAINERS:
            kinds.append("attrs")
        if kind == "auto":
            kind = kinds[0] if kinds else "attrs"
        if kind == "items":
            total, pairs = self._items(obj, cls, offset, limit)
        elif kind == "attrs":
            total, pairs = self._attrs(obj, cls, offset, limit)
        else:
            raise ValueError("unknown kind %r (use auto, items or attrs)" % (kind,))
        children = [[name, self.preview(value, pin=True)] for name, value in pairs]
        return {"kind": kind, "kinds": kinds, "offset": offset, "total": total, "children": children}

    def _items(self, obj, cls, offset, limit):
        if issubclass(cls, dict):
            total = _dict_len(obj)
            entries = _islice(_dict_items(obj), offset, offset + limit)
            return total, [(self.label(k), v) for k, v in entries]
        if issubclass(cls, (list, tuple)):
            total = (list.__len__ if issubclass(cls, list) else tuple.__len__)(obj)
            getitem = list.__getitem__ if issubclass(cls, list) else tuple.__getitem__
            values = getitem(obj, slice(offset, offset + limit))
            return total, [("[%d]" % (offset + i), v) for i, v in enumerate(values)]
        if issubclass(cls, (set, frozenset)):
            total = (set.__len__ if issubclass(cls, set) else frozenset.__len__)(obj)
            values = _islice((set.__iter__ if issubclass(cls, set) else frozenset.__iter__)(obj), offset, offset + limit)
            return total, [("{%d}" % (offset + i), v) for i, v in enumerate(values)]
        raise ValueError("%s has no items to expand" % type_name(cls))

    def label(self, key):
        """A dict key or attribute name as text: a str as it is, anything else as its preview
        (so a key's own ``__str__``/``__repr__`` runs only as a watched call, like any repr)."""
        if type(key) is str:
            return key
        self._cut = False
        try:
            text = self._fmt(key, 1, 80, ())
        except Abandoned:
            raise
        except BaseException as error:
            return "<key failed: %s>" % _error_text(error)
        return text[:80] + _ELLIPSIS if len(text) > 80 else text

    def named(self, items, budget, cpu_budget=None):
        """``[[name, preview], ...]`` of ``(name, value)`` pairs until the frame's size budget
        (or ``cpu_budget``, seconds of this thread's CPU time) is spent, and whether it was."""
        result = []
        worker = self.worker
        # The target's own __repr__ calls have their own budgets (repr_budget, frame_budget):
        # cpu_budget bounds the agent's own work.
        stop_at = None if cpu_budget is None else time.thread_time() - worker.target_cpu + cpu_budget
        for index, (key, value) in enumerate(items):
            if self.bytes > budget:
                return result, True
            if stop_at is not None and index & 15 == 15 and time.thread_time() - worker.target_cpu > stop_at:
                return result, True
            key = self.label(key)
            self.bytes += len(key) + 8
            result.append([key, self.preview(value)])
        return result, False

    def _attrs(self, obj, cls, offset, limit):
        # The instance dict (or a class's namespace) by C-level reads only, then __slots__
        # members; a page costs memory in proportion to the page, not to the namespace.
        if issubclass(cls, type):
            namespace = dict(_type_dict(obj))
        else:
            namespace = instance_dict(obj)
        slots = []
        if not issubclass(cls, type) and cls is not _module_type:
            for klass in _type_mro(cls):
                names = _type_dict(klass).get("__slots__")
                if type(names) is str:
                    names = (names,)
                if type(names) not in (tuple, list):
                    continue  # iterating anything else would run the class's own code
                for slot in names:
                    if type(slot) is not str:
                        continue
                    descriptor = _type_dict(klass).get(slot)
                    if type(descriptor) is not _member_type:
                        continue
                    try:
                        slots.append((slot, descriptor.__get__(obj, klass)))
                    except AttributeError:
                        continue
        in_dict = 0 if namespace is None else _dict_len(namespace)
        page = _islice(_dict_items(namespace), offset, offset + limit) if offset < in_dict else []
        if len(page) < limit:
            first = max(0, offset - in_dict)
            page += slots[first : first + limit - len(page)]
        return in_dict + len(slots), [(self.label(k), v) for k, v in page]


def _module_repr(module):
    """``repr(module)`` as importlib writes it, from C-level reads of the module's and its spec's
    instance dicts (module.__repr__ itself asks importlib, which reads properties of the spec
    and calls the loader's code)."""
    spec = field(module, "__spec__")
    name = field(spec, "name") if spec is not None else None
    if type(name) is not str:
        name = field(module, "__name__")
    name = repr(name) if type(name) is str else "'?'"
    origin = field(spec, "origin") if spec is not None else None
    if type(origin) is str:
        if field(spec, "_set_fileattr") is True:
            return "<module %s from %r>" % (name, origin)
        return "<module %s (%s)>" % (name, origin)
    where = field(module, "__file__")
    if spec is None and type(where) is str:
        return "<module %s from %r>" % (name, where)
    return "<module %s>" % name
