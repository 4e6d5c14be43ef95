"""``periscope serve --stdio``: the far side of a remote host, container or pod.

One msgpack stream each way on stdin and stdout (payloads/REMOTE.md): requests and their
responses, attach progress, and the relayed byte stream of every agent session this side
attached to. The far side does the discovery, the outside reads and the attach (injection, the
socket's peer check, the handshake); after that it relays the agent's bytes both ways unchanged,
so the near side's Session speaks the agent protocol as it does over a local socket.

Everything on stdin is untrusted: each message is size bounded, each request is checked, and a
bad one gets a typed error response (the stream goes on). When stdin closes, every agent
connection is dropped and every session directory removed (the agents notice and remove
themselves), and the command exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any

import msgpack

from explorer import __version__
from explorer.errors import PeriscopeError

SERVE_PROTOCOL = 1
"""Version of the stdio protocol (payloads/REMOTE.md); the near side refuses another."""
MAX_REQUEST = 16 * 1024 * 1024
"""Largest message accepted on stdin (relayed agent data comes in chunks far below this)."""
RELAY_CHUNK = 1 << 16
"""Bytes read from an agent socket per relayed ``data`` message."""
MAX_OUTPUT = 16 * 1024 * 1024
"""Most bytes of stdout (and of stderr) a ``run`` request returns."""
RUN_TIMEOUT = 120.0
SHUT_WAIT = 10.0
"""Seconds the requests still running when stdin closes (other than attaches) have to answer."""
RUN_COMMANDS = frozenset({"stack", "tasks", "target-python", "ps", "snapshot", "record", "exec"})
"""The commands a ``run`` request may run here (their output is what they print locally)."""
MAX_FILE = 4 * 1024 * 1024
"""Largest file a ``run`` request may carry (``exec``'s script, sent from the near side)."""


class BadRequest(PeriscopeError):
    """A request on stdin was malformed; it is refused and the stream goes on."""


class _Output:
    """stdout as a queue drained by one writer thread, so a slow link never blocks the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="periscope-serve-out", daemon=True)
        self._thread.start()

    def send(self, message: dict[str, Any]) -> None:
        self._queue.put(msgpack.packb(message, use_bin_type=True))

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                self.broken.set()
                return

    def close(self, timeout: float = 2.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


class _Relay:
    """One attached agent: its far-side Session (for the directory) and its socket streams."""

    def __init__(self, sid: int, session: Any) -> None:
        self.sid = sid
        self.session = session
        self.reader: asyncio.StreamReader = session._reader
        self.writer: asyncio.StreamWriter = session._writer
        self.task: asyncio.Task[None] | None = None


def _error(error: BaseException) -> dict[str, Any]:
    """A typed error as the protocol carries it: the class name, the reason and the fix, and the one
    line they make (what a near side that knows no ``reason`` reads)."""
    reason, fix = (error.reason, error.fix) if isinstance(error, PeriscopeError) else (str(error), None)
    return {"type": type(error).__name__, "message": str(error), "reason": reason, "fix": fix}


def _get(request: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any = ..., *, check: Any = None) -> Any:
    if key not in request:
        if default is ...:
            raise BadRequest(f"request without {key!r}")
        return default
    value = request[key]
    if type(value) is bool and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadRequest(f"{key!r} has the wrong type")
    if not isinstance(value, types):
        raise BadRequest(f"{key!r} has the wrong type")
    if check is not None and not check(value):
        raise BadRequest(f"{key!r} is out of range")
    return value


def _pid(request: dict[str, Any]) -> int:
    return _get(request, "pid", int, check=lambda p: 0 < p < 1 << 31)


class Server:
    """The state of one ``serve --stdio``: the relays by session id, the requests in flight."""

    def __init__(self, output: _Output) -> None:
        self.output = output
        self.relays: dict[int, _Relay] = {}
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.children: set[subprocess.Popen[bytes]] = set()
        self.attaching: set[int] = set()
        """Ids of the attach and profile requests in flight (withdrawn or stopped, not waited for,
        when stdin closes)."""
        self._sids = 0
        self._scanner: Any = None

    # -- dispatch ------------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        """One message from stdin: a request (answered later), agent data, or garbage (refused)."""
        if not isinstance(message, dict):
            self.output.send({"t": "error", "error": _error(BadRequest(f"a message must be a map, not {type(message).__name__}"))})
            return
        kind = message.get("t")
        if kind == "data":
            relay = self.relays.get(message.get("sid")) if type(message.get("sid")) is int else None
            data = message.get("b")
            if relay is not None and isinstance(data, bytes):
                relay.writer.write(data)
            elif relay is None:
                self.output.send({"t": "error", "error": _error(BadRequest("data for a session that is not open"))})
            return
        request_id = message.get("id")
        if kind != "req" or type(request_id) is not int or not isinstance(message.get("op"), str):
            self.output.send({"t": "error", "error": _error(BadRequest("not a request: {'t': 'req', 'id': INT, 'op': STR, ...}"))})
            return
        op = message["op"]
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            self._respond_error(request_id, BadRequest(f"unknown op {op!r}"))
            return
        if request_id in self.tasks:
            self._respond_error(request_id, BadRequest(f"request id {request_id} is already in flight"))
            return
        task = asyncio.ensure_future(self._run(request_id, handler, message))
        self.tasks[request_id] = task
        if op in ("attach", "profile"):
            self.attaching.add(request_id)

        def done(_task: asyncio.Task[Any]) -> None:
            self.tasks.pop(request_id, None)
            self.attaching.discard(request_id)

        task.add_done_callback(done)

    async def _run(self, request_id: int, handler: Any, request: dict[str, Any]) -> None:
        try:
            result = await handler(request_id, request)
        except asyncio.CancelledError:
            self._respond_error(request_id, BadRequest("cancelled"))
            return
        except (PeriscopeError, OSError, ValueError, LookupError, TypeError) as error:
            self._respond_error(request_id, error)
            return
        if result is not _ALREADY_ANSWERED:
            self.output.send({"t": "resp", "id": request_id, "ok": True, "result": result})

    def _respond_error(self, request_id: int, error: BaseException) -> None:
        self.output.send({"t": "resp", "id": request_id, "ok": False, "error": _error(error)})

    # -- requests ------------------------------------------------------------------------------

    async def op_hello(self, _id: int, _request: dict[str, Any]) -> dict[str, Any]:
        return {
            "serve": SERVE_PROTOCOL,
            "periscope": __version__,
            "host": socket.gethostname(),
            "python": sys.version.split()[0],
        }

    async def op_ps(self, _id: int, request: dict[str, Any]) -> list[dict[str, Any]]:
        from explorer.discovery import ProcessScanner

        interval = _get(request, "interval", (int, float), 0.0, check=lambda s: 0 <= s <= 10)
        if self._scanner is None:
            self._scanner = ProcessScanner()
        scanner = self._scanner

        def scan() -> list[dict[str, Any]]:
            processes = scanner.scan()
            if interval > 0 and processes:
                import time

                time.sleep(interval)
                processes = scanner.scan()
            return [process.to_json() for process in processes]

        return await asyncio.to_thread(scan)

    async def op_stack(self, _id: int, request: dict[str, Any]) -> dict[str, Any]:
        pid = _pid(request)
        with_locals = _get(request, "locals", bool, False)
        # The attach screen's read: the locals of one thread only (the main one when it is gone).
        locals_thread = _get(request, "locals_thread", (int, type(None)), None)

        def read() -> dict[str, Any]:
            from explorer.commands.stack import add_variables_json, read_variables, stacks_to_json
            from explorer.remote import RemoteProcess
            from explorer.stacks import StackReader

            with RemoteProcess.open(pid) as process:
                stacks = StackReader(process).read()
                document = stacks_to_json(pid, process.version, stacks)
                for thread, stack in zip(document["threads"], stacks):
                    thread["attached"] = stack.attached
                if with_locals:
                    chosen = stacks
                    if "locals_thread" in request:
                        chosen = [s for s in stacks if s.native_id == locals_thread] or [s for s in stacks if s.is_main]
                        chosen = chosen[:1]
                    add_variables_json(document, read_variables(process, chosen))  # PeriscopeError on a build without values
            return document

        return await asyncio.to_thread(read)

    async def op_target_thread(self, _id: int, request: dict[str, Any]) -> int:
        """A native thread id as this side sees it, as the target sees it (the target may run in a
        child pid namespace, where the agent knows its threads by other ids); unknown ids unchanged."""
        pid = _pid(request)
        native_id = _get(request, "native_id", int, check=lambda n: 0 < n < 1 << 32)

        def translate() -> int:
            from explorer.remote import RemoteProcess

            with RemoteProcess.open(pid) as process:
                try:
                    return process.thread_by_native_id(native_id).target_native_id
                except LookupError:
                    return native_id

        return await asyncio.to_thread(translate)

    async def op_target_python(self, _id: int, request: dict[str, Any]) -> str:
        from explorer.pythons import find_target_python, parse_minor
        from explorer.versions import DEFAULT_MINOR

        version = _get(request, "version", str, None)
        provision = _get(request, "provision", bool, True)
        minor = parse_minor(version) if version else DEFAULT_MINOR
        return await asyncio.to_thread(find_target_python, minor, provision=provision)

    async def op_run(self, _id: int, request: dict[str, Any]) -> dict[str, Any]:
        """Run one read-only periscope command here; its status and what it printed."""
        argv = _get(request, "argv", list, check=lambda a: 0 < len(a) <= 64)
        if not all(isinstance(arg, str) and len(arg) <= 4096 for arg in argv):
            raise BadRequest("'argv' must be a list of strings")
        if argv[0] not in RUN_COMMANDS:
            raise BadRequest(f"{argv[0]!r} cannot run through serve (it runs: {', '.join(sorted(RUN_COMMANDS))})")
        file = _get(request, "file", bytes, None, check=lambda data: len(data) <= MAX_FILE)
        file_arg = _get(request, "file_arg", int, None, check=lambda index: 0 < index < len(argv))
        if (file is None) != (file_arg is None):
            raise BadRequest("'file' and 'file_arg' come together")
        with tempfile.TemporaryDirectory(prefix="periscope-serve-") as private:  # 0700, removed after the run
            if file is not None and file_arg is not None:
                path = os.path.join(private, os.path.basename(argv[file_arg]) or "script.py")
                with open(path, "xb") as handle:
                    handle.write(file)
                argv = [*argv[:file_arg], path, *argv[file_arg + 1 :]]
            return await self._run_command(argv)

    async def _run_command(self, argv: list[str]) -> dict[str, Any]:
        child = subprocess.Popen(
            [sys.executable, "-m", "explorer", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": os.environ.get("COLUMNS", "")} if "COLUMNS" in os.environ else None,
        )
        self.children.add(child)
        try:
            stdout, stderr = await asyncio.to_thread(child.communicate, timeout=RUN_TIMEOUT)
        except asyncio.CancelledError:
            child.kill()
            raise
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise BadRequest(f"periscope {argv[0]} did not finish within {RUN_TIMEOUT:g} s") from None
        finally:
            self.children.discard(child)
        return {
            "status": child.returncode,
            "stdout": stdout[:MAX_OUTPUT].decode("utf-8", "replace"),
            "stderr": stderr[:MAX_OUTPUT].decode("utf-8", "replace"),
        }

    async def op_attach(self, request_id: int, request: dict[str, Any]) -> dict[str, Any]:
        """Attach (inject, connect, handshake), then relay the agent's bytes as ``data`` messages."""
        import msgspec

        from explorer.attach import attach

        pid = _pid(request)
        thread = _get(request, "thread", (str, int), "auto")
        if isinstance(thread, str) and thread not in ("auto", "main", "any"):
            raise BadRequest("'thread' must be auto, main, any or a native thread id")
        timeout = _get(request, "timeout", (int, float), 10.0, check=lambda t: 0 < t <= 600)
        rate = _get(request, "rate", (int, float), 2.0, check=lambda r: 0 <= r <= 1000)
        modules = _get(request, "modules", list, ["__main__"], check=lambda m: len(m) <= 256)
        if not all(isinstance(name, str) for name in modules):
            raise BadRequest("'modules' must be a list of strings")
        limits = _get(request, "limits", dict, {})
        if not all(isinstance(k, str) and type(v) in (int, float) for k, v in limits.items()):
            raise BadRequest("'limits' must map names to numbers")
        blocked_fix = _get(request, "blocked_fix", str, None)

        def progress(step: Any) -> None:
            self.output.send(
                {"t": "progress", "id": request_id, "state": step.state.name, "message": step.message, "native_id": step.native_id}
            )

        options: dict[str, Any] = {}
        if blocked_fix is not None:
            options["blocked_fix"] = blocked_fix
        session = await attach(
            pid, thread=thread, timeout=float(timeout), rate=float(rate), modules=tuple(modules), limits=limits, progress=progress, **options
        )
        # The session's reader task has not run yet: stop it, so that the bytes after hello stay
        # in the socket (and in the decoder's buffer) for the near side.
        if session._task is not None:
            session._task.cancel()
        self._sids += 1
        relay = _Relay(self._sids, session)
        self.relays[relay.sid] = relay
        leftover = session._decoder.take_pending()
        self.output.send(
            {
                "t": "resp",
                "id": request_id,
                "ok": True,
                "result": {
                    "sid": relay.sid,
                    "pid": pid,
                    "hello": {"t": "hello", **msgspec.structs.asdict(session.hello)},
                    "injected_via": session.injected_via,
                    "agent_code": session.agent_code,
                },
            }
        )
        if leftover:
            self.output.send({"t": "data", "sid": relay.sid, "b": bytes(leftover)})
        relay.task = asyncio.ensure_future(self._pump(relay))
        return _ALREADY_ANSWERED

    async def op_profile(self, request_id: int, request: dict[str, Any]) -> dict[str, Any]:
        """Sample the process here (explorer.sampler) and stream what was counted, as ``update``
        messages, until the near side cancels the request, stdin closes or the target exits."""
        from explorer.remote_profile import ProfileFeed
        from explorer.sampler import MAX_RATE, Sampler

        pid = _pid(request)
        rate = _get(request, "rate", (int, float), 100.0, check=lambda r: 1 <= r <= MAX_RATE)
        interval = _get(request, "interval", (int, float), 0.5, check=lambda s: 0.1 <= s <= 10)
        feed = ProfileFeed()
        sampler = await asyncio.to_thread(Sampler, pid, rate=float(rate), mode="wall", profile=feed)
        try:
            sampler.start()
            while True:
                ended = sampler.done.is_set()  # before the update: it then carries every sample
                self.output.send({"t": "update", "id": request_id, **feed.take_update(sampler.stats())})
                if ended:
                    break
                await asyncio.sleep(interval)
        finally:
            await asyncio.to_thread(sampler.stop)
        error = sampler.error
        if isinstance(error, (PeriscopeError, OSError)):
            raise error
        if error is not None:
            raise PeriscopeError(f"sampling process {pid} stopped: {error}")
        return {"ticks": sampler.stats().ticks}

    async def _pump(self, relay: _Relay) -> None:
        reason = "the agent closed the connection"
        try:
            while data := await relay.reader.read(RELAY_CHUNK):
                self.output.send({"t": "data", "sid": relay.sid, "b": data})
        except (ConnectionError, OSError) as error:
            reason = f"lost the connection to the agent ({error})"
        finally:
            if self.relays.pop(relay.sid, None) is not None:
                self.output.send({"t": "closed", "sid": relay.sid, "reason": reason})
            await relay.session.close()

    async def op_close(self, _id: int, request: dict[str, Any]) -> bool:
        """Drop an agent connection (the agent removes itself) and remove its session directory."""
        sid = _get(request, "sid", int)
        relay = self.relays.pop(sid, None)
        if relay is None:
            return False
        relay.writer.close()
        if relay.task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(relay.task), 3.0)
        return True

    async def op_cancel(self, _id: int, request: dict[str, Any]) -> bool:
        """Cancel a request in flight (an attach: its request is withdrawn from the target)."""
        task = self.tasks.get(_get(request, "request", int))
        if task is None:
            return False
        task.cancel()
        return True

    # -- the end -------------------------------------------------------------------------------

    async def shut(self) -> None:
        """Stdin closed: drop every agent connection and remove every session directory at once,
        withdraw attaches in flight, and give the other requests a moment to answer."""
        relays = list(self.relays.values())
        self.relays.clear()
        for relay in relays:
            relay.writer.close()
        for request_id, task in list(self.tasks.items()):
            if request_id in self.attaching:
                task.cancel()
        pumps = [relay.task for relay in relays if relay.task is not None]
        if pumps or self.tasks:
            await asyncio.wait([*pumps, *self.tasks.values()], timeout=SHUT_WAIT)
        for task in list(self.tasks.values()):
            task.cancel()
        for child in list(self.children):
            child.kill()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=2.0)


class _Answered:
    """Marker: the handler sent its own response (attach sends it before the first relayed data)."""


_ALREADY_ANSWERED = _Answered()


async def _serve(stdin_fd: int, output: _Output) -> int:
    server = Server(output)
    loop = asyncio.get_running_loop()
    incoming: asyncio.Queue[bytes] = asyncio.Queue()

    def read_stdin() -> None:
        try:
            while data := os.read(stdin_fd, 1 << 16):
                loop.call_soon_threadsafe(incoming.put_nowait, data)
            loop.call_soon_threadsafe(incoming.put_nowait, b"")
        except OSError:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(incoming.put_nowait, b"")  # the link broke: as a closed stdin
        except RuntimeError:
            return  # the loop is closed: serve already ended (a malformed stream)

    threading.Thread(target=read_stdin, name="periscope-serve-in", daemon=True).start()
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,  # a request's keys are strings; a map or list as a key is malformed
        max_buffer_size=MAX_REQUEST,
        max_str_len=MAX_REQUEST,
        max_bin_len=MAX_REQUEST,
        max_array_len=100_000,
        max_map_len=10_000,
        max_ext_len=0,
    )
    status = 0
    try:
        while data := await incoming.get():
            try:
                unpacker.feed(data)
            except msgpack.BufferFull:
                output.send({"t": "error", "error": _error(BadRequest(f"a message larger than {MAX_REQUEST} bytes; closing"))})
                status = 2
                break
            try:
                for message in unpacker:
                    server.handle(message)
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
                # The stream cannot be resynchronised after bytes that are not msgpack.
                output.send({"t": "error", "error": _error(BadRequest(f"the request stream is malformed ({error}); closing"))})
                status = 2
                break
    finally:
        await server.shut()
    return status


def serve_stdio() -> int:
    """Serve the protocol on stdin and stdout until stdin closes; the exit status."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed by mistake goes to stderr, never into the protocol stream
    sys.stdout = sys.stderr
    output = _Output(out_fd)
    try:
        return asyncio.run(_serve(0, output))
    finally:
        output.close()
        os.close(out_fd)
