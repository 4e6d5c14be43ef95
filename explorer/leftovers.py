"""Session directories periscope made, so that those a killed periscope left behind are removed later.

A session directory (explorer.staging.prepare_script_dir) normally goes when the session ends: the
agent removes it, and periscope removes whatever is left. A periscope killed between staging the
agent and the agent starting leaves it behind, with the staged script in it. So periscope records
each directory it makes, in its own user's cache (``~/.cache/periscope/sessions``, ``0700``): the
directory's name, device and inode, those of the directory it is in, and periscope's own pid, start
time and pid namespace. The next attach that makes a directory in the same place removes every
recorded one whose periscope is gone, if it still is the very directory recorded (same device and
inode); nothing else named ``periscope-*`` is ever touched.

Whether a periscope is gone can only be told from its own pid namespace: a periscope run in a
container (``nsenter -a``, ``--exec``) may share the host's ``/tmp`` and cache while its ``/proc``
shows none of the host's processes. It leaves the records of other namespaces alone, or it would
take the host's live sessions for left-behind ones and remove their directories mid-attach.

No Textual here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from msgspec import Struct

SESSIONS_DIR = "sessions"
"""Directory under explorer.cache.cache_path() that holds one record per live session directory."""
RECORD_LIMIT = 256
"""Bytes a record may hold."""


class Record(Struct, frozen=True):
    """One session directory periscope made."""

    name: str
    """Its name in its parent directory (``periscope-XXXXXXXXXXXX``)."""
    owner_pid: int
    """The periscope process that made it."""
    owner_start: int
    """That process's start time (/proc/PID/stat), so that a reused pid is not taken for it."""
    parent: tuple[int, int]
    """(st_dev, st_ino) of the directory it is in."""
    inode: tuple[int, int]
    """Its own (st_dev, st_ino)."""
    pid_namespace: tuple[int, int] | None = None
    """(st_dev, st_ino) of that process's pid namespace (None: a record without it, never removed)."""


def _pid_namespace() -> tuple[int, int] | None:
    """(st_dev, st_ino) of this process's pid namespace, or None when unreadable."""
    try:
        info = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _records_dir(create: bool) -> Path | None:
    """The records directory, if it is periscope's own (its user's, ``0700``); None otherwise."""
    from explorer.cache import cache_path

    path = Path(cache_path()) / SESSIONS_DIR
    if create:
        with contextlib.suppress(OSError):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return path


def remember(name: str, parent: os.stat_result, made: os.stat_result) -> None:
    """Record that this periscope made the directory ``name`` (``made``) in ``parent``."""
    from explorer.memory import process_start_time

    folder = _records_dir(create=True)
    start = process_start_time(os.getpid())
    namespace = _pid_namespace()
    if folder is None or start is None or namespace is None:
        return  # no cache to record in: a directory left behind is then not cleaned up later
    text = f"{os.getpid()} {start} {parent.st_dev} {parent.st_ino} {made.st_dev} {made.st_ino} {namespace[0]} {namespace[1]}\n"
    try:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
    except OSError:
        return


def forget(name: str) -> None:
    """Drop the record of ``name`` (its directory is gone)."""
    folder = _records_dir(create=False)
    if folder is not None:
        with contextlib.suppress(OSError):
            os.unlink(folder / name)


def _read(folder: Path, name: str) -> Record | None:
    try:
        fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, RECORD_LIMIT)
        finally:
            os.close(fd)
        fields = [int(field) for field in data.split()]
    except (OSError, ValueError):
        return None
    if len(fields) == 6:
        fields += [None, None]  # written before records named the namespace
    if len(fields) != 8:
        return None
    pid, start, parent_dev, parent_ino, dev, ino, ns_dev, ns_ino = fields
    namespace = None if ns_dev is None or ns_ino is None else (ns_dev, ns_ino)
    return Record(name, pid, start, (parent_dev, parent_ino), (dev, ino), namespace)


def records() -> list[Record]:
    """Every recorded session directory (of this user's periscope processes)."""
    folder = _records_dir(create=False)
    if folder is None:
        return []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []  # removed meanwhile: nothing recorded any more
    found = []
    for name in names:
        record = _read(folder, name)
        if record is not None:
            found.append(record)
    return found


def _owner_gone(record: Record, namespace: tuple[int, int] | None) -> bool:
    """Whether the periscope that made ``record`` is gone, as far as this process can tell: only one
    in this very pid namespace can be seen to be gone."""
    from explorer.memory import process_exited

    if namespace is None or record.pid_namespace != namespace:
        return False
    return process_exited(record.owner_pid, record.owner_start)


def remove_stale(parent_fd: int) -> list[str]:
    """Remove the directories in ``parent_fd`` that a periscope now gone made; their names.

    Only a recorded directory that still has the recorded device and inode is removed, without
    following any symlink in it (shutil.rmtree through descriptors), and only if its periscope ran
    in this process's pid namespace.
    """
    parent = os.fstat(parent_fd)
    namespace = _pid_namespace()
    removed: list[str] = []
    for record in records():
        if record.parent != (parent.st_dev, parent.st_ino) or not _owner_gone(record, namespace):
            continue
        try:
            current = os.stat(record.name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            forget(record.name)
            continue
        except OSError:
            continue
        if (current.st_dev, current.st_ino) == record.inode and stat.S_ISDIR(current.st_mode):
            try:
                import shutil  # here, not at the top: it imports zlib, bz2 and lzma (start-up time)
                shutil.rmtree(record.name, dir_fd=parent_fd)
            except OSError:
                continue
            removed.append(record.name)
        forget(record.name)
    return removed
