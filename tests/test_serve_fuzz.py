"""``periscope serve --stdio`` fed malformed requests (hypothesis): every one gets a typed error
(``{"type", "message"}``), the server goes on answering, and nothing reaches stderr as a
traceback. Bytes that are not msgpack end the stream with a typed error and exit status 2.

No generated request can touch a process: pids are never valid, ``run`` never names a command
it would run, and the ops that scan or provision are left out."""

from __future__ import annotations

import itertools
import queue
import subprocess
import sys
import threading
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.errors import RemoteDebuggingDisabled
from explorer.hosts import Host
from explorer.serve import RUN_COMMANDS
from explorer.transport import Endpoint

SAFE_OPS = ["hello", "stack", "attach", "close", "cancel", "run", "profile", "target_thread", "nope", ""]
SLOW_OPS = {"ps", "target_python"}


class Serve:
    """A running ``serve --stdio`` and a thread that decodes what it writes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "explorer", "serve", "--stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.messages: queue.Queue[Any] = queue.Queue()
        self.ids = itertools.count(1_000_000)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while chunk := self.process.stdout.read1(1 << 16):
            unpacker.feed(chunk)
            for message in unpacker:
                self.messages.put(message)
        self.messages.put(None)

    def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def exchange(self, data: bytes) -> list[Any]:
        """Send ``data`` and then a hello; everything the server wrote before the hello's answer."""
        marker = next(self.ids)
        self.send(data + msgpack.packb({"t": "req", "id": marker, "op": "hello"}))
        seen = []
        while True:
            message = self.messages.get(timeout=30)
            assert message is not None, f"serve exited: {self.process.stderr.read().decode(errors='replace')}"
            if isinstance(message, dict) and message.get("id") == marker and message.get("ok") is True:
                assert message["result"]["serve"] == 1
                return seen
            seen.append(message)

    def close(self) -> int:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None and self.process.stderr is not None
            self.process.stdout.close()


@pytest.fixture(scope="module")
def serve():
    server = Serve()
    try:
        yield server
    finally:
        status = server.close()
        stderr = server.process.stderr.read().decode(errors="replace")
        server.process.stderr.close()
        assert status == 0 and "Traceback" not in stderr, stderr


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
invalid_pids = st.one_of(st.none(), st.text(max_size=5), st.floats(), st.integers(min_value=-(1 << 63), max_value=0), st.integers(min_value=1 << 31, max_value=1 << 62), st.booleans())


@st.composite
def requests(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["value", "request", "data"]))
    if shape == "value":
        return draw(values)
    message = draw(st.dictionaries(st.sampled_from(["pid", "sid", "argv", "thread", "timeout", "rate", "modules", "limits", "request", "interval", "native_id", "locals_thread", "locals", "x"]), values, max_size=5))
    if shape == "data":
        message.update(t="data", sid=draw(values), b=draw(st.binary(max_size=50) | values))
        return message
    op = draw(st.sampled_from(SAFE_OPS) | st.text(max_size=12).filter(lambda op: op not in SLOW_OPS))
    message.update(t=draw(st.sampled_from(["req", "req", "resp", "x"])), id=draw(st.integers(0, 999_999) | values), op=op)
    message["pid"] = draw(invalid_pids)  # never a process
    argv = message.get("argv")
    if isinstance(argv, list) and argv and isinstance(argv[0], str) and argv[0] in RUN_COMMANDS:
        argv[0] = "not-a-command"
    return message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=requests())
def test_malformed_requests_get_typed_errors(serve, message):
    for answer in serve.exchange(msgpack.packb(message, use_bin_type=True)):
        assert isinstance(answer, dict) and answer["t"] in ("resp", "error"), answer
        if answer["t"] == "error" or answer["ok"] is False:
            error = answer["error"]
            assert isinstance(error["type"], str) and isinstance(error["message"], str) and error["message"], answer


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_bytes_that_are_not_msgpack_end_the_stream_cleanly(garbage):
    server = Serve()
    try:
        server.send(garbage + msgpack.packb({"t": "req", "id": 7, "op": "hello"}))
        server.process.stdin.close()
        answers = []
        while (message := server.messages.get(timeout=30)) is not None:
            answers.append(message)
        status = server.process.wait(timeout=30)
        stderr = server.process.stderr.read().decode(errors="replace")
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        server.process.stdout.close()
        server.process.stderr.close()
    assert "Traceback" not in stderr, stderr
    assert status in (0, 2)
    for answer in answers:
        assert isinstance(answer, dict) and answer["t"] in ("resp", "error"), answer
    if status == 2:
        assert answers[-1]["t"] == "error" and answers[-1]["error"]["type"] == "BadRequest"


def test_typed_ops_answer_for_a_real_target(spawn):
    """The ps and stack ops on a target this test started: the far side's own reads, as data."""
    target = spawn("import time\nanswer = 41\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n")
    target.wait_for_line("ready")
    server = Serve()
    try:
        server.send(
            msgpack.packb({"t": "req", "id": 1, "op": "ps"})
            + msgpack.packb({"t": "req", "id": 2, "op": "stack", "pid": target.pid, "locals": True})
        )
        answers = {}
        while len(answers) < 2:
            message = server.messages.get(timeout=60)
            assert message is not None
            answers[message["id"]] = message
        assert answers[1]["ok"] and any(row["pid"] == target.pid and row["attachable"] for row in answers[1]["result"])
        document = answers[2]["result"]
        assert answers[2]["ok"] and document["pid"] == target.pid
        assert document["threads"][0]["frames"][0]["function"] == "<module>"
        assert any(variable["name"] == "answer" and variable["repr"] == "41" for variable in document["globals"]["__main__"])
    finally:
        assert server.close() == 0
        server.process.stderr.close()


async def test_a_typed_error_keeps_its_fix_over_serve(spawn):
    """A target started without remote debugging, attached through ``serve --stdio``: the error
    crosses as its class with the reason and the fix as fields, and the near side's rebuilt error
    (explorer.hosts over a real link) keeps them apart."""
    target = spawn("import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.01)\n", env={"PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    target.wait_for_line("ready")
    reason, fix = "remote debugging disabled by PYTHON_DISABLE_REMOTE_DEBUG", "restart the target without that variable"
    server = Serve()
    try:
        server.send(msgpack.packb({"t": "req", "id": 1, "op": "attach", "pid": target.pid, "timeout": 5.0}))
        answer = server.messages.get(timeout=60)
        assert answer is not None and answer["id"] == 1 and answer["ok"] is False, answer
        assert answer["error"] == {"type": "RemoteDebuggingDisabled", "reason": reason, "fix": fix, "message": f"{reason}; {fix}"}
    finally:
        assert server.close() == 0
        server.process.stderr.close()

    host = Host(Endpoint("here", (sys.executable, "-m", "explorer", "serve", "--stdio"), "exec"))
    try:
        with pytest.raises(RemoteDebuggingDisabled) as raised:
            await host.attach(target.pid, timeout=5.0)
    finally:
        host.close()
    assert (raised.value.reason, raised.value.fix) == (reason, fix)
