"""The agent's end of the session: the listening socket, the token handshake, the loop that sends
frames and serves requests, and sending."""

from .base import PROTOCOL_VERSION, _socket, _thread, os, select, sys, time  # agent-part
from .codec import DecodeError, StreamDecoder, encode  # agent-part
from .reads import _error_text  # agent-part
from .watchdog import Worker  # agent-part
from .previews import DEFAULT_LIMITS  # agent-part


class Connection:
    """The connection part of the Agent: listening, the handshake, the loop that sends frames and
    serves requests, and sending."""

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
