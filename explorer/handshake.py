"""The handshake with a staged agent: connect to its socket, check the peer, authenticate, read ``hello``.

``_connect`` waits for the agent's Unix socket in the session directory (never through a link
planted there: the directory belongs to the target's user), checks with SO_PEERCRED that the
process on the other end is the target (pid and uid), proves itself with the one-time token from
the agent script and reads the agent's ``hello``. While it waits it reads the agent's ``busy`` and
``failed`` notes and notices a target that exited, a directory that was removed and a script that
was never run. Blocking and without asyncio: explorer.attach runs it in a worker thread, and the
one-shot commands (explorer.oneshot) use it without an event loop. A module of its own because it
is where periscope decides whom it is talking to.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from msgspec import Struct

from explorer import wire
from explorer.errors import InjectionTimeout, PeriscopeError, ProcessGone, ProtocolError
from explorer.model import Hello
from explorer.session import SessionClosed

SOCKET_NAME = "agent.sock"
SCRIPT_NAME = "agent.py"
GONE_SETTLE = 1.0
"""Seconds a connection lost during the handshake waits to see whether the target exited."""
START_WAIT = 3.0
"""Seconds a thread that took the request may take to start the agent script (it deletes the
script first thing) before periscope concludes that the target refused to run it."""


class AgentBusy(PeriscopeError):
    """Another periscope session's agent is already attached to the target."""


class AgentRefused(PeriscopeError):
    """The target took the request but did not run the agent script (an audit or open-code hook)."""


class _Staged(Struct):
    """An agent script staged in a session directory (explorer.attach._stage): what the handshake needs to know."""

    pid: int
    script_dir: Any
    script_target_path: str
    socket_host_path: Path
    token: str


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def _peer_pid(sock: socket.socket) -> int:
    return _peer_credentials(sock)[0]


def _connect(
    staged: _Staged, deadline: float, cancel: threading.Event | None = None
) -> tuple[socket.socket, wire.Decoder, Hello]:
    """Wait for the agent's socket, check the peer, authenticate, read ``hello`` (blocking).

    Setting ``cancel`` (from another thread) ends the wait with SessionClosed.
    """
    sock, decoder, hello, _received = _connect_counted(staged, deadline, cancel)
    return sock, decoder, hello


def _note_error(staged: _Staged) -> PeriscopeError | None:
    """The error a ``busy`` or ``failed`` note of the agent in the session directory tells, if there is one.

    The directory belongs to the target's user: notes are read through ScriptDir.read_note
    (no symlink followed, no FIFO waited on, a few KiB at most), and their text is shown escaped.
    """
    from explorer.text import visible

    for note, error in (("busy", AgentBusy), ("failed", PeriscopeError)):
        text = staged.script_dir.read_note(note)
        if text is None:
            continue
        text = visible(text.strip())
        if error is AgentBusy:
            return AgentBusy(f"process {staged.pid}: {text}", "detach that session first")
        return PeriscopeError(f"the agent could not start in process {staged.pid}: {text}")
    return None


def _connect_socket(staged: _Staged, deadline: float) -> socket.socket | None:
    """Connect to the agent's socket if it is there and listening (None otherwise), never through a
    planted symlink: the socket file is opened ``O_PATH | O_NOFOLLOW``, checked, and connected to
    through that descriptor."""
    from explorer.staging import fd_address

    path_fd = staged.script_dir.open_socket(SOCKET_NAME)
    if path_fd is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
        sock.connect(fd_address(path_fd))
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, BlockingIOError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(path_fd)
    return sock


def _connect_counted(
    staged: _Staged, deadline: float, cancel: threading.Event | None = None
) -> tuple[socket.socket, wire.Decoder, Hello, int]:
    """``_connect``, and how many bytes it read from the socket."""
    from explorer.memory import process_exited, process_start_time

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise SessionClosed(f"attaching to process {staged.pid} was cancelled")

    def gone_or(error: PeriscopeError) -> PeriscopeError:
        # A target killed during the handshake resets the connection: say that it exited. The
        # kernel closes a dying process's sockets before the process is a zombie, so give it a
        # moment to be seen gone.
        settle = time.monotonic() + GONE_SETTLE
        while True:
            if process_exited(staged.pid, start_time):
                return ProcessGone(f"process {staged.pid} exited")
            if time.monotonic() >= settle:
                return error
            time.sleep(0.01)

    pause = 0.0005
    started, start_time = time.monotonic(), process_start_time(staged.pid)
    while True:
        note = _note_error(staged)
        if note is not None:
            raise note
        sock = _connect_socket(staged, deadline)
        if sock is not None:
            break
        if time.monotonic() > deadline:
            raise InjectionTimeout(
                f"process {staged.pid} took the request but its agent did not open its socket in time "
                "(the target may be too busy in C code)",
                "try again",
            )
        if process_exited(staged.pid, start_time):  # also a zombie its parent has not reaped yet
            raise ProcessGone(f"process {staged.pid} exited")
        if staged.script_dir.removed():
            from explorer.staging import SessionTampered

            raise SessionTampered(
                f"the session directory {staged.script_dir.host_path} was removed while the agent of process "
                f"{staged.pid} was starting (by another program, or the target's user)",
                "attach again",
            )
        if time.monotonic() - started > START_WAIT and staged.script_dir.contains(SCRIPT_NAME):
            raise AgentRefused(
                f"process {staged.pid} took the request but did not run the agent script within {START_WAIT:g} s: "
                "an audit hook (cpython.remote_debugger_script) or an open-code hook refused it (see the target's "
                "stderr)",
                f"without the agent, 'periscope stack {staged.pid}' still reads its stacks from outside",
            )
        check_cancel()
        time.sleep(pause)
        pause = min(pause * 1.5, 0.002)
    try:
        peer_pid, peer_uid, _peer_gid = _peer_credentials(sock)
        if peer_pid != staged.pid or peer_uid != staged.script_dir.uid:
            raise ProtocolError(
                f"the socket in the session directory belongs to process {peer_pid} (uid {peer_uid}), not to "
                f"process {staged.pid} (uid {staged.script_dir.uid}); someone else is interfering with the session: "
                "not connecting"
            )
        decoder = wire.Decoder()
        received = 0
        try:
            sock.sendall(wire.encode({"t": "auth", "token": staged.token}))
            while True:
                sock.settimeout(max(0.05, min(0.1, deadline - time.monotonic())))
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    if time.monotonic() < deadline:
                        check_cancel()
                        continue
                    raise InjectionTimeout(
                        f"the agent in process {staged.pid} did not say hello in time", "try again"
                    ) from None
                if not data:
                    raise gone_or(
                        ProtocolError(f"the agent in process {staged.pid} closed the connection during the handshake")
                    )
                received += len(data)
                decoder.feed(data)
                for message in decoder:
                    if not isinstance(message, Hello):
                        raise ProtocolError(f"the agent's first message was {type(message).__name__}, not hello")
                    if message.pid != _target_view_pid(staged.pid):
                        raise ProtocolError(f"the agent reports pid {message.pid}, expected {staged.pid}")
                    sock.settimeout(None)
                    return sock, decoder, message, received
        except TimeoutError:
            raise InjectionTimeout(f"the agent in process {staged.pid} did not take periscope's first message in time", "try again") from None
        except (ConnectionError, OSError) as error:
            raise gone_or(
                SessionClosed(f"lost the connection to the agent in process {staged.pid} during the handshake ({error})", "attach again")
            ) from None
    except BaseException:
        sock.close()
        raise


def _target_view_pid(pid: int) -> int:
    """The pid as the target itself sees it (differs when it runs in its own pid namespace)."""
    from explorer.remote import _nspid

    ids = _nspid(f"/proc/{pid}/status")
    return ids[-1] if ids else pid
