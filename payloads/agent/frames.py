"""Building frames: every thread's header and stack, the locals of the frames periscope looks at,
the variables of watched modules, and the coroutine frames of asyncio tasks."""

from .base import _f_code, _f_lasti, _is, _thread, os, sys, time  # agent-part
from .reads import _dict_get, _dict_items, _dict_len, _error_text, _frame_locals_proxy, _islice, _type_dict, field, instance_dict  # agent-part
from .watchdog import Abandoned, PAUSED  # agent-part
from .previews import Previews  # agent-part


_GeneratorType = type((lambda: (yield))())


async def _coroutine_probe():
    pass


_probe = _coroutine_probe()
_CoroutineType = type(_probe)
_probe.close()
del _probe


def _mapping_page(mapping, limit):
    """Up to ``limit`` items of a mapping of the target's own type, and its length (target code)."""
    return _islice(mapping.items(), 0, limit), len(mapping)


class FrameBuilder:
    """The frames part of the Agent: threads, stacks, locals and module variables built in the worker
    thread, and the coroutine frames of asyncio tasks."""

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

    def _previews(self, worker, kept=None):
        """Previews for one job in ``worker`` (this runs in the worker: its CPU clock is the budget's);
        ``kept``: the last frame's previews to reuse (frame builds only)."""
        return Previews(self, worker, self.limits, self.refs, time.thread_time() + self.limits["frame_budget"], kept)

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
        # What the last frame kept (Previews, and the frame locals below), unless the limits a
        # preview depends on changed since.
        shape = (limits["repr_chars"], limits["items"], limits["depth"], limits["locals"], limits["stack_depth"])
        kept_previews, kept_frames, kept_threads = self.kept[1:] if self.kept is not None and self.kept[0] == shape else ({}, {}, {})
        previews = self._previews(worker, kept_previews)
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
        # A thread whose stack shows the very frames of the last frame, each at the same
        # instruction, is a candidate to send the same stack again (see same_thread below).
        own_codes = self.own_codes
        shown_frames = {}
        candidates = {}
        for thread in threads:
            frame = current.get(thread["ident"])
            keep = thread["stack_omitted"] is False
            most = 1 if thread["brief"] else limits["stack_depth"]
            shown = []
            depth = 0
            while frame is not None:
                if id(frame.f_code) in own_codes:
                    # The agent's own frames under an eval, and the start-up in the thread that
                    # ran the script (the first frame is built while it may still be there).
                    frame = frame.f_back
                    continue
                depth += 1
                if keep and len(shown) < most:
                    shown.append(frame)
                frame = frame.f_back
            thread["depth"] = depth
            ident = thread["ident"]
            memo = None if thread["brief"] else kept_threads.get(ident)
            if (
                memo is not None and memo.depth == depth and list(map(id, shown)) == memo.fids
                and all(map(_is, map(_f_code, shown), memo.codes)) and list(map(_f_lasti, shown)) == memo.lastis
            ):
                candidates[ident] = memo
                thread["stack"] = memo.stack
            else:
                thread["stack"] = self._stack_entries(shown)
            shown_frames[ident] = shown
        current = frame = shown = None
        # The stacks themselves may take at most three quarters of the budget: past that, every
        # thread keeps only its innermost frames (at least one).
        sizes = [[len(e["file"]) + len(e["func"]) + len(e["qualname"]) + 60 for e in t["stack"]] for t in with_stacks]
        skeleton = sum(sum(s) for s in sizes) + 120 * len(threads)
        if skeleton > budget * 3 // 4:
            keep = len(max(sizes, key=len)) if sizes else 0
            while keep > 1 and sum(sum(s[:keep]) for s in sizes) + 120 * len(threads) > budget * 3 // 4:
                keep -= 1
            for thread in with_stacks:
                ident = thread["ident"]
                if len(thread["stack"]) > keep or ident in candidates:
                    # A candidate's entries are the last frame's, their locals read: fresh ones
                    # (cut or not), taken entry by entry below.
                    if len(thread["stack"]) > keep:
                        truncated = True
                    thread["stack"] = self._stack_entries(shown_frames[ident][:keep])
            candidates.clear()
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

        # A frame's locals whose names and values are the very objects of the last frame, each
        # with a preview kept across frames (Previews: made of numbers, strings and builtin
        # containers that still show the same objects), are the last frame's list as it was. In
        # a thread that shows the very frames of the last frame (a candidate), the entries so
        # kept are checked for the whole stack at once (same_thread) and sent as they were; the
        # others (a ``self`` with a repr of the target's...) are made again, as in any thread.
        frames_now = {}
        threads_now = {}
        for thread in with_stacks:
            stack = thread["stack"]
            ident = thread["ident"]
            if thread["brief"]:
                for entry in stack:
                    entry.pop("_frame", None)
                continue
            shown = shown_frames[ident]
            memo = candidates.get(ident)
            if memo is not None and not previews.same_thread(memo, shown):
                memo = None
                stack = thread["stack"] = self._stack_entries(shown)
            knowns = [None] * len(stack)
            if memo is not None:
                # The kept entries at once, then the others: the same as taking them in order
                # (below) while the thread's entries all fit in the size bound.
                start_bytes, start_truncated = previews.bytes, truncated
                stack = thread["stack"] = list(memo.stack)
                previews.bytes += memo.spent
                knowns[:] = memo.knowns
                for position in memo.others:
                    stack[position] = entry = self._stack_entries([shown[position]])[0]  # the last frame's entry shows what its values were
                    truncated = self._entry_locals(worker, previews, entry, position, knowns, kept_frames, truncated)
                if previews.bytes <= budget:
                    frames_now.update(memo.fid_knowns)
                    for position in memo.others:
                        if knowns[position] is not None:
                            frames_now[stack[position]["fid"]] = knowns[position]
                    if any(knowns[position] is not None for position in memo.others[1:]):
                        # An entry made again every frame has a memo now (the innermost frame,
                        # others[0], is checked on its own whatever it has).
                        memo = previews.thread_memo(shown, thread["depth"], stack, knowns)
                    threads_now[ident] = memo
                    continue
                previews.bytes, truncated = start_bytes, start_truncated
                knowns = [None] * len(stack)
                stack = thread["stack"] = list(memo.stack)
            order = range(len(stack))
            if focus is not None and thread["native_id"] == focus and 0 < self.focus_frame < len(stack):
                # The frame periscope looks at gets its locals first, should the size bound cut them.
                order = [self.focus_frame, *range(self.focus_frame), *range(self.focus_frame + 1, len(stack))]
            for position in order:
                known = None if memo is None else memo.knowns[position]
                if known is not None:
                    if previews.bytes > budget:
                        stack[position] = self._stack_entries([shown[position]], locals_read=True)[0]
                        truncated = True
                        continue
                    previews.bytes += known[6]
                    knowns[position] = known
                    continue
                if memo is not None:
                    stack[position] = self._stack_entries([shown[position]])[0]
                truncated = self._entry_locals(worker, previews, stack[position], position, knowns, kept_frames, truncated)
            for entry, known in zip(stack, knowns):
                if known is not None:
                    frames_now[entry["fid"]] = known
            memo = previews.thread_memo(shown, thread["depth"], stack, knowns)
            if memo is not None:
                threads_now[ident] = memo
        shown_frames = candidates = shown = None
        self.kept = (shape, previews.pure, frames_now, threads_now)
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

    def _entry_locals(self, worker, previews, entry, position, knowns, kept_frames, truncated):
        """Read one stack entry's locals into it (``knowns[position]``: its memo for the next
        frame, if it has one); ``truncated`` as it is after it."""
        frame = entry.pop("_frame")
        fid = entry["fid"] = id(frame)  # the frame's identity, for an eval pinned to it
        if previews.bytes > previews.limits["frame_bytes"]:
            return True
        try:
            items, total, plain = self._frame_locals(worker, frame)
        except Abandoned:
            raise
        except BaseException as error:
            self.note_error("f_locals", error)
            return truncated
        entry["nlocals"] = total
        if plain:
            known = kept_frames.get(fid)
            if known is not None and previews.same_locals(known, frame.f_code, items, total):
                entry["locals"] = known[3]
                knowns[position] = known
                return truncated
        entry["locals"], cut = previews.named(items, previews.limits["frame_bytes"])
        if plain and not cut:
            known = previews.frame_memo(frame.f_code, items, total, entry["locals"])
            if known is not None:
                knowns[position] = known
        return truncated or cut

    @staticmethod
    def _stack_entries(frames, locals_read=False):
        """Fresh stack entries for ``frames`` (innermost first), their locals still to be read
        (``_frame``), or left out (``locals_read``: the size bound cut them)."""
        entries = []
        for frame in frames:
            code = frame.f_code
            entry = {
                "file": code.co_filename,
                "line": frame.f_lineno,
                "func": code.co_name,
                "qualname": code.co_qualname,
                "locals": None,
                "nlocals": 0,
            }
            if locals_read:
                entry["fid"] = id(frame)
            else:
                entry["_frame"] = frame
            entries.append(entry)
        return entries

    def _frame_locals(self, worker, frame):
        """A page of a stack frame's locals, their number, and whether they were read in C. A dict
        or the interpreter's own proxy is read in C; any other mapping (a frame under ``exec(code, g, mapping)``) is the
        target's code and runs as a watched call, or not at all while values are paused."""
        names = frame.f_locals
        limit = self.limits["locals"]
        cls = type(names)
        if cls is dict:
            return _islice(_dict_items(names), 0, limit), _dict_len(names), True
        if cls is _frame_locals_proxy:
            return _islice(cls.items(names), 0, limit), cls.__len__(names), True
        if self.values_paused or cls in self.hung_types:
            return [], 0, False
        return (*worker.call(cls, _mapping_page, names, limit), False)
