"""The namespaces REPL code runs in (the session's names over a module's globals or a frame's
locals), what is left of them after detach, and name completion read without running target code."""

from .reads import _NoneType, _dict_get, _dict_items, _frame_locals_proxy, _islice, _module_type, _type_dict, _type_mro, instance_dict  # agent-part


_COPIED_GLOBALS = ("__builtins__", "__name__", "__package__", "__spec__")
"""Globals the interpreter reads from a globals dict itself (builtins, the module a class or a
relative import belongs to): copied into the session's globals from the module's."""


class SessionGlobals(dict):
    """The globals REPL code runs with: the session's own names (this dict's own content) over a
    module's globals (``base``: the module's dict, or a frame's ``f_globals``).

    Reads see the session's names, then the module's (``__missing__``, which the interpreter's
    LOAD_GLOBAL and LOAD_NAME use for a globals dict that is not exactly a dict: functions the
    REPL defines see the session's imports and helpers too). Assigning a name the module already
    has writes through to it, and the target's code sees it; any other name stays the session's,
    so nothing of the session is left in the target after detach. ``__builtins__`` and
    ``__name__`` (and ``__package__``, ``__spec__``) are copied in: the interpreter reads those
    from the dict itself.
    """

    def __init__(self, base):
        dict.__init__(self)
        self.base = base
        for name in _COPIED_GLOBALS:
            value = _dict_get(base, name, _MISSING)
            if value is not _MISSING:
                dict.__setitem__(self, name, value)
        if not dict.__contains__(self, "__builtins__"):
            dict.__setitem__(self, "__builtins__", __builtins__)

    def __missing__(self, name):
        return self.base[name]

    def __setitem__(self, name, value):
        if not dict.__contains__(self, name) and _has_name(self.base, name):
            self.base[name] = value
        else:
            dict.__setitem__(self, name, value)

    def __delitem__(self, name):
        if dict.__contains__(self, name):
            dict.__delitem__(self, name)
        else:
            del self.base[name]

    def __contains__(self, name):
        return dict.__contains__(self, name) or name in self.base

    def own_items(self):
        """The session's own names and values (without the two copied in)."""
        base = self.base
        return [(k, v) for k, v in dict.items(self) if k not in _COPIED_GLOBALS or _dict_get(base, k, _MISSING) is not v]

    def keys(self):
        names = list(self.base)
        seen = set(names)
        names.extend(name for name in dict.keys(self) if name not in seen)
        return names

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def get(self, name, default=None):
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return self.base.get(name, default)

    def items(self):
        return [(name, self.get(name)) for name in self.keys()]

    def values(self):
        return [value for _name, value in self.items()]

    def __repr__(self):
        return repr(dict(self.items()))

    def __reduce__(self):
        return (dict, (dict(self.items()),))


def release_names(names):
    """After detach, leave a session's names (a SessionGlobals) with nothing of the agent in them.

    They outlive the session only where the target holds on to something the REPL made: a
    function's ``__globals__``, which cannot be replaced. Its class becomes a plain dict subclass
    whose only method is the module's own ``dict.__getitem__`` (a builtin: no agent code, no
    reference to the agent's module), so that function still sees the session's names and then
    the module's, and its writes stay in its own dict; the instance forgets its ``base``.
    """
    base = names.base
    module_name = _dict_get(base, "__name__") if type(base) is dict else None
    released = type(
        "namespace",
        (dict,),
        {
            "__missing__": base.__getitem__,
            "__module__": module_name if type(module_name) is str else "builtins",
            "__doc__": "The names a periscope REPL session defined here, over the module's.",
        },
    )
    try:
        names.__class__ = released
    except TypeError:
        return
    object.__getattribute__(names, "__dict__").clear()


class SessionLocals:
    """The locals REPL code runs with in a frame: the frame's ``f_locals`` (``base``, a
    write-through proxy on 3.13+) with the session's names (``own``, its SessionGlobals) over
    them. Assigning a name the frame has writes through; any other name is the session's, kept
    for later lines in the same frame, as pdb keeps them."""

    def __init__(self, base, own):
        self.base = base
        self.own = own

    def __getitem__(self, name):
        own = self.own
        if dict.__contains__(own, name) and name not in _COPIED_GLOBALS:
            return dict.__getitem__(own, name)
        try:
            return self.base[name]
        except KeyError:
            pass
        # LOAD_NAME reads the globals next, but only their own content (PyDict_GetItemRef calls
        # no __missing__), which is the session's names: the frame's globals are read here.
        return own.base[name]

    def __setitem__(self, name, value):
        if not dict.__contains__(self.own, name) and _has_name(self.base, name):
            self.base[name] = value
        else:
            dict.__setitem__(self.own, name, value)

    def __delitem__(self, name):
        if dict.__contains__(self.own, name):
            dict.__delitem__(self.own, name)
        else:
            del self.base[name]

    def __contains__(self, name):
        return dict.__contains__(self.own, name) or _has_name(self.base, name)

    def keys(self):
        """Every name code here sees as local (``dir()``, ``locals()``): the frame's, then the session's."""
        names = list(self.base)
        seen = set(names)
        names.extend(name for name, _value in self.own.own_items() if name not in seen)
        return names

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def items(self):
        return [(name, self.get(name)) for name in self.keys()]

    def values(self):
        return [value for _name, value in self.items()]

    def __repr__(self):
        return repr(dict(self.items()))


def _has_name(mapping, name):
    """Whether a dict or frame-locals proxy has the str key ``name``, by C-level reads only (a
    key of the target's own type is never compared, so its ``__eq__`` never runs). Any other
    mapping (a frame run by ``exec(code, g, mapping)``) is asked: this runs in the eval thread,
    where the user's code runs the target's code anyway."""
    cls = type(mapping)
    if cls is dict:
        items = _dict_items(mapping)
    elif cls is _frame_locals_proxy:
        items = cls.items(mapping)
    else:
        return name in mapping
    for key, _value in items:
        if type(key) is str and key == name:
            return True
    return False


_COMPLETE_LIMIT = 500
_KEYWORDS = (
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
)


_mappingproxy = type(type.__dict__)


def _str_keys(mapping, limit=100000):
    """The str keys of a dict, a class's namespace or a frame-locals proxy, read in C (other key
    types are skipped)."""
    cls = type(mapping)
    if cls is dict or cls is SessionGlobals:  # the session's own names: its dict content
        keys = _islice(dict.keys(mapping), 0, limit)
    elif cls is _mappingproxy:  # only ever a class's own namespace here: a dict inside
        keys = _islice(_mappingproxy.keys(mapping), 0, limit)
    elif cls is _frame_locals_proxy:
        keys = _islice(cls.keys(mapping), 0, limit)
    else:
        return []
    return [key for key in keys if type(key) is str]


def _lookup(mapping, name):
    """``mapping[name]`` for a str key by comparing str keys only (no key's ``__eq__`` runs), or
    ``_MISSING``."""
    cls = type(mapping)
    if cls is dict or cls is SessionGlobals:
        items = _dict_items(mapping)
    elif cls is _mappingproxy or cls is _frame_locals_proxy:
        items = cls.items(mapping)
    else:
        return _MISSING
    for key, value in items:
        if type(key) is str and key == name:
            return value
    return _MISSING


_MISSING = object()


def _static_attribute(obj, name):
    """The attribute ``name`` of ``obj`` as stored, or ``_MISSING``: from its instance dict (a
    module's globals, a class's namespace along its MRO) or as a plain class attribute. A
    descriptor found on the class (a property, a slot, a method) is not called: ``_MISSING``."""
    if issubclass(type(obj), type):  # not isinstance(): that asks a hostile object its __class__
        try:
            mro = _type_mro(obj)
        except BaseException:
            return _MISSING
        for klass in mro:
            value = _lookup(_type_dict(klass), name)
            if value is not _MISSING:
                return value if type(value) not in (staticmethod, classmethod, property) else _MISSING
        return _MISSING
    namespace = instance_dict(obj)
    if namespace is not None:
        value = _lookup(namespace, name)
        if value is not _MISSING:
            return value
    try:
        mro = _type_mro(type(obj))
    except BaseException:
        return _MISSING
    for klass in mro:
        value = _lookup(_type_dict(klass), name)
        if value is not _MISSING:
            cls = type(value)
            if cls in (int, float, str, bytes, bool, _NoneType, tuple, list, dict, set, frozenset, type, _module_type):
                return value  # plain data on the class
            return _MISSING
    return _MISSING


def _attribute_names(obj):
    """Every attribute name of ``obj`` that can be found without running its code."""
    names = []
    namespace = instance_dict(obj)
    if namespace is not None:
        names.extend(_str_keys(namespace))
    classes = []
    try:
        if issubclass(type(obj), type):
            classes.extend(_type_mro(obj))
        classes.extend(_type_mro(type(obj)))
    except BaseException:
        pass
    for klass in classes:
        names.extend(_str_keys(_type_dict(klass)))
        slots = _type_dict(klass).get("__slots__")
        if type(slots) in (tuple, list):
            names.extend(slot for slot in slots if type(slot) is str)
    return names


def _completions(text, own, frame_locals):
    """``{"start", "matches"}``: where the completed word starts in ``text`` and what it can
    become, with the session's names ``own`` (its SessionGlobals, over the scope's globals) and a
    frame's locals (None in a module)."""
    globals_ = own.base
    end = len(text)
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_."):
        start -= 1
    word = text[start:end]
    if word[:1].isdigit():
        return {"start": end, "matches": []}
    path, _, prefix = word.rpartition(".")
    if path:
        parts = path.split(".")
        if not all(part.isidentifier() for part in parts):
            return {"start": end, "matches": []}
        obj = _MISSING
        first = parts[0]
        for mapping in (own, frame_locals, globals_):
            if mapping is not None:
                obj = _lookup(mapping, first)
                if obj is not _MISSING:
                    break
        if obj is _MISSING:
            builtins = _lookup(globals_, "__builtins__")
            if builtins is not _MISSING:
                obj = _lookup(builtins if type(builtins) is dict else (instance_dict(builtins) or {}), first)
        for part in parts[1:]:
            if obj is _MISSING:
                break
            obj = _static_attribute(obj, part)
        candidates = _attribute_names(obj) if obj is not _MISSING else []
        lead = path + "."
    else:
        candidates = _str_keys(own)
        if frame_locals is not None and frame_locals is not globals_:
            candidates.extend(_str_keys(frame_locals))
        candidates.extend(_str_keys(globals_))
        builtins = _lookup(globals_, "__builtins__")
        if builtins is not _MISSING:
            candidates.extend(_str_keys(builtins if type(builtins) is dict else (instance_dict(builtins) or {})))
        candidates.extend(_KEYWORDS)
        lead = ""
    private = prefix.startswith("_")
    found = set()
    for name in candidates:
        if name.startswith(prefix) and (private or not name.startswith("_")) and name.isidentifier():
            found.add(name)
    matches = sorted(found)[:_COMPLETE_LIMIT]
    return {"start": start, "matches": [lead + name for name in matches], "more": len(found) > _COMPLETE_LIMIT}
