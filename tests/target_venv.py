"""Virtual environments made from the target interpreter, for tests whose targets need third-party
packages (gevent, eventlet): built once per interpreter and package list, cached next to the
provisioned interpreters, and shared between concurrent test runs under a file lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence

from explorer.pythons import cache_dir


class NoWheel(Exception):
    """pip found no binary wheel of the packages for this interpreter (the test is skipped)."""


def _minor(python: str) -> str:
    done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def target_venv(python: str, packages: Sequence[str]) -> str:
    """The python of a venv made from ``python`` with ``packages`` installed from wheels only.

    Raises NoWheel when pip cannot install them without building from source (no wheel for
    this CPython minor yet).
    """
    minor = _minor(python)
    key = hashlib.sha256(("%s\0%s" % (os.path.realpath(python), "\0".join(sorted(packages)))).encode()).hexdigest()[:12]
    root = cache_dir() / "target-venvs" / f"{minor}-{key}"
    root.parent.mkdir(parents=True, exist_ok=True)
    done_mark = root / ".complete"
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done_mark.exists():
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(root)], check=True, capture_output=True, timeout=300)
            installed = subprocess.run(
                [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:", *packages],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if installed.returncode != 0:
                shutil.rmtree(root, ignore_errors=True)
                last = (installed.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise NoWheel(f"no wheel of {', '.join(packages)} for CPython {minor}: {last}")
            done_mark.touch()
    return str(root / "bin" / "python")
