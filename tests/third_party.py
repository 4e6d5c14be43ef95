"""Third-party programs for targets: a virtual environment made from the target interpreter, with
packages from PyPI installed into it, cached between runs and keyed by interpreter.

The environment has no pip of its own: this (periscope's) pip installs into it with ``--python``.
Making one is locked, so that parallel test workers share it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from explorer.pythons import cache_dir

VENV_DIR = "test-venvs"


def _key(python: str, packages: tuple[str, ...]) -> str:
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    digest = hashlib.sha256(f"{os.path.realpath(python)}\n{version}\n{packages}".encode()).hexdigest()[:16]
    return f"{Path(python).name}-{digest}"


def venv_with(python: str, *packages: str) -> str:
    """The python of a virtual environment of ``python`` that has ``packages`` (made once, then reused)."""
    root = cache_dir() / VENV_DIR
    root.mkdir(parents=True, exist_ok=True)
    folder = root / _key(python, packages)
    ready = folder / ".ready"
    venv_python = folder / "bin" / "python"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run([python, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
            result = subprocess.run(
                [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q", *packages],
                capture_output=True, text=True, timeout=600,
            )
            if result.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise RuntimeError(f"could not install {' '.join(packages)} for {python}: {result.stderr[-2000:]}")
            ready.touch()
    return str(venv_python)


UVICORN_APP = '''
import asyncio, socket, sys
import uvicorn

DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0

async def handle(path):
    # A request that takes a while: under load, many are in flight at once, each in its own task.
    delay = DELAY
    await asyncio.sleep(delay)
    return f"done {path}".encode()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = await handle(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
config = uvicorn.Config(app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False)
server = uvicorn.Server(config)

async def main():
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn-serve")
    while not server.started:
        await asyncio.sleep(0.01)
    print("port", sock.getsockname()[1], flush=True)
    await serving

asyncio.run(main())
'''
"""An ASGI app served by uvicorn on 127.0.0.1 (a free port it prints as ``port N``); each request sleeps 1 s (or argv[1] seconds)."""


class LoopbackLoad:
    """A bounded HTTP load on 127.0.0.1: ``clients`` threads with keep-alive connections, at most
    ``requests`` requests in all and ``seconds`` of time; stops by itself (or on ``stop()``)."""

    def __init__(self, port: int, *, clients: int = 16, requests: int = 2000, seconds: float = 60.0) -> None:
        import threading

        self.port = port
        self.clients = clients
        self.requests = requests
        self.seconds = seconds
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> LoopbackLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self.done + self.failed >= self.requests:
                return False
            self.done += 1
            return True

    def _client(self, number: int) -> None:
        import http.client
        import time

        deadline = time.monotonic() + self.seconds
        connection = None
        while time.monotonic() < deadline and self._take():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("GET", f"/client{number}")
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failed += 1
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.05)
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        """Stop sending and wait for the clients (each finishes the request it is in)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
