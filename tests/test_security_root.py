"""periscope run as root against a process of an unprivileged user, who plays the attacker for real.

The user (an unused uid, through ``setpriv``) owns a copy of the target interpreter, whose standard
library they may change, and the session directory periscope hands them. Nothing they do may
reach root: code their interpreter compiled never runs in anyone else's process, nothing they
plant in the session directory is followed, waited on or read unbounded, and a TMPDIR they choose
never makes root create a directory there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from explorer import attach as attach_module
from explorer import compiled_agent as compiled_agent_module
from explorer.attach import attach
from explorer.remote import RemoteProcess
from tests.attacker import as_user, needs_root, owned_dir, unused_uid, user_python

pytestmark = needs_root

IDLE = """
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
"""

PLANTER = """
import os, sys, time
kind, name, secret = sys.argv[1], sys.argv[2], sys.argv[3]

def plant(event, args):
    # The moment the request is picked up, before the script is opened: plant into periscope's
    # session directory, which belongs to this user.
    if event == "cpython.remote_debugger_script":
        path = os.path.join(os.path.dirname(args[0]), name)
        if kind == "secret":
            os.symlink(secret, path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero":
            os.symlink("/dev/zero", path)
        elif kind == "remove":
            import shutil
            shutil.rmtree(os.path.dirname(args[0]))
        elif kind == "note":
            with open(path, "w") as handle:
                handle.write("the precompiled agent is for another interpreter build")

sys.addaudithook(plant)
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
"""

POISON = '''

# --- the attacker's change to their own interpreter (appended by the test) ---
import builtins as _periscope_test_builtins
_PERISCOPE_TEST_MARKS = {marks!r}


def _periscope_test_mark(what):
    import os
    try:
        os.close(os.open("%s/%s-%d-%d" % (_PERISCOPE_TEST_MARKS, what, os.getpid(), os.getuid()), os.O_CREAT | os.O_WRONLY, 0o644))
    except OSError:
        pass


_periscope_test_mark("started")
_periscope_test_real_compile = _periscope_test_builtins.compile


def _periscope_test_compile(source, filename, mode, *args, **kwargs):
    # Whatever this interpreter compiles as periscope's agent marks every process it runs in.
    if filename == "<periscope-agent>" and isinstance(source, str):
        source = "__import__('encodings')._periscope_test_mark('ran')\\n" + source
    return _periscope_test_real_compile(source, filename, mode, *args, **kwargs)


_periscope_test_builtins.compile = _periscope_test_compile
'''


@pytest.fixture(scope="module")
def stranger(target_python):
    """(uid, python, scripts): an unused uid, a copy of the target interpreter it owns, a directory for its scripts."""
    uid = unused_uid()
    base = Path(tempfile.mkdtemp(prefix="attacker-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        python = user_python(target_python, owned_dir(base, "home", uid), uid)
        scripts = owned_dir(base, "scripts", uid)
        yield uid, python, scripts
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache for this test (agent code, session records), in this process and in periscope's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    compiled_agent_module._code_memo.clear()
    compiled_agent_module._code_failed.clear()
    return tmp_path / "cache" / "periscope"


def _spawn_as(spawn, stranger, source: str, name: str, args=(), env=None):
    uid, python, scripts = stranger
    script = scripts / name
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    script.chmod(0o644)
    target = spawn(argv=[*as_user(uid), python, str(script), *args], cwd="/", env=env)
    target.wait_for_line("ready")
    return target


def _marks(folder: Path) -> list[tuple[str, int, int]]:
    found = []
    for name in os.listdir(folder):
        what, pid, uid = name.rsplit("-", 2)
        found.append((what, int(pid), int(uid)))
    return found


async def test_code_from_a_users_interpreter_never_runs_in_anyone_elses_process(spawn, stranger, cache, tmp_path):
    uid, python, scripts = stranger
    marks = Path(tempfile.mkdtemp(prefix="marks-", dir=scripts.parent))  # where every process can write
    marks.chmod(0o777)
    encodings = next((Path(python).parent.parent / "lib").glob("python3.*")) / "encodings" / "__init__.py"
    clean = encodings.read_text(encoding="utf-8")
    encodings.write_text(clean + POISON.format(marks=str(marks)), encoding="utf-8")
    try:
        # First the user's own process, on their poisoned interpreter; it plants a code-rejected
        # note whenever periscope attaches.
        victim = _spawn_as(spawn, stranger, PLANTER, "planter.py", args=("note", "code-rejected", "-"))
        session = await attach(victim.pid, rate=0)
        try:
            assert (await session.eval("1 + 1")).value.repr == "2"
        finally:
            await session.detach()
        # The attack is live: the user's interpreter compiled the agent, and the poisoned code ran
        # in the user's own process (which the user controls anyway).
        assert ("ran", victim.pid, uid) in _marks(marks)

        # Then root's own process of the same version: never the user's code.
        root_target = spawn(IDLE)
        root_target.wait_for_line("ready")
        session = await attach(root_target.pid, rate=0)
        try:
            assert session.agent_code == "precompiled"
        finally:
            await session.detach()
        entries = {p.name: p.stat().st_mtime_ns for p in (cache / "agent-code").iterdir()}

        # The user's note cannot evict root's entry either.
        session = await attach(victim.pid, rate=0)
        await session.detach()
        session = await attach(root_target.pid, rate=0)
        try:
            assert session.agent_code == "precompiled"
            assert (await session.eval("1 + 1")).value.repr == "2"
        finally:
            await session.detach()
        after = {p.name: p.stat().st_mtime_ns for p in (cache / "agent-code").iterdir()}
        assert {name: after.get(name) for name in entries} == entries
    finally:
        encodings.write_text(clean, encoding="utf-8")
    found = _marks(marks)
    assert found, "the poisoned interpreter never ran: the test did not play the attack"
    assert all(mark_uid == uid for _, _, mark_uid in found), found  # only ever in the user's processes
    assert not any(pid == root_target.pid for _, pid, _ in found), found


SECRET_TEXT = "root-only-secret-5f1c0a"

MEASURED = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "explorer", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Run periscope (the arguments after the first) as a child and write its peak RSS in KiB to the first."""


@pytest.mark.parametrize("name", ["busy", "failed", "agent.sock"])
@pytest.mark.parametrize("kind", ["secret", "fifo", "zero"])
def test_what_the_user_plants_in_the_session_directory_is_never_followed(spawn, stranger, cache, tmp_path, kind, name):
    secret = tmp_path / "secret"
    secret.write_text(SECRET_TEXT + "\n")
    secret.chmod(0o600)
    target = _spawn_as(spawn, stranger, PLANTER, f"planter-{kind}-{name}.py", args=(kind, name, str(secret)))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache.parent)}
    timeout = 5.0
    rss_file = tmp_path / "maxrss"
    before = _dirs_of(stranger[0])
    started = time.monotonic()
    # Through a small parent of its own: a child's peak RSS starts from its parent's at fork
    # (this test process's), so periscope is forked from a fresh interpreter that reports it.
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, str(rss_file), "snapshot", str(target.pid), "--timeout", str(timeout)],
        capture_output=True,
        env=env,
        timeout=timeout + 30,
    )
    elapsed = time.monotonic() - started
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    maxrss_kib = int(rss_file.read_text())
    assert SECRET_TEXT not in out + err
    assert done.returncode == 1, (out, err)
    assert err.startswith("periscope: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert elapsed < timeout + 8, elapsed  # the attach timeout, plus periscope's own start-up on a loaded machine
    assert maxrss_kib < 100 * 1024, maxrss_kib
    # And the session directory went, whatever the agent (still starting meanwhile) put in it.
    assert _dirs_of(stranger[0]) <= before


async def test_a_session_directory_removed_under_the_attach_is_reported_at_once(spawn, stranger, cache):
    # The user removes the directory the moment the request is picked up: periscope says so
    # instead of waiting out its timeout for a socket that can no longer appear.
    from explorer.staging import SessionTampered

    target = _spawn_as(spawn, stranger, PLANTER, "planter-remove.py", args=("remove", "-", "-"))
    started = time.monotonic()
    with pytest.raises(SessionTampered) as raised:
        await attach(target.pid, rate=0, timeout=60)
    assert time.monotonic() - started < 30  # far less than the timeout
    assert "was removed" in str(raised.value) and "attach again" in str(raised.value)
    assert target.proc.poll() is None


def _dirs_of(uid: int) -> set[str]:
    """The periscope-* directories in /tmp that ``uid`` owns."""
    found = set()
    for name in _periscope_dirs("/tmp"):
        try:
            if os.lstat(f"/tmp/{name}").st_uid == uid:
                found.add(name)
        except FileNotFoundError:
            continue
    return found


def _periscope_dirs(folder: str) -> set[str]:
    return {name for name in os.listdir(folder) if name.startswith("periscope-")}


@pytest.mark.parametrize("where", ["/etc", "own"])
async def test_a_tmpdir_the_user_names_in_roots_directories_is_passed_over(spawn, stranger, cache, tmp_path, where):
    folder = "/etc" if where == "/etc" else str(tmp_path / "root-owned")
    if where == "own":
        os.mkdir(folder, 0o755)
        os.chmod(tmp_path, 0o755)
    before = _periscope_dirs(folder)
    target = _spawn_as(spawn, stranger, IDLE, f"idle-{where.strip('/')}.py", env={"TMPDIR": folder})
    session = await attach(target.pid, rate=0)
    try:
        made = session._script_dir.target_path
        assert made.startswith("/tmp/periscope-"), made
        assert _periscope_dirs(folder) == before
    finally:
        await session.detach()
    assert _periscope_dirs(folder) == before


async def test_a_tmpdir_of_the_users_own_is_used(spawn, stranger, cache):
    uid, _python, scripts = stranger
    own = owned_dir(scripts.parent, f"tmp-{os.getpid()}", uid, mode=0o700)
    try:
        target = _spawn_as(spawn, stranger, IDLE, "idle-own-tmp.py", env={"TMPDIR": str(own)})
        session = await attach(target.pid, rate=0)
        try:
            assert session._script_dir.target_path.startswith(f"{own}/periscope-")
        finally:
            await session.detach()
        assert _periscope_dirs(str(own)) == set()
    finally:
        subprocess.run(["rm", "-rf", str(own)], check=False)


async def test_a_directory_a_killed_periscope_left_behind_is_removed_on_the_next_attach(spawn, stranger, cache):
    target = _spawn_as(spawn, stranger, IDLE, "idle-stale.py")
    # A periscope killed right after staging the agent (before any request was written).
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "from explorer.attach import _stage\n"
            f"staged = _stage({target.pid}, 0.0, ('__main__',), None)\n"
            "print(staged.script_dir.host_path, flush=True)\n"
            "os.kill(os.getpid(), 9)\n",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache.parent)},
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = Path(killed.stdout.strip())
    assert (left / "agent.py").exists()  # left behind, with the staged script
    session = await attach(target.pid, rate=0)
    try:
        assert not left.exists()
        assert Path(session._script_dir.host_path).exists()
    finally:
        await session.detach()


async def test_a_periscope_in_another_pid_namespace_leaves_live_sessions_alone(spawn, stranger, cache, tmp_path):
    # A periscope run in a container that shares this machine's /tmp and cache (as ``--exec
    # "nsenter -t PID -a"`` does) sees none of this machine's processes in its /proc: it must not
    # take this live session for one a killed periscope left behind. It did, and removed the
    # directory of an attach in progress.
    import shutil

    from explorer.staging import prepare_script_dir

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a pid namespace")
    target = _spawn_as(spawn, stranger, IDLE, "idle-namespace.py")
    live = prepare_script_dir(target.pid)
    try:
        parent = os.path.dirname(live.target_path)
        sweep = (
            "import os, sys\n"
            "from explorer import leftovers\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "print(os.getpid(), len(leftovers.records()), leftovers.remove_stale(fd))\n"
        )
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", sweep, parent],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "XDG_CACHE_HOME": str(cache.parent)},
        )
        assert done.returncode == 0, done.stderr
        pid, seen, removed = done.stdout.split(maxsplit=2)
        assert pid == "1" and int(seen) >= 1  # in a namespace of its own, and it read the record
        assert removed.strip() == "[]"
        assert Path(live.host_path).is_dir()
    finally:
        live.cleanup()


async def test_a_staged_script_picked_up_after_its_attach_starts_no_agent(spawn, stranger, cache):
    # As if periscope had died waiting (SIGKILL, so it never withdrew the request): the thread
    # picks the script up later; the script removes itself and starts nothing.
    target = _spawn_as(spawn, stranger, IDLE, "idle-late.py")
    staged = attach_module._stage(target.pid, 0.0, ("__main__",), None, not_after=time.time() - 1)
    try:
        await attach_module._inject(staged, [None], time.monotonic() + 10, lambda *a, **k: None, spread=False)
        deadline = time.monotonic() + 10
        while staged.script_dir.contains("agent.py") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not staged.script_dir.contains("agent.py")
        time.sleep(0.5)
        assert not staged.script_dir.contains("agent.sock")
        with open(f"/proc/{target.pid}/status") as handle:
            threads = next(int(line.split()[1]) for line in handle if line.startswith("Threads:"))
        assert threads == 1  # no agent thread
    finally:
        staged.script_dir.cleanup()


DIES_IN_THE_HANDSHAKE = """
import os, signal, socket, sys, threading, time

def serve(path):
    # Listen where the agent would, as the target itself, and die (SIGKILL) with periscope's
    # first message unread: the kernel resets the connection under periscope's read.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    import select
    select.select([conn], [], [], 30)
    os.kill(os.getpid(), signal.SIGKILL)

def hook(event, args):
    if event == "cpython.remote_debugger_script":
        threading.Thread(target=serve, args=(os.path.join(os.path.dirname(args[0]), "agent.sock"),)).start()
        raise RuntimeError("no agent here")  # the script does not run

sys.addaudithook(hook)
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
"""


async def test_a_target_killed_during_the_handshake_is_reported_as_exited(spawn, stranger, cache):
    from explorer.errors import ProcessGone

    target = _spawn_as(spawn, stranger, DIES_IN_THE_HANDSHAKE, "dies.py")
    with pytest.raises(ProcessGone) as raised:
        await attach(target.pid, rate=0, timeout=20)
    assert str(raised.value) == f"process {target.pid} exited"


@pytest.fixture(scope="module")
def roots_copy(target_python):
    """A root-owned copy of the target interpreter's prefix in a root-owned 0755 directory: (python, folder)."""
    base = Path(tempfile.mkdtemp(prefix="own-python-", dir="/var/tmp"))
    try:
        python = user_python(target_python, base / "prefix-parent", 0)
        yield python, base
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def test_periscopes_own_interpreter_compiles_for_everyone_only_where_nobody_else_can_change_it(
    spawn, stranger, cache, monkeypatch, roots_copy
):
    uid, _python, _scripts = stranger
    python, _base = roots_copy
    target = _spawn_as(spawn, stranger, IDLE, "idle-own.py")
    monkeypatch.setenv("PERISCOPE_TARGET_PYTHON", python)
    compiled_agent_module._local_python.cache_clear()
    with RemoteProcess.open(target.pid) as process:
        version_hex = process.offsets.version_hex

    def owners() -> list[tuple[int | None, tuple[int, int] | None]]:
        compiled_agent_module._local_python.cache_clear()
        return [(c.for_uid, c.run_as) for c in compiled_agent_module._compilers(target.pid, version_hex)]

    # The user's own executable compiles as the user, for the user; periscope's for everyone.
    assert owners() == [(uid, (uid, uid)), (None, None)]
    prefix = Path(python).parent.parent
    library = next((prefix / "lib").glob("python3.*"))
    for changeable in (library, Path(python).parent, prefix.parent):
        os.chown(changeable, uid, uid)  # now the user could change what it compiles
        try:
            assert owners() == [(uid, (uid, uid))], changeable
        finally:
            os.chown(changeable, 0, 0)
    os.chmod(library, 0o777)  # writable by everyone, without the sticky bit
    try:
        assert owners() == [(uid, (uid, uid))]
    finally:
        os.chmod(library, 0o755)
    assert owners() == [(uid, (uid, uid)), (None, None)]
    compiled_agent_module._local_python.cache_clear()


def test_a_cache_directory_another_user_owns_is_never_read(spawn, cache):
    # A HOME kept across sudo -E: the cache would be the user's, and so would its entries.

    target = spawn(IDLE)
    target.wait_for_line("ready")
    with RemoteProcess.open(target.pid) as process:
        version_hex = process.offsets.version_hex
    code = compiled_agent_module.agent_code(target.pid, version_hex)
    assert code is not None
    compiled_agent_module._code_memo.clear()
    assert compiled_agent_module.agent_code(target.pid, version_hex, compile_now=False) == code  # periscope's own: read
    entries = cache / "agent-code"
    uid = unused_uid()
    for path in (entries, *entries.iterdir()):
        os.chown(path, uid, uid)
    compiled_agent_module._code_memo.clear()
    assert compiled_agent_module.agent_code(target.pid, version_hex, compile_now=False) is None
    os.chown(entries, 0, 0)  # the directory is ours again, but the entry is still the user's
    compiled_agent_module._code_memo.clear()
    assert compiled_agent_module.agent_code(target.pid, version_hex, compile_now=False) is None


NAMER = """
import sys, threading, time
# Frames whose file names the user chose: a root-only file, a FIFO, /dev/zero and a readable control.
for index, name in enumerate(sys.argv[1:]):
    code = compile("def wait():\\n    while True:\\n        time.sleep(0.05)\\n", name, "exec")
    scope = {"time": time}
    exec(code, scope)
    threading.Thread(target=scope["wait"], name=f"namer-{index}", daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_source_lines_are_only_what_the_target_could_read_and_never_block(spawn, stranger, tmp_path):
    import threading

    from explorer.screens.sources import SourceLines

    secret = tmp_path / "secret.py"
    secret.write_text(SECRET_TEXT + "\n")
    secret.chmod(0o600)
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    control = tmp_path / "control.py"
    control.write_text("def wait():\n    while True:\n        time.sleep(0.05)  # control\n")
    control.chmod(0o644)
    os.chmod(tmp_path, 0o755)
    names = [str(secret), str(fifo), "/dev/zero", str(control)]
    target = _spawn_as(spawn, stranger, NAMER, "namer.py", args=names)
    from explorer.stacks import read_stacks

    _version, stacks = read_stacks(target.pid)
    seen = {frame.filename: frame.lineno for stack in stacks for frame in stack.frames}
    assert set(names) <= set(seen), seen
    sources = SourceLines(target.pid)
    shown: dict[str, str | None] = {}

    def read_all() -> None:
        for name in names:
            shown[name] = sources.line(name, seen[name])

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "reading a frame's source blocked"
    assert shown[str(secret)] is None and shown[str(fifo)] is None and shown["/dev/zero"] is None, shown
    assert shown[str(control)] == "time.sleep(0.05)  # control", shown
