"""explorer's core modules never import Textual (they serve the CLI, tests and benchmarks alone)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import explorer

# Modules that are allowed to import Textual: the app and its screens.
UI_MODULES = {"explorer.app", "explorer.commands.app", "explorer.screens"}


def core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(explorer.__path__, "explorer."):
        if any(info.name == ui or info.name.startswith(ui + ".") for ui in UI_MODULES):
            continue
        if info.name in ("explorer.__main__", "explorer.demo_target"):
            continue
        names.append(info.name)
    return names


def test_core_modules_do_not_import_textual() -> None:
    modules = core_modules()
    assert "explorer.remote" in modules and "explorer.cli" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_payloads_use_only_the_standard_library() -> None:
    code = (
        "import json, sys, pkgutil, importlib, payloads\n"
        "before = set(sys.modules)\n"
        "for info in pkgutil.walk_packages(payloads.__path__, 'payloads.'): importlib.import_module(info.name)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(new - set(sys.stdlib_module_names) - {'payloads', 'msgpack'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
