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
import re

PARTS = ("base", "codec", "reads", "watchdog", "previews", "capture", "scopes", "eval", "frames", "connection", "core")
"""The parts of the injected agent in the order they are joined: each after every part it imports from."""

_IMPORT_LINE = re.compile(r"\n[ \t]*(?:from|import)\b[^\n]*")
_OF_A_PART = re.compile(r"[ \t]*from[ \t]*(?:[^\w \t]|$)|.*\bpayloads\b")
_PART_IMPORT = re.compile(r"from \.(\w+) import \w+(?:, \w+)*  # agent-part")
_source = None


class AssemblyError(ValueError):
    """A part that cannot go into the flat script: an import of another part not in the marked form,
    or of a part that does not come before it."""


def assemble(parts):
    """One flat script of ``parts``, ``(name, source text)`` pairs in the order they are joined.

    Marked imports (see the module docstring) go; every other import of a part is an AssemblyError.
    """
    done = []
    pieces = []
    for name, text in parts:
        text = "\n" + text  # every line, the first one too, follows a newline
        kept = []
        start = 0
        for line in _IMPORT_LINE.finditer(text):
            statement = line.group()[1:]
            if _OF_A_PART.match(statement) is None:
                continue  # the standard library's
            marked = _PART_IMPORT.fullmatch(statement)
            if marked is None:
                raise AssemblyError(
                    "%s.py line %d: %r: a part imports another only as 'from .part import names  # agent-part', "
                    "on one line of its own" % (name, text.count("\n", 0, line.start()) + 1, statement)
                )
            if marked.group(1) not in done:
                raise AssemblyError(
                    "%s.py line %d imports from %r, which is not a part joined before it"
                    % (name, text.count("\n", 0, line.start()) + 1, marked.group(1))
                )
            kept.append(text[start : line.start()])
            start = line.end()
        kept.append(text[start:])
        pieces.append("# ---- part: %s ----\n\n%s" % (name, "".join(kept).strip("\n")))
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
