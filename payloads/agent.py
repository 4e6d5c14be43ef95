"""The periscope agent: injected into a CPython 3.14 or 3.15 target, it streams threads, stacks, locals and
module variables over a Unix socket and evaluates code on request (payloads/PROTOCOL.md).

Rules this file lives by, because it runs inside someone else's process:

- Standard library only, and mostly builtin C modules, built afresh from the interpreter's own
  definitions (``_original``) so that a monkey-patched or replaced ``_thread``, ``socket`` or
  ``time`` is never used. ``threading`` is used only when the target already imported it and it
  starts OS threads; ``ctypes`` only to interrupt an eval; ``traceback`` only to format an
  eval's exception. A module the target imported as ``msgpack`` is never called.
- The injected script (see ``build_script``) returns at once: it claims one module entry,
  ``sys.modules["_periscope_agent"]``, starts one thread and leaves. Everything else happens in
  that thread.
- Nothing raises into the target, and no asynchronous exception is ever sent to a thread.
  Errors the agent has to swallow are counted and reported in the next frame.
- Every touch of a target object is a C-level read that cannot run Python code, or a call
  through ``Worker.call`` in the worker thread, which the agent's main thread watches with a
  CPU-time budget (``Agent.run_job``); a ``__repr__`` that hangs costs one budget and never
  stops the stream.
- On detach, on a dropped connection or when nobody connects in time, the agent removes itself:
  thread gone, socket closed and unlinked, files removed, module entry removed, stdout/stderr
  given back.

Importing this module (as periscope and the tests do, for the codec) starts nothing.
"""

import sys


def _original(name):
    """A fresh instance of the builtin C module ``name``, not the one in ``sys.modules``.

    gevent and eventlet patch ``_thread``, ``time`` and ``socket`` in place (or replace them in
    ``sys.modules``), which would turn the agent's threads into greenlets on the target's hub; a
    target may also put a module of its own under any name. A builtin module built anew from its
    C definition has only the interpreter's own functions. Not builtin in this build: the
    imported one.
    """
    if name in sys.builtin_module_names:
        try:
            import _imp

            spec = _Spec()
            spec.name = name
            spec.origin = "built-in"
            module = _imp.create_builtin(spec)
            _imp.exec_builtin(module)
            return module
        except (ImportError, AttributeError, TypeError, SystemError):
            pass
    return __import__(name)


class _Spec:
    """The least of a module spec that ``_imp.create_builtin`` reads (``name``, ``origin``)."""


_socket = _original("_socket")
_struct = _original("_struct")
_thread = _original("_thread")
os = _original("posix") if "posix" in sys.builtin_module_names else __import__("os")
time = _original("time")
_islice_c = _original("itertools").islice
select = _original("select")

PROTOCOL_VERSION = 2
MODULE_NAME = "_periscope_agent"

# --------------------------------------------------------------------------------------------
# msgpack codec for the subset the protocol uses: None, bool, int (64-bit), float, str, bytes,
# list/tuple, dict. Output is byte-for-byte what msgpack-python's packb(use_bin_type=True) gives.
# --------------------------------------------------------------------------------------------

_pack_double = _struct.Struct(">d").pack
_unpack_double = _struct.Struct(">d").unpack_from
_unpack_float = _struct.Struct(">f").unpack_from
_B = _struct.Struct(">B")
_H = _struct.Struct(">H")
_I = _struct.Struct(">I")
_Q = _struct.Struct(">Q")
_b = _struct.Struct(">b")
_h = _struct.Struct(">h")
_i = _struct.Struct(">i")
_q = _struct.Struct(">q")
_MAX_DEPTH = 64


class EncodeError(ValueError):
    """An object the codec does not encode (wrong type, int out of 64-bit range, too deep)."""


class DecodeError(ValueError):
    """Malformed msgpack bytes."""


class NeedMore(Exception):
    """The buffer ends in the middle of a message; feed more bytes."""


def _encode_into(obj, out, depth):
    t = type(obj)
    if t is str:
        data = obj.encode("utf-8", "backslashreplace")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += b"\xd9" + _B.pack(n)
        elif n < 0x10000:
            out += b"\xda" + _H.pack(n)
        elif n < 0x100000000:
            out += b"\xdb" + _I.pack(n)
        else:
            raise EncodeError("str too long")
        out += data
    elif t is int:
        if 0 <= obj < 0x80:
            out.append(obj)
        elif -0x20 <= obj < 0:
            out.append(obj & 0xFF)
        elif obj >= 0:
            if obj < 0x100:
                out += b"\xcc" + _B.pack(obj)
            elif obj < 0x10000:
                out += b"\xcd" + _H.pack(obj)
            elif obj < 0x100000000:
                out += b"\xce" + _I.pack(obj)
            elif obj < 0x10000000000000000:
                out += b"\xcf" + _Q.pack(obj)
            else:
                raise EncodeError("int too large")
        else:
            if obj >= -0x80:
                out += b"\xd0" + _b.pack(obj)
            elif obj >= -0x8000:
                out += b"\xd1" + _h.pack(obj)
            elif obj >= -0x80000000:
                out += b"\xd2" + _i.pack(obj)
            elif obj >= -0x8000000000000000:
                out += b"\xd3" + _q.pack(obj)
            else:
                raise EncodeError("int too small")
    elif obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif t is float:
        out += b"\xcb" + _pack_double(obj)
    elif t is dict:
        if depth > _MAX_DEPTH:
            raise EncodeError("nested too deep")
        n = len(obj)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += b"\xde" + _H.pack(n)
        else:
            out += b"\xdf" + _I.pack(n)
        for key, value in obj.items():
            _encode_into(key, out, depth + 1)
            _encode_into(value, out, depth + 1)
    elif t is list or t is tuple:
        if depth > _MAX_DEPTH:
            raise EncodeError("nested too deep")
        n = len(obj)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + _H.pack(n)
        else:
            out += b"\xdd" + _I.pack(n)
        for item in obj:
            _encode_into(item, out, depth + 1)
    elif t is bytes or t is bytearray:
        n = len(obj)
        if n < 0x100:
            out += b"\xc4" + _B.pack(n)
        elif n < 0x10000:
            out += b"\xc5" + _H.pack(n)
        elif n < 0x100000000:
            out += b"\xc6" + _I.pack(n)
        else:
            raise EncodeError("bytes too long")
        out += obj
    elif t is Encoded:
        out += obj.data
    else:
        raise EncodeError("cannot encode %s" % t.__name__)


class Encoded:
    """Bytes already encoded as one msgpack object, put into a message as they are."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def encode(obj):
    """Encode one message (plain data only) as msgpack bytes."""
    out = bytearray()
    _encode_into(obj, out, 0)
    return bytes(out)


_FIXED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}


def _decode_at(buf, pos, depth):
    if pos >= len(buf):
        raise NeedMore()
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):
        if b <= 0xBF:
            n = b & 0x1F
        else:
            n, pos = _read_len(buf, pos, _FIXED[b])
        end = pos + n
        if end > len(buf):
            raise NeedMore()
        try:
            return bytes(buf[pos:end]).decode("utf-8"), end
        except UnicodeDecodeError:
            raise DecodeError("invalid UTF-8 in str") from None
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        if b <= 0x9F:
            n = b & 0x0F
        else:
            n, pos = _read_len(buf, pos, 2 if b == 0xDC else 4)
        if depth > _MAX_DEPTH:
            raise DecodeError("nested too deep")
        if n > len(buf) - pos:
            raise NeedMore()
        items = []
        for _ in range(n):
            item, pos = _decode_at(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        if b <= 0x8F:
            n = b & 0x0F
        else:
            n, pos = _read_len(buf, pos, 2 if b == 0xDE else 4)
        if depth > _MAX_DEPTH:
            raise DecodeError("nested too deep")
        if 2 * n > len(buf) - pos:
            raise NeedMore()
        result = {}
        for _ in range(n):
            key, pos = _decode_at(buf, pos, depth + 1)
            value, pos = _decode_at(buf, pos, depth + 1)
            if type(key) in (list, dict):
                raise DecodeError("unhashable map key")
            result[key] = value
        return result, pos
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    if b in (0xC4, 0xC5, 0xC6):
        n, pos = _read_len(buf, pos, _FIXED[b])
        end = pos + n
        if end > len(buf):
            raise NeedMore()
        return bytes(buf[pos:end]), end
    if b == 0xCA:
        _need(buf, pos, 4)
        return _unpack_float(buf, pos)[0], pos + 4
    if b == 0xCB:
        _need(buf, pos, 8)
        return _unpack_double(buf, pos)[0], pos + 8
    if b in (0xCC, 0xCD, 0xCE, 0xCF):
        size = 1 << (b - 0xCC)
        _need(buf, pos, size)
        return int.from_bytes(buf[pos:pos + size], "big"), pos + size
    if b in (0xD0, 0xD1, 0xD2, 0xD3):
        size = 1 << (b - 0xD0)
        _need(buf, pos, size)
        return int.from_bytes(buf[pos:pos + size], "big", signed=True), pos + size
    raise DecodeError("unsupported msgpack type byte 0x%02x" % b)


def _need(buf, pos, size):
    if pos + size > len(buf):
        raise NeedMore()


def _read_len(buf, pos, size):
    _need(buf, pos, size)
    return int.from_bytes(buf[pos:pos + size], "big"), pos + size


def decode(data):
    """Decode exactly one msgpack object from ``data`` (DecodeError on trailing bytes or garbage)."""
    try:
        obj, pos = _decode_at(data, 0, 0)
    except NeedMore:
        raise DecodeError("truncated msgpack data") from None
    if pos != len(data):
        raise DecodeError("trailing bytes after msgpack object")
    return obj


class StreamDecoder:
    """Incremental decoder: ``feed(bytes)`` then iterate over the complete messages.

    A message larger than ``max_message`` bytes is a DecodeError (the stream is then unusable).
    """

    def __init__(self, max_message=1 << 20):
        self.buffer = bytearray()
        self.max_message = max_message

    def feed(self, data):
        self.buffer += data

    def __iter__(self):
        return self

    def __next__(self):
        if not self.buffer:
            raise StopIteration
        try:
            obj, pos = _decode_at(self.buffer, 0, 0)
        except NeedMore:
            if len(self.buffer) > self.max_message:
                raise DecodeError("message larger than %d bytes" % self.max_message) from None
            raise StopIteration from None
        del self.buffer[:pos]
        return obj


# --------------------------------------------------------------------------------------------
# The injected script: a small bootstrap that returns at once.
# --------------------------------------------------------------------------------------------

BOOTSTRAP = r'''
def _periscope_bootstrap(config, source, code, offered):
    # code: the agent module's code object, or None to compile the text ``source()`` returns
    # (and offered: whether precompiled code came with the script and was turned down).
    import sys
    name = "_periscope_agent"
    directory = config["directory"]
    # The agent's own frames are known by their code objects: this one's and the launcher's. The
    # launcher script's own code holds the token among its constants: only its id is kept, for
    # the first frame (built while this thread may still be in it).
    config["own_codes"] = [sys._getframe(0).f_code]
    try:
        config["own_codes"].append(sys._getframe(1).f_code)
        config["launcher_code_id"] = id(sys._getframe(2).f_code)
    except ValueError:
        pass

    def mark(filename, text):
        # The only channel back to periscope before the socket exists.
        import os
        try:
            fd = os.open(directory + "/" + filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError:
            pass

    try:
        not_after = config.get("not_after")
        if not_after is not None and __import__("time").time() > not_after:
            # periscope stopped waiting long ago (killed before it could withdraw the request):
            # nobody will connect, and the token must not be good for anything any more.
            import os
            for path in (config["script_path"], config.get("code_path"), config.get("source_path"), directory):
                try:
                    if path is not None:
                        (os.rmdir if path == directory else os.unlink)(path)
                except OSError:
                    pass
            outside = config.get("switch_interval")
            if outside is not None and abs(sys.getswitchinterval() - 0.0005) < 1e-9:
                sys.setswitchinterval(outside)
            return
        existing = sys.modules.get(name)
        # periscope shortened the switch interval from outside while it waited for this pickup
        # (explorer/switch.py): ``switch_interval`` is the target's own, to give back as ours.
        outside = config.get("switch_interval")
        if outside is not None and abs(sys.getswitchinterval() - 0.0005) < 1e-9:
            if config.get("fast_start") and existing is None:
                config["restore_switch_interval"] = [outside, sys.getswitchinterval()]
            else:
                sys.setswitchinterval(outside)
        elif config.get("fast_start") and existing is None:
            # Start-up takes a dozen GIL handovers; on a target whose threads all compute, each
            # waits up to a switch interval per busy thread. A short interval until the first
            # frame is out makes attach several times faster; the agent puts it back. (First
            # thing: the unlink below already hands the GIL over.)
            before = sys.getswitchinterval()
            if before > 0.0005:
                sys.setswitchinterval(0.0005)
                config["restore_switch_interval"] = [before, sys.getswitchinterval()]
        for path in (config["script_path"], config.get("code_path"), None if code is None else config.get("source_path")):
            try:
                if path is not None:
                    __import__("os").unlink(path)
            except OSError:
                pass
        if offered and code is None:
            mark("code-rejected", "the precompiled agent is for another interpreter build")
        if existing is not None and type(existing) is type(sys) and existing.__dict__.get("directory") == directory:
            return  # this very script, picked up by a second thread as well: the first run is the agent
        if existing is not None:
            alive = getattr(existing, "agent_alive", None)
            if alive is None or alive():
                mark("busy", "another periscope agent is attached to this process")
                return
        module = type(sys)(name)
        module.directory = directory
        if existing is None:
            other = sys.modules.setdefault(name, module)
            if other is not module:
                if type(other) is type(sys) and other.__dict__.get("directory") == directory:
                    return  # this very script, run twice: the other run is the agent
                mark("busy", "another periscope agent is starting in this process")
                return
        else:
            sys.modules[name] = module  # the entry of an agent that died: take its place

        def give_up(error):
            mark("failed", "%s: %s" % (type(error).__name__, error))
            if sys.modules.get(name) is module:
                del sys.modules[name]
            saved = config.pop("restore_switch_interval", None)
            if saved is not None and sys.getswitchinterval() == saved[1]:
                sys.setswitchinterval(saved[0])

        if code is not None:
            # About a millisecond in this thread: the agent is listening when it returns, and its
            # worker and its own thread are started (start() in the agent).
            config["code"] = "precompiled"
            try:
                exec(code, module.__dict__)
                module.__dict__["start"](config, module)
            except BaseException as error:
                give_up(error)
            return

        def run():
            # Compiling takes about 15 ms: in the agent's own thread, so this one goes on at once.
            try:
                config["code"] = "compiled"
                try:
                    text = source()
                finally:
                    try:
                        __import__("os").unlink(config["source_path"])
                    except (OSError, KeyError):
                        pass
                exec(compile(text, "<periscope-agent>", "exec"), module.__dict__)
                text = None
                module.__dict__["start"](config, module, False)
            except BaseException as error:
                give_up(error)

        # A fresh _thread (gevent and eventlet patch the imported one to start greenlets).
        import _imp
        spec = type("Spec", (), {"name": "_thread", "origin": "built-in"})()
        if "_thread" in sys.builtin_module_names:
            fresh = _imp.create_builtin(spec)
            _imp.exec_builtin(fresh)
        else:
            import _thread as fresh
        fresh.start_new_thread(run, ())
    except BaseException as error:
        mark("failed", "%s: %s" % (type(error).__name__, error))
'''

# The only code the target compiles (with PyRun_String) in the thread that picks the script up:
# it loads the precompiled bootstrap and agent when the magic number and cache tag are the
# target's own (marshal data is valid for those only), and compiles the bootstrap otherwise.
LAUNCHER = r'''
def _periscope_launch(config, bootstrap, shipped):
    import sys

    def read(path):
        # A file periscope left beside the script, read as the script itself was: through
        # io.open_code, so that an open-code hook of the target judges it as it judged the script.
        with __import__("io").open_code(path) as handle:
            return handle.read()

    try:
        code = None
        if shipped is not None:
            external = sys.modules.get("_frozen_importlib_external")
            if getattr(external, "MAGIC_NUMBER", None) == shipped[0] and sys.implementation.cache_tag == shipped[1]:
                code = __import__("marshal").loads(read(config["code_path"]))
        namespace = {}
        exec(code[0] if code else compile(bootstrap, "<periscope-bootstrap>", "exec"), namespace)
    except BaseException as error:
        try:
            import os
            fd = os.open(config["directory"] + "/failed", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, ("%s: %s" % (type(error).__name__, error)).encode("utf-8", "backslashreplace"))
            os.close(fd)
        except OSError:
            pass
        return
    namespace["_periscope_bootstrap"](
        config, lambda: read(config["source_path"]).decode("utf-8"), code[1] if code else None, shipped is not None
    )


_periscope_launch(_PERISCOPE_CONFIG, _PERISCOPE_BOOTSTRAP, _PERISCOPE_CODE)
'''

# Run by periscope with an interpreter of the target's version (``python -I -S -c``, stdin from
# compile_input) to compile the bootstrap and the agent ahead of time, for build_script's ``code``.
COMPILE_PROGRAM = r'''
import importlib.util, marshal, sys
data = sys.stdin.buffer.read()
size, _, rest = data.partition(b"\n")
bootstrap, source = rest[: int(size)].decode("utf-8"), rest[int(size) :].decode("utf-8")
code = (
    compile(bootstrap, "<periscope-bootstrap>", "exec", dont_inherit=True),
    compile(source, "<periscope-agent>", "exec", dont_inherit=True),
)
head = "%s %s %d\n" % (importlib.util.MAGIC_NUMBER.hex(), sys.implementation.cache_tag, sys.hexversion)
sys.stdout.buffer.write(head.encode() + marshal.dumps(code))
'''


def compile_input(source):
    """stdin for COMPILE_PROGRAM: the bootstrap and the agent ``source``."""
    bootstrap = BOOTSTRAP.encode("utf-8")
    return b"%d\n" % len(bootstrap) + bootstrap + source.encode("utf-8")


def build_script(config, code=None):
    """The text of the injected script: the config and the bootstrap as literals, and LAUNCHER.

    ``config`` holds plain data only (str, int, float, bool, None, lists and dicts of them), with
    ``code_path`` and ``source_path``: where periscope leaves, beside the script, the marshal data
    of ``code`` and the agent's source. ``code`` is ``(magic, cache_tag, marshal_data)``,
    COMPILE_PROGRAM's output from an interpreter of the target's version, or None. The target
    compiles only this short script: it loads the marshal data when magic and tag are its own;
    otherwise it compiles the bootstrap, which compiles the source in the agent's own thread.
    Neither big blob is a literal the target has to parse (that was 586 KB, a few milliseconds of
    the target's thread at every attach).
    """
    shipped = None if code is None else (bytes(code[0]), str(code[1]))
    return "# periscope agent (generated; deleted as soon as the target reads it)\n_PERISCOPE_CONFIG = %r\n%s" % (
        config,
        _script_body(shipped),
    )


_bodies = {}


def _script_body(shipped):
    """Everything in the script after the config (the same for every attach: kept for the next one)."""
    body = _bodies.get(shipped)
    if body is None:
        body = "_PERISCOPE_BOOTSTRAP = %r\n_PERISCOPE_CODE = %r\n%s" % (BOOTSTRAP, shipped, LAUNCHER)
        _bodies.clear()
        _bodies[shipped] = body
    return body


def agent_source():
    """The source text of this module, as periscope sends it to targets."""
    with open(__file__, encoding="utf-8") as handle:  # importlib.resources would cost periscope's start-up 5 ms
        return handle.read()


# --------------------------------------------------------------------------------------------
# Everything below runs only inside the target.
# --------------------------------------------------------------------------------------------

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
_NoneType = type(None)
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
_MAX_ABANDONED = 4  # workers left behind in target code that does not return; past that, values pause
PAUSED = "values paused: target code does not return"
_module_type = type(sys)
_code_type = type(_original.__code__)
_function_type = type(_original)
_NOT_EXPANDABLE = frozenset([int, float, complex, bool, _NoneType, str, bytes, bytearray, range])
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


_GeneratorType = type((lambda: (yield))())


async def _coroutine_probe():
    pass


_probe = _coroutine_probe()
_CoroutineType = type(_probe)
_probe.close()
del _probe
_CO_COROUTINE = 0x80
_PyCF_ALLOW_TOP_LEVEL_AWAIT = 0x2000


_LOOP_NAMES = frozenset({"asyncio", "all_tasks", "current_task", "get_running_loop", "get_event_loop", "_get_running_loop"})
"""Names that make an eval's code run in the target's event loop thread (see Agent._evaluate)."""
_STOP_GRACE = 1.0
"""Seconds an eval waits for its code in the loop thread to stop once asked to."""


def _code_tree(code):
    """``{id(code): code}`` of ``code`` and of every code object nested in its constants."""
    found = {}
    pending = [code]
    while pending:
        item = pending.pop()
        if type(item) is not _code_type or id(item) in found:
            continue
        found[id(item)] = item
        pending.extend(c for c in item.co_consts if type(c) is _code_type)
    return found


class LoopRun:
    """One piece of an eval's code run in the target's event loop thread, and how to stop it."""

    def __init__(self, codes):
        self.codes = codes  # {id(code): code}: the code run and the code nested in it
        self.lock = _thread.allocate_lock()
        self.done = _thread.allocate_lock()
        self.done.acquire()  # released when the code has returned or raised
        self.state = "queued"  # -> "running" -> "finished", or "dropped" before it ran
        self.ident = None  # the loop's thread, once the code runs
        self.frame = None  # the agent's frame that called the code, while it runs
        self.outcome = None  # (True, value) or (False, exception)
        self.stopping = False

    def inside(self, frame):
        """Whether ``frame`` runs on behalf of this run (the agent's frame that called it is below)."""
        root = self.frame
        while frame is not None:
            if frame is root:
                return True
            frame = frame.f_back
        return False


class Abandoned(BaseException):
    """Raised (synchronously, in agent code) in a worker the watchdog gave up on once the target
    code it waited for has returned, so that the worker unwinds and exits."""


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
    that did not change (most of them, in a frame where one counter moved) are not encoded again."""
    names = item["locals"]
    encodings = {}
    if not names:
        return item, Encoded(encode(item)), encodings
    before = {} if known is None else known[2]
    pieces = []
    for pair in names:
        old = before.get(pair[0])
        data = old[1] if old is not None and old[0] == pair[1] else encode(pair)
        encodings[pair[0]] = (pair[1], data)
        pieces.append(Encoded(data))
    return item, Encoded(encode({**item, "locals": pieces})), encodings


class Baseline:
    """The last frame sent on the stream, entry by entry, to send the next one as a delta on it
    (PROTOCOL.md, *Deltas and the view*). Pure data: no target object is kept here."""

    def __init__(self):
        self.seq = None  # None: the next frame goes out full
        self.threads = {}  # ident -> (brief signature or None, encoded entry)
        self.stack_entries = {}  # a detailed stack entry's fid -> (that entry, its encoding, its locals' encodings)
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
            if sig is None and entry["stack"]:
                pieces = []
                for item in entry["stack"]:
                    fid = item.get("fid")
                    known = old_entries.get(fid)
                    if known is None or known[0] != item:
                        known = _encode_stack_entry(item, known)
                    if fid is not None:
                        stack_entries[fid] = known
                    pieces.append(known[1])
                data = encode({**entry, "stack": pieces})
            else:
                data = encode(entry)
            threads[ident] = (sig, data)
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


class Previews:
    """Bounded previews of target objects; runs in a watched worker thread (user code may run)."""

    def __init__(self, agent, worker, limits, refs, cpu_deadline):
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

    def preview(self, obj, pin=False, repr_chars=None):
        """``{"type", "repr", "ref"?, "len"?, "cut"?, "fail"?}`` for one object.

        An error while formatting it becomes its preview (``<preview failed: ...>``): one value
        never costs the frame. Within one job, an object shown again gets the same preview (the
        same dict: nothing changes a preview once it is made).
        """
        memo = not pin and repr_chars is None
        if memo:
            known = self.seen.get(id(obj))
            if known is not None and known[0] is obj:
                self.bytes += known[2]
                return known[1]
        cls = type(obj)
        limit = repr_chars or self.repr_chars
        self._cut = False
        self._fail = False
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
            self.seen[id(obj)] = (obj, result, size)
        return result

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
            if len(obj) > budget:
                self._cut = True
                return repr(obj[: budget + 1])
            return repr(obj)
        if cls in _CONTAINERS:
            return self._fmt_container(obj, cls, depth, budget, path)
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
        if size == 0:
            return {set: "set()", frozenset: "frozenset()"}.get(cls, open_ + close)
        if depth >= self.depth:
            self._cut = True
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
            return open_ + "..." + close
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


class Worker:
    """One thread that runs jobs (frame builds, expansions) while the agent's main thread watches it.

    Every call into target code goes through ``call``, which the watchdog (Agent.run_job) times
    by this thread's own CPU time. A worker the watchdog gives up on is never sent an exception:
    it is left to return from the target's code by itself, then sees ``abandoned`` in its own
    code and exits.
    """

    def __init__(self, agent):
        self.agent = agent
        self.wake = _thread.allocate_lock()
        self.wake.acquire()
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.job = None
        self.result = None
        self.error = None
        self.call_type = None  # the class whose code runs now (None: only agent code runs)
        self.call_cpu = 0.0  # this thread's CPU time when the call started
        self.call_waited = 0.0  # seconds the watchdog has watched this call
        self.cpu_clock = None  # this thread's CPU clock, for the watchdog
        self.target_cpu = 0.0  # CPU seconds this thread has spent in calls into target code
        self.abandoned = False
        self.stopping = False
        self.ident = None
        self.exited = _thread.allocate_lock()
        self.exited.acquire()

    def start(self):
        self.ident = self.agent.start_thread(self.run, "periscope-agent", service=True)

    def call(self, cls, function, *args):
        """``function(*args)``, which may run target code (of class ``cls``), under the watchdog."""
        self.call_waited = 0.0
        self.call_cpu = time.thread_time()
        self.call_type = cls
        try:
            return function(*args)
        finally:
            self.call_type = None
            self.target_cpu += time.thread_time() - self.call_cpu
            if self.abandoned:
                raise Abandoned()

    def cpu_in_call(self):
        """CPU seconds this thread has run in the current call (read from another thread)."""
        try:
            return time.clock_gettime(self.cpu_clock) - self.call_cpu
        except (OSError, TypeError, AttributeError):
            return 0.0

    def run(self):
        try:
            try:
                self.cpu_clock = time.pthread_getcpuclockid(_thread.get_ident())
            except (AttributeError, OSError):
                self.cpu_clock = None
            while True:
                self.wake.acquire()
                if self.stopping or self.abandoned:
                    break
                started = time.thread_time()
                try:
                    self.result = self.job(self)
                    self.error = None
                except Abandoned:
                    break
                except BaseException as error:
                    self.result = None
                    self.error = error
                finally:
                    self.job = None
                    self.agent.cpu_total += time.thread_time() - started
                if self.abandoned:
                    break
                self.done.release()
        finally:
            self.result = self.error = None
            agent = self.agent
            agent.service_idents.discard(self.ident)
            if agent.stops.pop(self.ident, None) is not None and not agent.stops and agent.stopping:
                agent._end_monitoring()  # the agent is gone: the last stopped worker tidies up
            self.exited.release()


class StreamRouter:
    """Stands in for sys.stdout/sys.stderr: writes from eval threads go to periscope, all others
    go to the stream the target had."""

    def __init__(self, agent, name, original):
        self._agent = agent
        self._name = name
        self._original = original

    def write(self, text):
        agent = self._agent
        capture = agent.captures.get(_thread.get_ident()) if agent is not None else None
        if capture is not None:
            written = capture.write(self._name, text)
            agent.wake()  # the loop sends it at once
            return written
        if self._original is None:
            return len(text)  # the target had no stream here: its print() wrote nothing, and still does
        return self._original.write(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._original is not None and (self._agent is None or self._agent.captures.get(_thread.get_ident()) is None):
            return self._original.flush()
        return None

    def __getattr__(self, name):
        return getattr(self._original, name)


class Capture:
    """Print output of one eval, waiting to be sent."""

    def __init__(self, eval_id, limit):
        self.eval_id = eval_id
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.dropped = 0
        self.lock = _thread.allocate_lock()

    def write(self, stream, text):
        if type(text) is not str:
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        with self.lock:
            if self.size + len(text) > self.limit:
                self.dropped += len(text)
            else:
                self.size += len(text)
                self.chunks.append((stream, text))
        return len(text)

    def take(self):
        with self.lock:
            chunks, self.chunks = self.chunks, []
            return chunks


class EvalRecord:
    """One running or finished eval."""

    def __init__(self, eval_id, code, globals_, locals_, repr_chars):
        self.id = eval_id
        self.code = code
        self.globals = globals_
        self.locals = locals_
        self.repr_chars = repr_chars
        self.lock = _thread.allocate_lock()
        self.finished = False
        self.interrupt_sent = False
        self.ident = None
        self.started = time.monotonic()
        self.outcome = None  # ("ok", mode, value) | ("raised", mode, exc, traceback_text)
        self.capture = None
        self.loop = None  # the event loop a top-level await runs in (None: no running loop)
        self.task_scope = False  # the scope is a frame of one of the loop's tasks
        self.in_loop = False  # the code runs in the loop's thread (see Agent._evaluate)
        self.codes = {}  # {id(code): code} of the input's code objects: what a stop watches
        self.ran_in = None  # the frame the code ran in (see _describe_frame), or None for a module
        self.own = None  # the session's names in the scope (its SessionGlobals), sent with the result


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


def _describe_frame(frame, index):
    """Which frame an eval ran in, for its result: ``{"func", "qualname", "file", "line", "index"}``
    (and ``new_call`` when the eval asked for a frame by its id)."""
    code = frame.f_code
    return {"func": code.co_name, "qualname": code.co_qualname, "file": code.co_filename, "line": frame.f_lineno, "index": index}


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


def _frame_locals_type():
    """The type of ``frame.f_locals`` of a function's frame (FrameLocalsProxy on 3.13+)."""
    return type(sys._getframe().f_locals)


_frame_locals_proxy = _frame_locals_type()


def _mapping_page(mapping, limit):
    """Up to ``limit`` items of a mapping of the target's own type, and its length (target code)."""
    return _islice(mapping.items(), 0, limit), len(mapping)


def _patched(threading):
    """Whether the target's ``threading`` starts something other than OS threads (gevent's or
    eventlet's monkey-patching makes them greenlets on the target's hub)."""
    starter = field(threading, "_start_joinable_thread") or field(threading, "_start_new_thread")
    return type(starter) is not type(len)


def _set_async_exc(ident, exc_type):
    """Raise ``exc_type`` in another thread at its next bytecode boundary (None clears it)."""
    import ctypes

    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), obj)


class Agent:
    """The agent's state and its main loop (socket I/O, scheduling, watchdog)."""

    def __init__(self, config, module):
        self.config = config
        self.module = module
        self.limits = dict(DEFAULT_LIMITS)
        self.limits.update(config.get("limits") or {})
        self.rate = float(config.get("rate", 2.0))
        self.modules = list(config.get("modules") or ["__main__"])
        self.conn = None
        self.listener = None
        self.stopping = False
        self.alive = True
        self.errors = 0
        self.error_log = []
        self.hung_types = set()
        self.values_paused = False  # too many workers stuck in target code: no more target calls
        self.stops = {}  # abandoned worker's ident -> the frame of the target's code it is to leave
        self.monitored = {}  # id(code) -> code with sys.monitoring JUMP events on (see _on_jump)
        self.monitor_tool = None
        self.loop_stops = {}  # id(code) -> LoopRun: eval code in a loop thread that is to stop (see _on_jump)
        self.service_idents = set()
        self.zombies = []
        self.worker = None
        self.refs = RefTable(self.limits["refs"])
        self.seq = 0
        self.cpu_total = 0.0
        self.last_encode_ms = 0.0
        self.evals = {}
        self.module_names = {}  # module name -> (its globals, the session's own names there)
        self.frame_names = {}  # id(frame) -> (frame, the session's own names there)
        self.namespaces = []  # weak references to every SessionGlobals made, released at detach
        self.captures = {}
        self.outbox = []
        self.outbox_lock = _thread.allocate_lock()
        self.routers = None
        self.ident = None  # the agent's own thread (set by start() or run())
        self.native_id = None
        self.running = False
        self.cpu_started = 0.0
        self.early_job = None  # (worker, job) started before periscope connected
        self.hello_first = None  # hello, when it goes out together with the first frame
        self.next_frame_at = None
        self.baseline = Baseline()  # the last frame on the stream (frames go out as deltas on it)
        self.focus = None  # the view: native id of the thread periscope looks at (None: every thread)
        self.focus_frame = 0
        self.frame_now = False  # the view changed or a resync was asked: the next frame is due now
        self.wake_fd = None  # eventfd: other threads wake the loop with it (see wake)
        self.wake_pending = False
        self.eval_switch = None  # (the target's switch interval, ours) while evals run
        # Always the agent's own encoder: a module the target imported as "msgpack" may be anything.
        self.codec = "builtin"
        self.own_codes = own_codes(module.__dict__, *config.pop("own_codes", ()))
        launcher = config.pop("launcher_code_id", None)
        if launcher is not None:
            self.own_codes[launcher] = None  # forgotten after the first frame (see send_frame)
        self.launcher_code_id = launcher
        self.fork_cell = [self.forget_in_child]
        try:
            # A tiny hook (it cannot be unregistered): after detach it holds nothing of the agent.
            os.register_at_fork(after_in_child=eval("lambda: cell[0] is not None and cell[0]()", {"__builtins__": {}, "cell": self.fork_cell}))
        except (AttributeError, TypeError, RuntimeError) as error:
            self.note_error("register_at_fork", error)

    # ---- bookkeeping ---------------------------------------------------------------------

    def note_error(self, where, error):
        """Count an error the agent swallowed to protect the target; it goes out with the next frame."""
        self.errors += 1
        if len(self.error_log) < 8:
            self.error_log.append("%s: %s" % (where, _error_text(error)))

    def start_thread(self, function, name, service):
        """Start an OS thread named ``name`` (also at the OS level, as ``top -H`` shows it; Linux
        keeps 15 bytes of it); service threads are the agent's own and never appear in frames."""
        threading = sys.modules.get("threading")
        started = _thread.allocate_lock()
        started.acquire()
        box = []

        def body():
            box.append(_thread.get_ident())
            if service:
                self.service_idents.add(box[0])
            try:
                _thread.set_name(name)  # else it keeps the name of the thread that started it
            except (AttributeError, OSError, ValueError):
                pass  # no set_name before 3.14 or on this platform: only the OS name is missing
            started.release()
            function()

        if threading is not None and not service and not _patched(threading):
            # The target's own threading, so that threading.current_thread() works in an eval.
            # A target may have replaced it with something that fails or starts nothing: then a
            # plain thread does the work (whichever thread claims it first runs it, once).
            claim = _thread.allocate_lock()

            def claimed():
                if claim.acquire(False):
                    body()

            try:
                threading.Thread(target=claimed, name=name, daemon=True).start()
                running = started.acquire(timeout=2.0)
            except BaseException as error:
                self.note_error("threading.Thread", error)
                running = False
            if not running:
                _thread.start_new_thread(claimed, ())
                started.acquire()
            return box[0]
        # Not waited for: on a busy target the new thread may wait a while for the GIL, and the
        # caller (possibly the target's own thread, see start()) should not.
        ident = _thread.start_new_thread(body, ())
        if service:
            self.service_idents.add(ident)
        return ident

    # ---- main loop -----------------------------------------------------------------------

    def run(self):
        self.ident = _thread.get_ident()
        self.service_idents.add(self.ident)
        self.native_id = _thread.get_native_id()
        self.cpu_started = time.thread_time()
        self.running = True
        try:
            _thread.set_name("periscope-agent")
        except (AttributeError, OSError, ValueError):
            pass  # no set_name before 3.14 or on this platform: only the OS name is missing
        try:
            self._run()
        except BaseException as error:
            self.note_error("agent", error)
            if self.conn is None:
                self._mark("failed", _error_text(error))
        finally:
            self.cleanup()

    def _mark(self, filename, text):
        """Leave a one-line note for periscope in the session directory (before the socket exists)."""
        try:
            fd = os.open(self.config["directory"] + "/" + filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as error:
            self.note_error("writing a note", error)

    def prepare(self):
        """Listen, and start the worker with the first frame already being built (when frames are due).

        This is the part of start-up that start() runs in the target's thread that ran the
        injected script, before the agent's own thread exists: periscope can connect while that
        thread waits for the GIL, and on a busy target the worker's wait for the GIL overlaps
        the agent's instead of following it.
        """
        config = self.config
        # Non-blocking from the socket() call on: each system call hands the GIL over, and a
        # settimeout() would be one more.
        listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | getattr(_socket, "SOCK_NONBLOCK", 0))
        self.listener = listener
        listener.bind(config["socket_path"])
        listener.listen(4)
        worker = Worker(self)
        if self.rate > 0:
            worker.job = self._build_frame
            worker.wake.release()
        worker.start()
        self.worker = worker
        if self.rate > 0:
            self.early_job = (worker, self._build_frame, self._frame_settings())

    def _frame_settings(self):
        """What a frame's content depends on, to tell whether the early frame still fits."""
        return repr((self.modules, sorted(self.limits.items()), self.focus, self.focus_frame))

    def _run(self):
        config = self.config
        if self.listener is None:
            self.prepare()
        conn = self._accept(self.listener, time.monotonic() + float(config.get("connect_timeout", 20.0)))
        self._close_listener()
        if conn is None:
            return
        self.conn = conn
        hello = self._hello()
        early = self.early_job
        if early is not None and self.rate > 0 and early[2] == self._frame_settings():
            # Hello and the first frame leave in one write: on a busy target each system call
            # hands the GIL over, and getting it back means waiting behind every busy thread.
            self.hello_first = hello
            self.send_frame(None)
            if self.hello_first is not None:  # no frame after all: hello on its own
                self.hello_first = None
                self.send(hello)
            self.next_frame_at = time.monotonic() + 1.0 / self.rate
        else:
            self.send(hello)
            if early is not None:
                try:
                    self.run_job(self._build_frame)  # the early frame no longer fits: finish it, drop it
                except Exception as error:
                    self.note_error("first frame", error)
        if self.rate <= 0:
            self._restore_switch_interval()
        self._loop()

    def _restore_switch_interval(self):
        """Give the target back its GIL switch interval (see the bootstrap), unless it changed it since."""
        saved = self.config.pop("restore_switch_interval", None)
        if saved is not None and abs(sys.getswitchinterval() - saved[1]) < 1e-9:
            sys.setswitchinterval(saved[0])

    def _accept(self, listener, deadline):
        """The first connection that sends the right token; others are closed."""
        from _operator import _compare_digest

        token = self.config["token"]
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # First without waiting (periscope has usually connected and sent its auth while
            # this thread waited for the GIL): every poll and settimeout hands the GIL over.
            fd = None
            if listener.gettimeout() == 0.0:
                try:
                    fd, _ = listener._accept()
                except BlockingIOError:
                    pass
            if fd is None:
                listener.settimeout(min(remaining, 1.0))
                try:
                    fd, _ = listener._accept()
                except TimeoutError:
                    continue
                finally:
                    listener.settimeout(0.0)
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            decoder = StreamDecoder(max_message=4096)
            message = None
            # One bound for the whole handshake, not per read: a client that trickles bytes
            # must not keep periscope waiting behind it.
            handshake_ends = time.monotonic() + 2.0
            try:
                try:
                    data = conn.recv(4096, getattr(_socket, "MSG_DONTWAIT", 0))
                except BlockingIOError:
                    data = None
                while message is None:
                    if data is None:
                        left = handshake_ends - time.monotonic()
                        if left <= 0:
                            raise TimeoutError("no complete auth message within 2 s")
                        conn.settimeout(left)
                        data = conn.recv(4096)
                    if not data:
                        break
                    decoder.feed(data)
                    data = None
                    message = next(iter(decoder), None)  # the first whole message, if one came
            except (OSError, DecodeError) as error:
                self.note_error("handshake", error)
            if (
                type(message) is dict
                and message.get("t") == "auth"
                and type(message.get("token")) is str
                and _compare_digest(message["token"], token)
            ):
                self._apply_auth(message)
                self.config.pop("token", None)  # its work is done: no copy of it stays in the target
                decoder.max_message = 1 << 20  # requests: up to 1 MiB (the 4 KiB bound was the handshake's)
                self.decoder = decoder
                return conn
            conn.close()
        return None

    def _apply_auth(self, message):
        if "rate" in message:
            self.rate = max(0.0, min(float(message["rate"]), 100.0))
        if type(message.get("modules")) is list:
            self.modules = [str(m) for m in message["modules"]]
        if type(message.get("limits")) is dict:
            self._configure(message["limits"])
        if type(message.get("view")) is dict:
            self._set_view(message["view"])

    def _set_view(self, view):
        """Take periscope's view (PROTOCOL.md, *Deltas and the view*); ValueError when malformed."""
        focus = view.get("focus")
        frame = view.get("frame", 0)
        refs = view.get("refs", [])
        if focus is not None and type(focus) is not int:
            raise ValueError("focus must be a native thread id or nil")
        if type(frame) is not int or frame < 0:
            raise ValueError("frame must be an index >= 0")
        if type(refs) is not list or len(refs) > 1000 or not all(type(r) is int for r in refs):
            raise ValueError("refs must be a list of at most 1000 refs")
        if "modules" in view:
            names = view["modules"]
            if type(names) is not list or not all(type(n) is str for n in names):
                raise ValueError("modules must be a list of module names")
            self.modules = names[:64]
        self.focus = focus
        self.focus_frame = frame
        self.refs.keep = frozenset(refs)

    def _configure(self, limits):
        for key, value in limits.items():
            if key in DEFAULT_LIMITS and type(value) in (int, float) and value > 0:
                self.limits[key] = type(DEFAULT_LIMITS[key])(value)
        self.refs.limit = self.limits["refs"]

    def _hello(self):
        capabilities = ["frame", "sample", "expand", "eval", "interrupt", "watch", "rate", "configure", "print_capture", "tasks", "delta", "view"]
        if sys.version_info >= (3, 13):
            capabilities.append("frame_locals_write")
        return {
            "t": "hello",
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version,
            "version": list(sys.version_info[:3]),
            "implementation": sys.implementation.name,
            "capabilities": capabilities,
            "codec": self.codec,
            "code": self.config.get("code", "compiled"),
            "agent_native_id": self.native_id,
            "rate": self.rate,
            "modules": list(self.modules),
            "limits": dict(self.limits),
        }

    def _loop(self):
        conn = self.conn
        conn.settimeout(None)
        # The loop sleeps in poll() on the connection and on an eventfd of its own, which any
        # other thread with something to send counts up (wake): no periodic wake-up.
        wake_fd = self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        poller = select.poll()
        conn_fd = conn.fileno()
        poller.register(conn_fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        period = 1.0 / self.rate if self.rate > 0 else None
        next_frame = self.next_frame_at or time.monotonic()
        while not self.stopping:
            if self.frame_now:
                self.frame_now = False
                next_frame = time.monotonic()
            now = time.monotonic()
            if self.rate > 0 and now >= next_frame:
                self.send_frame(None)
                period = 1.0 / self.rate
                next_frame += period
                now = time.monotonic()
                if next_frame < now:
                    next_frame = now + period
            self._flush_outbox()
            self._eval_switch_interval()
            if self.stopping:
                break
            timeout = None  # nothing asked for: just wait for periscope or a wake-up
            if self.rate > 0:
                timeout = max(0, int((next_frame - time.monotonic()) * 1000.0 + 0.999))
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            readable = False
            for fd, _ in events:
                if fd == wake_fd:
                    self.wake_pending = False
                    try:
                        os.eventfd_read(wake_fd)
                    except OSError:
                        pass  # nothing to read after all (BlockingIOError)
                else:
                    readable = True
            if not readable:
                continue
            try:
                data = conn.recv(65536, getattr(_socket, "MSG_DONTWAIT", 0))
            except BlockingIOError:
                continue
            except OSError:
                break
            if not data:
                break  # periscope went away: remove ourselves
            self.decoder.feed(data)
            try:
                for message in self.decoder:
                    # Served with the short switch interval too (given back at the loop's next
                    # turn when no eval runs): each of the request's GIL hand-overs (the preview
                    # worker, the reply) waits a switch interval per busy thread of the target.
                    self._shorten_switch_interval(message)
                    self._handle(message)
                    if self.stopping:
                        break
            except DecodeError as error:
                self.send({"t": "error", "message": "malformed request: %s" % error, "fatal": True})
                break
            if self.rate > 0 and next_frame - time.monotonic() > 1.0 / self.rate:
                next_frame = time.monotonic() + 1.0 / self.rate

    def wake(self):
        """Wake the loop at once (an eval's result or output is waiting); any thread may call it."""
        if self.wake_pending:
            return
        self.wake_pending = True
        wake_fd = self.wake_fd
        if wake_fd is not None:
            try:
                os.eventfd_write(wake_fd, 1)
            except OSError:
                pass  # closed meanwhile (the agent is going) or the counter is full: nobody to wake

    def _close_wake(self):
        wake_fd, self.wake_fd = self.wake_fd, None
        if wake_fd is not None:
            try:
                os.close(wake_fd)
            except OSError as error:
                self.note_error("closing the eventfd", error)

    def _shorten_switch_interval(self, message=None):
        """A 0.5 ms GIL switch interval while evals run and requests are served (PROTOCOL.md, *The agent's loop*).

        A request's ``switch`` is the target's own interval when periscope shortened it from
        outside to send this request (explorer/switch.py): given back as if the agent had set it."""
        if self.eval_switch is None and "restore_switch_interval" not in self.config:
            before = sys.getswitchinterval()
            outside = message.get("switch") if type(message) is dict else None
            if type(outside) is float and 0.0005 < outside <= 1.0 and abs(before - 0.0005) < 1e-9:
                self.eval_switch = (outside, before)
            elif before > 0.0005:
                sys.setswitchinterval(0.0005)
                self.eval_switch = (before, sys.getswitchinterval())

    def _eval_switch_interval(self):
        """The target's own switch interval back when the last eval is done, unless it changed it meanwhile."""
        if self.evals:
            self._shorten_switch_interval()
        else:
            self._give_back_eval_switch()

    def _give_back_eval_switch(self):
        """The switch interval the target had before evals shortened it, unless it changed it since."""
        if self.eval_switch is not None:
            before, ours = self.eval_switch
            self.eval_switch = None
            if abs(sys.getswitchinterval() - ours) < 1e-9:
                sys.setswitchinterval(before)

    def send(self, message):
        """Encode and send one message; a failure ends the session."""
        if self.conn is None:
            return
        started = time.perf_counter()
        data = encode(message)
        if message.get("t") == "frame" or (message.get("t") == "resp" and type(message.get("result")) is dict and message["result"].get("t") == "frame"):
            self.last_encode_ms = (time.perf_counter() - started) * 1000.0
        if self.hello_first is not None:
            data = encode(self.hello_first) + data
            self.hello_first = None
        sent = 0
        try:
            if self.conn.gettimeout() is None:
                # A blocking socket (as after the handshake): one system call while the socket
                # buffer has room, instead of settimeout, poll and send.
                try:
                    sent = self.conn.send(data, getattr(_socket, "MSG_DONTWAIT", 0))
                except BlockingIOError:
                    sent = 0
            if sent < len(data):
                self.conn.settimeout(float(self.config.get("send_timeout", 10.0)))
                self.conn.sendall(memoryview(data)[sent:])
                self.conn.settimeout(None)
        except OSError:
            self.stopping = True

    # ---- requests ------------------------------------------------------------------------

    def _handle(self, message):
        if type(message) is not dict or message.get("t") != "req" or type(message.get("id")) is not int:
            self.send({"t": "error", "message": "not a request: expected a map with t='req' and an int id", "fatal": False})
            return
        request_id = message["id"]
        op = message.get("op")
        handler = getattr(self, "op_" + op, None) if type(op) is str and op.isidentifier() else None
        if handler is None:
            self.reply_error(request_id, "unknown op %r" % (op,))
            return
        try:
            handler(request_id, message)
        except Abandoned:
            raise
        except BaseException as error:
            self.reply_error(request_id, _error_text(error))

    def reply(self, request_id, result):
        self.send({"t": "resp", "id": request_id, "ok": True, "result": result})

    def reply_error(self, request_id, text):
        self.send({"t": "resp", "id": request_id, "ok": False, "error": text})

    def op_sample(self, request_id, message):
        self.send_frame(request_id)  # full, every thread in detail (see send_frame)

    def op_set_rate(self, request_id, message):
        hz = message.get("hz")
        if type(hz) not in (int, float) or not 0 <= hz <= 100:
            raise ValueError("hz must be a number from 0 (paused) to 100")
        self.rate = float(hz)
        self.reply(request_id, {"hz": self.rate})

    def op_view(self, request_id, message):
        self._set_view(message)
        self.frame_now = True
        self.reply(request_id, {"focus": self.focus, "frame": self.focus_frame, "refs": sorted(self.refs.keep)})

    def op_resync(self, request_id, message):
        self.baseline.reset()
        self.frame_now = True
        self.reply(request_id, {"resync": True})

    def op_set_modules(self, request_id, message):
        names = message.get("modules")
        if type(names) is not list or not all(type(n) is str for n in names):
            raise ValueError("modules must be a list of module names")
        self.modules = names[:64]
        self.reply(request_id, {"modules": list(self.modules)})

    def op_configure(self, request_id, message):
        if type(message.get("limits")) is not dict:
            raise ValueError("limits must be a map")
        self._configure(message["limits"])
        self.reply(request_id, {"limits": dict(self.limits)})

    def op_expand(self, request_id, message):
        ref = message.get("ref")
        if type(ref) is not int or ref not in self.refs.objects:
            raise ValueError("unknown ref %r (it expired; expand from a newer frame)" % (ref,))
        obj = self.refs.get(ref)
        kind = message.get("kind", "auto")
        offset = message.get("offset", 0)
        limit = message.get("limit", 100)
        if type(offset) is not int or type(limit) is not int or offset < 0 or not 0 < limit <= 1000:
            raise ValueError("offset must be >= 0 and limit between 1 and 1000")

        def job(worker):
            previews = self._previews(worker)
            result = previews.children(obj, kind, offset, limit)
            result["ref"] = ref
            return result

        self.reply(request_id, self.run_job(job))

    def op_eval(self, request_id, message):
        self._shorten_switch_interval()  # before the eval's thread starts (given back by the loop)
        self._start_eval(request_id, message)

    def op_interrupt(self, request_id, message):
        record = self.evals.get(message.get("eval_id"))
        sent = False
        if record is not None:
            sent = self._interrupt(record)
        self.reply(request_id, {"sent": sent})

    def op_detach(self, request_id, message):
        self.reply(request_id, {"detached": True})
        self.stopping = True

    # ---- asyncio tasks -------------------------------------------------------------------
    # periscope reads tasks from outside (explorer/tasks.py); the agent adds what only the
    # target can give: the locals of a task's coroutine frames, and a loop to run `await` in.

    def op_task_frames(self, request_id, message):
        task_id = message.get("task")
        if type(task_id) is not int:
            raise ValueError("task must be a task id (an int)")

        def job(worker):
            task, _loop = self._find_task(task_id)
            previews = self._previews(worker)
            budget = self.limits["frame_bytes"]
            stack = []
            for frame in self._coroutine_frames(task)[: self.limits["stack_depth"]]:
                code = frame.f_code
                names = frame.f_locals
                items = list(_dict_items(names)) if type(names) is dict else list(names.items())
                variables = []
                for key, value in items[: self.limits["locals"]]:
                    if previews.bytes > budget:
                        break
                    key = str(key)
                    previews.bytes += len(key) + 8
                    # Pinned: the pane asks again once a second, while frames expire refs faster.
                    variables.append([key, previews.preview(value, pin=True)])
                stack.append(
                    {"file": code.co_filename, "line": frame.f_lineno, "func": code.co_name,
                     "qualname": code.co_qualname, "locals": variables, "nlocals": len(items)}
                )
            state = "cancelled" if task.cancelled() else ("done" if task.done() else "pending")
            return {"task": task_id, "name": str(task.get_name()), "state": state, "stack": stack}

        self.reply(request_id, self.run_job(job))

    def _event_loops(self):
        """The event loops running in the target's threads, found in their stacks (the ``self`` of
        BaseEventLoop.run_forever), as (thread ident, loop)."""
        base = sys.modules.get("asyncio.base_events")
        if base is None:
            return []
        run_forever = _type_dict(base.BaseEventLoop).get("run_forever")
        code = run_forever.__code__ if type(run_forever) is type(_coroutine_probe) else None
        loops = []
        for ident, frame in list(sys._current_frames().items()):
            if ident in self.service_idents:
                continue
            depth = 0
            while frame is not None and depth < 4096:
                if frame.f_code is code:
                    loop = frame.f_locals.get("self")
                    if loop is not None and not any(loop is known for _, known in loops):
                        loops.append((ident, loop))
                    break
                frame = frame.f_back
                depth += 1
        return loops

    def _find_task(self, task_id):
        """The task whose id is ``task_id`` and its loop; ValueError when no running loop has it."""
        native = sys.modules.get("_asyncio")
        if native is None:
            raise ValueError("the target has not imported asyncio")
        for _ident, loop in self._event_loops():
            for task in native.all_tasks(loop):
                if id(task) == task_id:
                    return task, loop
        raise ValueError("no running event loop has a task %#x (it finished, or its loop stopped)" % task_id)

    @staticmethod
    def _coroutine_frames(task):
        """The frames of a task's coroutine and of the coroutines it awaits, innermost first."""
        coro = task.get_coro()
        frames = []
        while coro is not None and len(frames) < 1024:
            kind = type(coro)
            if kind is _CoroutineType:
                frame, coro = coro.cr_frame, coro.cr_await
            elif kind is _GeneratorType:
                frame, coro = coro.gi_frame, coro.gi_yieldfrom
            else:
                break
            if frame is None:
                break
            frames.append(frame)
        frames.reverse()
        return frames

    # ---- frames --------------------------------------------------------------------------

    def _previews(self, worker):
        """Previews for one job in ``worker`` (this runs in the worker: its CPU clock is the budget's)."""
        return Previews(self, worker, self.limits, self.refs, time.thread_time() + self.limits["frame_budget"])

    def send_frame(self, request_id):
        """A frame on the stream (``request_id`` None: a delta on the baseline, in the view) or
        the reply to ``sample`` (full, every thread in detail)."""
        try:
            if request_id is None:
                frame = self.run_job(self._build_frame)
            else:
                frame = self.run_job(self._build_full_frame)
        except BaseException as error:
            self.note_error("frame", error)
            if request_id is not None:
                self.reply_error(request_id, _error_text(error))
            return
        self.refs.end_frame()
        self.seq += 1
        frame["seq"] = self.seq
        frame["cpu"] = self.cpu_total + (time.thread_time() - self.cpu_started)
        frame["errors"] = self.errors
        frame["error_log"] = self.error_log
        frame["encode_ms"] = self.last_encode_ms
        frame["paused"] = PAUSED if self.values_paused else None
        if self.launcher_code_id is not None:
            self.own_codes.pop(self.launcher_code_id, None)  # the script has long returned
            self.launcher_code_id = None
        self.errors = 0
        self.error_log = []
        if request_id is None:
            self.baseline.delta(frame, self.seq)
            self.send(frame)
        else:
            frame["base"] = None
            self.reply(request_id, frame)
        self._restore_switch_interval()

    def _thread_objects(self):
        """``threading._active`` of the target (ident -> Thread), copied by C-level reads only."""
        threading = sys.modules.get("threading")
        if threading is None:
            return {}
        active = field(threading, "_active")
        return dict(active) if type(active) is dict else {}

    def _is_own(self, frame):
        """Whether ``frame`` runs the agent's own code (by code object, not by file name)."""
        return id(frame.f_code) in self.own_codes

    def _build_full_frame(self, worker):
        """A frame with every thread in detail, whatever the view (``sample``)."""
        return self._build_frame(worker, all_threads=True)

    def _build_frame(self, worker, all_threads=False):
        """One frame, in the view unless ``all_threads``. Runs in the worker; target code runs
        only in ``worker.call`` (reprs, a custom locals mapping), everything else is read with
        C-level operations."""
        started = time.perf_counter()
        focus = None if all_threads else self.focus
        limits = self.limits
        previews = self._previews(worker)
        budget = limits["frame_bytes"]
        truncated = False
        by_ident = self._thread_objects()
        try:
            main_ident = _thread._get_main_thread_ident()
        except AttributeError:
            main_ident = None
        current = sys._current_frames()
        own = self.service_idents
        eval_idents = {r.ident for r in list(self.evals.values()) if r.ident is not None}

        # Every thread gets its header; stacks for the first ``threads`` of them (the main
        # thread and evals first), the others say so with ``stack_omitted``.
        threads = []
        idents = sorted(current, key=lambda i: (i != main_ident, i not in eval_idents, i))
        for ident in idents:
            if ident in own:
                continue
            info = by_ident.get(ident)
            name = daemon = native_id = None
            if info is not None:
                namespace = instance_dict(info)
                if namespace is not None:
                    name = _dict_get(namespace, "_name")
                    daemon = _dict_get(namespace, "_daemonic")
                    native_id = _dict_get(namespace, "_native_id")
            if ident == main_ident:
                name = name if type(name) is str else "MainThread"
                daemon = False if daemon is None else daemon
                native_id = native_id if type(native_id) is int else os.getpid()
            threads.append(
                {
                    "ident": ident,
                    "native_id": native_id if type(native_id) is int else None,
                    "name": name if type(name) is str else None,
                    "daemon": daemon if type(daemon) is bool else None,
                    "main": ident == main_ident,
                    "agent": ident in eval_idents,
                    "stack": [],
                    "depth": 0,
                    "stack_omitted": False,
                    "brief": False,
                }
            )
        with_stacks = threads[: limits["threads"]]
        for thread in threads[limits["threads"] :]:
            thread["stack_omitted"] = True
            truncated = True
        if focus is not None:
            for thread in threads:
                # Not the thread periscope looks at: header and innermost frame, no values.
                thread["brief"] = thread["native_id"] != focus
        for thread in threads:
            frame = current.get(thread["ident"])
            stack = thread["stack"]
            keep = thread["stack_omitted"] is False
            most = 1 if thread["brief"] else limits["stack_depth"]
            depth = 0
            while frame is not None:
                code = frame.f_code
                if id(code) in self.own_codes:
                    # The agent's own frames under an eval, and the start-up in the thread that
                    # ran the script (the first frame is built while it may still be there).
                    frame = frame.f_back
                    continue
                depth += 1
                if keep and len(stack) < most:
                    stack.append(
                        {
                            "file": code.co_filename,
                            "line": frame.f_lineno,
                            "func": code.co_name,
                            "qualname": code.co_qualname,
                            "locals": None,
                            "nlocals": 0,
                            "_frame": frame,
                        }
                    )
                frame = frame.f_back
            thread["depth"] = depth
        current = frame = None
        # The stacks themselves may take at most three quarters of the budget: past that, every
        # thread keeps only its innermost frames (at least one).
        sizes = [[len(e["file"]) + len(e["func"]) + len(e["qualname"]) + 60 for e in t["stack"]] for t in with_stacks]
        skeleton = sum(sum(s) for s in sizes) + 120 * len(threads)
        if skeleton > budget * 3 // 4:
            keep = len(max(sizes, key=len)) if sizes else 0
            while keep > 1 and sum(sum(s[:keep]) for s in sizes) + 120 * len(threads) > budget * 3 // 4:
                keep -= 1
            for thread in with_stacks:
                if len(thread["stack"]) > keep:
                    del thread["stack"][keep:]
                    truncated = True
            skeleton = sum(sum(s[:keep]) for s in sizes) + 120 * len(threads)
        previews.bytes += skeleton
        modules = []
        module_cpu = limits["module_cpu"]
        for name in list(self.modules):
            module = sys.modules.get(name)
            if module is None:
                modules.append({"name": name, "vars": [], "total": 0, "missing": True})
                continue
            namespace = instance_dict(module) or {}
            # One C-level copy of one page (see _islice): another thread may be adding globals,
            # and a module with a million of them costs no more than one with a thousand.
            size = _dict_len(namespace)
            page = _islice(_dict_items(namespace), 0, limits["module_vars"] + 64)
            entries = [(k, v) for k, v in page if not (type(k) is str and k[:2] == "__" and k[-2:] == "__")]
            total = size - (len(page) - len(entries))
            spent = time.thread_time() - worker.target_cpu
            variables, cut = previews.named(entries[: limits["module_vars"]], budget, module_cpu)
            module_cpu = max(0.0, module_cpu - (time.thread_time() - worker.target_cpu - spent))
            truncated = truncated or cut or len(variables) < total
            modules.append({"name": name, "vars": variables, "total": total, "missing": False})

        entries = []
        for thread in with_stacks:
            stack = thread["stack"]
            if thread["brief"]:
                for entry in stack:
                    del entry["_frame"]
                continue
            for entry in stack:
                entry["fid"] = id(entry["_frame"])  # the frame's identity, for an eval pinned to it
            if focus is not None and thread["native_id"] == focus and 0 < self.focus_frame < len(stack):
                # The frame periscope looks at gets its locals first, should the size bound cut them.
                stack = [stack[self.focus_frame]] + stack[: self.focus_frame] + stack[self.focus_frame + 1 :]
            entries.extend(stack)
        for entry in entries:
            frame = entry.pop("_frame")
            if previews.bytes > budget:
                truncated = True
                continue
            try:
                items, total = self._frame_locals(worker, frame)
            except Abandoned:
                raise
            except BaseException as error:
                self.note_error("f_locals", error)
                continue
            entry["nlocals"] = total
            entry["locals"], cut = previews.named(items, budget)
            truncated = truncated or cut
        return {
            "t": "frame",
            "seq": 0,
            "time": time.time(),
            "cpu": 0.0,
            "threads": threads,
            "modules": modules,
            "truncated": truncated,
            "build_ms": (time.perf_counter() - started) * 1000.0,
            "errors": 0,
            "error_log": [],
        }

    def _frame_locals(self, worker, frame):
        """A page of a stack frame's locals and their number. A dict or the interpreter's own
        proxy is read in C; any other mapping (a frame under ``exec(code, g, mapping)``) is the
        target's code and runs as a watched call, or not at all while values are paused."""
        names = frame.f_locals
        limit = self.limits["locals"]
        cls = type(names)
        if cls is dict:
            return _islice(_dict_items(names), 0, limit), _dict_len(names)
        if cls is _frame_locals_proxy:
            return _islice(cls.items(names), 0, limit), cls.__len__(names)
        if self.values_paused or cls in self.hung_types:
            return [], 0
        return worker.call(cls, _mapping_page, names, limit)

    # ---- the watchdog --------------------------------------------------------------------

    def run_job(self, job, attempts=4):
        """Run ``job(worker)`` in the worker thread; give up on any call into target code that
        overruns its budget (see ``_overran``) and redo the job in a fresh worker."""
        for _ in range(attempts):
            self._reap()
            worker = self.worker
            if worker is None:
                worker = self.worker = Worker(self)
                worker.start()
            early, self.early_job = self.early_job, None
            if early is not None and early[0] is worker:
                # A job started before periscope connected (the first frame): wait for it, and
                # if another job is asked for, finish that one first and drop its result.
                if early[1] != job:
                    self.early_job = early
                    try:
                        self.run_job(early[1])
                    except Exception as error:
                        self.note_error("first frame", error)
                    return self.run_job(job, attempts)
            else:
                worker.job = job
                worker.wake.release()
            give_up = time.monotonic() + self.limits["frame_budget"] * 4 + 5.0
            last = time.monotonic()
            while True:
                if worker.done.acquire(timeout=0.02):
                    if worker.error is not None:
                        error, worker.error = worker.error, None
                        raise error
                    result, worker.result = worker.result, None
                    return result
                now = time.monotonic()
                # Wall time counts only in steps this thread saw (at most 40 ms each): a target
                # that holds the GIL holds up this thread as much as the worker.
                worker.call_waited += min(now - last, 0.04)
                last = now
                hung = worker.call_type
                if hung is not None and self._overran(worker):
                    self.hung_types.add(hung)
                    self._abandon(worker, hung)
                    break
                if now > give_up:
                    self._abandon(worker, None)
                    raise TimeoutError("a job in the agent's worker did not finish")
        raise TimeoutError("gave up after %d hung calls into target code" % attempts)

    def _overran(self, worker):
        """A call into target code is hung when it has run ``repr_budget`` seconds of the worker's
        own CPU time (time spent waiting for the GIL does not count), or has not returned in ten
        times that (at least 1 s) of watched time: a sleep, a lock, a blocking read."""
        budget = self.limits["repr_budget"]
        if worker.cpu_clock is not None and worker.cpu_in_call() > budget:
            return True
        return worker.call_waited > max(1.0, 10.0 * budget)

    def _abandon(self, worker, hung):
        """Leave a stuck worker behind and use a fresh one. Nothing is raised into it: it exits
        by itself when the target's call returns (in ``Worker.call``). At most _MAX_ABANDONED
        such workers: past that, values pause until one of them returns."""
        worker.abandoned = True
        self.worker = None
        try:
            worker.wake.release()  # a worker that finished just now waits for its next job: end it
        except RuntimeError:
            pass  # it was not waiting
        what = "%s.__repr__" % type_name(hung) if hung is not None else "a job"
        self.note_error("repr", TimeoutError("%s took over %.2fs; not called again" % (what, self.limits["repr_budget"])))
        self.zombies.append(worker)
        if hung is not None:
            self._stop_at_own_bytecode(worker)
        self._reap()

    def _reap(self):
        """Forget abandoned workers that have exited; pause values while too many are stuck."""
        self.zombies = [z for z in self.zombies if z.exited.locked()]
        self.values_paused = len(self.zombies) >= _MAX_ABANDONED
        if self.stops:
            alive = {z.ident for z in self.zombies}
            for ident in [i for i in self.stops if i not in alive]:
                del self.stops[ident]
            if not self.stops and not self.loop_stops:
                self._end_monitoring()

    # A worker abandoned in the target's code is stopped without an asynchronous exception:
    # sys.monitoring reports the jumps and new lines of that one code object, and the callback
    # raises Abandoned only in the worker's own thread and only in the frame the job itself
    # called (the root), at one of that frame's own bytecode boundaries: a loop there, or the
    # next line once a slow callee returns. A GC callback or finaliser that runs in the worker
    # meanwhile is another frame: it is never interrupted.

    def _monitoring_tool(self, where):
        """The sys.monitoring tool id the agent's stops use (taken on first use), or None."""
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is None:
            return None
        if self.monitor_tool is None:
            for tool in (4, 3):
                if monitoring.get_tool(tool) is None:
                    try:
                        monitoring.use_tool_id(tool, "periscope-agent")
                    except ValueError:
                        continue
                    self.monitor_tool = tool
                    monitoring.register_callback(tool, monitoring.events.JUMP, self._on_jump)
                    monitoring.register_callback(tool, monitoring.events.LINE, self._on_jump)
                    break
            else:
                self.note_error(where, RuntimeError("no free sys.monitoring tool id"))
        return self.monitor_tool

    def _stop_at_own_bytecode(self, worker):
        frame = sys._current_frames().get(worker.ident)
        root = None
        while frame is not None and id(frame.f_code) not in self.own_codes:
            root, frame = frame, frame.f_back
        frame = None
        if root is None:
            return  # in C (a sleep, a lock): the worker exits when that call returns
        if self._monitoring_tool("stopping a hung call") is None:
            return
        monitoring = sys.monitoring
        code = root.f_code
        self.stops[worker.ident] = root
        if id(code) not in self.monitored:
            self.monitored[id(code)] = code
            monitoring.set_local_events(self.monitor_tool, code, monitoring.events.JUMP | monitoring.events.LINE)

    def _on_jump(self, code, *where):
        """sys.monitoring JUMP and LINE callback (see above); runs in whatever thread runs that code."""
        root = self.stops.get(_thread.get_ident())
        if root is not None and sys._getframe(1) is root:
            raise Abandoned()
        run = self.loop_stops.get(id(code))
        if run is not None and run.stopping and run.ident == _thread.get_ident() and run.inside(sys._getframe(1)):
            raise KeyboardInterrupt  # caught by the agent's frame below (_call_in_loop_thread, _guarded)

    def _end_monitoring(self):
        """Give back the sys.monitoring tool id and switch its events off (after the stops, or on detach)."""
        self.stops = {}
        self.loop_stops = {}
        tool, self.monitor_tool = self.monitor_tool, None
        codes, self.monitored = self.monitored, {}
        if tool is None:
            return
        monitoring = sys.monitoring
        for code in codes.values():
            try:
                monitoring.set_local_events(tool, code, 0)
            except ValueError as error:
                self.note_error("sys.monitoring", error)
        monitoring.register_callback(tool, monitoring.events.JUMP, None)
        monitoring.register_callback(tool, monitoring.events.LINE, None)
        monitoring.free_tool_id(tool)

    # ---- eval ----------------------------------------------------------------------------

    def op_eval_repr(self, request_id, message):
        """The whole repr of one value (the value inspector): up to ``repr_chars`` characters."""
        ref = message.get("ref")
        if type(ref) is not int or ref not in self.refs.objects:
            raise ValueError("unknown ref %r (it expired; inspect from a newer frame)" % (ref,))
        repr_chars = message.get("repr_chars", _FULL_REPR)
        if type(repr_chars) is not int or not 0 < repr_chars <= _FULL_REPR:
            raise ValueError("repr_chars must be between 1 and %d" % _FULL_REPR)
        obj = self.refs.get(ref)

        def job(worker):
            return self._previews(worker).full_preview(obj, repr_chars, pin=True)

        self.reply(request_id, self.run_job(job))

    def op_complete(self, request_id, message):
        """Completions of the name or dotted attribute path that ``text`` ends with, in the scope an
        eval with the same arguments would run in. Nothing of the target runs: names come from
        dicts read in C (the session's names, locals, globals, builtins, instance dicts and the
        dicts of the classes along the MRO); no ``__dir__``, ``__getattr__`` or property is called."""
        text = message.get("text")
        if type(text) is not str:
            raise ValueError("text must be a str")
        skipped = max(0, len(text) - 2000)  # only the end of a long input can hold the word
        text = text[skipped:]
        if message.get("task") is not None:
            task, index = message.get("task"), message.get("frame", 0)

            def find(worker):
                found, _loop = self._find_task(task)
                frames = self._coroutine_frames(found)
                if type(index) is not int or not 0 <= index < len(frames):
                    raise ValueError("task %#x has no coroutine frame %r" % (task, index))
                return frames[index]

            frame = self.run_job(find)
            own, names = self._frame_names(frame)
        elif message.get("thread") is not None:
            frame, _index = self._pick_frame(message.get("thread"), message)
            own, names = self._frame_names(frame)
        else:
            own, names = self._module_names(message.get("module") or "__main__")
        frame = None
        frame_locals = names.base if names is not None else None

        def job(worker):
            found = _completions(text, own, frame_locals)
            found["start"] += skipped
            return found

        self.reply(request_id, self.run_job(job))

    def _start_eval(self, request_id, message):
        code = message.get("code")
        if type(code) is not str:
            raise ValueError("code must be a str")
        repr_chars = message.get("repr_chars", self.limits["repr_chars"])
        if type(repr_chars) is not int or not 0 < repr_chars <= 1 << 20:
            raise ValueError("repr_chars must be between 1 and 1048576")
        thread = message.get("thread")
        task = message.get("task")
        loop = None
        if task is not None:
            index = message.get("frame", 0)
            if type(task) is not int or type(index) is not int or index < 0:
                raise ValueError("task must be a task id and frame an index >= 0")

            def job(worker):
                found, found_loop = self._find_task(task)
                frames = self._coroutine_frames(found)
                if index >= len(frames):
                    raise ValueError("task %#x has %d coroutine frames, not %d" % (task, len(frames), index + 1))
                return frames[index], found_loop

            frame, loop = self.run_job(job)
            globals_, locals_ = self._frame_names(frame)
            ran_in = _describe_frame(frame, index)
            del frame
        elif thread is not None:
            frame, index = self._pick_frame(thread, message)
            globals_, locals_ = self._frame_names(frame)
            ran_in = _describe_frame(frame, index)
            if message.get("frame_id") is not None:
                ran_in["new_call"] = bool(message.get("_new_call"))
            del frame
        else:
            name = message.get("module") or "__main__"
            globals_, locals_ = self._module_names(name)
            ran_in = None
        record = EvalRecord(request_id, code, globals_, locals_, repr_chars)
        record.ran_in = ran_in
        record.own = globals_  # the session's SessionGlobals in this scope
        record.loop = loop if loop is not None else self._loop_for(thread)
        record.task_scope = loop is not None
        record.capture = Capture(request_id, self.limits["eval_output"])
        self._install_routers()
        self.evals[request_id] = record
        record.ident = self.start_thread(lambda: self._eval_thread(record), "periscope-eval-%d" % request_id, service=False)

    def _module_names(self, name):
        """``(globals, locals)`` for code in a module: the session's names layered over the
        module's globals (see SessionGlobals), and None (the same for locals)."""
        module = sys.modules.get(name)
        if module is None:
            raise ValueError("module %r is not imported in the target" % (name,))
        globals_ = instance_dict(module)
        if globals_ is None:
            raise ValueError("sys.modules[%r] has no namespace to run in" % (name,))
        own = self.module_names.get(name)
        if own is None or own[0] is not globals_:
            own = self.module_names[name] = (globals_, SessionGlobals(globals_))
            self._keep_names(own[1])
        return own[1], None

    def _keep_names(self, names):
        """Remember ``names`` (a SessionGlobals) for release_names at detach, as long as it lives."""
        if len(self.namespaces) >= 64:
            self.namespaces = [ref for ref in self.namespaces if ref() is not None]
        self.namespaces.append(_weakref_ref(names))

    def _release_names(self):
        """release_names for every SessionGlobals of the session that target code still holds."""
        namespaces, self.namespaces = self.namespaces, []
        for ref in namespaces:
            names = ref()
            if names is not None and type(names) is SessionGlobals:
                release_names(names)

    def _frame_names(self, frame):
        """``(globals, locals)`` for code in a frame: the session's names of that frame layered
        over its globals and its locals; kept for later evals in the same frame, as pdb keeps them."""
        key = id(frame)
        entry = self.frame_names.get(key)
        if entry is None or entry[0] is not frame:
            if len(self.frame_names) >= 16:
                # Frames no thread runs now go first (a task's suspended coroutine among them).
                live = set()
                for top in list(sys._current_frames().values()):
                    while top is not None:
                        live.add(id(top))
                        top = top.f_back
                for old in [k for k in self.frame_names if k not in live]:
                    del self.frame_names[old]
            if len(self.frame_names) >= 32:
                del self.frame_names[next(iter(self.frame_names))]
            entry = self.frame_names[key] = (frame, SessionGlobals(frame.f_globals))
            self._keep_names(entry[1])
        return entry[1], SessionLocals(frame.f_locals, entry[1])

    def _pick_frame(self, native_id, message):
        """The frame an eval asked for and its index (0 = innermost): by ``frame`` (an index), by
        ``frame_name`` (the innermost frame running a function of that name or qualified name),
        or by ``frame_from_bottom`` (its position counted from the outermost frame, which stays
        put while the stack above it moves) checked against ``frame_name``."""
        name = message.get("frame_name")
        bottom = message.get("frame_from_bottom")
        frame_id = message.get("frame_id")
        if name is None and bottom is None and frame_id is None:
            index = message.get("frame", 0)
            return self._find_frame(native_id, index), index
        if name is not None and type(name) is not str:
            raise ValueError("frame_name must be a str")
        if bottom is not None and (type(bottom) is not int or bottom < 0):
            raise ValueError("frame_from_bottom must be an index >= 0")
        if frame_id is not None and type(frame_id) is not int:
            raise ValueError("frame_id must be an int (a frame's fid)")
        stack = []
        frame = self._find_frame(native_id, 0)
        while frame is not None:
            if id(frame.f_code) not in self.own_codes:  # counted as the frames periscope shows
                stack.append(frame)
            frame = frame.f_back
        if frame_id is not None:
            # The very frame periscope showed (its fid): a frame the session has run code in is
            # held in frame_names, so its id cannot be another frame's while it is on the stack.
            held = self.frame_names.get(frame_id)
            for index, frame in enumerate(stack):
                if id(frame) == frame_id and (held is None or held[0] is frame):
                    return frame, index
            if name is None and bottom is None:
                raise ValueError("the selected frame returned: thread %d no longer runs that call (select a frame again)" % native_id)
            # That call returned: a later call of the same function, at the same place counted from
            # the outermost frame, or anywhere (by name); the result says it is another call.
            message["_new_call"] = True
        if bottom is not None:
            if bottom >= len(stack):
                raise ValueError("thread %d has fewer than %d frames now: the selected frame returned" % (native_id, bottom + 1))
            index = len(stack) - 1 - bottom
            code = stack[index].f_code
            if name is not None and name not in (code.co_name, code.co_qualname):
                raise ValueError("the selected frame %s() returned: frame %d from the bottom now runs %s()" % (name, bottom, code.co_qualname))
            return stack[index], index
        for index, frame in enumerate(stack):
            code = frame.f_code
            if name in (code.co_name, code.co_qualname):
                return frame, index
        raise ValueError("no frame of thread %d runs a function named %r now" % (native_id, name))

    def _find_frame(self, native_id, index):
        if type(native_id) is not int or type(index) is not int or index < 0:
            raise ValueError("thread must be a native thread id and frame an index >= 0")
        ident = None
        for key, thread in self._thread_objects().items():
            if field(thread, "_native_id") == native_id:
                ident = key
        if ident is None and native_id == os.getpid():
            ident = _thread._get_main_thread_ident()
        frame = sys._current_frames().get(ident) if ident is not None else None
        if frame is None or ident in self.service_idents:
            raise ValueError("no thread with native id %d is running Python" % native_id)
        for _ in range(index):
            frame = frame.f_back
            if frame is None:
                raise ValueError("thread %d has fewer than %d frames" % (native_id, index + 1))
        return frame

    def _install_routers(self):
        if self.routers is not None:
            return
        out = StreamRouter(self, "stdout", sys.stdout)
        err = StreamRouter(self, "stderr", sys.stderr)
        self.routers = (out, err)
        sys.stdout, sys.stderr = out, err

    def _restore_routers(self):
        if self.routers is None:
            return
        out, err = self.routers
        if sys.stdout is out:
            sys.stdout = out._original
        if sys.stderr is err:
            sys.stderr = err._original
        # A router someone else still holds keeps working, as a plain pass-through.
        out._agent = None
        err._agent = None
        self.routers = None

    def _eval_thread(self, record):
        self.captures[_thread.get_ident()] = record.capture
        outcome = None
        while True:
            try:
                if outcome is None:
                    outcome = self._run_user_code(record)
                with record.lock:
                    record.finished = True
                    if record.interrupt_sent:
                        _set_async_exc(_thread.get_ident(), None)
                break
            except BaseException as error:  # a late interrupt landing in the agent's own code
                if outcome is None:
                    outcome = ("raised", "exec", error, "KeyboardInterrupt\n")
        self.captures.pop(_thread.get_ident(), None)
        record.outcome = outcome
        record.globals = record.locals = None
        record.codes = {}
        with self.outbox_lock:
            self.outbox.append(record)
        self.wake()

    def _run_user_code(self, record):
        mode = "eval"
        # With an event loop running in the target, top-level `await` is allowed: it runs there.
        flags = _PyCF_ALLOW_TOP_LEVEL_AWAIT if record.loop is not None else 0
        try:
            code = self._compile_expression(record.code, flags)
            if code is None:  # not an expression: statements (compiled outside the handler, so
                mode = "exec"  # that their own SyntaxError is not chained to this one)
                code, last = self._compile_statements(record.code, flags)
            if record.loop is not None:
                # Decided for the whole input: its final expression runs where its statements did,
                # and a stop watches the functions the statements define.
                record.codes = _code_tree(code)
                if mode == "exec" and last is not None:
                    record.codes.update(_code_tree(last))
                record.in_loop = record.task_scope or any(
                    not _LOOP_NAMES.isdisjoint(item.co_names) for item in record.codes.values()
                )
            if mode == "eval":
                value = self._evaluate(code, record)
            elif code.co_flags & _CO_COROUTINE and last is not None:
                value = self._await_statements(record, flags)
            else:
                self._evaluate(code, record)
                value = self._evaluate(last, record) if last is not None else None
            return ("ok", mode, value, None)
        except BaseException as error:
            return ("raised", mode, error, self._format_exception(error))

    def _evaluate(self, code, record):
        """Run one compiled piece of an eval, where it would run in the target.

        With an event loop running in the target, code that awaits, names asyncio's loop
        functions (``asyncio``, ``all_tasks``, ``current_task``, ``get_running_loop``, ...) or runs
        in a task's frame runs in that loop's thread (see :meth:`_run_in_loop`), where
        asyncio.all_tasks(), current_task() and get_running_loop() work as there. The rest runs
        here, in the eval's own thread, where a loop that hangs cannot hold up the target's.

        (Making this thread's running loop the target's would not do: asyncio.all_tasks() then
        lists this thread's tasks only, none.)"""
        if record.loop is not None and (record.in_loop or code.co_flags & _CO_COROUTINE):
            return self._run_in_loop(code, {**record.codes, **_code_tree(code)}, record)
        try:
            return eval(code, record.globals, record.locals)
        except RuntimeError as error:
            if record.loop is not None and str(error) == "no running event loop":
                raise RuntimeError(
                    "no running event loop in periscope's eval thread: code runs in the target's loop when it "
                    "awaits or names asyncio (asyncio.get_running_loop() ...)"
                ) from None
            raise

    def _await_statements(self, record, flags):
        """Statements that await and end in an expression: one coroutine that also keeps the
        expression's value (under a name of its own, taken out again afterwards)."""
        import _ast

        name = "__periscope_result_%d__" % record.id
        tree = compile(record.code, "<periscope>", "exec", _ast.PyCF_ONLY_AST | flags)
        last = tree.body.pop()
        where = {"lineno": last.lineno, "col_offset": last.col_offset, "end_lineno": last.end_lineno, "end_col_offset": last.end_col_offset}
        target = _ast.Name(id=name, ctx=_ast.Store(), **where)
        tree.body.append(_ast.Assign(targets=[target], value=last.value, **where))
        self._evaluate(compile(tree, "<periscope>", "exec", flags), record)
        namespace = record.locals if record.locals is not None else record.globals
        value = namespace[name]
        try:
            del namespace[name]
        except (KeyError, TypeError, ValueError):
            pass  # a frame's locals that refuse deletion: the name stays, harmless
        return value

    def _run_in_loop(self, code, codes, record):
        """Run ``code`` in the thread of the target's loop and wait for it.

        Code that awaits runs as a task of the loop (``run_coroutine_threadsafe``), the rest as
        one callback (``call_soon_threadsafe``: asyncio.current_task() is None there, as in any
        callback). Either way the agent's frame that calls it catches everything it raises, so
        nothing reaches the loop. On interrupt (Ctrl+C in periscope) or past ``await_timeout``
        the task is cancelled and the code is stopped at its own next line or jump (a loop
        that never awaits included): see :meth:`_stop_run`."""
        run = LoopRun(codes)
        globals_, locals_ = record.globals, record.locals
        future = None
        if code.co_flags & _CO_COROUTINE:
            coroutine = eval(code, globals_, locals_)
            future = sys.modules["asyncio.tasks"].run_coroutine_threadsafe(self._guarded(coroutine, run), record.loop)
        else:
            record.loop.call_soon_threadsafe(self._call_in_loop_thread, code, globals_, locals_, run)
        limit = self.limits["await_timeout"]
        deadline = time.monotonic() + limit
        try:
            # Short waits: an interrupt sent to this thread lands between them.
            while not run.done.acquire(timeout=0.05):
                if future is not None and future.done():
                    break  # cancelled before its first step
                if time.monotonic() > deadline:
                    ended = self._stop_run(run, future)
                    if ended == "dropped":
                        raise TimeoutError(
                            "the target's event loop did not get to the code within %gs (is the loop blocked?): "
                            "dropped" % limit
                        )
                    raise TimeoutError(
                        "the code did not finish within %gs in the target's event loop: %s"
                        % (limit, ended or "asked to stop; it is inside a call that has not returned")
                    )
        except KeyboardInterrupt:
            if self._stop_run(run, future) is None:
                raise KeyboardInterrupt(
                    "asked to stop; it still runs in the target's event loop, inside a call that has not returned"
                ) from None
            raise
        if run.outcome is None:
            return future.result(timeout=0)  # raises why the task ended without running the code
        ok, value = run.outcome
        run.outcome = None
        if ok:
            return value
        raise value

    def _call_in_loop_thread(self, code, globals_, locals_, run):
        """The loop callback of :meth:`_run_in_loop`: runs the code unless the eval gave up on it."""
        if not self._begin_run(run):
            return
        try:
            run.outcome = (True, eval(code, globals_, locals_))
        except BaseException as error:
            run.outcome = (False, error)
        finally:
            self._end_run(run)

    async def _guarded(self, coroutine, run):
        """The task of :meth:`_run_in_loop` for code that awaits: only a cancel ends it by raising."""
        if not self._begin_run(run):
            coroutine.close()
            return None
        try:
            run.outcome = (True, await coroutine)
        except sys.modules["asyncio"].CancelledError:
            raise
        except BaseException as error:
            run.outcome = (False, error)
        finally:
            self._end_run(run)

    def _begin_run(self, run):
        with run.lock:
            if run.state != "queued":
                return False
            run.state = "running"
            run.ident = _thread.get_ident()
            run.frame = sys._getframe(1)
            return True

    def _end_run(self, run):
        with run.lock:
            run.state = "finished"
            run.frame = None
            if run.stopping:
                self._disarm(run)
        run.done.release()

    def _stop_run(self, run, future):
        """Stop the eval's code in the loop thread: "stopped", "dropped" (it never started), or None
        when it still runs.

        A queued callback is dropped, a task cancelled. Code that runs is stopped without an
        asynchronous exception, as an abandoned worker is (see _stop_at_own_bytecode): JUMP and
        LINE events on the eval's own code objects, whose callback raises KeyboardInterrupt only
        in the loop thread and only in frames called by this run, where the agent's frame below
        catches it. Code inside a call that does not return (a sleep in C) stops when it returns."""
        if future is not None:
            future.cancel()
        with run.lock:
            if run.state == "queued":
                run.state = "dropped"
                return "dropped"
            if run.state != "running":
                return "stopped"
            run.stopping = True
            tool = self._monitoring_tool("stopping eval code in the event loop")
            if tool is not None:
                events = sys.monitoring.events.JUMP | sys.monitoring.events.LINE
                for key, code in run.codes.items():
                    self.loop_stops[key] = run
                    self.monitored[key] = code
                    sys.monitoring.set_local_events(tool, code, events)
        if run.done.acquire(timeout=_STOP_GRACE):
            run.done.release()
            return "stopped"
        return None

    def _disarm(self, run):
        """Switch the stop of a finished run off (and give the tool id back when nothing else needs it)."""
        tool = self.monitor_tool
        for key, code in run.codes.items():
            if self.loop_stops.get(key) is run:
                del self.loop_stops[key]
                self.monitored.pop(key, None)
                if tool is not None:
                    try:
                        sys.monitoring.set_local_events(tool, code, 0)
                    except ValueError as error:
                        self.note_error("sys.monitoring", error)
        if tool is not None and not self.stops and not self.loop_stops:
            self._end_monitoring()

    def _loop_for(self, native_id):
        """The event loop running in thread ``native_id`` (or, for None, in the main thread or any)."""
        if "asyncio" not in sys.modules:
            return None
        loops = self._event_loops()
        if not loops:
            return None
        wanted = None
        if native_id is not None:
            threading = sys.modules.get("threading")
            for ident, thread in list(getattr(threading, "_active", {}).items()) if threading else ():
                if thread.__dict__.get("_native_id") == native_id:
                    wanted = ident
            if wanted is None and native_id == os.getpid():
                wanted = _thread._get_main_thread_ident()
        else:
            wanted = _thread._get_main_thread_ident()
        for ident, loop in loops:
            if ident == wanted:
                return loop
        return loops[0][1] if native_id is None else None

    @staticmethod
    def _compile_expression(source, flags=0):
        """``source`` compiled as one expression, or None when it is not one."""
        try:
            return compile(source, "<periscope>", "eval", flags)
        except SyntaxError:
            return None

    @staticmethod
    def _compile_statements(source, flags=0):
        """Statements, with a final expression split off so that its value is the result."""
        import _ast

        tree = compile(source, "<periscope>", "exec", _ast.PyCF_ONLY_AST | flags)
        last = None
        if tree.body and type(tree.body[-1]) is _ast.Expr:
            expression = _ast.Expression(tree.body.pop().value)
            last = compile(expression, "<periscope>", "eval", flags)
        return compile(tree, "<periscope>", "exec", flags), last

    def _format_exception(self, error):
        try:
            import traceback

            tb = error.__traceback__
            # Drop the agent's own frames: the traceback starts in the evaluated code.
            while tb is not None and id(tb.tb_frame.f_code) in self.own_codes:
                tb = tb.tb_next
            shown = traceback.TracebackException(type(error), error, tb, compact=True)
            # Chained exceptions (raised while handling another, or from one) may have passed
            # through the agent's frames too: leave those frames out of every part.
            pending, seen = [shown], set()
            while pending:
                part = pending.pop()
                if part is None or id(part) in seen:
                    continue
                seen.add(id(part))
                part.stack[:] = [entry for entry in part.stack if entry.filename != "<periscope-agent>"]
                pending.extend((part.__cause__, part.__context__))
                pending.extend(getattr(part, "exceptions", None) or ())
            return "".join(shown.format())
        except BaseException as failure:
            return "%s (traceback unavailable: %s)\n" % (_error_text(error), _error_text(failure))

    def _interrupt(self, record):
        with record.lock:
            if record.finished or record.ident is None:
                return False
            try:
                sent = _set_async_exc(record.ident, KeyboardInterrupt) == 1
            except BaseException as error:
                self.note_error("interrupt", error)
                return False
            record.interrupt_sent = record.interrupt_sent or sent
            return sent

    def _flush_outbox(self):
        for record in list(self.evals.values()):
            self._send_output(record)
        if not self.outbox:
            return
        with self.outbox_lock:
            done, self.outbox = self.outbox, []
        for record in done:
            self.evals.pop(record.id, None)
            self._send_output(record)
            self._send_eval_result(record)

    def _send_output(self, record):
        chunks = record.capture.take()
        if not chunks:
            return
        merged = []
        for stream, text in chunks:
            if merged and merged[-1][0] == stream:
                merged[-1][1].append(text)
            else:
                merged.append((stream, [text]))
        for stream, texts in merged:
            self.send({"t": "output", "id": record.id, "stream": stream, "data": "".join(texts)})

    def _send_eval_result(self, record):
        status, mode, value, trace = record.outcome
        record.outcome = None
        result = {"status": status, "mode": mode, "elapsed": time.monotonic() - record.started, "value": None, "traceback": None, "exception": None}
        if record.capture.dropped:
            result["output_dropped"] = record.capture.dropped
        if record.ran_in is not None:
            result["frame"] = record.ran_in
        own, record.own = record.own, None
        own = own.own_items() if type(own) is SessionGlobals else ()
        if own:

            def names_job(worker):
                return self._previews(worker).named(own[:100], self.limits["frame_bytes"])[0]

            try:
                result["names"] = self.run_job(names_job)
                result["names_total"] = len(own)
            except BaseException as error:
                self.note_error("eval names", error)
        if status == "ok":
            if value is not None:  # None shows nothing, as in Python's REPL

                def job(worker):
                    return self._previews(worker).result_preview(value, record.repr_chars)

                try:
                    result["value"] = self.run_job(job)
                except BaseException as error:
                    result["value"] = {"type": type_name(type(value)), "repr": "<repr failed: %s>" % _error_text(error), "fail": True}
        else:
            if type(value) is KeyboardInterrupt and record.interrupt_sent:
                result["status"] = "interrupted"
            result["exception"] = type_name(type(value))
            result["traceback"] = trace
        self.reply(record.id, result)

    # ---- removal -------------------------------------------------------------------------

    def _close_listener(self):
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError as error:
                self.note_error("closing the listener", error)
            self.listener = None
            try:
                os.unlink(self.config["socket_path"])
            except FileNotFoundError:
                pass
            except OSError as error:
                self.note_error("removing the socket", error)

    def forget_in_child(self):
        """In the child of a fork (only the forking thread lives on): drop the inherited agent at
        once. Its descriptors are closed without a word on them (the session and the listener
        are the parent's), nothing is removed from disk, the agent's module entry and stream
        routers go, and the switch interval is the child's own again."""
        self.fork_cell[0] = None
        self.stopping = True
        self.alive = False
        for sock in (self.conn, self.listener):
            if sock is not None:
                try:
                    sock.close()  # close(2) of the child's copy only: no shutdown, no bye
                except OSError:
                    pass
        self.conn = self.listener = None
        self._close_wake()
        self._give_back_eval_switch()
        self._end_monitoring()
        self._restore_switch_interval()
        self._restore_routers()
        self.worker = None
        self.zombies = []
        self.evals.clear()
        self.captures.clear()
        self.refs.clear()
        self._release_names()
        self.module_names.clear()
        self.frame_names.clear()
        self.early_job = None
        if sys.modules.get(MODULE_NAME) is self.module:
            del sys.modules[MODULE_NAME]
        self.module.agent = None

    def cleanup(self):
        """Leave nothing behind: evals, workers, streams, socket, files, module entry."""
        self.stopping = True
        self._restore_switch_interval()
        for record in list(self.evals.values()):
            self._interrupt(record)
        deadline = time.monotonic() + 1.0
        while self.evals and time.monotonic() < deadline:
            with self.outbox_lock:
                for record in self.outbox:
                    self.evals.pop(record.id, None)
                self.outbox = []
            time.sleep(0.01)
        worker = self.worker
        self.worker = None
        if worker is not None:
            worker.stopping = True
            try:
                worker.wake.release()
            except RuntimeError:
                pass  # it is running a job: it sees ``stopping`` when the job ends
            if not worker.exited.acquire(timeout=1.0) and worker.call_type is not None:
                # Still in the target's code, with no watchdog from now on: stop it like a hung one.
                self._abandon(worker, worker.call_type)
        for zombie in self.zombies:
            # Abandoned workers still in target code exit when it returns (Worker.call).
            try:
                zombie.wake.release()
            except RuntimeError:
                pass
        self._reap()
        self.zombies = []
        if not self.stops:
            self._end_monitoring()  # else the last stopped worker does it as it exits
        self.fork_cell[0] = None
        self._restore_switch_interval()
        self._restore_routers()
        self._close_listener()
        if self.config.get("script_path"):
            try:
                os.unlink(self.config["script_path"])
            except OSError:
                pass
        try:
            os.rmdir(self.config["directory"])
        except OSError:
            pass
        self.refs.clear()
        self._release_names()
        self.module_names.clear()
        self.frame_names.clear()
        self.captures.clear()
        if sys.modules.get(MODULE_NAME) is self.module:
            del sys.modules[MODULE_NAME]
        self.alive = False
        self._close_wake()
        # The target's own switch interval again, as late as can be: each system call of the
        # cleanup above hands the GIL over, and on a busy target every hand-over waits a switch
        # interval per computing thread.
        self._give_back_eval_switch()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.settimeout(1.0)
                conn.sendall(encode({"t": "bye", "reason": "detached"}))
            except OSError:
                pass
            conn.close()


def start(config, module, in_thread=True):
    """Entry point (called by the bootstrap): set the agent up, then run it in a thread of its own.

    With ``in_thread`` (precompiled code, called in the target's thread that ran the script)
    this listens, starts the worker and the agent's thread, and returns at once; otherwise the
    caller is already the agent's own thread and this runs the agent until it is removed.
    """
    agent = Agent(config, module)
    module.agent = agent
    module.agent_alive = lambda: agent.alive and (not agent.running or agent.ident in sys._current_frames())
    if not in_thread:
        agent.run()
        return
    try:
        agent.prepare()
        agent.ident = _thread.start_new_thread(agent.run, ())
        agent.service_idents.add(agent.ident)
    except BaseException as error:
        agent.note_error("start", error)
        agent._mark("failed", _error_text(error))
        agent.cleanup()


def main(config, module):
    """Run the agent in this thread (its own) until it is removed."""
    start(config, module, in_thread=False)
