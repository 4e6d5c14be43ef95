"""The help screen: what periscope does and every key binding, screen by screen."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import Markdown, Static

INTRO = """\
# periscope

Look inside running CPython 3.14 and 3.15 processes: threads, stacks, variables and a REPL that runs
inside the target. Attaching injects a small agent through PEP 768 remote debugging; detaching
removes it. **Ctrl+P** opens the command palette: every action is there.
"""

KeySection = tuple[str, Sequence[tuple[str, str]]]
"""A heading and its (keys, what they do) rows."""


def key_rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    """(keys, description) for each binding that has a description, keys shown as typed."""
    rows = []
    for binding in bindings:
        if isinstance(binding, Binding):
            key, description = binding.key, binding.description
        else:
            key, _, description = (tuple(binding) + ("",))[:3]
        if not description:
            continue
        shown = ", ".join(_display(part.strip()) for part in key.split(","))
        rows.append((shown, description))
    return rows


_NAMES = {"enter": "Enter", "escape": "Esc", "space": "Space", "tab": "Tab", "up": "Up", "down": "Down"}


def _display(key: str) -> str:
    """A key as people write it: "/", "?", "Ctrl+T", "Enter"."""
    if key in _NAMES:
        return _NAMES[key]
    if key.startswith("ctrl+"):
        return "Ctrl+" + _display(key[5:]).upper()
    return format_key(key)


class HelpScreen(ModalScreen[None]):
    """Key bindings by screen, and a word on what periscope does; Escape or ? closes it.

    | Key | Action |
    | :- | :- |
    | escape, ?, q | Close the help. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q,f1", "close", "Close help"),
    ]

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen .keys {
        margin-bottom: 1;
    }
    HelpScreen > VerticalScroll {
        width: 84;
        max-width: 95%;
        height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    def __init__(self, sections: Sequence[KeySection]) -> None:
        super().__init__()
        self.sections = list(sections)
        """The key tables to show, in order."""

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(INTRO, id="intro")
            for heading, rows in self.sections:
                if rows:
                    yield Static(self.key_table(heading, rows), classes="keys")

    @staticmethod
    def key_table(heading: str, rows: Sequence[tuple[str, str]]) -> Table:
        """One section: a heading, then keys and what they do."""
        table = Table(title=Text(heading, style="bold"), title_justify="left", box=None, show_header=False, padding=(0, 2, 0, 1), expand=True)
        table.add_column("keys", style="bold", ratio=1, no_wrap=True)
        table.add_column("action", ratio=3)
        for keys, description in rows:
            table.add_row(keys, description)
        return table

    def text(self) -> str:
        """The whole help as plain text (tests and the README)."""
        lines = [INTRO]
        for heading, rows in self.sections:
            lines.append(heading)
            lines.extend(f"  {keys:<24} {description}" for keys, description in rows)
        return "\n".join(lines)

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
