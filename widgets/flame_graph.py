"""An icicle graph in the terminal: the outermost calls on top, each row one call deeper.

Each box is as wide as its share of the samples; boxes narrower than one cell are left out, and
rows below the widget's height are cut. The selected function's boxes are highlighted.
"""

from __future__ import annotations

import zlib
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from explorer.text import visible

TYPE_CHECKING = False
if TYPE_CHECKING:
    from explorer.profile import FlameNode, FunctionKey

_PALETTE = ("#b35c00", "#d08a10", "#a33f1f", "#c9702e", "#8f5200", "#d4651a", "#b07800", "#b0402a")


def _colour(function: str) -> str:
    """A warm colour per function, stable across runs (like a classic flame graph)."""
    return _PALETTE[zlib.crc32(function.encode("utf-8", "surrogatepass")) % len(_PALETTE)]


def icicle_rows(root: FlameNode, width: int, height: int) -> list[list[tuple[int, int, FlameNode]]]:
    """The boxes of each row: (first column, width, node), for a graph ``width`` cells wide.

    Row 0 holds the root's children (the outermost frames). A node gets
    ``round(samples / root.samples * width)`` cells, placed after its elder siblings.
    """
    rows: list[list[tuple[int, int, FlameNode]]] = []
    if root.samples <= 0 or width <= 0:
        return rows
    scale = width / root.samples
    level: list[tuple[int, int, FlameNode]] = [(0, width, root)]
    for _depth in range(height):
        below: list[tuple[int, int, FlameNode]] = []
        for start, span, node in level:
            cursor = float(start)
            for child in sorted(node.children.values(), key=lambda c: (-c.samples, c.function)):
                cells = child.samples * scale
                first, last = round(cursor), round(cursor + cells)
                cursor += cells
                last = min(last, start + span)
                if last - first >= 1:
                    below.append((first, last - first, child))
        if not below:
            break
        rows.append(below)
        level = below
    return rows


class FlameGraph(Widget):
    """The icicle of one selection (a thread, or all threads) of a profile.

    Set ``root`` to a :class:`~explorer.profile.FlameNode` (from ``explorer.profile.flame_tree``)
    and ``selected`` to the function to highlight.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"flame-graph--selected", "flame-graph--empty"}

    DEFAULT_CSS = """
    FlameGraph {
        height: 1fr;
    }
    FlameGraph > .flame-graph--selected {
        background: $accent;
        color: $text;
        text-style: bold;
    }
    FlameGraph > .flame-graph--empty {
        color: $text-muted;
    }
    """

    root: reactive[FlameNode | None] = reactive(None, always_update=True)
    """The tree to draw (None: nothing sampled yet)."""

    selected: reactive[FunctionKey | None] = reactive(None)
    """The function whose boxes are highlighted."""

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        root = self.root
        if root is None or root.samples == 0:
            return Text("no samples yet", style=self.get_component_rich_style("flame-graph--empty"))
        highlight = self.get_component_rich_style("flame-graph--selected")
        lines = []
        for boxes in icicle_rows(root, width, height):
            line = Text(" " * width, no_wrap=True, overflow="crop")
            for first, span, node in boxes:
                # The last cell of a box stays empty: it parts the box from the next one.
                inner = span - 1 if span > 1 else span
                label = visible(node.function)
                label = (label[: inner - 1] + "…" if len(label) > inner else label.ljust(inner)) if inner >= 3 else " " * inner
                key = (node.function, node.filename)
                style = highlight if key == self.selected else Style(bgcolor=_colour(node.function), color="#fff8e7")
                line = line[:first] + Text(label, style=style) + line[first + inner :]
            lines.append(line)
        return Text("\n").join(lines)
