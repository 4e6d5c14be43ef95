"""How the agent's code gets into a real target (3.14 and 3.15): compiled ahead of time by an interpreter of the
target's version (cached per compiler, target user, version and agent source) when one can be run,
compiled by the target itself otherwise; a cache entry for another magic number is rejected by the
target; and detach still leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import msgpack
import pytest

from explorer import attach as attach_module
from explorer import compiled_agent as compiled_agent_module
from explorer.remote import RemoteProcess
from explorer.attach import attach
from explorer.compiled_agent import AgentCode, agent_code_path, warm_agent_code
from payloads.agent import agent_source
from tests.agent_helpers import connect_when_listening
from tests.test_agent_lifecycle import BASELINE, TARGET, _state_line, _wait_for_state

IDLE = '''
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''

ORIGIN = "__import__('sys').modules['_periscope_agent'].agent.config['code']"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh per-test cache directory (explorer.pythons.cache_dir() follows XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "periscope" / compiled_agent_module.AGENT_CODE_DIR


def _version_hex(pid: int) -> int:
    with RemoteProcess.open(pid) as process:
        return process.offsets.version_hex


def _entry(pid: int, version_hex: int) -> Path:
    """The cache entry of the best compiler for ``pid`` (the target's own executable here)."""
    return agent_code_path(compiled_agent_module._compilers(pid)[0], version_hex, agent_source())


def _private_interpreter(target_python: str, folder: Path, mode: int) -> str:
    """A copy of the target interpreter in ``folder``/bin, finding its standard library through a symlink."""
    prefix = Path(os.path.realpath(target_python)).parent.parent
    (folder / "bin").mkdir(parents=True)
    (folder / "lib").symlink_to(prefix / "lib")
    copy = folder / "bin" / os.path.basename(os.path.realpath(target_python))
    shutil.copyfile(os.path.realpath(target_python), copy)
    copy.chmod(mode)
    return str(copy)


async def _origin(session) -> str:
    return (await session.eval(ORIGIN)).value.repr.strip("'")


async def test_precompiled_code_is_used_cached_and_reused(spawn, cache):
    target = spawn(IDLE)
    target.wait_for_line("ready")
    version_hex = _version_hex(target.pid)
    session = await attach(target.pid, rate=5)
    try:
        assert session.agent_code == "precompiled"
        assert await _origin(session) == "precompiled"
        frame = await session.next_frame(timeout=10)
        assert frame.main_thread is not None
    finally:
        await session.detach()
    entry = _entry(target.pid, version_hex)
    assert entry.parent == cache and entry.is_file()
    assert oct(entry.stat().st_mode & 0o777) == oct(0o600)
    before = entry.stat().st_mtime_ns
    session = await attach(target.pid, rate=0)
    try:
        assert session.agent_code == "precompiled"
        assert await _origin(session) == "precompiled"
    finally:
        await session.detach()
    assert entry.stat().st_mtime_ns == before  # read from the cache, not compiled again


async def test_the_target_compiles_the_source_when_no_interpreter_can_be_trusted(spawn, cache, tmp_path, monkeypatch, target_python):
    # The target's executable is writable by other users (periscope will not run it) and the
    # local interpreter setting points nowhere: the target has to compile the agent itself.
    python = _private_interpreter(target_python, tmp_path / "untrusted", 0o777)
    monkeypatch.setenv("PERISCOPE_TARGET_PYTHON", str(tmp_path / "no-such-python"))
    target = spawn(IDLE, python=python)
    target.wait_for_line("ready")
    assert compiled_agent_module._compilers(target.pid) == []
    assert not warm_agent_code(target.pid)
    session = await attach(target.pid, rate=5)
    try:
        assert session.agent_code == "compiled"
        assert await _origin(session) == "compiled"
        frame = await session.next_frame(timeout=10)
        assert frame.main_thread is not None
    finally:
        await session.detach()
    assert not cache.exists() or not any(cache.iterdir())


async def test_an_executable_replaced_on_disk_compiles_through_proc_exe(spawn, cache, tmp_path, monkeypatch, target_python):
    python = _private_interpreter(target_python, tmp_path / "replaced", 0o755)
    monkeypatch.setenv("PERISCOPE_TARGET_PYTHON", str(tmp_path / "no-such-python"))
    target = spawn(IDLE, python=python)
    target.wait_for_line("ready")
    os.unlink(python)
    assert [c.path for c in compiled_agent_module._compilers(target.pid)] == [f"/proc/{target.pid}/exe"]
    assert warm_agent_code(target.pid)
    session = await attach(target.pid, rate=0)
    try:
        assert session.agent_code == "precompiled"
        assert await _origin(session) == "precompiled"
    finally:
        await session.detach()


async def test_a_cache_entry_for_another_magic_number_is_rejected_but_never_evicted_by_the_note(spawn, cache):
    # The target's code-rejected note lives in a directory its user owns: it may say how that
    # session started, but it never removes or replaces what periscope cached.
    target = spawn(IDLE)
    target.wait_for_line("ready")
    version_hex = _version_hex(target.pid)
    assert warm_agent_code(target.pid)
    entry = _entry(target.pid, version_hex)
    good = compiled_agent_module._parse_code(entry.read_bytes())
    assert good is not None
    wrong = AgentCode(bytes([good.magic[0] ^ 0xFF, good.magic[1], 13, 10]), good.cache_tag, good.hexversion, good.data)
    assert compiled_agent_module._write_code(entry, wrong)
    session = await attach(target.pid, rate=5)
    try:
        assert session.agent_code == "rejected"
        assert await _origin(session) == "compiled"
        frame = await session.next_frame(timeout=10)
        assert frame.main_thread is not None
    finally:
        await session.detach()
    assert compiled_agent_module._parse_code(entry.read_bytes()) == wrong  # the note evicted nothing
    assert compiled_agent_module._write_code(entry, good)
    compiled_agent_module._code_memo.clear()
    session = await attach(target.pid, rate=0)
    try:
        assert session.agent_code == "precompiled"
    finally:
        await session.detach()


def test_a_damaged_cache_entry_is_not_used(cache, target_python, spawn):
    target = spawn(IDLE)
    target.wait_for_line("ready")
    version_hex = _version_hex(target.pid)
    code = compiled_agent_module.agent_code(target.pid, version_hex)
    assert code is not None
    entry = _entry(target.pid, version_hex)
    blob = entry.read_bytes()
    assert compiled_agent_module._parse_code(blob) == code
    assert compiled_agent_module._parse_code(blob[:-100]) is None  # cut short
    assert compiled_agent_module._parse_code(blob[:-1] + bytes([blob[-1] ^ 1])) is None  # one bit flipped
    assert compiled_agent_module._parse_code(b"not an entry\n" + code.data) is None
    entry.write_bytes(blob[:-100])
    assert compiled_agent_module.agent_code(target.pid, version_hex, compile_now=False) is None
    assert compiled_agent_module.agent_code(target.pid, version_hex) == code  # compiled again
    # An entry for another minor version under this key is never used either.
    other = AgentCode(code.magic, code.cache_tag, 0x030D00F0, code.data)
    assert compiled_agent_module._write_code(entry, other)
    assert compiled_agent_module.agent_code(target.pid, version_hex, compile_now=False) is None


async def test_detach_after_a_precompiled_start_leaves_nothing(spawn, cache):
    target = spawn(TARGET)
    target.wait_for_line(_state_line(BASELINE))
    _wait_for_state(target, lambda s: s == BASELINE)
    session = await attach(target.pid, rate=10)
    directory = Path(session._script_dir.host_path)
    try:
        assert session.agent_code == "precompiled"
        await session.next_frame(timeout=10)
        _wait_for_state(target, lambda s: s["agent"])
    finally:
        await session.detach()
    _wait_for_state(target, lambda s: s == BASELINE)
    assert not directory.exists()


def test_the_cache_follows_xdg_cache_home_and_names_compiler_and_user(cache):
    compiler = compiled_agent_module.Compiler("/usr/bin/python3.14", (1, 2, 3, 4, 5), None, True, 0)
    path = agent_code_path(compiler, 0x030E0AF0, "source")
    assert path.parent == cache
    assert path.name.startswith("030e0af0-")
    assert agent_code_path(compiler, 0x030E0AF0, "other source") != path
    assert agent_code_path(compiler, 0x030E0BF0, "source") != path
    for other in (
        compiled_agent_module.Compiler("/usr/bin/python3.14", (1, 2, 3, 4, 6), None, True, 0),  # the file changed
        compiled_agent_module.Compiler("/usr/bin/python3.14", (1, 2, 3, 4, 5), (1000, 1000), True, 1000),  # another user
        compiled_agent_module.Compiler("/usr/bin/python3.14", (1, 2, 3, 4, 5), None, False, None),  # periscope's own
    ):
        assert agent_code_path(other, 0x030E0AF0, "source") != path


SPINNERS = '''
import sys, threading, time
def spin():
    n = 0
    while True:
        n += 1
threads = [threading.Thread(target=spin, name=f"spinner-{i}", daemon=True) for i in range(2)]
for t in threads:
    t.start()
sys.stdout.write("spinners %s\\n" % " ".join(str(t.native_id) for t in threads))
while True:
    time.sleep(0.5)
'''


def test_the_request_goes_to_a_thread_that_runs_python(spawn):
    busy = spawn(SPINNERS)
    spinners = {int(n) for n in busy.wait_for_line("spinners ").split()[1:]}
    idle = spawn(IDLE)
    idle.wait_for_line("ready")
    with RemoteProcess.open(busy.pid) as process:
        picked = [attach_module._fresh_holder(process, None) for _ in range(10)]
    # The spinners hold the GIL nearly all the time (the main thread wakes every 0.5 s).
    assert set(picked) <= spinners | {busy.pid, None}
    assert sum(p in spinners for p in picked) >= 8, picked
    with RemoteProcess.open(idle.pid) as process:
        assert attach_module._fresh_holder(process, 12345) in (12345, idle.pid)  # nobody computes


async def test_auth_that_changes_the_modules_gets_a_first_frame_of_those_modules(spawn, cache):
    # The worker starts the first frame before periscope connects, for the configured modules;
    # an auth message that asks for others must not get that early frame.
    target = spawn(IDLE)
    target.wait_for_line("ready")
    code = compiled_agent_module.agent_code(target.pid, _version_hex(target.pid))
    assert code is not None
    staged = attach_module._stage(target.pid, 20.0, ("__main__",), None, code)
    try:
        await attach_module._inject(staged, [None], time.monotonic() + 10, lambda *a, **k: None, spread=False)
        sock = connect_when_listening(staged.socket_host_path)
        sock.sendall(msgpack.packb({"t": "auth", "token": staged.token, "modules": ["sys"]}))
        unpacker = msgpack.Unpacker(raw=False)
        messages = []
        while len(messages) < 3:
            unpacker.feed(sock.recv(1 << 20))
            messages.extend(unpacker)
        assert messages[0]["t"] == "hello" and messages[0]["code"] == "precompiled"
        frames = [m for m in messages if m["t"] == "frame"]
        # The first is full; the deltas after it carry a module only when it changed, and never another.
        assert frames and frames[0]["base"] is None and [m["name"] for m in frames[0]["modules"]] == ["sys"]
        assert all({m["name"] for m in f["modules"]} <= {"sys"} and f.get("module_order", ["sys"]) == ["sys"] for f in frames)
        sock.sendall(msgpack.packb({"t": "req", "id": 1, "op": "detach"}))
        while sock.recv(65536):
            pass
        sock.close()
    finally:
        staged.script_dir.cleanup()


LOOKALIKE = '''
import sys, threading, time
hold = threading.Event()

def run(globals_, filename):
    source = "def _periscope_launch():\\n    secret = 42\\n    hold.wait()\\n_periscope_launch()\\n"
    exec(compile(source, filename, "exec"), globals_)

threading.Thread(target=run, args=({"hold": hold, "_PERISCOPE_CONFIG": {}}, "<string>"), name="launching", daemon=True).start()
threading.Thread(target=run, args=({"hold": hold}, "<string>"), name="exec-string", daemon=True).start()
threading.Thread(target=run, args=({"hold": hold}, "<periscope-agent>"), name="agent-named", daemon=True).start()
threading.Thread(target=run, args=({"hold": hold}, "<periscope-bootstrap>"), name="bootstrap-named", daemon=True).start()
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.05)
'''


async def test_only_the_agents_own_code_is_left_out_of_stacks(spawn):
    # The agent knows its own frames (the launcher and bootstrap in the thread that ran the
    # script, its threads) by their code objects. Target code that looks like periscope's, by
    # file name, function name or globals, keeps its frames and their locals.
    target = spawn(LOOKALIKE)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        frame = await session.sample()
        by_name = {t.name: t for t in frame.threads}
        for name, filename in (("launching", "<string>"), ("exec-string", "<string>"), ("agent-named", "<periscope-agent>"), ("bootstrap-named", "<periscope-bootstrap>")):
            stack = by_name[name].frames
            functions = [(f.filename, f.function) for f in stack]
            assert functions[0][1] == "wait" and (filename, "_periscope_launch") in functions and (filename, "<module>") in functions, (name, functions)
            launch = next(f for f in stack if f.function == "_periscope_launch")
            assert launch.locals is not None and any(v.name == "secret" and v.value.repr == "42" for v in launch.locals)
        assert not any(f.filename in ("<periscope-agent>", "<periscope-bootstrap>") for t in frame.threads if t.name not in ("agent-named", "bootstrap-named") for f in t.frames)
    finally:
        await session.detach()
