"""The periscope agent: injected into a CPython 3.14 or 3.15 target, it streams threads, stacks, locals and
module variables over a Unix socket and evaluates code on request (payloads/PROTOCOL.md).

Rules the agent lives by, because it runs inside someone else's process:

- Standard library only, and mostly builtin C modules, built afresh from the interpreter's own
  definitions (``_original``) so that a monkey-patched or replaced ``_thread``, ``socket`` or
  ``time`` is never used. ``threading`` is used only when the target already imported it and it
  starts OS threads; ``ctypes`` only to interrupt an eval; ``traceback`` only to format an
  eval's exception. A module the target imported as ``msgpack`` is never called.
- The injected script (see ``launcher.build_script``) returns at once: it claims one module entry,
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

The agent is written as the parts of this package, in this order: base (this one: the
interpreter's own C modules the others use, and the protocol's constants), codec, reads,
watchdog, previews, capture, scopes, eval, frames, connection and core. periscope injects them
as one flat script (payloads.agent.assembly), run as the module ``_periscope_agent``; launcher
is periscope's own side of the injection. Importing a part (as periscope and the tests do, for
the codec and the limits) starts nothing.
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
_itertools = _original("itertools")
_islice_c = _itertools.islice
_chain = _itertools.chain.from_iterable
_operator = _original("_operator")
_is = _operator.is_
_is_not = _operator.is_not
_compress = _itertools.compress
_repeat = _itertools.repeat
_f_locals = _operator.attrgetter("f_locals")
_f_lasti = _operator.attrgetter("f_lasti")
_f_code = _operator.attrgetter("f_code")
select = _original("select")

PROTOCOL_VERSION = 2
MODULE_NAME = "_periscope_agent"
