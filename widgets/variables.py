"""Variables as a lazy tree: a frame's locals and a module's globals, objects expanded on demand."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from explorer.text import visible

PLACEHOLDER = "loading…"
_TOGGLE = Style.from_meta({"toggle": True})  # what a click on the expand icon carries (as Tree's own labels)


@dataclass(frozen=True)
class ValueView:
    """One value as the tree shows it: its name, type, short repr and how to expand it."""

    name: str
    type_name: str
    preview: str
    """A short repr, already cut to size by whoever made it."""
    ref: Hashable | None = None
    """What to ask for to list its children; None for a value without children."""
    length: int | None = None
    """Number of items or attributes, when known (shown next to the type)."""
    inspect_ref: Hashable | None = None
    """What to ask for to see the whole repr (a long string has one, but no children); None: the
    preview is all there is."""


@dataclass
class _NodeData:
    """What a tree node remembers: its path (for diffs), its value and whether children loaded."""

    path: tuple[str, ...]
    value: ValueView | None
    loaded: bool = False
    page: int = 0
    marked: bool = False
    refreshing: bool = False
    """Its children are being loaded again (the old ones stay shown until the new ones arrive)."""


LINE_CACHE = 240
"""Rendered lines the variables tree keeps (see VariablesTree.__init__)."""


class VariablesTree(Tree[_NodeData]):
    """Locals of the selected frame and variables of the watched module, expanded on demand.

    ``show_scope()`` puts a scope's variables under a top-level node (diffed by name, so
    expanded nodes stay expanded across updates); values that changed since the previous update
    are marked. Expanding a node whose children are not loaded adds a placeholder and posts
    ``ExpandRequested``; answer with ``show_children()``.

    A value cut to fit the pane ends in an ellipsis; its type stays shown. ``v``, or Enter on a
    value without children, posts ``InspectRequested`` (the whole repr, in the value inspector).
    When an expanded value changes, its children are asked for again and the old ones stay until
    the new ones arrive; children that changed are marked like any value.

    | Key | Action |
    | :- | :- |
    | enter, space | Expand or collapse the value under the cursor (Enter on a leaf: inspect it). |
    | v | Inspect the value under the cursor: its whole repr. |
    | up/down | Move. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("v", "inspect", "Inspect value")]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "variables-tree--name",
        "variables-tree--type",
        "variables-tree--changed",
        "variables-tree--scope",
    }

    DEFAULT_CSS = """
    VariablesTree {
        height: 1fr;
        overflow-x: hidden;
    }
    VariablesTree > .variables-tree--name {
        color: $text;
        text-style: bold;
    }
    VariablesTree > .variables-tree--type {
        color: $text-muted;
    }
    VariablesTree > .variables-tree--changed {
        color: $warning;
        text-style: bold;
    }
    VariablesTree > .variables-tree--scope {
        color: $accent;
        text-style: bold;
    }
    """

    mark_changes: reactive[bool] = reactive(True)
    """Whether values that changed since the previous update are highlighted."""

    class ExpandRequested(Message):
        """A node was expanded and its children are not loaded yet."""

        def __init__(self, tree: VariablesTree, node: TreeNode[_NodeData], ref: Hashable, page: int) -> None:
            self.tree = tree
            """The tree the node is in."""
            self.node = node
            """The node to fill (pass it back to ``show_children``)."""
            self.ref = ref
            """The value's ref (``ValueView.ref``)."""
            self.page = page
            """Which page of children to load (0 first)."""
            super().__init__()

        @property
        def control(self) -> VariablesTree:
            """The tree that sent the message."""
            return self.tree

    class InspectRequested(Message):
        """The user asked to see one value whole."""

        def __init__(self, tree: VariablesTree, value: ValueView) -> None:
            self.tree = tree
            """The tree the value is in."""
            self.value = value
            """The value (its ``inspect_ref`` or ``ref`` says what to ask for)."""
            super().__init__()

        @property
        def control(self) -> VariablesTree:
            """The tree that sent the message."""
            return self.tree

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("variables", data=_NodeData((), None), name=name, id=id, classes=classes)
        # Tree keys its rendered lines by the nodes' ids, and values that change get new nodes:
        # the lines of those that went are never asked for again. A few screens' worth, not
        # Tree's 1,024 (it still grows the cache to the widget's height on a resize).
        from textual.cache import LRUCache

        if isinstance(getattr(self, "_line_cache", None), LRUCache):
            self._line_cache = LRUCache(LINE_CACHE)
        self.show_root = False
        self.guide_depth = 3
        self._scopes: dict[str, TreeNode[_NodeData]] = {}
        self._previous: dict[tuple[str, ...], str] = {}
        self.changed_paths: set[tuple[str, ...]] = set()
        """Paths of the values that changed in the latest update (for tests and the status line)."""
        self._label_room = -1

    # --- attributes down -----------------------------------------------------------------------

    def show_scope(self, key: str, title: str, values: Sequence[ValueView], *, track_changes: bool = True) -> None:
        """Show ``values`` under the top-level node ``key`` (created the first time, titled ``title``).

        With ``track_changes`` False (a new frame was selected), nothing is marked as changed.
        """
        scope = self._scopes.get(key)
        if scope is None:
            scope = self.root.add(self._scope_label(title), data=_NodeData((key,), None, loaded=True), expand=True)
            self._scopes[key] = scope
        elif scope.data is not None and scope.data.value is None and str(scope.label) != title:
            scope.set_label(self._scope_label(title))
        changed = self._sync_children(scope, (key,), values, track_changes)
        self.changed_paths = {path for path in self.changed_paths if path[0] != key} | changed

    def remove_scope(self, key: str) -> None:
        """Remove the top-level node ``key`` and everything under it."""
        scope = self._scopes.pop(key, None)
        if scope is not None:
            scope.remove()
        self._previous = {path: value for path, value in self._previous.items() if path[0] != key}

    def show_children(self, node: TreeNode[_NodeData], children: Sequence[ValueView], *, more: bool = False) -> None:
        """Fill ``node`` (from ``ExpandRequested``) with its children; ``more`` adds a "more…" node."""
        data = node.data
        if data is None or not self._alive(node):
            return
        data.loaded = True
        if data.page == 0:
            refreshing, data.refreshing = data.refreshing, False
            if not refreshing:
                node.remove_children()
            changed = self._sync_children(node, data.path, children, track_changes=refreshing)
            self.changed_paths = {path for path in self.changed_paths if path[: len(data.path)] != data.path or path == data.path} | changed
        else:  # a further page: keep what is shown, drop the placeholder, add the rest
            for child in list(node.children):
                if child.data is None or child.data.value is None:
                    child.remove()
            for value in children:
                self._add_value(node, data.path + (value.name,), value, False)
        if more:
            node.add_leaf(Text("more…", style="italic"), data=_NodeData(data.path + ("…more",), None, page=data.page + 1))

    def show_error(self, node: TreeNode[_NodeData], message: str) -> None:
        """Replace ``node``'s placeholder with why its children could not be loaded."""
        if not self._alive(node):
            return
        if node.data is not None:
            node.data.loaded = False
        node.remove_children()
        node.add_leaf(Text(message, style="italic red"), data=_NodeData(node.data.path + ("!",) if node.data else (), None))

    def _alive(self, node: TreeNode[_NodeData]) -> bool:
        try:
            self.get_node_by_id(node.id)
        except Exception:  # UnknownNodeID: the node was removed while its children loaded
            return False
        return True

    # --- diffing -----------------------------------------------------------------------------

    def _scope_label(self, title: str) -> Text:
        return Text(visible(title), style=self.get_component_rich_style("variables-tree--scope", partial=True))

    def _label(self, value: ValueView, changed: bool, shown: tuple[str, str, str] | None = None) -> Text:
        name, preview, kind = shown or (
            visible(value.name),
            visible(value.preview),
            visible(value.type_name if value.length is None else f"{value.type_name}[{value.length}]"),
        )
        text = Text()
        name_style = "variables-tree--changed" if changed else "variables-tree--name"
        text.append(name, style=self.get_component_rich_style(name_style, partial=True))
        text.append(" = ")
        text.append(preview)
        text.append(f"  {kind}", style=self.get_component_rich_style("variables-tree--type", partial=True))
        if changed:
            text.append(" *", style=self.get_component_rich_style("variables-tree--changed", partial=True))
        return text

    def render_lines(self, crop: Region) -> list[Strip]:
        # Labels are cut to the room beside the scrollbar, and both Tree's line cache and the
        # widget's strip cache keep drawn lines by the widget's width, which a scrollbar coming
        # or going does not change: redraw them all then.
        room = self.scrollable_content_region.width
        if room != self._label_room:
            self._label_room = room
            for scope in self.root.children:  # new keys for Tree's cached lines (each line's
                scope.refresh()  # path starts at its scope: the root is not shown)
            self.refresh()  # and the widget's own strips are stale
        return super().render_lines(crop)

    def render_label(self, node: TreeNode[_NodeData], base_style: Style, style: Style) -> Text:
        """A value's label cut to the pane's width: the repr gives way (ending in an ellipsis),
        the name and the type stay."""
        data = node.data
        depth = 0
        parent = node.parent
        while parent is not None:
            depth += 1
            parent = parent.parent
        room = self.scrollable_content_region.width - max(0, depth - 1) * self.guide_depth - 2
        if data is None or data.value is None:
            label = super().render_label(node, base_style, style)
            if room > 1 and label.cell_len > room:
                label.truncate(room, overflow="ellipsis")
            return label
        value = data.value
        kind = visible(value.type_name if value.length is None else f"{value.type_name}[{value.length}]")
        name = visible(value.name)
        preview = visible(value.preview)
        fixed = len(name) + 3 + 2 + len(kind) + (2 if data.marked else 0)
        if room > 0 and fixed + len(preview) > room:
            keep = max(0, room - fixed - 1)
            preview = preview[:keep].rstrip("…") + "…"
        node_label = self._label(ValueView(name=value.name, type_name=value.type_name, preview=preview, length=value.length), data.marked, shown=(name, preview, kind))
        node_label.stylize(style)
        if node.allow_expand:
            prefix = (self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE, base_style + _TOGGLE)
        else:
            prefix = ("", base_style)
        return Text.assemble(prefix, node_label)

    def _sync_children(
        self, parent: TreeNode[_NodeData], path: tuple[str, ...], values: Sequence[ValueView], track_changes: bool
    ) -> set[tuple[str, ...]]:
        existing: dict[str, TreeNode[_NodeData]] = {}
        for child in list(parent.children):
            data = child.data
            if data is None or data.value is None:
                child.remove()  # placeholders and "more…" nodes
                continue
            existing[data.path[-1]] = child
        wanted = {value.name: value for value in values}
        for name, child in existing.items():
            if name not in wanted:
                child.remove()
                self._previous.pop(child.data.path if child.data else (), None)
        changed: set[tuple[str, ...]] = set()
        for value in values:
            child_path = path + (value.name,)
            signature = f"{value.type_name}\x00{value.preview}"
            before = self._previous.get(child_path)
            is_changed = track_changes and self.mark_changes and before is not None and before != signature
            self._previous[child_path] = signature
            if is_changed:
                changed.add(child_path)
            node = existing.get(value.name)
            if node is None:
                node = self._add_value(parent, child_path, value, is_changed)
            else:
                data = node.data
                assert data is not None
                if data.value != value or data.marked != is_changed:
                    node.set_label(self._label(value, is_changed))
                    data.marked = is_changed
                old = data.value
                data.value = value
                node.allow_expand = value.ref is not None
                if old is not None and (old.ref != value.ref or old.preview != value.preview):
                    data.loaded = False
                    if node.is_expanded and value.ref is not None:
                        # Ask again, and keep the children shown until the new ones arrive.
                        data.refreshing = any(c.data is not None and c.data.value is not None for c in node.children)
                        if data.refreshing:
                            data.page = 0
                            self.post_message(self.ExpandRequested(self, node, value.ref, 0))
                        else:
                            self._request(node, value.ref)
                    elif not node.is_expanded and node.children:
                        node.remove_children()  # (on a node without children it re-lays out the screen all the same)
        return changed

    def _add_value(self, parent: TreeNode[_NodeData], path: tuple[str, ...], value: ValueView, changed: bool) -> TreeNode[_NodeData]:
        data = _NodeData(path, value, marked=changed)
        if value.ref is None:
            return parent.add_leaf(self._label(value, changed), data=data)
        return parent.add(self._label(value, changed), data=data, allow_expand=True)

    def _request(self, node: TreeNode[_NodeData], ref: Hashable, page: int = 0) -> None:
        if node.data is not None:
            node.data.page = page
        if page == 0:
            node.remove_children()
        if not any(child.data is not None and child.data.value is None for child in node.children):
            node.add_leaf(Text(PLACEHOLDER, style="italic"), data=_NodeData(node.data.path + ("…",) if node.data else (), None))
        self.post_message(self.ExpandRequested(self, node, ref, page))

    # --- user intent ---------------------------------------------------------------------------

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[_NodeData]) -> None:
        event.stop()
        data = event.node.data
        if data is None or data.value is None or data.value.ref is None or data.loaded:
            return
        self._request(event.node, data.value.ref)

    def action_inspect(self) -> None:
        """Ask for the whole repr of the value under the cursor."""
        node = self.cursor_node
        if node is not None and node.data is not None and node.data.value is not None:
            self.post_message(self.InspectRequested(self, node.data.value))

    def on_tree_node_selected(self, event: Tree.NodeSelected[_NodeData]) -> None:
        data = event.node.data
        if data is not None and data.value is not None and not event.node.allow_expand:
            event.stop()
            self.post_message(self.InspectRequested(self, data.value))
            return
        if data is not None and data.value is None and data.path and data.path[-1] == "…more":
            event.stop()
            parent = event.node.parent
            if parent is not None and parent.data is not None and parent.data.value is not None and parent.data.value.ref is not None:
                event.node.remove()
                self._request(parent, parent.data.value.ref, parent.data.page + 1)

    def value_paths(self) -> dict[tuple[str, ...], Any]:
        """Every value node by path (for tests: what is shown where)."""
        found: dict[tuple[str, ...], Any] = {}
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.data is not None and node.data.value is not None:
                found[node.data.path] = node.data.value
            stack.extend(node.children)
        return found
