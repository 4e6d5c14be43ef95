"""The agent's socket against other processes: in the window between the agent's start and
periscope's handshake, connections from other processes of the same user (no token, a wrong
token, garbage, a client that trickles bytes) are turned away without holding periscope up,
another user cannot reach the socket at all, and after the handshake the socket, the script and
the token are gone."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import stat
import time
from typing import Any

import pytest

from explorer import attach as attach_module
from explorer import handshake as handshake_module
from explorer import wire
from explorer.model import Response
from tests.agent_helpers import start_watched
from tests.test_cli_ps import DEBIAN_311, NOBODY_PREFIX

INTRUDER = '''
import socket, sys, time
path, how = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX)
for attempt in range(4000):
    try:
        sock.connect(path)
        break
    except ConnectionRefusedError:  # bound but not listening yet
        time.sleep(0.002)
    except FileNotFoundError:
        print("no socket", flush=True)
        sys.exit()
    except PermissionError:
        print("denied", flush=True)
        sys.exit()
print("connected", flush=True)
started = time.monotonic()
if how == "wrong token":
    sock.sendall(b"\\x82\\xa1t\\xa4auth\\xa5token\\xd9\\x40" + b"0" * 64)
elif how == "garbage":
    sock.sendall(b"\\xc1" * 64)
elif how == "trickle":
    sock.sendall(b"\\x82\\xa1t\\xa4auth\\xa5token\\xd9\\x40")  # then one byte of the token every 0.2 s
    try:
        while True:
            sock.sendall(b"0")
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    print("closed after %.1f s" % (time.monotonic() - started), flush=True)
    sys.exit()
sock.settimeout(30)
try:
    data = sock.recv(1)
except ConnectionResetError:
    data = b""
print("closed" if data == b"" else "answered", flush=True)
'''


def _staged_agent(pid: int) -> handshake_module._Staged:
    """The agent script staged for ``pid`` (its socket not connected yet)."""
    return attach_module._stage(pid, 0.0, ("__main__",), None)


async def _start(staged: handshake_module._Staged) -> None:
    """Have the target start the agent, and wait until the agent has bound its socket."""
    await attach_module._inject(staged, [None], time.monotonic() + 10, lambda *a, **k: None, spread=False)
    deadline = time.monotonic() + 10
    while not staged.socket_host_path.exists():
        assert time.monotonic() < deadline, "the agent never bound its socket"
        await asyncio.sleep(0.005)


def _request(sock: socket.socket, decoder: wire.Decoder, request_id: int, **request: Any) -> Response:
    """Send one request over a raw agent connection and read until its response."""
    sock.sendall(wire.encode({"t": "req", "id": request_id, **request}))
    while True:
        for message in decoder:
            if isinstance(message, Response) and message.request_id == request_id:
                return message
        data = sock.recv(1 << 16)
        assert data, "the agent closed the connection"
        decoder.feed(data)


TOKEN_HOLDERS = '''
import gc, hashlib
def _holders(wanted):
    """Names of the live containers that hold a str whose SHA-256 is ``wanted``."""
    found = []
    for obj in gc.get_objects():
        values = obj.values() if type(obj) is dict else obj if type(obj) in (list, tuple, set) else ()
        for value in list(values):
            if type(value) is str and len(value) == 64 and hashlib.sha256(value.encode()).hexdigest() == wanted:
                found.append(type(obj).__name__)
    return found
_holders({digest!r})
'''


async def test_same_user_intruders_are_turned_away_and_the_token_is_gone_after_the_handshake(spawn, tmp_path):
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    staged = _staged_agent(watched.pid)
    try:
        await _start(staged)
        path = str(staged.socket_host_path)
        directory = os.stat(staged.socket_host_path.parent)
        assert stat.S_IMODE(directory.st_mode) == 0o700 and directory.st_uid == os.stat(f"/proc/{watched.pid}").st_uid
        intruders = {}
        for how in ("no token", "trickle", "wrong token", "garbage"):
            intruders[how] = spawn(INTRUDER, args=[path, how])
            intruders[how].wait_for_line("connected")  # in the agent's queue before periscope
        sock, decoder, hello = await asyncio.to_thread(handshake_module._connect, staged, time.monotonic() + 30)
        try:
            assert hello.pid == watched.pid
            for how in ("no token", "wrong token", "garbage"):
                assert intruders[how].wait_for_line("closed").startswith("closed"), how
            trickled = intruders["trickle"].wait_for_line("closed after ")
            assert float(trickled.split()[2]) < 10  # dropped at the handshake bound, not kept waiting
            # After the handshake: no socket to connect to, no script, and no live copy of the token.
            assert not os.path.exists(path) and not staged.script_dir.contains(handshake_module.SCRIPT_NAME)
            late = spawn(INTRUDER, args=[path, "wrong token"])
            assert late.wait_for_line("no socket")
            digest = hashlib.sha256(staged.token.encode()).hexdigest()
            found = _request(sock, decoder, 1, op="eval", code=TOKEN_HOLDERS.format(digest=digest))
            assert found.ok and found.result["status"] == "ok", found
            assert found.result["value"]["repr"] == "[]"
            assert _request(sock, decoder, 2, op="sample").ok  # the session went on undisturbed
            _request(sock, decoder, 3, op="detach")
        finally:
            sock.close()
    finally:
        staged.script_dir.cleanup()
    watched.wait_until_back_to(quiet)


async def test_another_user_cannot_reach_the_socket(spawn, tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None or not os.access(DEBIAN_311, os.X_OK):
        pytest.skip("needs root, setpriv and /usr/bin/python3.11 to act as another user")
    watched = start_watched(spawn, tmp_path)
    quiet = watched.quiet()
    staged = _staged_agent(watched.pid)
    try:
        await _start(staged)
        nobody = spawn(argv=[*NOBODY_PREFIX, DEBIAN_311, "-c", INTRUDER, str(staged.socket_host_path), "other user"], cwd="/")
        assert nobody.wait_for_line("denied")
        sock, decoder, hello = await asyncio.to_thread(handshake_module._connect, staged, time.monotonic() + 30)
        try:
            assert _request(sock, decoder, 1, op="detach").ok
        finally:
            sock.close()
    finally:
        staged.script_dir.cleanup()
    watched.wait_until_back_to(quiet)
