"""The Agent (its state, the requests it serves and its removal; the other parts are its bases)
and the entry point the bootstrap calls."""

from .base import MODULE_NAME, _thread, os, sys, time  # agent-part
from .codec import encode  # agent-part
from .reads import _error_text, field, own_codes  # agent-part
from .watchdog import Abandoned, Watchdog  # agent-part
from .previews import Baseline, DEFAULT_LIMITS, RefTable  # agent-part
from .eval import Evaluator  # agent-part
from .frames import FrameBuilder  # agent-part
from .connection import Connection  # agent-part


def _patched(threading):
    """Whether the target's ``threading`` starts something other than OS threads (gevent's or
    eventlet's monkey-patching makes them greenlets on the target's hub)."""
    starter = field(threading, "_start_joinable_thread") or field(threading, "_start_new_thread")
    return type(starter) is not type(len)


class Agent(Connection, FrameBuilder, Evaluator, Watchdog):
    """The agent's state, the requests it serves and its removal; its main loop and socket I/O
    (Connection), frames (FrameBuilder), evals (Evaluator) and the watchdog (Watchdog) are its bases."""

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
        self.kept = None  # (limits shape, the last frame's kept previews, its frames' locals by fid): see _build_frame
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

    # ---- removal -------------------------------------------------------------------------

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
        self.kept = None
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
        self.kept = None
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
