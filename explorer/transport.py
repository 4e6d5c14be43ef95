"""The near side of ``--host`` and ``--exec``: the command that reaches the far side, and one
request/response and relay channel over its stdin and stdout (payloads/REMOTE.md).

``ssh`` (or ``PERISCOPE_SSH_COMMAND``, as ``GIT_SSH_COMMAND`` is for git) runs ``periscope serve
--stdio`` on a host; ``--exec`` runs it through any command that gives stdio (``kubectl exec -i
POD --``, ``docker exec -i CTR``, ``nsenter -t PID -a``). One process carries the whole session.

What comes back is hostile input: every message is bounded and type checked, errors are rebuilt
only as periscope's own error classes, and text meant for a terminal goes through
explorer.text.visible where it is shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import shlex
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from explorer import errors
from explorer.errors import PeriscopeError

SERVE_PROTOCOL = 1
MAX_MESSAGE = 64 * 1024 * 1024
"""Largest message accepted from the far side (relayed agent data comes in 64 KiB chunks)."""
MAX_STDERR = 64 * 1024
"""Bytes of the far command's stderr kept for error messages."""
HELLO_TIMEOUT = 30.0
REMOTE_COMMAND = ("periscope", "serve", "--stdio")
"""What runs on the far side unless ``PERISCOPE_REMOTE_COMMAND`` says otherwise."""
INSTALL_FIX = "install it there: pipx install pyperiscope (or set PERISCOPE_REMOTE_COMMAND to the far side's periscope serve --stdio)"


class HostError(PeriscopeError):
    """The far side could not be reached, or it went away; ``fix`` says what to do."""


class RemoteError(PeriscopeError):
    """An error the far side reported that is not one of periscope's own classes."""


_KNOWN_ERRORS: dict[str, type[PeriscopeError]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, PeriscopeError)
}
"""Far-side error classes rebuilt as themselves (each constructor takes a reason and a fix)."""


def rebuild_error(data: Any, where: str) -> PeriscopeError:
    """A typed error from the far side's ``{"type", "reason", "fix", "message"}`` (anything else: RemoteError).

    A far side without the ``reason`` field sends ``message``, the one line, with the fix (when it
    names one in ``fix``) at its end.
    """
    if not isinstance(data, dict):
        return RemoteError(f"{where} failed (the far side sent a malformed error)")
    fix = data.get("fix")
    fix = fix[:4096] if isinstance(fix, str) and fix else None
    if isinstance(data.get("reason"), str):
        reason = data["reason"][:4096]
    elif isinstance(data.get("message"), str):
        message = data["message"][:4096]
        reason = message.removesuffix(f"; {fix}") if fix else message
    else:
        return RemoteError(f"{where} failed (the far side sent a malformed error)")
    kind = data.get("type")
    if kind == "InjectionTimeout":
        return errors.InjectionTimeout(reason, fix, no_thread_ran="ran Python" in reason)
    cls = _KNOWN_ERRORS.get(kind) if isinstance(kind, str) else None
    if cls is not None:
        return cls(reason, fix)
    return RemoteError(f"{where}: {reason}", fix)


@dataclass(frozen=True)
class Endpoint:
    """Where the far side is: an ssh destination or an exec command, and how to name it."""

    name: str
    """What the user calls it (the HOST column, the process screen's header)."""
    argv: tuple[str, ...]
    """The command that runs ``periscope serve --stdio`` there, its stdio being the link."""
    kind: str
    """``ssh`` or ``exec``."""


def remote_command() -> tuple[str, ...]:
    """The far side's command line (``PERISCOPE_REMOTE_COMMAND`` split as a shell would, or the default)."""
    text = os.environ.get("PERISCOPE_REMOTE_COMMAND")
    return tuple(shlex.split(text)) if text else REMOTE_COMMAND


def ssh_endpoint(destination: str) -> Endpoint:
    """``[user@]host`` through the system's ssh (``~/.ssh/config``, agents, jump hosts all apply)."""
    if not destination or destination.startswith("-") or any(c.isspace() for c in destination):
        raise HostError(f"{destination!r} is not an ssh destination", "give --host [user@]host")
    base = os.environ.get("PERISCOPE_SSH_COMMAND")
    ssh = tuple(shlex.split(base)) if base else ("ssh",)
    # ssh hands the remote command to the login shell as one string: quote each word.
    command = " ".join(shlex.quote(word) for word in remote_command())
    return Endpoint(destination, (*ssh, "-T", "-o", "BatchMode=yes", destination, "--", command), "ssh")


def exec_endpoint(command: str) -> Endpoint:
    """Any command that gives stdio, with the far side's command line appended."""
    words = tuple(shlex.split(command))
    if not words:
        raise HostError("--exec needs a command", "for example --exec 'kubectl exec -i POD --'")
    return Endpoint(command, (*words, *remote_command()), "exec")


class _Stream:
    """One relayed agent session on the near side: bytes in (to a StreamReader), bytes out (to the link)."""

    def __init__(self, link: Link, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.lock = threading.Lock()
        self.buffered: list[bytes | None] = []  # before the reader is installed; None is the end
        self.reader: asyncio.StreamReader | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reason = "the far side closed the session"

    def deliver(self, data: bytes | None) -> None:
        with self.lock:
            if self.reader is None or self.loop is None:
                self.buffered.append(data)
                return
            self._hand(data)

    def _hand(self, data: bytes | None) -> None:
        assert self.reader is not None and self.loop is not None
        if data is None:
            self.loop.call_soon_threadsafe(self.reader.feed_eof)
        else:
            self.loop.call_soon_threadsafe(self.reader.feed_data, data)

    def install(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            self.reader, self.loop = reader, loop
            for data in self.buffered:
                self._hand(data)
            self.buffered.clear()


class RelayWriter:
    """The StreamWriter a relayed Session writes to: ``data`` messages over the link."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._closed = False
        self._done: concurrent.futures.Future[Any] | None = None

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._stream.link.send({"t": "data", "sid": self._stream.sid, "b": bytes(data)})

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stream.link.forget(self._stream.sid)
        if not self._stream.link.dead:
            self._done = self._stream.link.submit("close", sid=self._stream.sid)

    async def wait_closed(self) -> None:
        if self._done is not None:
            with contextlib.suppress(PeriscopeError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(self._done), 5.0)

    async def drain(self) -> None:
        return None


class Link:
    """One running far side: the process, a reader thread, requests by id, relayed streams by sid."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.bytes_received = 0
        """Bytes read from the link so far (the bench's link rate)."""
        self.bytes_sent = 0
        self.dead: PeriscopeError | None = None
        """Why the link is down (None while it is up)."""
        self.info: dict[str, Any] = {}
        """The far side's hello: its periscope version, host name, Python."""
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._progress: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stderr = bytearray()
        try:
            self._process = subprocess.Popen(
                endpoint.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
        except FileNotFoundError:
            raise HostError(f"{endpoint.argv[0]!r} was not found on this machine", "install it or fix the command") from None
        self._stderr_reader = threading.Thread(target=self._read_stderr, name=f"periscope-link-stderr {endpoint.name}", daemon=True)
        self._stderr_reader.start()
        self._reader = threading.Thread(target=self._read, name=f"periscope-link {endpoint.name}", daemon=True)
        self._reader.start()
        try:
            info = self.submit("hello").result(HELLO_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.close()
            raise HostError(f"{endpoint.name} did not answer within {HELLO_TIMEOUT:g} s", "check that the command works by hand") from None
        except PeriscopeError:
            self.close()
            raise
        if not isinstance(info, dict) or info.get("serve") != SERVE_PROTOCOL:
            self.close()
            raise HostError(f"periscope on {endpoint.name} speaks another remote protocol", "install the same periscope version on both sides")
        self.info = info

    # -- reading -------------------------------------------------------------------------------

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        while chunk := self._process.stderr.read1(1 << 14):
            if len(self._stderr) < MAX_STDERR:
                self._stderr += chunk[: MAX_STDERR - len(self._stderr)]

    def _read(self) -> None:
        assert self._process.stdout is not None
        unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=MAX_MESSAGE,
            max_str_len=MAX_MESSAGE,
            max_bin_len=MAX_MESSAGE,
            max_array_len=1_000_000,
            max_map_len=100_000,
            max_ext_len=0,
        )
        error: PeriscopeError | None = None
        try:
            while chunk := self._process.stdout.read1(1 << 16):
                self.bytes_received += len(chunk)
                unpacker.feed(chunk)
                for message in unpacker:
                    self._dispatch(message)
        except msgpack.BufferFull:
            error = HostError(f"{self.endpoint.name} sent a message larger than {MAX_MESSAGE} bytes; disconnected")
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as problem:
            error = HostError(f"{self.endpoint.name} sent a malformed stream ({problem}); disconnected")
        except OSError as problem:
            error = HostError(f"lost the link to {self.endpoint.name} ({problem})")
        self._down(error)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("t")
        if kind == "data":
            stream = self._streams.get(message.get("sid")) if type(message.get("sid")) is int else None
            if stream is not None and isinstance(message.get("b"), bytes):
                stream.deliver(message["b"])
        elif kind == "closed":
            sid = message.get("sid")
            stream = self._streams.pop(sid, None) if type(sid) is int else None
            if stream is not None:
                if isinstance(message.get("reason"), str):
                    stream.reason = message["reason"][:1000]
                stream.deliver(None)
        elif kind in ("progress", "update"):  # a step of an attach, a profile's counts
            callback = self._progress.get(message.get("id")) if type(message.get("id")) is int else None
            if callback is not None:
                callback(message)
        elif kind == "resp" and type(message.get("id")) is int:
            with self._lock:
                future = self._pending.pop(message["id"], None)
                self._progress.pop(message["id"], None)
                result = message.get("result")
                if future is not None and message.get("ok") is True and isinstance(result, dict) and type(result.get("sid")) is int:
                    # An attach: its stream exists before the first relayed byte is read.
                    self._streams[result["sid"]] = _Stream(self, result["sid"])
            if future is None or future.done():
                return
            if message.get("ok") is True:
                future.set_result(message.get("result"))
            else:
                future.set_exception(rebuild_error(message.get("error"), f"{self.endpoint.name}"))

    def _down(self, error: PeriscopeError | None) -> None:
        if error is None:
            error = self._why_gone()
        self.dead = error
        with self._lock:
            pending, self._pending = self._pending, {}
            streams, self._streams = self._streams, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        for stream in streams.values():
            stream.reason = str(error)
            stream.deliver(None)

    def _why_gone(self) -> HostError:
        try:
            status = self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            status = None
        self._stderr_reader.join(1.0)
        from explorer.text import visible

        said = visible(bytes(self._stderr).decode("utf-8", "replace").strip().splitlines()[-1]) if self._stderr.strip() else ""
        # A shell says "periscope: not found" (127); docker and kubectl say that the executable
        # "periscope" was not found. Other "not found"s (a pod, a container) are not this.
        program = os.path.basename(remote_command()[0])
        missing = ("not found", "No such file")
        if (status in (126, 127) and self.endpoint.kind == "ssh") or (program in said and any(text in said for text in missing)):
            return HostError(f"periscope is not installed on {self.endpoint.name} ({said or 'command not found'})", INSTALL_FIX)
        if self.endpoint.kind == "ssh" and status == 255:
            return HostError(f"ssh could not reach {self.endpoint.name}: {said or 'connection failed'}", "check that 'ssh HOST' works by hand")
        detail = f": {said}" if said else ""
        return HostError(f"the link to {self.endpoint.name} closed (exit status {status}){detail}")

    # -- writing -------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Write one message (SessionClosed-like HostError when the link is down)."""
        if self.dead is not None:
            raise self.dead
        data = msgpack.packb(message, use_bin_type=True)
        assert self._process.stdin is not None
        with self._write_lock:
            try:
                self._process.stdin.write(data)
                self._process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                failed = True
            else:
                failed = False
                self.bytes_sent += len(data)
        if failed:
            # The far command is gone: its reader says why (not installed, ssh refused, ...).
            if threading.current_thread() is not self._reader:
                self._reader.join(5.0)
            raise self.dead or HostError(f"lost the link to {self.endpoint.name}")
            self.bytes_sent += len(data)

    def submit(self, op: str, *, progress: Callable[[dict[str, Any]], None] | None = None, **arguments: Any) -> concurrent.futures.Future[Any]:
        """Send a request; a future of its result (a typed error when the far side refused it)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self.dead is not None:
            future.set_exception(self.dead)
            return future
        request_id = next(self._ids)
        with self._lock:
            self._pending[request_id] = future
            if progress is not None:
                self._progress[request_id] = progress
        future.request_id = request_id  # type: ignore[attr-defined]
        try:
            self.send({"t": "req", "id": request_id, "op": op, **arguments})
        except PeriscopeError as error:
            with self._lock:
                self._pending.pop(request_id, None)
            if not future.done():
                future.set_exception(error)
        return future

    def request(self, op: str, timeout: float | None = 60.0, **arguments: Any) -> Any:
        """Send a request and wait for its result (blocking)."""
        try:
            return self.submit(op, **arguments).result(timeout)
        except concurrent.futures.TimeoutError:
            raise HostError(f"{self.endpoint.name} did not answer {op} within {timeout:g} s") from None

    def stream(self, sid: int) -> _Stream | None:
        return self._streams.get(sid)

    def forget(self, sid: int) -> None:
        self._streams.pop(sid, None)

    # -- the end -------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close the far side's stdin (it detaches from every target and exits), then reap it."""
        with contextlib.suppress(OSError, ValueError):
            assert self._process.stdin is not None
            with self._write_lock:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5.0)
        self._reader.join(2.0)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    @property
    def pid(self) -> int:
        """The local process (ssh, kubectl, ...) that carries the link."""
        return self._process.pid
