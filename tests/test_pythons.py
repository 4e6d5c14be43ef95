"""The target-interpreter command: lookup order, idempotence, and a usable 3.14 and 3.15 that can remote-exec."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer import pythons
from explorer.pythons import TargetPythonError, find_target_python
from explorer.versions import minor_name

PERISCOPE = [sys.executable, "-m", "explorer"]


def test_provisioned_interpreter_is_of_its_minor(target_python: str, target_minor: tuple[int, int]) -> None:
    out = subprocess.run([target_python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.strip() == str(target_minor)


def test_second_provision_is_a_no_op(target_python: str, target_minor: tuple[int, int]) -> None:
    """With a complete prefix in the cache, provisioning logs nothing and changes nothing."""
    if not Path(target_python).is_relative_to(pythons.prefix_dir(target_minor)):
        pytest.skip("the target interpreter does not come from periscope's cache here")
    stamp = pythons.prefix_dir(target_minor) / ".complete"
    before = stamp.stat().st_mtime_ns
    messages: list[str] = []
    assert pythons.provision_debian(target_minor, log=messages.append) == target_python
    assert messages == []
    assert stamp.stat().st_mtime_ns == before
    assert not (pythons.cache_dir() / "apt-sid").exists()


def test_command_prints_the_path(target_python: str, target_minor: tuple[int, int]) -> None:
    env = {**os.environ, pythons.env_var(target_minor): target_python}
    out = subprocess.run([*PERISCOPE, "target-python", "--version", minor_name(target_minor)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == target_python


def test_second_command_costs_milliseconds(target_python: str, target_minor: tuple[int, int]) -> None:
    """Once provisioned (or found), the lookup is a file check: no download, no subprocess of the target."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(pythons.ENV_VAR)}
    first = subprocess.run([*PERISCOPE, "target-python", "--version", minor_name(target_minor), "--no-provision"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # nothing was provisioned, nothing logged
    assert subprocess.run([first.stdout.strip(), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True).stdout.strip() == str(target_minor)


def test_unknown_minor_is_refused_in_one_line() -> None:
    out = subprocess.run([*PERISCOPE, "target-python", "--version", "3.13"], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "3.14, 3.15" in out.stderr and "Traceback" not in out.stderr


def test_environment_variable_wins(target_python: str, target_minor: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pythons.env_var(target_minor), target_python)
    assert find_target_python(target_minor, provision=False) == target_python
    monkeypatch.delenv(pythons.env_var(target_minor))
    monkeypatch.setenv(pythons.ENV_VAR, target_python)  # the general variable, when it is this minor
    assert find_target_python(target_minor, provision=False) == target_python


def test_environment_variable_of_another_minor_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    other = pythons.find_target_python((3, 14), provision=False)
    monkeypatch.setenv(pythons.env_var((3, 15)), other)
    with pytest.raises(TargetPythonError, match=r"PERISCOPE_TARGET_PYTHON_3_15=.* is Python 3\.14; point it at CPython 3\.15"):
        find_target_python((3, 15), provision=False)


def test_environment_variable_with_old_python_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    old = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    monkeypatch.setenv(pythons.ENV_VAR, old)
    with pytest.raises(TargetPythonError, match=r"Python 3\.11.*3\.14"):
        find_target_python(provision=False)


def test_environment_variable_that_does_not_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(pythons.ENV_VAR, str(tmp_path / "missing-python"))
    with pytest.raises(TargetPythonError, match="does not run"):
        find_target_python(provision=False)
    out = subprocess.run(
        [*PERISCOPE, "target-python"], capture_output=True, text=True, env={**os.environ, pythons.ENV_VAR: str(tmp_path / "nope")}
    )
    assert out.returncode == 1
    assert out.stderr.startswith("periscope: ") and "Traceback" not in out.stderr


def test_python3x_on_path_is_used(target_python: str, target_minor: tuple[int, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    name = f"python{minor_name(target_minor)}"
    (tmp_path / name).symlink_to(target_python)
    for variable in (pythons.ENV_VAR, pythons.env_var(target_minor)):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert find_target_python(target_minor, provision=False) == str(tmp_path / name)


def test_archive_uri_comes_from_this_machine() -> None:
    if not pythons._is_debian_x86_64():
        pytest.skip("not a Debian-family x86-64 machine")
    uri = pythons.debian_archive_uri()
    assert uri.startswith(("http://", "https://")) and "/debian" in uri


def test_interpreter_remote_execs_into_another(target_python: str, spawn, tmp_path: Path) -> None:
    """The provisioned interpreter can drive CPython's own sys.remote_exec into a second process of its minor."""
    target = spawn(
        """
        import time
        print("ready", flush=True)
        while True:
            time.sleep(0.01)
        """
    )
    target.wait_for_line("ready")
    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"import os\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n")
    subprocess.run(
        [target_python, "-c", f"import sys; sys.remote_exec({target.pid}, {str(script)!r})"], check=True, timeout=30
    )
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == str(target.pid)
