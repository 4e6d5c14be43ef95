"""C-level reads of target objects: type names, instance dicts and their entries, an exception's
text, the agent's own code objects. None of them runs any of the target's code."""

from .base import _islice_c, _original, sys  # agent-part


_NoneType = type(None)
_module_type = type(sys)
_code_type = type(_original.__code__)
_function_type = type(_original)
_type_qualname = type.__dict__["__qualname__"].__get__
_type_module = type.__dict__["__module__"].__get__
_type_mro = type.__dict__["__mro__"].__get__
_type_dict = type.__dict__["__dict__"].__get__
_dict_items = dict.items
_dict_len = dict.__len__
_dict_get = dict.get
_weakref_ref = _original("_weakref").ref
_exception_args = BaseException.__dict__["args"].__get__
_getset_type = type(type.__dict__["__qualname__"])
_member_type = type(type(sys).__dict__["__dict__"])


def _islice(iterable, start, stop):
    """Elements ``start`` to ``stop`` of a container's iterator, taken in one C-level loop.

    No bytecode runs between two elements, so no other thread can take the GIL midway and
    resize the container under the iterator (a Python-level loop here could raise "changed
    size during iteration" on any busy target). The elements before ``start`` are skipped, not
    kept: memory is in proportion to the page, not to ``stop``.
    """
    if stop <= start:
        return []
    return list(_islice_c(iterable, start, stop))


def instance_dict(obj):
    """The instance ``__dict__`` of ``obj`` read by the interpreter's own C getter, or None.

    ``obj.__dict__`` and ``object.__getattribute__(obj, "__dict__")`` run a ``__getattribute__``
    or a ``__dict__`` property of the class; the C descriptor that created the instance dict
    (found along the MRO, past any override) cannot run Python code.
    """
    cls = type(obj)
    try:
        mro = _type_mro(cls)
    except BaseException:
        return None
    for klass in mro:
        descriptor = _type_dict(klass).get("__dict__")
        if type(descriptor) is _getset_type or type(descriptor) is _member_type:
            try:
                namespace = descriptor.__get__(obj, cls)
            except (TypeError, AttributeError):
                return None
            return namespace if type(namespace) is dict else None
    return None


def field(obj, name):
    """One entry of ``obj``'s instance dict (see instance_dict), or None; no target code runs."""
    namespace = instance_dict(obj)
    return None if namespace is None else _dict_get(namespace, name)


def own_codes(namespace, *more):
    """``{id(code): code}`` of every function and method defined in ``namespace`` (a module's
    globals), their nested code, and the code objects in ``more``: how the agent tells its own
    frames from the target's (a file name can be copied, a code object cannot)."""
    pending = list(more)
    for value in list(namespace.values()):
        if type(value) is _function_type and value.__globals__ is namespace:
            pending.append(value.__code__)
        elif isinstance(value, type):
            for member in list(_type_dict(value).values()):
                member = getattr(member, "__func__", member) if type(member) in (staticmethod, classmethod) else member
                if type(member) is _function_type and member.__globals__ is namespace:
                    pending.append(member.__code__)
    codes = {}
    while pending:
        code = pending.pop()
        if type(code) is not _code_type or id(code) in codes:
            continue
        codes[id(code)] = code
        pending.extend(c for c in code.co_consts if type(c) is _code_type)
    return codes


def type_name(cls):
    """``module.QualName`` of a class, without running any of the class's own code."""
    try:
        qualname = _type_qualname(cls)
    except BaseException:
        qualname = "?"
    try:
        module = _type_module(cls)
    except BaseException:
        module = None
    if type(module) is not str or module == "builtins":
        return qualname if type(qualname) is str else "?"
    return "%s.%s" % (module, qualname)


def _error_text(error):
    """A short description of an exception raised by target code (no user code runs: ``args``
    is read with BaseException's own C getter, past any property of the class)."""
    try:
        args = _exception_args(error)
    except TypeError:
        args = ()
    detail = ""
    if type(args) is tuple and args and type(args[0]) is str:
        detail = args[0][:100]
    name = type_name(type(error))
    return "%s: %s" % (name, detail) if detail else name


def _frame_locals_type():
    """The type of ``frame.f_locals`` of a function's frame (FrameLocalsProxy on 3.13+)."""
    return type(sys._getframe().f_locals)


_frame_locals_proxy = _frame_locals_type()
