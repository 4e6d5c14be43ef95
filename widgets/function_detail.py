"""The Profile view's detail pane: who calls the selected function, whom it calls, and its hot lines."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from explorer.text import visible

TYPE_CHECKING = False
if TYPE_CHECKING:
    from explorer.profile import FunctionDetail

MAX_NEIGHBOURS = 8
"""Callers and callees listed (the ones with most samples)."""
MAX_LINES = 12
"""Hot lines listed."""


def _percent(samples: int, total: int) -> str:
    return f"{100.0 * samples / total:5.1f}%" if total else "    -"


class FunctionDetailView(Static):
    """Callers, callees and hot lines (with their source text) of one function.

    ``show(detail, total, sources)``: ``total`` is the samples of the selection (the base of the
    percentages), ``sources`` maps a line number to its source text when the file could be read.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"function-detail--title", "function-detail--muted"}

    DEFAULT_CSS = """
    FunctionDetailView {
        height: 1fr;
        padding: 0 1;
        overflow-y: auto;
    }
    FunctionDetailView > .function-detail--title {
        color: $text-accent;
        text-style: bold;
    }
    FunctionDetailView > .function-detail--muted {
        color: $text-muted;
    }
    """

    detail: FunctionDetail | None = None
    """The function on show (None: nothing)."""

    sources: Mapping[int, str | None] = {}
    """The source text of its lines, by line number, as shown."""

    def show_nothing(self, why: str) -> None:
        """No function to show (nothing sampled yet, or nothing selected)."""
        self.detail, self.sources = None, {}
        self.update(Text(why, style=self.get_component_rich_style("function-detail--muted", partial=True)))

    def show(self, detail: FunctionDetail, total: int, sources: Mapping[int, str | None]) -> None:
        """Show ``detail``."""
        self.detail, self.sources = detail, sources
        title = self.get_component_rich_style("function-detail--title", partial=True)
        muted = self.get_component_rich_style("function-detail--muted", partial=True)
        function, filename = detail.key
        heading = Text.assemble((visible(function), title), (" · ", muted), (visible(filename), muted))
        neighbours = Table.grid(padding=(0, 2), expand=True)
        neighbours.add_column(ratio=1)
        neighbours.add_column(ratio=1)
        neighbours.add_row(Text("Called by", style=title), Text("Calls", style=title))
        callers = detail.callers[:MAX_NEIGHBOURS] or []
        callees = detail.callees[:MAX_NEIGHBOURS] or []
        for index in range(max(len(callers), len(callees), 1)):
            cells = []
            for items, empty in ((callers, "(nothing: an outermost frame)"), (callees, "(nothing: all its own time)")):
                if index < len(items):
                    item = items[index]
                    cells.append(Text.assemble(f"{_percent(item.samples, total)} ", visible(item.function), (f"  {visible(os.path.basename(item.filename))}", muted), no_wrap=True, overflow="ellipsis"))
                else:
                    cells.append(Text(empty if index == 0 else "", style=muted))
            neighbours.add_row(*cells)
        lines = Table.grid(padding=(0, 1), expand=True)
        lines.add_column(justify="right")
        lines.add_column(justify="right")
        lines.add_column(justify="right")
        lines.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        lines.add_row(Text("line", style=title), Text("self", style=title), Text("total", style=title), Text("source", style=title))
        for row in detail.lines[:MAX_LINES]:
            source = sources.get(row.lineno)
            lines.add_row(
                str(row.lineno) if row.lineno else "?",
                _percent(row.self_samples, total),
                _percent(row.total_samples, total),
                Text(visible(source), no_wrap=True, overflow="ellipsis") if source is not None else Text("(source not readable)", style=muted),
            )
        body = Table.grid(expand=True)
        body.add_column()
        body.add_row(heading)
        body.add_row(neighbours)
        body.add_row(Text(""))
        body.add_row(Text("Hot lines", style=title))
        body.add_row(lines)
        self.update(body)
