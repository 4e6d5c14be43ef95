"""The worker thread that makes every call into target code, and the watchdog part of the Agent,
which gives up on a call that overruns its CPU-time budget without ever raising into a thread of
the target's."""

from .base import _thread, sys, time  # agent-part
from .reads import type_name  # agent-part


_MAX_ABANDONED = 4  # workers left behind in target code that does not return; past that, values pause
PAUSED = "values paused: target code does not return"


class Abandoned(BaseException):
    """Raised (synchronously, in agent code) in a worker the watchdog gave up on once the target
    code it waited for has returned, so that the worker unwinds and exits."""


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


class Watchdog:
    """The watchdog part of the Agent: jobs run in the worker thread, and a call into target code
    that overruns its budget is given up on (the worker is left to return by itself)."""

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
