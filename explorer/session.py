"""A live session with the agent inside a target: ``attach()``, the frame stream, requests, ``detach()``.

``attach(pid)`` stages the agent script in a fresh private directory the target can read
(explorer.staging), asks one of the target's threads to run it (PEP 768 remote exec), waits for
the agent's Unix socket (never through a link planted in the directory, which belongs to the
target's user), checks with SO_PEERCRED that the process on the other end is the target (pid and uid),
proves itself with the one-time token from the script and reads the agent's ``hello``. From then
on one asyncio task reads the stream and turns it into explorer.model objects.

Which thread runs the script matters: a thread only picks the request up at its next
eval-breaker check, so a thread blocked in ``input()`` or a long sleep never does.
``thread="auto"`` (the default) uses the thread holding the GIL when one is running Python
(pickup in well under a millisecond; on a target whose threads compete for the GIL, the one that
has just taken it, see ``_fresh_holder``) and the main thread otherwise; ``"any"`` tries the threads
in turn until one picks the request up; ``"main"`` or a native thread id picks one.

No Textual here: the CLI commands and the tests use this module directly.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec import Struct

from explorer import wire
from explorer.errors import InjectionTimeout, PeriscopeError, ProcessGone, ProtocolError
from explorer.model import (
    AgentError,
    Bye,
    Children,
    Completions,
    EvalResult,
    Frame,
    Hello,
    OutOfStep,
    Output,
    Response,
    StackFrame,
    Value,
)

if TYPE_CHECKING:
    import asyncio
# asyncio is imported where it is used, not here: the one-shot commands (explorer.oneshot) call the
# blocking parts of this module (staging, the compiled-agent cache, connect, peer check, auth)
# without an event loop, and importing asyncio alone costs them a third of their start-up.

SOCKET_NAME = "agent.sock"
SCRIPT_NAME = "agent.py"
SCRIPT_DIR_FIT = {"limit": 107, "room": 1 + len(SOCKET_NAME)}
"""For prepare_script_dir: the agent binds agent.sock in the directory, and the target's path to
it must fit a Unix socket address (107 bytes); a deeper TMPDIR is passed over."""
GONE_SETTLE = 1.0
"""Seconds a connection lost during the handshake waits to see whether the target exited."""
STAGED_LIFETIME = 60.0
"""Seconds a staged agent script may still start the agent (when attach() does not say; see ``_stage``)."""
STAGED_GRACE = 2.0
"""Seconds after attach()'s deadline that a staged script may still start the agent (clock steps, slow start)."""
CONNECT_TIMEOUT = 20.0
"""Seconds the agent waits for periscope to connect before it removes itself."""
FAST_START = True
"""Whether the agent shortens the target's GIL switch interval until its first frame (PROTOCOL.md)."""


class RequestFailed(PeriscopeError):
    """The agent refused or could not carry out a request (an expired ref, an unknown thread...)."""


class SessionClosed(PeriscopeError):
    """The connection to the agent is gone (detached, or the target exited)."""


class AgentBusy(PeriscopeError):
    """Another periscope session's agent is already attached to the target."""


class AgentRefused(PeriscopeError):
    """The target took the request but did not run the agent script (an audit or open-code hook)."""


BLOCKED_FIX = "attach through a thread that runs Python, or while the program is busy"
"""What an InjectionTimeout tells when no thread ran Python, unless the caller says it in its own words."""

START_WAIT = 3.0
"""Seconds a thread that took the request may take to start the agent script (it deletes the
script first thing) before periscope concludes that the target refused to run it."""


class AttachState(enum.Enum):
    """Where ``attach()`` is."""

    INJECTED = "injected"
    """The request to run the agent script was written into a thread of the target."""
    WAITING = "waiting"
    """That thread has not run Python since: ``AttachProgress.stacks`` shows where each thread is."""
    STARTING = "starting"
    """The thread took the request; the agent is starting."""
    CONNECTED = "connected"
    """The agent answered; frames are on their way."""


class AttachProgress(Struct, frozen=True):
    """One step of ``attach()``, for a progress display."""

    state: AttachState
    message: str
    elapsed: float
    native_id: int | None = None
    """The thread the request went to (host pid namespace)."""
    stacks: tuple[Any, ...] | None = None
    """While waiting: every thread's stack read from outside (explorer.stacks.ThreadStack)."""


ThreadChoice = str | int
"""``"auto"``, ``"main"``, ``"any"`` or a native thread id."""


def parse_thread_choice(text: str) -> ThreadChoice:
    """``--via`` on the command line: auto, main, any or a native thread id."""
    if text in ("auto", "main", "any"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected auto, main, any or a native thread id, not {text!r}") from None

Progress = Callable[[AttachProgress], None]


# -- the agent's code, compiled ahead of time ---------------------------------------------------
#
# Compiling the agent's ~1700 lines inside the target holds the target's GIL for about 15 ms.
# periscope (Python 3.11+) cannot write 3.14 bytecode itself, so an interpreter of the target's
# version compiles it in a short-lived subprocess (never the target process); the marshal data is
# cached and shipped inside the agent script. The target loads it only if the magic number and
# cache tag are its own, and compiles the source otherwise.
#
# The provenance rule (PROTOCOL.md, "Precompiled code"): code that runs inside a process is only
# ever produced by a program that nobody with fewer rights than that process's owner could have
# influenced. A compiler run as the target's user (its own executable, when periscope is root) can
# be changed by that user (its standard library, ptrace): what it produces is cached under the
# compiler's identity and that user, and offered only to that user's processes running that very
# file. Only a compiler of periscope's own user (or root), in directories nobody else can write,
# compiles for every target. A note in the session directory never touches the cache.

AGENT_CODE_DIR = "agent-code"
"""Directory under explorer.cache.cache_path() for compiled agent code."""
AGENT_CODE_WAIT = 5.0
"""Seconds attach() waits for a compiler subprocess before the target compiles the agent itself."""
_CODE_HEADER = b"periscope-agent-code 3 "
COMPILE_OUTPUT_LIMIT = 16 << 20
"""Bytes a compiler subprocess may print (the agent compiles to a few hundred KiB)."""


class AgentCode(Struct, frozen=True):
    """The agent compiled by an interpreter of the target's version (``payloads.agent.build_script``)."""

    magic: bytes
    """``importlib.util.MAGIC_NUMBER`` of the interpreter that compiled it."""
    cache_tag: str
    """Its ``sys.implementation.cache_tag``."""
    hexversion: int
    """Its ``sys.hexversion``."""
    data: bytes
    """``marshal.dumps`` of the code objects of the bootstrap and of the agent module."""

    def for_script(self) -> tuple[bytes, str, bytes]:
        """The ``code`` argument of ``build_script``."""
        return self.magic, self.cache_tag, self.data


class Compiler(Struct, frozen=True):
    """An interpreter that may compile the agent for one target, and whose code it may be given to."""

    path: str
    """What to run."""
    identity: tuple[int, int, int, int, int]
    """(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of the executable: a changed file is another compiler."""
    run_as: tuple[int, int] | None
    """(uid, gid) to run it as; None: periscope's own user."""
    exact: bool
    """It is the target's own executable (it must report the target's exact version)."""
    for_uid: int | None
    """Its code goes only to processes of this uid running this very file; None: to any target
    (a compiler only periscope's own user or root could have changed)."""

    def key(self) -> str:
        """The part of a cache entry's name that says who made it and for whom."""
        text = f"{self.identity} {self.run_as} {self.for_uid} {self.exact}"
        return sha256(text.encode()).hexdigest()[:16]


_code_memo: dict[Path, tuple[tuple[int, int] | None, AgentCode]] = {}
_code_failed: dict[Path, float] = {}
COMPILE_TIMEOUT = 10.0
"""Seconds a compiler subprocess may take."""
CODE_RETRY_AFTER = 60.0
"""Seconds before periscope tries again to compile for a target version it failed to compile for."""


def sha256(data: bytes) -> Any:
    """``hashlib.sha256(data)`` from CPython's own SHA-2 module: hashlib loads OpenSSL first, which
    alone costs a one-shot command some 2 ms of its start."""
    try:
        from _sha2 import sha256 as builtin  # CPython 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as builtin  # CPython 3.11
        except ImportError:  # a build without its own hashes
            from hashlib import sha256 as builtin
    return builtin(data)


def _source_key(source: str) -> str:
    from payloads.agent import compile_input

    return sha256(compile_input(source)).hexdigest()[:24]


def agent_code_path(compiler: Compiler, version_hex: int, source: str) -> Path:
    """The cache entry for the agent ``source`` compiled by ``compiler`` for targets of CPython ``version_hex``."""
    from explorer.cache import cache_path

    return Path(cache_path()) / AGENT_CODE_DIR / f"{version_hex:08x}-{compiler.key()}-{_source_key(source)}.bin"


def _parse_code(blob: bytes) -> AgentCode | None:
    """``<header> magic tag hexversion sha256\\n<marshal data>``; None when it is not a whole entry."""
    if not blob.startswith(_CODE_HEADER):
        return None
    line, newline, data = blob[len(_CODE_HEADER) :].partition(b"\n")
    fields = line.decode("ascii", "replace").split()
    if not newline or len(fields) != 4:
        return None
    magic_hex, tag, hexversion, digest = fields
    try:
        code = AgentCode(bytes.fromhex(magic_hex), tag, int(hexversion, 16), data)
    except ValueError:
        return None
    if len(code.magic) != 4 or sha256(data).hexdigest() != digest:
        return None
    return code


def _owned_by_us(info: os.stat_result) -> bool:
    """Whether only periscope's own user (or root) can have written this file or directory."""
    return info.st_uid in (0, os.geteuid()) and not info.st_mode & 0o022


def _read_code(path: Path, version_hex: int) -> AgentCode | None:
    """A cache entry, if it is periscope's own (its user's file, in its user's 0700 directory) and whole."""
    try:
        if not _owned_by_us(os.stat(path.parent, follow_symlinks=False)):
            return None  # e.g. a HOME that another user owns (sudo -E): not periscope's cache
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not _owned_by_us(info) or info.st_size > COMPILE_OUTPUT_LIMIT:
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                blob = handle.read(COMPILE_OUTPUT_LIMIT + 1)
        finally:
            os.close(fd)
    except OSError:
        return None
    code = _parse_code(blob)
    if code is None or code.hexversion >> 16 != version_hex >> 16:
        return None
    return code


def _file_signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _write_code(path: Path, code: AgentCode) -> bool:
    """Store ``code`` atomically (write a temporary file, rename); whether it worked."""
    header = b"%s%s %s %x %s\n" % (
        _CODE_HEADER,
        code.magic.hex().encode(),
        code.cache_tag.encode(),
        code.hexversion,
        sha256(code.data).hexdigest().encode(),
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _owned_by_us(os.stat(path.parent, follow_symlinks=False)):
            return False
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(header + code.data)
        os.replace(temporary, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False


def _magic_fits(code: AgentCode, version_hex: int) -> bool:
    """Whether ``code`` carries the bytecode magic number of the target's minor (explorer.versions)."""
    from explorer.versions import layout_for

    layout = layout_for(version_hex, False)
    return layout is None or int.from_bytes(code.magic[:2], "little") == layout.magic


def _target_ids(pid: int) -> tuple[int, int] | None:
    """The target's real uid and gid (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            ids = {line.split(":")[0]: int(line.split()[1]) for line in handle if line.startswith(("Uid:", "Gid:"))}
        return ids["Uid"], ids["Gid"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _identity(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _only_ours_on_the_way(path: str) -> bool:
    """Whether no user but periscope's own (or root) can change ``path``'s file or any directory above
    it (a sticky directory such as /tmp protects names it does not own)."""
    try:
        current = os.path.realpath(path)
        info = os.stat(current)
        if not _owned_by_us(info):
            return False
        while current != "/":
            current = os.path.dirname(current)
            info = os.stat(current)
            if info.st_uid not in (0, os.geteuid()):
                return False
            if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
                return False
    except OSError:
        return False
    return True


def _own_compiler(exe: os.stat_result | None, version_hex: int | None) -> Compiler | None:
    """The CPython of the target's minor that periscope starts targets with (explorer.pythons), if
    only periscope's user or root can have changed it: its executable, its standard library and
    every directory above them."""
    from explorer.pythons import env_var
    from explorer.versions import DEFAULT_MINOR, split_version

    minor = split_version(version_hex) if version_hex else DEFAULT_MINOR
    # Everything find_target_python looks at is in the key: an answer for another cache or PATH is no answer.
    local = _local_python(
        minor,
        tuple(os.environ.get(name) for name in ("PERISCOPE_TARGET_PYTHON", env_var(minor), "PATH", "XDG_CACHE_HOME", "HOME")),
    )
    if local is None:
        return None
    try:
        info = os.stat(local)
        if exe is not None and os.path.samestat(info, exe):
            return None  # the target's own file: compiled as the target's, above
    except OSError:
        return None
    real = os.path.realpath(local)
    prefix = os.path.dirname(os.path.dirname(real))
    library = [os.path.join(prefix, "lib", name) for name in _listdir(os.path.join(prefix, "lib")) if name.startswith("python3")]
    if not library or not all(_only_ours_on_the_way(path) for path in [real, *library]):
        return None
    # Run the file itself, not a venv's link to it: a pyvenv.cfg next to the link would choose the library.
    return Compiler(real, _identity(info), None, False, None)


@functools.lru_cache(maxsize=4)
def _local_python(minor: tuple[int, int], _environment: tuple[str | None, ...]) -> str | None:
    """explorer.pythons.find_target_python for ``minor`` without provisioning, once per minor and environment."""
    from explorer.pythons import find_target_python

    try:
        return find_target_python(minor, provision=False)
    except PeriscopeError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _compilers(pid: int, version_hex: int | None = None, *, own: bool = True) -> list[Compiler]:
    """Interpreters that may compile the agent for ``pid``, best first (without ``own``: only the target's executable).

    First the target's own executable, when periscope sees that very file in its own mount
    namespace (``exact``: it must report the target's exact version). It runs as the target's
    user (when periscope is root) or periscope's own, and its code goes only to processes of that
    user running that very file: that user could have changed what it compiles. A file from another
    mount namespace (a container) is never run, nor one that a group or other users can write, or
    one owned by anyone but root or the user it would run as. Then the CPython periscope starts
    targets with (explorer.pythons), when only periscope's user or root can have changed it; it
    fits when its major.minor is the target's (the target checks the magic number anyway).
    """
    from explorer.staging import same_view

    found: list[Compiler] = []
    ids = _target_ids(pid)
    try:
        exe: os.stat_result | None = os.stat(f"/proc/{pid}/exe")
        link = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = None
        link = ""
    if exe is not None and ids is not None and _runtime_in_executable(pid, exe):
        uid, gid = ids
        root = os.geteuid() == 0
        run_as = (uid, gid) if root and uid != 0 else None
        owners = (0, uid) if root else (0, os.geteuid())
        if exe.st_uid in owners and not exe.st_mode & 0o022:
            try:
                same = link.startswith("/") and os.path.samestat(os.stat(link), exe)
            except OSError:
                same = False
            runner = (uid if run_as else os.geteuid())
            if same:
                found.append(Compiler(link, _identity(exe), run_as, True, runner))
            elif same_view(pid):  # e.g. replaced on disk since it started
                found.append(Compiler(f"/proc/{pid}/exe", _identity(exe), run_as, True, runner))
    if not own:
        return found
    own_compiler = _own_compiler(exe, version_hex)
    if own_compiler is not None:
        found.append(own_compiler)
    return found


def _runtime_in_executable(pid: int, exe: os.stat_result) -> bool:
    """Whether the target's executable is a Python interpreter: its own file holds ``.PyRuntime``.

    A program that embeds ``libpython3.X.so`` is not one: run with ``-I -S -c`` it would start
    that program again, so it is never asked to compile the agent.
    """
    from explorer import elf

    try:
        image = elf.find_runtime(pid)
        return os.path.samestat(os.stat(image.opened_path), exe)
    except (PeriscopeError, OSError):
        return False


def _compile_with(python: str, run_as: tuple[int, int] | None, source: str, timeout: float) -> AgentCode | None:
    """Run ``python`` (a fresh process) to compile the agent; None when it cannot.

    What it prints is read with a bound (COMPILE_OUTPUT_LIMIT) and a deadline: a compiler that
    another user could have changed cannot make periscope wait or grow without end.
    """
    import select
    import subprocess

    from payloads.agent import COMPILE_PROGRAM, compile_input

    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
    stdin = os.memfd_create("periscope-agent-source", os.MFD_CLOEXEC)
    try:
        os.write(stdin, compile_input(source))
        os.lseek(stdin, 0, os.SEEK_SET)
        proc = subprocess.Popen(
            [python, "-I", "-S", "-c", COMPILE_PROGRAM],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
            **extra,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    finally:
        os.close(stdin)
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > COMPILE_OUTPUT_LIMIT:
                return None
            chunks.append(chunk)
        returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    line, newline, data = b"".join(chunks).partition(b"\n")
    fields = line.decode("ascii", "replace").split()
    if returncode != 0 or not newline or len(fields) != 3 or not data:
        return None
    try:
        return AgentCode(bytes.fromhex(fields[0]), fields[1], int(fields[2]), data)
    except ValueError:
        return None


def agent_code(pid: int, version_hex: int, source: str | None = None, *, compile_now: bool = True) -> AgentCode | None:
    """The agent compiled for target ``pid`` (CPython ``version_hex``): from memory, the cache, or a compiler.

    Only compilers that may compile for ``pid`` (see ``_compilers``) are asked, and only their
    own cache entries are read. Returns None when none can be run (the target then compiles the
    source itself), or when ``compile_now`` is False and nothing is cached. A cache that cannot be
    written only costs the next periscope process another compile.
    """
    if source is None:
        from payloads.agent import agent_source

        source = agent_source()
    # The target's own executable first: when its code is cached, periscope's own interpreter
    # (explorer.pythons, a PATH search) need not even be looked for.
    first = _compilers(pid, version_hex, own=False)
    code = _cached_code(first, version_hex, source)
    if code is not None:
        return code
    compilers = _compilers(pid, version_hex)
    code = _cached_code(compilers[len(first) :], version_hex, source)
    if code is not None:
        return code
    if not compile_now:
        return None
    for compiler in compilers:
        path = agent_code_path(compiler, version_hex, source)
        if time.monotonic() - _code_failed.get(path, -CODE_RETRY_AFTER) < CODE_RETRY_AFTER:
            continue
        code = _compile_with(compiler.path, compiler.run_as, source, timeout=COMPILE_TIMEOUT)
        wanted = version_hex if compiler.exact else version_hex >> 16
        if code is None or (code.hexversion if compiler.exact else code.hexversion >> 16) != wanted:
            _code_failed[path] = time.monotonic()
            continue
        if not _magic_fits(code, version_hex):
            continue
        _write_code(path, code)
        _code_memo[path] = (_file_signature(path), code)
        return code
    return None


def _cached_code(compilers: list[Compiler], version_hex: int, source: str) -> AgentCode | None:
    """The agent code one of ``compilers`` made for ``source``, from memory or the cache."""
    for compiler in compilers:
        path = agent_code_path(compiler, version_hex, source)
        signature = _file_signature(path)
        remembered = _code_memo.get(path)
        if remembered is not None and remembered[0] == signature:
            return remembered[1]
        code = _read_code(path, version_hex) if signature is not None else None
        if code is not None:
            _code_memo[path] = (signature, code)
            return code
    return None


def warm_agent_code(pid: int) -> bool:
    """Compile the agent for ``pid``'s interpreter now, so that attaching to it later is quicker.

    Blocking (a subprocess, tens of milliseconds, once per compiler and agent version): call it off the
    UI thread, for instance when a process is selected. Whether compiled code is ready; never
    raises for a process that is gone or not a CPython target of a supported minor.
    """
    from explorer.remote import RemoteProcess

    try:
        with RemoteProcess.open(pid) as process:
            version_hex = process.offsets.version_hex
    except PeriscopeError:
        return False
    return agent_code(pid, version_hex) is not None


class _Staged(Struct):
    pid: int
    script_dir: Any
    script_target_path: str
    socket_host_path: Path
    token: str


def _stage(
    pid: int,
    rate: float,
    modules: tuple[str, ...],
    limits: dict[str, Any] | None,
    code: AgentCode | None = None,
    script_dir: Any = None,
    not_after: float | None = None,
) -> _Staged:
    """Write the agent script (config header, agent source and compiled ``code``) into a fresh private
    directory (``script_dir`` from explorer.staging.prepare_script_dir, or a new one).

    ``not_after`` (wall-clock time, default STAGED_LIFETIME from now): a thread that picks the
    script up later removes it without starting the agent, so neither the agent nor its token
    outlives the attach that staged it."""
    from explorer.staging import prepare_script_dir, write_script
    from payloads.agent import agent_source, build_script

    if script_dir is None:
        script_dir = prepare_script_dir(pid, **SCRIPT_DIR_FIT)
    try:
        token = os.urandom(32).hex()  # secrets.token_hex(32) without importing secrets (random, base64: start-up time)
        target_dir = script_dir.target_path
        config = {
            "directory": target_dir,
            "script_path": f"{target_dir}/{SCRIPT_NAME}",
            "socket_path": f"{target_dir}/{SOCKET_NAME}",
            "token": token,
            "rate": float(rate),
            "modules": list(modules),
            "limits": dict(limits or {}),
            "connect_timeout": CONNECT_TIMEOUT,
            "fast_start": FAST_START,
            "not_after": time.time() + STAGED_LIFETIME if not_after is None else not_after,
        }
        script = build_script(config, agent_source(), None if code is None else code.for_script())
        _, target_path = write_script(script_dir, SCRIPT_NAME, script)
    except BaseException:
        script_dir.cleanup()
        raise
    return _Staged(pid, script_dir, target_path, Path(script_dir.host_path) / SOCKET_NAME, token)


def _code_rejected(staged: _Staged) -> bool:
    """Whether the agent left a ``code-rejected`` note (read as any note: never through a planted link)."""
    try:
        return staged.script_dir.read_note("code-rejected") is not None
    except PeriscopeError:
        return False


def _candidates(process: Any, choice: ThreadChoice) -> list[int | None]:
    """Native ids (host namespace; None = the main thread) to try, best first."""
    process.require_remote_debugging()
    if isinstance(choice, int):
        return [choice]
    if choice == "main":
        return [None]
    if choice not in ("auto", "any"):
        raise ValueError(f"thread must be 'auto', 'main', 'any' or a native thread id, not {choice!r}")
    from explorer.remote_exec import _thread_list

    threads = _thread_list(process, process.main_interpreter())
    holder = [t.native_id for t in threads if t.holds_gil]
    main = [t.native_id for t in threads if t.is_main]
    if choice == "auto":
        return list(dict.fromkeys(holder[:1] + main)) or [None]
    rest = [t.native_id for t in sorted(threads, key=lambda t: not t.attached) if t.native_id not in holder + main]
    return list(dict.fromkeys(holder + main + rest)) or [None]


def _read_stacks(pid: int) -> tuple[Any, ...] | None:
    try:
        from explorer.stacks import read_stacks

        return tuple(read_stacks(pid)[1])
    except PeriscopeError:
        return None


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


async def attach(
    pid: int,
    *,
    thread: ThreadChoice = "auto",
    timeout: float = 10.0,
    rate: float = 2.0,
    modules: tuple[str, ...] = ("__main__",),
    limits: dict[str, Any] | None = None,
    progress: Progress | None = None,
    blocked_fix: str = BLOCKED_FIX,
) -> Session:
    """Inject the agent into ``pid`` and connect to it; the returned Session streams frames.

    ``rate`` is frames per second (0: only on request, see ``Session.sample``). Raises the typed
    errors of explorer.errors (RemoteDebuggingDisabled, PermissionDenied, InjectionTimeout, ...).
    ``blocked_fix`` is the fix an InjectionTimeout tells when no thread ran Python in time, in the
    caller's words (the CLI names ``--via``, the TUI its keys).
    """
    import asyncio
    started = time.monotonic()
    deadline = started + timeout

    def report(state: AttachState, message: str, native_id: int | None = None, stacks: tuple[Any, ...] | None = None) -> None:
        if progress is not None:
            progress(AttachProgress(state, message, time.monotonic() - started, native_id, stacks))

    from explorer.staging import prepare_script_dir
    from explorer.remote import RemoteProcess

    work = _AttachWork(await _finish_or_dispose(asyncio.to_thread(RemoteProcess.open, pid), lambda process: process.close()))
    cleanup: list[Callable[[], None]] = []  # what to undo if attaching fails or is cancelled
    try:
        # A valid target: make its directory while choosing the thread and finding the code.
        preparing = asyncio.ensure_future(asyncio.to_thread(prepare_script_dir, pid, **SCRIPT_DIR_FIT))
        try:
            version_hex = work.process.offsets.version_hex
            compiling = asyncio.ensure_future(asyncio.to_thread(agent_code, pid, version_hex))
            candidates = await work.run(_candidates, work.process, thread)
            code = await _ready_code(compiling, min(AGENT_CODE_WAIT, max(0.0, deadline - time.monotonic()) / 2))
            script_dir = await preparing
        except BaseException:
            await _discard_directory(preparing)
            raise
        cleanup.append(script_dir.cleanup)
        not_after = time.time() + max(0.0, deadline - time.monotonic()) + STAGED_GRACE
        staged = await work.run(_stage, pid, rate, tuple(modules), limits, code, script_dir, not_after)
        spread = thread in ("any", "auto")
        picked = await _inject(
            staged, candidates, deadline, report, spread=spread, holder_first=spread, work=work, blocked_fix=blocked_fix
        )
        report(AttachState.STARTING, f"thread {picked} took the request; the agent is starting", picked)
        sock, decoder, hello, received = await work.run(
            _connect_counted, staged, deadline, work.cancel, discard=lambda connected: connected[0].close()
        )
        cleanup.append(sock.close)
        code_used = "compiled" if code is None else "precompiled"
        # The note only says how this session started; it never touches the cache (see _compilers).
        if code is not None and await asyncio.to_thread(_code_rejected, staged):
            code_used = "rejected"
        cleanup.clear()  # attached: the session owns the directory and the socket from here on
    finally:
        # Cancelled (Esc, another thread chosen, the app exiting) or failed: a worker thread may
        # still wait for a pickup; it withdraws the request before the directory goes and the
        # process is closed.
        work.stop(*cleanup)
    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    except BaseException:
        sock.close()
        staged.script_dir.cleanup()
        raise
    session = Session(pid, hello, reader, writer, decoder, staged.script_dir, picked)
    session.agent_code = code_used
    session.bytes_received = received
    session._start()
    report(AttachState.CONNECTED, f"connected to the agent in process {pid}", picked)
    return session


async def _discard_directory(job: asyncio.Future[Any]) -> None:
    """Remove the directory ``job`` (prepare_script_dir in a thread) made, once it has made it."""
    import asyncio
    try:
        script_dir = await asyncio.shield(job)
    except (PeriscopeError, OSError):
        return  # it made none
    await asyncio.to_thread(script_dir.cleanup)


async def _ready_code(job: asyncio.Future[AgentCode | None], wait: float) -> AgentCode | None:
    """The compiled agent if it is ready within ``wait`` seconds (a compile still running goes on, for next time)."""
    import asyncio
    try:
        return await asyncio.wait_for(asyncio.shield(job), wait)
    except TimeoutError:
        return None


FRESH_HOLDER_WINDOW = 0.006
"""Seconds attach() watches the GIL change hands, to ask the thread that has just taken it."""


def _fresh_holder(process: Any, fallback: int | None) -> int | None:
    """The native id of the thread that has just taken the GIL (else the one holding it, else ``fallback``).

    A thread picks a remote-exec request up at its next eval-breaker check, where CPython
    suspends it once. On a target whose threads compete for the GIL, a thread that has held the
    GIL for a switch interval is asked to give it up, so that suspension, and every system call
    the start-up makes, sends it to the back of the queue: tens of milliseconds on a busy target.
    A thread that has just taken the GIL has a whole interval ahead of it.
    """
    from explorer.memory import MemoryFault

    try:
        interp = process.main_interpreter()
        first = process.gil_holder(interp)
        for _ in range(3):  # free for a moment (a hand-over), or nobody runs Python?
            if first:
                break
            time.sleep(0.00005)
            first = process.gil_holder(interp)
        if not first:
            return fallback
        threads = {t.address: t.native_id for t in process.threads(interp)}
        holder = first
        if len(threads) > 1:
            deadline = time.perf_counter() + FRESH_HOLDER_WINDOW
            while time.perf_counter() < deadline:
                time.sleep(0.00005)
                now = process.gil_holder(interp)
                if now and now != first:
                    holder = now
                    break
        if holder not in threads:
            threads = {t.address: t.native_id for t in process.threads(interp)}
        return threads.get(holder, fallback)
    except MemoryFault:
        process.memory.ensure_alive()
        return fallback


def _exec_on(
    process: Any, pid: int, path: str, native_id: int | None, wait: float, fresh: bool, cancel: threading.Event | None = None
) -> Any:
    from explorer.remote_exec import remote_exec

    if fresh and process is not None:
        native_id = _fresh_holder(process, native_id)
    return remote_exec(process or pid, path, native_id=native_id, wait=wait, cancel=cancel)


class _AttachWork:
    """What ``attach()`` shares with its worker threads: the target's RemoteProcess and a stop event.

    ``attach()`` can be cancelled (Esc, another thread chosen, the app exiting) while a worker
    thread still waits for a remote-exec pickup or for the agent's socket, and an asyncio
    cancellation does not stop a thread. ``stop()`` sets ``cancel`` (the waits end; a request not
    picked up is withdrawn, through the process) and runs the clean-up (removing the session
    directory, then closing the process) once the last worker thread has returned: never while
    one still reads through the process or stats the directory.
    """

    def __init__(self, process: Any) -> None:
        self.process = process
        """The target (explorer.remote.RemoteProcess), open until ``stop()`` and the last worker are done."""
        self.cancel = threading.Event()
        """Set by ``stop()``: the worker threads' waits end early."""
        self._lock = threading.Lock()
        self._running = 0
        self._cleanup: list[Callable[[], None]] | None = None

    async def run(self, function: Callable[..., Any], *args: Any, discard: Callable[[Any], None] | None = None) -> Any:
        """``function(*args)`` in a worker thread that keeps the process open while it runs.

        ``discard`` disposes of a result that arrives after ``stop()`` (nobody will take it).
        """
        import asyncio
        return await asyncio.to_thread(self._call, function, args, discard)

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...], discard: Callable[[Any], None] | None) -> Any:
        with self._lock:
            if self._cleanup is not None:
                raise SessionClosed("attaching was cancelled")
            self._running += 1
        result: Any = None
        finished = False
        try:
            result = function(*args)
            finished = True
            return result
        finally:
            with self._lock:
                self._running -= 1
                stopped = self._cleanup is not None
                last = stopped and self._running == 0
            if stopped and finished and discard is not None:
                discard(result)
            if last:
                self._finish()

    def stop(self, *cleanup: Callable[[], None]) -> None:
        """Stop the worker threads; run ``cleanup``, then close the process, once none runs any more."""
        self.cancel.set()
        with self._lock:
            if self._cleanup is not None:
                return
            self._cleanup = list(cleanup)
            now = self._running == 0
        if now:
            self._finish()

    def _finish(self) -> None:
        try:
            for step in reversed(self._cleanup or ()):
                with contextlib.suppress(OSError):  # a clean-up that fails must not hide why attaching ended
                    step()
        finally:
            self.process.close()


async def _finish_or_dispose(job: Any, dispose: Callable[[Any], None]) -> Any:
    """Await ``job`` (a thread's work); if the caller is cancelled first, ``dispose`` of its result once it comes."""
    import asyncio
    future = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: None if done.cancelled() or done.exception() else dispose(done.result()))
        raise


def no_thread_ran(pid: int, candidates: list[int | None], blocked_fix: str) -> InjectionTimeout:
    """The error of an attach whose request no candidate thread took before the deadline."""
    return InjectionTimeout(
        f"no thread of process {pid} ran Python within the timeout "
        f"(tried {', '.join('main' if c is None else str(c) for c in candidates)}): its threads are "
        "blocked (input(), a sleep, a lock, a long C call)",
        blocked_fix,
        no_thread_ran=True,
    )


async def _inject(
    staged: _Staged,
    candidates: list[int | None],
    deadline: float,
    report: Callable[..., None],
    spread: bool,
    process: Any = None,
    holder_first: bool = False,
    work: _AttachWork | None = None,
    blocked_fix: str = BLOCKED_FIX,
) -> int | None:
    """Ask the candidate threads in turn to run the script; the native id of the one that did.

    With ``holder_first``, the first candidate (the GIL holder when the candidates were chosen)
    is replaced, at the time of writing, by the thread that has just taken the GIL. With
    ``work``, requests go through its process and end early when it is stopped.
    """
    import asyncio
    from explorer.remote_exec import MainThreadFinished, NoSuchThread

    if work is not None:
        process = work.process

    slice_ = 0.25
    first_round = True
    last_stacks = 0.0
    while True:
        for index, native_id in enumerate(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise no_thread_ran(staged.pid, candidates, blocked_fix)
            wait = min(remaining, slice_) if spread and len(candidates) > 1 else remaining
            fresh = holder_first and index == 0 and first_round
            arguments = (process, staged.pid, staged.script_target_path, native_id, wait, fresh)
            job = asyncio.ensure_future(
                work.run(_exec_on, *arguments, work.cancel) if work is not None else asyncio.to_thread(_exec_on, *arguments)
            )
            report(AttachState.INJECTED, f"asked thread {native_id or 'main'} to run the agent", native_id)
            waited_since = time.monotonic()
            try:
                while True:
                    done, _ = await asyncio.wait({job}, timeout=0.25)
                    if done:
                        break
                    if time.monotonic() - last_stacks > 0.5:
                        last_stacks = time.monotonic()
                        stacks = await asyncio.to_thread(_read_stacks, staged.pid)
                        report(
                            AttachState.WAITING,
                            f"waiting {time.monotonic() - waited_since:.1f}s for thread {native_id or 'main'} to run Python",
                            native_id,
                            stacks,
                        )
            except BaseException:
                job.add_done_callback(_ignore_result)  # cancelled: the thread withdraws the request and ends
                raise
            try:
                result = job.result()
            except (NoSuchThread, MainThreadFinished):
                if not spread:
                    raise
                continue  # that thread exited (or finished its script): try the next one
            if result.picked_up:
                return result.native_id
        first_round = False
        slice_ = min(slice_ * 2, 2.0)


def _decode(decoder: wire.Decoder, data: bytes) -> tuple[list[Any], ProtocolError | None]:
    """Feed ``data`` and decode every whole message (runs in a worker thread, one batch at a time, so
    the decoder is never used by two threads at once); the messages, and the error that stopped it."""
    messages: list[Any] = []
    try:
        if data:
            decoder.feed(data)
        for message in decoder:
            messages.append(message)
    except ProtocolError as error:
        return messages, error
    return messages, None


def why_closed(pid: int, what: str) -> tuple[str, str | None]:
    """Why a session's stream ended (the target exited, or what happened to the connection), and the fix."""
    from explorer.memory import process_exited, process_start_time

    if process_exited(pid, process_start_time(pid)):
        return f"process {pid} exited; the session is over", None
    return f"{what} in process {pid}", "attach again"


def _ignore_result(job: asyncio.Future[Any]) -> None:
    """Take a result nobody waits for any more (no 'exception was never retrieved' at exit)."""
    if not job.cancelled():
        job.exception()


class EvalHandle:
    """A running eval: await it for the EvalResult; ``interrupt()`` raises KeyboardInterrupt in it."""

    def __init__(self, session: Session, eval_id: int, future: asyncio.Future[Any], on_output: Callable[[Output], None] | None) -> None:
        self.session = session
        self.id = eval_id
        self._future = future
        self._on_output = on_output
        self._output: list[str] = []

    def _add_output(self, output: Output) -> None:
        self._output.append(output.text)
        if self._on_output is not None:
            self._on_output(output)

    async def result(self) -> EvalResult:
        """Wait for the eval to finish."""
        raw = await self._future
        return wire.decode_eval_result(raw, "".join(self._output))

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.result().__await__()

    async def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the eval's thread; whether it was still running."""
        if self._future.done():
            return False
        result = await self.session.request("interrupt", eval_id=self.id)
        return bool(result.get("sent")) if isinstance(result, dict) else False


def _scope_arguments(
    module: str | None,
    thread: int | None,
    task: int | None,
    frame: int,
    frame_name: str | None,
    frame_from_bottom: int | None,
    frame_id: int | None = None,
) -> dict[str, Any]:
    """The request fields that say where code runs (a module, a thread's frame, a task's frame)."""
    arguments: dict[str, Any] = {}
    if task is not None:
        arguments.update(task=task, frame=frame)
    elif thread is not None:
        arguments.update(thread=thread, frame=frame)
        if frame_name is not None:
            arguments["frame_name"] = frame_name
        if frame_from_bottom is not None:
            arguments["frame_from_bottom"] = frame_from_bottom
        if frame_id is not None:
            arguments["frame_id"] = frame_id
    elif module is not None:
        arguments["module"] = module
    return arguments


class Session:
    """A connection to the agent in one target process (made by ``attach()``)."""

    def __init__(
        self,
        pid: int,
        hello: Hello,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: wire.Decoder,
        script_dir: Any,
        injected_via: int | None,
    ) -> None:
        import asyncio
        self.pid = pid
        self.hello = hello
        self.injected_via = injected_via
        """The native id of the thread that ran the agent script."""
        self.agent_code = "compiled"
        """How the agent's code got into the target: ``precompiled`` (marshal data from an
        interpreter of its version), ``compiled`` (the target compiled the source) or ``rejected``
        (precompiled code was offered but its magic number was not the target's)."""
        self.latest: Frame | None = None
        """The newest frame received (deltas applied as they come: this is always the whole picture)."""
        self.bytes_received = 0
        """Bytes read from the agent's socket so far, the handshake included (for a data rate)."""
        self.frames_dropped = 0
        """Frames that ``next_frame`` passed over because a newer one had come meanwhile."""
        self.agent_errors: list[str] = []
        self.error: PeriscopeError | None = None
        """Why the session ended, when it ended abnormally."""
        self._reader = reader
        self._writer = writer
        self._decoder = decoder
        self._script_dir = script_dir
        self._frame_came = asyncio.Event()
        self._handed_seq = -1  # seq of the last frame next_frame() returned
        self._arrived = 0  # frames received since then
        self._resyncing = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._evals: dict[int, EvalHandle] = {}
        self._ids = itertools.count(1)
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the stream -------------------------------------------------------------------------

    def _start(self) -> None:
        import asyncio

        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Read the stream; decode it off the event loop (a frame of a hundred threads takes
        milliseconds, a big one over a hundred), then dispatch the messages in order on the loop."""
        try:
            await self._dispatch_decoded(b"")  # what arrived together with hello (often the first frame)
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    if self.error is None and not self._closing:
                        self.error = SessionClosed(*self._why_closed("the agent closed the connection"))
                    break
                self.bytes_received += len(data)
                await self._dispatch_decoded(data)
        except ProtocolError as error:
            self.error = error
        except (ConnectionError, OSError) as error:
            self.error = SessionClosed(*self._why_closed(f"lost the connection to the agent ({error})"))
        finally:
            self._shut()

    async def _dispatch_decoded(self, data: bytes) -> None:
        """Decode ``data`` (after what the decoder holds) in a worker thread, then dispatch every whole
        message in order; a ProtocolError comes after the messages decoded before it."""
        import asyncio
        messages, error = await asyncio.to_thread(_decode, self._decoder, data)
        for message in messages:
            self._dispatch(message)
        if error is not None:
            raise error

    def _why_closed(self, what: str) -> tuple[str, str | None]:
        return why_closed(self.pid, what)

    _closing = False

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Frame):
            self.latest = message
            self._arrived += 1
            self._resyncing = False
            self._frame_came.set()
        elif isinstance(message, OutOfStep):
            # A delta on a frame this side does not hold: ask once for a full one.
            if not self._resyncing and not self.closed:
                self._resyncing = True
                _request_id, future = self._send("resync", {})
                future.add_done_callback(_ignore_result)
        elif isinstance(message, Response):
            future = self._pending.pop(message.request_id, None)
            self._evals.pop(message.request_id, None)
            if future is not None and not future.done():
                if message.ok:
                    future.set_result(message.result)
                else:
                    future.set_exception(RequestFailed(f"the agent could not do that: {message.error}"))
        elif isinstance(message, Output):
            handle = self._evals.get(message.eval_id)
            if handle is not None:
                handle._add_output(message)
        elif isinstance(message, AgentError):
            self.agent_errors.append(message.message)
            if message.fatal:
                raise ProtocolError(f"the agent ended the session: {message.message}")
        elif isinstance(message, Bye):
            self._closing = True
        elif isinstance(message, Hello):
            raise ProtocolError("the agent said hello twice")

    def _shut(self) -> None:
        error = self.error or SessionClosed(f"the session with process {self.pid} is closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._closed.set()
        self._frame_came.set()
        self._writer.close()

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed.is_set()

    async def next_frame(self, timeout: float | None = None, *, after: int | None = None) -> Frame:
        """The latest frame, once it is newer than the last one this returned (or than seq ``after``):
        frames that came meanwhile are passed over, never queued. SessionClosed when the session
        ends first, TimeoutError after ``timeout``."""
        import asyncio
        floor = self._handed_seq if after is None else after

        async def newer() -> Frame:
            while True:
                latest = self.latest
                if latest is not None and latest.seq > floor:
                    return latest
                if self.closed:
                    raise self.error or SessionClosed(f"the session with process {self.pid} is closed")
                self._frame_came.clear()
                await self._frame_came.wait()

        frame = await asyncio.wait_for(newer(), timeout)
        if frame.seq > self._handed_seq:
            self.frames_dropped += max(0, self._arrived - 1)
            self._arrived = 0
            self._handed_seq = frame.seq
        return frame

    async def frames(self) -> AsyncIterator[Frame]:
        """Every streamed frame until the session ends (frames nobody consumed in time are dropped)."""
        while True:
            try:
                yield await self.next_frame()
            except SessionClosed:
                return

    # -- requests ---------------------------------------------------------------------------

    async def request(self, op: str, *, timeout: float | None = 30.0, **arguments: Any) -> Any:
        """Send one request and wait for its result (RequestFailed when the agent refuses it)."""
        import asyncio
        request_id, future = self._send(op, arguments)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    def _send(self, op: str, arguments: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        import asyncio
        if self.closed:
            raise self.error or SessionClosed(f"the session with process {self.pid} is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(wire.encode({"t": "req", "id": request_id, "op": op, **arguments}))
        return request_id, future

    async def sample(self, timeout: float = 30.0) -> Frame:
        """One frame taken now, whatever the rate."""
        return wire.decode_frame(await self.request("sample", timeout=timeout))

    async def expand(self, ref: int, kind: str = "auto", offset: int = 0, limit: int = 100) -> Children:
        """One page of the children of the object behind ``ref`` (items or attributes)."""
        return wire.decode_children(await self.request("expand", ref=ref, kind=kind, offset=offset, limit=limit))

    async def set_rate(self, hz: float) -> None:
        """Frames per second (0 pauses the stream; ``sample()`` still works)."""
        await self.request("set_rate", hz=float(hz))

    async def set_view(
        self, focus: int | None = None, frame: int = 0, refs: tuple[int, ...] | list[int] = (), modules: tuple[str, ...] | list[str] | None = None
    ) -> None:
        """What periscope looks at (PROTOCOL.md, *Deltas and the view*): the thread ``focus``
        (native id as the target sees it; None: every thread) gets its whole stack with locals,
        the others their innermost frame; ``refs`` stay valid; ``modules`` are watched."""
        arguments: dict[str, Any] = {"focus": focus, "frame": frame, "refs": list(refs)[:1000]}
        if modules is not None:
            arguments["modules"] = list(modules)
        await self.request("view", **arguments)

    async def set_modules(self, names: list[str] | tuple[str, ...]) -> None:
        """Which modules' variables frames carry."""
        await self.request("set_modules", modules=list(names))

    async def configure(self, **limits: Any) -> dict[str, Any]:
        """Change preview limits (see PROTOCOL.md); returns the limits now in force."""
        return wire.decode_limits(await self.request("configure", limits=limits))

    async def task_frames(self, task: int, timeout: float = 30.0) -> tuple[StackFrame, ...]:
        """The coroutine frames of the asyncio task ``task`` (its id), with their locals, innermost first."""
        return wire.decode_task_frames(await self.request("task_frames", task=task, timeout=timeout))

    def start_eval(
        self,
        code: str,
        *,
        module: str | None = None,
        thread: int | None = None,
        task: int | None = None,
        frame: int = 0,
        frame_name: str | None = None,
        frame_from_bottom: int | None = None,
        frame_id: int | None = None,
        repr_chars: int | None = None,
        on_output: Callable[[Output], None] | None = None,
    ) -> EvalHandle:
        """Start evaluating ``code`` in a module's globals (default ``__main__``), in a frame of a
        thread (``thread`` = native id as the target sees it, ``frame`` = 0 for the innermost), or
        in a coroutine frame of an asyncio task (``task`` = its id). Where an event loop runs, code
        that awaits, names asyncio or runs in a task's frame runs in the loop's thread, stoppable
        by :meth:`EvalHandle.interrupt` and ``await_timeout`` (payloads/PROTOCOL.md).

        In a thread, ``frame_name`` picks the innermost frame running that function (by name or
        qualified name) instead of an index; with ``frame_from_bottom`` (its position counted
        from the outermost frame) it pins one frame: the eval fails if that frame returned.
        ``frame_id`` (a ``StackFrame.frame_id`` from the stream) pins that very call, and fails
        once it returned, whatever runs in its place now. ``EvalResult.frame`` says which frame
        ran the code. Names the code defines stay the session's (layered over the module or the
        frame), except names the scope already has."""
        arguments = _scope_arguments(module, thread, task, frame, frame_name, frame_from_bottom, frame_id)
        arguments["code"] = code
        if repr_chars is not None:
            arguments["repr_chars"] = repr_chars
        request_id, future = self._send("eval", arguments)
        handle = EvalHandle(self, request_id, future, on_output)
        self._evals[request_id] = handle
        return handle

    async def complete(
        self,
        text: str,
        *,
        module: str | None = None,
        thread: int | None = None,
        task: int | None = None,
        frame: int = 0,
        frame_name: str | None = None,
        frame_from_bottom: int | None = None,
        frame_id: int | None = None,
        timeout: float = 10.0,
    ) -> Completions:
        """Completions of the name or attribute path ``text`` ends with, in the scope an eval with
        the same arguments runs in; the agent reads them without running any of the target's code."""
        arguments = _scope_arguments(module, thread, task, frame, frame_name, frame_from_bottom, frame_id)
        return wire.decode_completions(await self.request("complete", timeout=timeout, text=text, **arguments))

    async def inspect_value(self, ref: int, repr_chars: int = 1 << 20, timeout: float = 30.0) -> Value:
        """The whole repr of the object behind ``ref`` (up to ``repr_chars`` characters; ``dropped``
        counts the rest), under the same watchdog as every repr."""
        return wire.decode_full_value(await self.request("eval_repr", timeout=timeout, ref=ref, repr_chars=repr_chars))

    async def eval(self, code: str, **options: Any) -> EvalResult:
        """Evaluate ``code`` in the target and wait for the result (see ``start_eval``)."""
        return await self.start_eval(code, **options).result()

    # -- the end ----------------------------------------------------------------------------

    async def detach(self, timeout: float = 5.0) -> None:
        """Ask the agent to remove itself, wait until it has, and remove the session directory."""
        import asyncio
        try:
            if not self.closed:
                self._closing = True
                with contextlib.suppress(PeriscopeError, asyncio.TimeoutError, ConnectionError):
                    await self.request("detach", timeout=timeout)
                # The agent closes the connection as its very last step.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout)
        finally:
            await self.close()

    async def close(self) -> None:
        """Drop the connection without asking (the agent notices and removes itself)."""
        import asyncio
        self._closing = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        if self._script_dir is not None:
            script_dir, self._script_dir = self._script_dir, None
            await asyncio.to_thread(script_dir.cleanup)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.detach()
