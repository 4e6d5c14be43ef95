"""The agent as periscope injects it: its parts, in dependency order, made into one flat script.

Each part imports what it uses from the parts before it with one marked line per part, such as
``from .codec import decode, encode  # agent-part``, so that it reads, lints and imports (in
periscope and the tests) on its own. The assembler drops those lines and joins the parts: the
target runs one module, ``_periscope_agent``, in which every part's names live together, and
gains no module named after a part. Any other import of a part (an unmarked or indented relative
import, one spread over several lines, ``import payloads...``) is refused with AssemblyError: in
the target it would fail, or look for periscope's files.
"""

import os

PARTS = ("base", "codec", "reads", "watchdog", "previews", "capture", "scopes", "eval", "frames", "connection", "core")
"""The parts of the injected agent in the order they are joined: each after every part it imports from."""

MARK = "  # agent-part"
"""How a line that imports from another part ends (after ``from .part import names``)."""
_source = None


class AssemblyError(ValueError):
    """A part that cannot go into the flat script: an import of another part not in the marked form,
    or of a part that does not come before it."""


def _imports_a_part(statement):
    """Whether a line that starts with ``from`` or ``import`` (after its indentation) imports a part
    of the agent or anything of periscope's (plain string tests: ``re`` would cost periscope's start-up)."""
    if statement.startswith("from"):
        module = statement[4:]
        if module[:1].isidentifier() or module[:1].isdigit():
            return False  # a name such as "fromage", not an import
        module = module.lstrip(" \t")
        return not module[:1].isidentifier() or module.partition(" ")[0].partition(".")[0] == "payloads"
    names = statement[6:]
    if names[:1].isidentifier() or names[:1].isdigit():
        return False
    return any(name.strip(" \t").partition(".")[0] == "payloads" for name in names.partition(" as ")[0].split(","))


def _marked_part(line):
    """The part a marked import line (``from .part import a, b  # agent-part``) imports from, or None."""
    if not (line.startswith("from .") and line.endswith(MARK)):
        return None
    part, found, names = line[6 : -len(MARK)].partition(" import ")
    if not (found and part.isidentifier() and all(name.isidentifier() for name in names.split(", "))):
        return None
    return part


def assemble(parts):
    """One flat script of ``parts``, ``(name, source text)`` pairs in the order they are joined.

    Marked imports (see the module docstring) go; every other import of a part is an AssemblyError.
    """
    done = []
    pieces = []
    for name, text in parts:
        kept = []
        for number, line in enumerate(text.split("\n"), 1):
            statement = line.lstrip(" \t")
            if not (statement.startswith(("from", "import")) and _imports_a_part(statement)):
                kept.append(line)
                continue
            part = _marked_part(line)
            if part is None:
                raise AssemblyError(
                    "%s.py line %d: %r: a part imports another only as 'from .part import names%s', "
                    "on one line of its own" % (name, number, line, MARK)
                )
            if part not in done:
                raise AssemblyError("%s.py line %d imports from %r, which is not a part joined before it" % (name, number, part))
        pieces.append("# ---- part: %s ----\n\n%s" % (name, "\n".join(kept).strip("\n")))
        done.append(name)
    return "\n\n\n".join(pieces) + "\n"


def agent_source():
    """The agent as periscope sends it to targets: PARTS assembled, read from disk once per process."""
    global _source
    if _source is None:
        directory = os.path.dirname(__file__)
        parts = []
        for name in PARTS:
            with open(os.path.join(directory, name + ".py"), encoding="utf-8") as handle:  # importlib.resources would cost periscope's start-up 5 ms
                parts.append((name, handle.read()))
        _source = assemble(parts)
    return _source
