"""REPL code run in the target: the eval records, code run in the target's event loop, and the
eval part of the Agent."""

from .base import _thread, os, sys, time  # agent-part
from .reads import _code_type, _error_text, _weakref_ref, field, instance_dict, type_name  # agent-part
from .previews import _FULL_REPR  # agent-part
from .capture import Capture, StreamRouter  # agent-part
from .scopes import SessionGlobals, SessionLocals, _completions, release_names  # agent-part


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


def _describe_frame(frame, index):
    """Which frame an eval ran in, for its result: ``{"func", "qualname", "file", "line", "index"}``
    (and ``new_call`` when the eval asked for a frame by its id)."""
    code = frame.f_code
    return {"func": code.co_name, "qualname": code.co_qualname, "file": code.co_filename, "line": frame.f_lineno, "index": index}


def _set_async_exc(ident, exc_type):
    """Raise ``exc_type`` in another thread at its next bytecode boundary (None clears it)."""
    import ctypes

    obj = ctypes.py_object(exc_type) if exc_type is not None else None
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), obj)


class Evaluator:
    """The eval part of the Agent: REPL code run in the target (a module, a frame, a task's frame or
    the target's event loop), its output captured, its result sent."""

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
