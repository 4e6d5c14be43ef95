"""What ``periscope`` imports to start: the command list needs no command module, a command
imports only its own module, and ``periscope stack PID`` with a warm ELF cache imports neither
Textual, psutil nor pyelftools (nor argparse, for its plain forms), nor dataclasses or typing
(its records are namedtuples).

Each probe runs ``explorer.cli.main`` in a fresh interpreter, as the ``periscope`` script does,
and reports ``sys.modules`` afterwards; nothing here measures time.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from explorer import cli
from explorer.commands import COMMANDS, SUMMARIES
from explorer.commands import stack as stack_command
from tests.targets import Target

Spawn = Callable[..., Target]

# argv[1]: where to write the module names; the rest: periscope's arguments.
PROBE = """
import sys
report, sys.argv = sys.argv[1], ["periscope", *sys.argv[2:]]
from explorer.cli import main
try:
    status = main()
except SystemExit as exit:
    status = exit.code
finally:
    with open(report, "w") as handle:
        handle.write("\\n".join(sorted(sys.modules)))
sys.exit(status)
"""

HEAVY = ("textual", "psutil", "elftools")
# Modules the records on the stack path do without: dataclasses alone pulls in inspect, re, ast,
# dis and tokenize, and creating each dataclass costs more start-up time than reading the stack.
RECORD_MODULES = ("dataclasses", "typing")


def run_periscope(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run periscope with ``args`` in a fresh interpreter: its result and the modules it imported."""
    report = tmp_path / "modules.txt"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args], capture_output=True, text=True, env=env, timeout=60
    )
    return result, set(report.read_text().split("\n"))


def imported(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


def command_modules(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith("explorer.commands.")}


def test_summaries_match_the_command_modules() -> None:
    for module_name in COMMANDS:
        module = importlib.import_module(f"explorer.commands.{module_name}")
        if module_name in SUMMARIES:
            assert SUMMARIES[module_name] == (module.NAME, module.HELP), module_name


def test_a_command_missing_from_the_table_is_still_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    from explorer.commands import ps

    monkeypatch.setattr(cli, "SUMMARIES", {k: v for k, v in SUMMARIES.items() if k != "ps"})
    assert cli.command_summaries()["ps"] == ("ps", ps.HELP)
    assert list(cli.command_summaries()) == [SUMMARIES[name][0] for name in COMMANDS]


def test_help_lists_every_command_without_importing_one(tmp_path: Path) -> None:
    result, modules = run_periscope(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert command_modules(modules) == set()
    listed = " ".join(result.stdout.split())  # help lines are wrapped to the terminal width
    for name, help_text in SUMMARIES.values():
        assert f"{name} {help_text}" in listed
    assert not any(imported(modules, package) for package in HEAVY)


def test_command_help_imports_that_command_only(tmp_path: Path) -> None:
    result, modules = run_periscope(tmp_path, "stack", "--help")
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout and result.stdout.startswith("usage: periscope stack")
    assert command_modules(modules) == {"explorer.commands.stack"}


def test_stack_with_a_warm_elf_cache_imports_nothing_heavy(spawn: Spawn, tmp_path: Path) -> None:
    target = spawn("import time\nprint('ready', flush=True)\ntime.sleep(120)\n")
    target.wait_for_line("ready")
    pid = str(target.pid)
    cold, cold_modules = run_periscope(tmp_path, "stack", pid)
    assert cold.returncode == 0, cold.stderr
    assert imported(cold_modules, "elftools")  # the first look parses the interpreter
    warm, modules = run_periscope(tmp_path, "stack", pid)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == cold.stdout  # the target sleeps: the same stacks, read from the cache's answer
    assert [package for package in (*HEAVY, "argparse", "ctypes", "json") if imported(modules, package)] == []
    assert [name for name in RECORD_MODULES if name in modules] == []
    assert command_modules(modules) == {"explorer.commands.stack"}
    warm_json, modules = run_periscope(tmp_path, "stack", "--json", pid)
    assert warm_json.returncode == 0, warm_json.stderr
    assert f'"pid": {pid}' in warm_json.stdout
    assert [package for package in (*HEAVY, "argparse", "ctypes") if imported(modules, package)] == []
    assert [name for name in RECORD_MODULES if name in modules] == []


# -- the quick parser agrees with argparse -------------------------------------------------

WORDS = ["--json", "--js", "--j", "-h", "--help", "--", "-5", "12", "007", "0", "1_0", "+4", " 3", "3 ", "٣", "x", ""]


def argparse_result(argv: list[str]) -> dict[str, object] | None:
    """What the full parser makes of ``periscope stack ARGV``; None when it refuses or prints help."""
    parser = cli.build_parser(cli.command_summaries(), with_options=["stack"])
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(parser.parse_args(["stack", *argv]))
    except SystemExit:
        return None


@given(st.lists(st.sampled_from(WORDS) | st.from_regex(r"[0-9]{1,25}", fullmatch=True), max_size=4))
def test_quick_parse_agrees_with_argparse(argv: list[str]) -> None:
    quick = stack_command.parse_quick(argv)
    if quick is not None:
        assert vars(quick) == argparse_result(argv)


def test_quick_parse_takes_the_plain_forms() -> None:
    for argv, json in ((["42"], False), (["--json", "42"], True), (["42", "--json"], True)):
        quick = stack_command.parse_quick(argv)
        assert quick is not None and vars(quick) == argparse_result(argv)
        assert (quick.pid, quick.json) == (42, json)


# Standard-library modules that ``periscope stack --locals`` does without (each costs start-up
# time, and the command is measured against py-spy's): patterns are compiled only for text that
# is not printable, signal handlers are installed through _signal (the signal module imports
# enum), no thread is started.
STACK_PATH_UNUSED = ("re", "enum", "signal", "threading", "math", "types", "typing", "dataclasses", "argparse", "json", "ctypes")


def test_stack_locals_imports_only_what_it_uses(spawn: Spawn, tmp_path: Path) -> None:
    """``stack --locals`` of a target whose names and values are all printable imports none of
    STACK_PATH_UNUSED beyond what the bare interpreter imports. Run without site, as a wheel's
    console script imports nothing of the environment on this path either (the editable
    install's finder would import re and pathlib itself)."""
    target = spawn("def wait():\n    note = 'plain'\n    print('ready', flush=True)\n    __import__('time').sleep(120)\nwait()\n")
    target.wait_for_line("ready")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    report = tmp_path / "modules.txt"

    def modules_of(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        result = subprocess.run(
            [sys.executable, "-S", "-c", PROBE, str(report), *args], capture_output=True, text=True, env=env, timeout=60
        )
        return result, set(report.read_text().split("\n"))

    bare = set(
        subprocess.run(
            [sys.executable, "-S", "-c", "import sys; print('\\n'.join(sys.modules))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()
    )
    filled, _ = run_periscope(tmp_path, "stack", str(target.pid))  # fills the ELF cache (with pyelftools, from site)
    assert filled.returncode == 0, filled.stderr
    result, modules = modules_of("stack", "--locals", str(target.pid))
    assert result.returncode == 0, result.stderr
    assert "note = 'plain'" in result.stdout
    assert [name for name in STACK_PATH_UNUSED if name in modules - bare] == []
