"""Staging for remote exec (PEP 768): a private directory the target can read, and scripts in it.

The target opens a remote-exec script itself, with its own uid/gid, in its own mount namespace
and working directory. :func:`prepare_script_dir` makes a fresh ``0700`` directory under the
target's temporary directory, reached through ``/proc/PID/root`` and owned by the target's user
(chowned when periscope runs as root), so that the target, and no other user, can read what
:func:`write_script` puts there. Every step goes through directory descriptors and refuses
symlinks, so a hostile target user cannot make a root periscope write outside that directory.

Separate from explorer.remote_exec (the request written into a thread state): this module only
touches the filesystem, never the target's memory, and the session directory it makes outlives
the request (the agent's socket and notes live in it; explorer.handshake reads them).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct

from explorer import leftovers
from explorer.errors import PeriscopeError, PermissionDenied, ProcessGone
from explorer.memory import explain_permission

if TYPE_CHECKING:
    from explorer.remote import RemoteProcess

MAX_SYMLINKS = 40
TEMP_DIR_CANDIDATES = ("/tmp", "/var/tmp", "/dev/shm")
DIR_PREFIX = "periscope-"


class SessionTampered(PeriscopeError):
    """Something other than the agent put a file in the session directory (a symlink, a FIFO, a device)."""


CLEANUP_PASSES = 3
"""Times ScriptDir.cleanup empties the directory when something appeared in it meanwhile."""
NOTE_LIMIT = 4096
"""Bytes a note of the agent (``busy``, ``failed``) may hold; a bigger one was not written by the agent."""


def fd_address(fd: int) -> str:
    """A Unix socket address that reaches the file open at ``fd`` (an ``O_PATH`` descriptor) itself."""
    return f"/proc/self/fd/{fd}"


class ScriptDir(Struct):
    """A fresh private directory for scripts, as both sides see it.

    ``host_path`` is where periscope finds it (``/proc/PID/root/tmp/periscope-XXXX``, or the plain
    path when periscope shares the target's mount namespace and root); ``target_path`` is the
    path the target resolves. Both name the same directory, owned by the target's ``uid``/``gid``.
    """

    pid: int
    host_path: Path
    target_path: str
    uid: int
    gid: int
    _dir_fd: int | None = None
    _parent_fd: int | None = None
    _inode: tuple[int, int] | None = None

    def address(self, name: str) -> str:
        """A path to ``name`` in the directory short enough for a Unix socket address (107 bytes):
        the host path, or one through this process's descriptor of the directory."""
        _check_name(name)
        path = f"{self.host_path}/{name}"
        if len(os.fsencode(path)) <= 107 or self._dir_fd is None:
            return path
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def contains(self, name: str) -> bool:
        """Whether the file ``name`` is still in the directory (a staged script removes itself when it starts)."""
        _check_name(name)
        try:
            if self._dir_fd is not None:
                os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            else:
                os.lstat(self.host_path / name)
        except FileNotFoundError:
            return False
        return True

    def removed(self) -> bool:
        """Whether the directory itself is gone (removed, or moved out of its parent, by someone else)."""
        try:
            if self._dir_fd is not None:
                return os.fstat(self._dir_fd).st_nlink == 0
            os.lstat(self.host_path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return False

    def read_note(self, name: str, limit: int = NOTE_LIMIT) -> str | None:
        """The text of the note ``name`` the agent left in the directory, or None when there is none
        (or it is still empty).

        The directory belongs to the target's user, who may plant anything in it: the note is
        opened relative to the directory's descriptor with ``O_NOFOLLOW | O_NONBLOCK`` (a symlink
        fails, a FIFO does not block), must be a regular file owned by the target's user of at
        most ``limit`` bytes, and is read with that bound. Anything else raises SessionTampered.
        """
        _check_name(name)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        try:
            if self._dir_fd is not None:
                fd = os.open(name, flags, dir_fd=self._dir_fd)
            else:
                fd = os.open(self.host_path / name, flags)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise self._tampered(name, "a symbolic link") from None
            raise self._tampered(name, f"unreadable ({error.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._tampered(name, "not a regular file")
            if info.st_uid != self.uid:
                raise self._tampered(name, f"owned by uid {info.st_uid}, not the target's {self.uid}")
            if info.st_size > limit:
                raise self._tampered(name, f"{info.st_size} bytes, more than a note's {limit}")
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise self._tampered(name, f"more than a note's {limit} bytes")
        if not data:
            return None  # created, not written yet (the agent opens, then writes): look again later
        return data.decode("utf-8", "replace")

    def open_socket(self, name: str) -> int | None:
        """An ``O_PATH`` descriptor of the socket ``name`` in the directory, never through a symlink;
        None while there is none. Connect through ``/proc/self/fd/N`` (see :func:`fd_address`).

        Raises SessionTampered when ``name`` is not a socket owned by the target's user.
        """
        _check_name(name)
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if self._dir_fd is not None:
                fd = os.open(name, flags, dir_fd=self._dir_fd)
            else:
                fd = os.open(self.host_path / name, flags)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if stat.S_ISLNK(info.st_mode):
                raise self._tampered(name, "a symbolic link")
            if not stat.S_ISSOCK(info.st_mode):
                raise self._tampered(name, "not a socket")
            if info.st_uid != self.uid:
                raise self._tampered(name, f"owned by uid {info.st_uid}, not the target's {self.uid}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _tampered(self, name: str, what: str) -> SessionTampered:
        return SessionTampered(
            f"the session directory of process {self.pid} holds {name!r}, which is {what}: the agent never "
            "makes that; something in the process, or its user, interferes with the session; not trusting it",
            f"without the agent, 'periscope stack {self.pid}' still reads its stacks from outside",
        )

    def cleanup(self) -> None:
        """Remove the directory and whatever is left in it (idempotent; never follows symlinks)."""
        if self._dir_fd is None:
            # Built by hand (not by prepare_script_dir): go by path, but never through a symlink.
            try:
                if not os.path.islink(self.host_path) and os.path.isdir(self.host_path):
                    import shutil  # here, not at the top: it imports zlib, bz2 and lzma (start-up time)
                    shutil.rmtree(self.host_path)
            except FileNotFoundError:
                pass
            return
        try:
            assert self._parent_fd is not None
            name = os.path.basename(self.target_path)
            for attempt in range(CLEANUP_PASSES):
                self._empty()
                try:
                    current = os.stat(name, dir_fd=self._parent_fd, follow_symlinks=False)
                    # Remove the name only if it still is our directory (the target's user may rename it).
                    if (current.st_dev, current.st_ino) == self._inode:
                        os.rmdir(name, dir_fd=self._parent_fd)
                except FileNotFoundError:
                    pass  # the launcher removed the directory itself
                except OSError as error:
                    # An agent that is still starting made its socket after the listing: again.
                    if error.errno == errno.ENOTEMPTY and attempt + 1 < CLEANUP_PASSES:
                        continue
                    raise
                break
            leftovers.forget(name)
        finally:
            os.close(self._dir_fd)
            if self._parent_fd is not None:
                os.close(self._parent_fd)
            self._dir_fd = self._parent_fd = None

    def _empty(self) -> None:
        """Remove everything in the directory, without following any symlink."""
        assert self._dir_fd is not None
        for entry in os.listdir(self._dir_fd):
            try:
                if stat.S_ISDIR(os.stat(entry, dir_fd=self._dir_fd, follow_symlinks=False).st_mode):
                    import shutil  # here, not at the top: it imports zlib, bz2 and lzma (start-up time)
                    shutil.rmtree(entry, dir_fd=self._dir_fd)
                else:
                    os.unlink(entry, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass  # the script removed itself meanwhile

    def __enter__(self) -> ScriptDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _check_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"not a plain file name: {name!r}")


def _target_credentials(pid: int) -> tuple[int, int]:
    """The filesystem uid and gid the target opens files with (as seen from periscope's user namespace)."""
    uid = gid = None
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    uid = int(line.split()[4])  # real, effective, saved, filesystem
                elif line.startswith("Gid:"):
                    gid = int(line.split()[4])
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} does not exist (any more)") from None
    if uid is None or gid is None:
        raise ProcessGone(f"process {pid} exited")
    return uid, gid


def _target_tmpdir(pid: int) -> str | None:
    """TMPDIR from the target's initial environment, when readable and absolute."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(b"TMPDIR="):
            value = os.fsdecode(entry[len(b"TMPDIR=") :])
            return value if value.startswith("/") else None
    return None


def _open_root(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"process {pid} does not exist (any more)") from None
    except PermissionError:
        raise PermissionDenied(*explain_permission(pid)) from None


def _resolve_dir(root_fd: int, path: str) -> tuple[int, str]:
    """Open directory ``path`` of the target's filesystem, resolving symlinks inside the target's root.

    The kernel would resolve an absolute symlink met under ``/proc/PID/root`` against *periscope's*
    root; this walk resolves it against the target's, one component at a time. Returns an open
    descriptor and the symlink-free path. Raises OSError when it is not a reachable directory.
    """
    fds = [os.dup(root_fd)]
    names: list[str] = []
    parts = deque(path.split("/"))
    hops = 0
    try:
        while parts:
            part = parts.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if names:
                    os.close(fds.pop())
                    names.pop()
                continue
            info = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many symbolic links", path)
                link = os.readlink(part, dir_fd=fds[-1])
                if link.startswith("/"):
                    while len(fds) > 1:
                        os.close(fds.pop())
                    names.clear()
                parts.extendleft(reversed(link.split("/")))
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", path)
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1]))
            names.append(part)
        result = fds.pop()
        return result, "/" + "/".join(names)
    finally:
        for fd in fds:
            os.close(fd)


def _safe_parent(info: os.stat_result, uid: int) -> bool:
    """A parent directory where periscope may make the target's session directory.

    Only a sticky world-writable directory of root or the target's user (the target's /tmp,
    /var/tmp, /dev/shm), where nobody can remove or rename what another made, or a directory of
    the target's user that no group or other user can write. Never a directory of root's that the
    target merely names (``TMPDIR=/etc``): periscope would make and hand over a directory there.
    """
    if info.st_uid not in (0, uid):
        return False
    mode = info.st_mode
    if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        return True
    return info.st_uid == uid and not mode & (stat.S_IWGRP | stat.S_IWOTH)


def same_view(pid: int) -> bool:
    """Whether periscope and the target share the mount namespace and the root directory."""
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return False
        theirs, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _hand_over(fd: int, uid: int, gid: int, mode: int, pid: int) -> None:
    """Give the file or directory at ``fd`` to the target's user with ``mode``."""
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) != (uid, gid):
        try:
            os.fchown(fd, uid, gid)
        except PermissionError:
            if info.st_uid != uid:
                raise PermissionDenied(
                    f"process {pid} runs as uid {uid}, which cannot read periscope's files",
                    "run periscope as that user, or as root",
                ) from None
            # Same user, another group: the mode below keeps the group out anyway.
    os.fchmod(fd, mode)


def prepare_script_dir(pid: int, *, limit: int = 511, room: int = 64) -> ScriptDir:
    """Create a fresh private directory (0700, owned by the target's uid/gid) in the target's temp dir.

    Tries the target's ``$TMPDIR`` (from its initial environment, when readable), then ``/tmp``,
    ``/var/tmp`` and ``/dev/shm``, skipping any that is not safe to make it in (see
    ``_safe_parent``), and any so
    deep that its path and ``room`` more bytes (a slash and a file name) exceed ``limit``: the
    remote-exec buffer takes 511 bytes, a Unix socket address 107.
    Raises ProcessGone, PermissionDenied, or PeriscopeError when no candidate is usable.
    """
    uid, gid = _target_credentials(pid)
    root_fd = _open_root(pid)
    shared_view = same_view(pid)
    tried: list[str] = []
    try:
        candidates = [_target_tmpdir(pid), *TEMP_DIR_CANDIDATES]
        for candidate in dict.fromkeys(c for c in candidates if c):
            try:
                parent_fd, parent_path = _resolve_dir(root_fd, candidate)
            except OSError as error:
                if error.errno == errno.ESRCH:
                    raise ProcessGone(f"process {pid} exited") from None
                tried.append(f"{candidate}: {error.strerror}")
                continue
            if len(os.fsencode(f"{parent_path.rstrip('/')}/{DIR_PREFIX}{'0' * 12}")) + room > limit:
                tried.append(f"{candidate}: too long a path")
                os.close(parent_fd)
                continue
            try:
                parent_info = os.fstat(parent_fd)
                if not _safe_parent(parent_info, uid):
                    tried.append(f"{candidate}: neither a sticky world-writable directory nor the target user's own")
                    os.close(parent_fd)
                    continue
                leftovers.remove_stale(parent_fd)
                created = _make_private_dir(parent_fd, pid, uid, gid)
            except BaseException:
                os.close(parent_fd)
                raise
            if created is None:
                tried.append(f"{candidate}: not writable")
                os.close(parent_fd)
                continue
            name, dir_fd = created
            info = os.fstat(dir_fd)
            leftovers.remember(name, parent_info, info)
            target_path = f"{parent_path.rstrip('/')}/{name}"
            host_path = Path(target_path) if shared_view else Path(f"/proc/{pid}/root{target_path}")
            return ScriptDir(
                pid=pid,
                host_path=host_path,
                target_path=target_path,
                uid=uid,
                gid=gid,
                _dir_fd=dir_fd,
                _parent_fd=parent_fd,
                _inode=(info.st_dev, info.st_ino),
            )
    finally:
        os.close(root_fd)
    raise PeriscopeError(
        f"process {pid} has no temporary directory periscope can safely use ({'; '.join(tried)})",
        "give the target a TMPDIR owned by its user",
    )


def _make_private_dir(parent_fd: int, pid: int, uid: int, gid: int) -> tuple[str, int] | None:
    """mkdir a randomly named 0700 directory in ``parent_fd``; (name, fd) or None if not writable."""
    for _ in range(100):
        name = DIR_PREFIX + os.urandom(6).hex()  # secrets.token_hex without its imports (start-up time)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            continue
        except (PermissionError, OSError) as error:
            if isinstance(error, PermissionError) or error.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
                return None
            raise
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            _hand_over(fd, uid, gid, 0o700, pid)
        except BaseException:
            os.close(fd)
            os.rmdir(name, dir_fd=parent_fd)
            raise
        return name, fd
    return None


def write_script(script_dir: ScriptDir, name: str, source: str | bytes) -> tuple[Path, str]:
    """Write a new file ``name`` (0600, owned by the target's user) into ``script_dir``.

    Returns (host_path, target_path). ``source`` as str is written as UTF-8. Refuses to replace an
    existing file or to follow a symlink.
    """
    _check_name(name)
    data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    if script_dir._dir_fd is not None:
        fd = os.open(name, flags, 0o600, dir_fd=script_dir._dir_fd)
    else:
        fd = os.open(script_dir.host_path / name, flags, 0o600)
    try:
        _hand_over(fd, script_dir.uid, script_dir.gid, 0o600, script_dir.pid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return script_dir.host_path / name, f"{script_dir.target_path}/{name}"


_LAUNCHER = """\
# periscope: remove the staged copy of a script, then run it (this file is removed too); picked up
# after periscope stopped waiting (it was killed before it could withdraw the request), only remove.
import io as _io, os as _os, time as _time
_late = {not_after!r} is not None and _time.time() > {not_after!r}
if not _late:
    with _io.open_code({script!r}) as _file:
        _source = _file.read()
for _path in ({script!r}, {launcher!r}):
    try:
        _os.unlink(_path)
    except FileNotFoundError:
        pass  # periscope removed it already
try:
    _os.rmdir({directory!r})
except OSError:
    pass  # not empty or already gone: periscope removes it
if not _late:
    exec(compile(_source, {label!r}, "exec", dont_inherit=True), {{}})
"""
STAGED_SCRIPT_NAME = "script.py"
STAGED_LAUNCHER_NAME = "launch.py"


class StagedScript(Struct, frozen=True):
    """A script staged in a ScriptDir behind a launcher that removes both files as soon as it starts."""

    script_dir: ScriptDir
    launcher_path: str
    """The path to hand to :func:`remote_exec` (the target's view)."""

    def started(self) -> bool:
        """Whether the launcher has run far enough to read the script and remove the copy."""
        return not self.script_dir.contains(STAGED_SCRIPT_NAME)

    def wait_until_started(self, timeout: float, process: RemoteProcess | None = None) -> bool:
        """Poll :meth:`started` for up to ``timeout`` seconds; ProcessGone if ``process`` exits meanwhile."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            if self.started():
                return True
            if process is not None:
                process.memory.ensure_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(0.05, pause * 1.5)


def stage_script(script_dir: ScriptDir, source: str | bytes, label: str, *, not_after: float | None = None) -> StagedScript:
    """Stage ``source`` in ``script_dir`` for :func:`remote_exec`, behind a self-removing launcher.

    The target runs the launcher, which reads the script through ``io.open_code`` (so the target's
    open-code hook still vets it), removes the script, itself and the directory, and only then
    runs the script: compiled as ``label`` (use a name in angle brackets, which tracebacks show
    and ``linecache`` never tries to open) in a fresh empty namespace, as ``sys.remote_exec``
    would run it, so the original line numbers, coding cookie and ``from __future__`` imports
    all hold. Exceptions go to the target's stderr, as for any remote-exec script.

    ``not_after`` (wall-clock time): a thread that picks the launcher up later only removes the
    files, so a request a killed periscope could not withdraw does not run the script hours later.
    """
    _, script_path = write_script(script_dir, STAGED_SCRIPT_NAME, source)
    launcher = _LAUNCHER.format(
        not_after=float(not_after) if not_after is not None and math.isfinite(not_after) else None,
        script=script_path,
        launcher=f"{script_dir.target_path}/{STAGED_LAUNCHER_NAME}",
        directory=script_dir.target_path,
        label=label,
    )
    _, launcher_path = write_script(script_dir, STAGED_LAUNCHER_NAME, launcher)
    return StagedScript(script_dir, launcher_path)


__all__ = [
    "SessionTampered",
    "ScriptDir",
    "StagedScript",
    "fd_address",
    "prepare_script_dir",
    "same_view",
    "stage_script",
    "write_script",
]
