"""The agent's parts (payloads/agent/) and the one flat script they are assembled into: it compiles,
holds no import of a part, every top-level name is defined by one part only, the assembler refuses
an import of a part in any other form, and a real target (3.14 and 3.15) runs it as the single
module ``_periscope_agent``, with no module named after a part."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from explorer.attach import attach
from payloads import agent
from payloads.agent import PARTS, AssemblyError, agent_source, assemble

PACKAGE = Path(agent.__file__).parent
MARKED = re.compile(r"from \.(\w+) import (\w+(?:, \w+)*)  # agent-part")


def _part_text(name: str) -> str:
    return (PACKAGE / (name + ".py")).read_text(encoding="utf-8")


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (not counting marked imports of other parts)."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            targets += [item.optional_vars for item in getattr(node, "items", [])]
            for target in targets:
                if target is not None:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.update(alias.asname or alias.name for alias in node.names)
        for field in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                pending.extend(getattr(node, field, []))
    return names


def test_the_assembled_agent_compiles_and_holds_no_import_of_a_part() -> None:
    source = agent_source()
    assert agent_source() is source  # read once per process
    compile(source, "<periscope-agent>", "exec", dont_inherit=True)
    assert "# agent-part" not in source
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("payloads"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("payloads") for alias in node.names), ast.unparse(node)
    # Every part is in it, in order, and its first statement is the agent's docstring.
    offsets = [source.index("# ---- part: %s ----\n" % name) for name in PARTS]
    assert offsets == sorted(offsets)
    assert ast.get_docstring(tree) == ast.get_docstring(ast.parse(_part_text("base")))


def test_the_assembly_is_the_same_text_every_time() -> None:
    parts = [(name, _part_text(name)) for name in PARTS]
    assert assemble(parts) == assemble(list(parts)) == agent_source()


def test_no_top_level_name_is_defined_by_two_parts() -> None:
    owner: dict[str, str] = {}
    clashes = []
    for name in PARTS:
        for defined in sorted(_top_level_names(ast.parse(_part_text(name)))):
            if defined in owner:
                clashes.append("%s: %s and %s" % (defined, owner[defined], name))
            owner.setdefault(defined, name)
    assert clashes == []
    # And the flat module has exactly the names of its parts.
    assert _top_level_names(ast.parse(agent_source())) == set(owner)


def test_every_marked_import_names_what_an_earlier_part_defines() -> None:
    defined: dict[str, set[str]] = {}
    for name in PARTS:
        text = _part_text(name)
        for line in text.splitlines():
            match = MARKED.fullmatch(line)
            if match is not None:
                source, names = match.group(1), match.group(2).split(", ")
                assert source in defined, "%s imports from %s, which comes later" % (name, source)
                assert set(names) <= defined[source], (name, source, set(names) - defined[source])
        defined[name] = _top_level_names(ast.parse(text))


@pytest.mark.parametrize("name", PARTS)
def test_every_part_imports_on_its_own(name: str) -> None:
    module = importlib.import_module("payloads.agent." + name)
    assert module.__doc__, "payloads/agent/%s.py has no module docstring" % name


@pytest.mark.parametrize(
    "line",
    [
        "from .codec import encode",  # unmarked
        "from .codec import encode # agent-part",  # marked, but not in the one form
        "from . import codec  # agent-part",
        "from .codec import (encode, decode)  # agent-part",
        "from payloads.agent.codec import encode",
        "import payloads.agent.codec",
        "import os, payloads.agent.codec",
        "from \\\n    .codec import encode  # agent-part",  # spread over two lines
        "    from .codec import encode  # agent-part",  # indented: inside a function or a block
        "from .later import encode  # agent-part",  # a part not joined before this one
        "from .core import Agent  # agent-part",  # the part itself comes later
    ],
)
def test_the_assembler_refuses_any_other_import_of_a_part(line: str) -> None:
    part = '"""A part."""\n\nimport sys\n\n%s\n\n\ndef f():\n    return sys\n' % line
    with pytest.raises(AssemblyError, match="part"):
        assemble([("base", '"""Base."""\n'), ("codec", "def encode(x):\n    return x\n"), ("broken", part), ("core", "")])


def test_marked_imports_go_and_standard_library_imports_stay() -> None:
    script = assemble(
        [
            ("base", '"""Base."""\n\nimport sys\n\nX = 1\n'),
            ("user", '"""User."""\n\nfrom .base import X, sys  # agent-part\nimport os\nfrom json import dumps\n\nY = X + 1\n'),
        ]
    )
    assert "agent-part" not in script and "import os\nfrom json import dumps\n" in script
    namespace: dict[str, object] = {}
    exec(compile(script, "<test>", "exec"), namespace)
    assert namespace["Y"] == 2


TARGET = '''
import sys, time
sys.stdout.write("ready\\n")
while True:
    time.sleep(0.01)
'''

PROBE = (
    "(sorted(k for k in __import__('sys').modules if k.split('.')[0] in %r or k.startswith('payloads')), "
    "type(__import__('sys').modules['_periscope_agent'].agent).__mro__[1].__name__)" % (PARTS + ("agent", "assembly", "launcher"),)
)


async def test_a_target_runs_the_assembled_agent_as_one_module(spawn) -> None:
    target = spawn(TARGET)
    target.wait_for_line("ready")
    session = await attach(target.pid, rate=0)
    try:
        result = await session.eval(PROBE)
        assert result.ok, result
        assert result.value.repr == "([], 'Connection')"
    finally:
        await session.detach()
