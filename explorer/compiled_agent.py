"""The agent's code compiled ahead of time for a target's CPython, and the cache that keeps it.

``agent_code(pid, version_hex)`` finds or makes the marshal data that explorer.attach ships inside
the agent script; ``warm_agent_code(pid)`` does it early, off the UI thread. A module of its own
because it is the one place that decides which interpreter may compile code that then runs inside
a target, and whose code may go to which process (the provenance rule below): every check of it
lives here, apart from attaching and talking to the agent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from pathlib import Path
from typing import Any

from msgspec import Struct

from explorer.errors import PeriscopeError

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
