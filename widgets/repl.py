"""The REPL pane: multi-line Python input with history, and the transcript of evaluations in order."""

from __future__ import annotations

import codeop
import warnings
from collections.abc import Sequence
from typing import ClassVar, Literal

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.events import Key
from textual.highlight import highlight
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Label, Static, TextArea

from explorer.text import visible
from widgets.variables import ValueView, VariablesTree

EvalScope = Literal["frame", "module"]


def is_complete(code: str) -> bool:
    """Whether ``code`` is a complete statement (Enter runs it) rather than the start of a block.

    As in Python's own REPL, a block (``for ...:``) runs once it ends with an empty line.
    """
    if not code.strip():
        return False
    ends_with_empty_line = code.rstrip(" \t").endswith("\n")
    source = code.rstrip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = codeop.compile_command(source + ("\n" if ends_with_empty_line else ""), "<periscope>", "single")
    except (SyntaxError, ValueError, OverflowError):
        return True  # let the target report the error
    if compiled is None:
        return False
    opens_block = "\n" in source and source.split("\n")[0].rstrip().endswith(":")
    return ends_with_empty_line or not opens_block


def _syntax_available() -> bool:
    try:
        from textual._tree_sitter import get_language  # Textual's optional tree-sitter support
    except ImportError:
        return False
    return get_language("python") is not None


class ReplInput(TextArea):
    """Python input: Enter runs complete code, up/down walk the history at the first/last line.

    | Key | Action |
    | :- | :- |
    | enter | Run the code when it is complete; otherwise a new line. |
    | ctrl+j | Always a new line. |
    | ctrl+t | Switch where code runs (posts ``ScopeToggled``, in order with the typed keys). |
    | up/down | Previous/next history entry (on the first/last line). |
    | tab | Complete the name or attribute before the cursor (posts ``CompletionRequested``); indent at the start of a line. |
    | shift+tab, escape | Leave the input (focus moves on; the screen stays). |
    | ctrl+c | Interrupt the running evaluation (or clear the input). |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Run", show=True),
        Binding("ctrl+j", "newline", "New line", show=False),
        Binding("up", "history_previous", "History", show=False),
        Binding("down", "history_next", "History", show=False),
        Binding("ctrl+c", "interrupt", "Interrupt", show=True, priority=True),
        Binding("escape", "leave", "Leave input", show=True),
    ]

    DEFAULT_CSS = """
    ReplInput {
        height: auto;
        min-height: 3;
        max-height: 10;
    }
    """

    class Submitted(Message):
        """The user ran this code."""

        def __init__(self, repl_input: ReplInput, code: str) -> None:
            self.repl_input = repl_input
            """The input it came from."""
            self.code = code
            """The code to run."""
            super().__init__()

    class Interrupted(Message):
        """The user pressed Ctrl+C."""

    class ScopeToggled(Message):
        """The user pressed Ctrl+T: switch between the selected frame and the module."""

    class CompletionRequested(Message):
        """The user pressed Tab after a name or an attribute path."""

        def __init__(self, repl_input: ReplInput, text: str) -> None:
            self.repl_input = repl_input
            """The input it came from (answer with ``complete_with``)."""
            self.text = text
            """The input up to the cursor."""
            super().__init__()

    class Left(Message):
        """The user left the input (Escape or Shift+Tab)."""

        def __init__(self, backwards: bool) -> None:
            self.backwards = backwards
            """Shift+Tab: to the pane before; Escape: to the pane after."""
            super().__init__()

    def __init__(self, *, id: str | None = None) -> None:
        language = "python" if _syntax_available() else None
        super().__init__("", language=language, id=id, show_line_numbers=False, soft_wrap=True, tab_behavior="indent")
        self.input_history: list[str] = []
        """Earlier inputs, oldest first."""
        self._history_index: int | None = None
        self._draft = ""

    async def on_key(self, event: Key) -> None:
        """Enter and Ctrl+T are handled here, in the widget's own queue, in order with the typed
        characters: a priority binding would run ahead of characters still queued before it, and
        a pane binding only once the key has bubbled up, after an Enter typed right behind it."""
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
        elif event.key == "ctrl+t":
            event.stop()
            event.prevent_default()
            self.post_message(self.ScopeToggled())
        elif event.key == "tab":
            before = self.text_before_cursor()
            if before and (before[-1].isalnum() or before[-1] in "_."):
                event.stop()
                event.prevent_default()
                self.post_message(self.CompletionRequested(self, before))
        elif event.key == "shift+tab":
            event.stop()
            event.prevent_default()
            self.post_message(self.Left(backwards=True))

    def action_leave(self) -> None:
        """Leave the input (the screen stays)."""
        self.post_message(self.Left(backwards=False))

    def text_before_cursor(self) -> str:
        """The input up to the cursor."""
        row, column = self.cursor_location
        lines = self.text.split("\n")
        return "\n".join(lines[:row] + [lines[row][:column]]) if row < len(lines) else self.text

    def complete_with(self, text: str, start: int, matches: Sequence[str]) -> str | None:
        """Apply completions of ``text`` (the input up to the cursor when Tab was pressed): the
        one match, or what all matches share. Returns the word inserted, or None when the input
        changed meanwhile or nothing could be added."""
        if self.text_before_cursor() != text or not matches:
            return None
        word = text[start:]
        common = matches[0]
        for match in matches[1:]:
            while not match.startswith(common):
                common = common[:-1]
        if len(common) <= len(word):
            return None
        self.insert(common[len(word) :])
        return common

    def action_submit(self) -> None:
        """Run the code if it is complete, else start a new line."""
        code = self.text
        if not is_complete(code):
            self.insert("\n" + _indent_for(code))
            return
        self.post_message(self.Submitted(self, code.rstrip()))
        self._history_index = None
        self.load_text("")

    def action_newline(self) -> None:
        """Insert a line break."""
        self.insert("\n")

    def action_history_previous(self) -> None:
        """The previous history entry, when the cursor is on the first line."""
        if self.cursor_location[0] != 0 or not self.input_history:
            self.action_cursor_up()
            return
        if self._history_index is None:
            self._draft = self.text
            self._history_index = len(self.input_history)
        if self._history_index > 0:
            self._history_index -= 1
            self._show(self.input_history[self._history_index])

    def action_history_next(self) -> None:
        """The next history entry, when the cursor is on the last line."""
        if self.cursor_location[0] != self.document.line_count - 1 or self._history_index is None:
            self.action_cursor_down()
            return
        self._history_index += 1
        if self._history_index >= len(self.input_history):
            self._history_index = None
            self._show(self._draft)
        else:
            self._show(self.input_history[self._history_index])

    def _show(self, code: str) -> None:
        self.load_text(code)
        self.move_cursor(self.document.end)

    def action_interrupt(self) -> None:
        """Ask to interrupt the running evaluation."""
        self.post_message(self.Interrupted())


def _indent_for(code: str) -> str:
    last = code.rstrip("\n").split("\n")[-1] if code else ""
    indent = last[: len(last) - len(last.lstrip())]
    return indent + ("    " if last.rstrip().endswith(":") else "")


class ReplOutput(Static):
    """What an evaluation printed, in order."""

    def __init__(self, *, classes: str | None = None) -> None:
        super().__init__("", classes=classes, markup=False)
        self.printed = ""
        """Everything printed so far."""

    def append(self, text: str) -> None:
        """Add printed text."""
        self.printed += text
        self.update(Text(visible(self.printed.rstrip("\n"), keep_lines=True)))


class ReplEntry(Vertical):
    """One evaluation in the transcript: the code, then its result, error or progress."""

    DEFAULT_CSS = """
    ReplEntry {
        height: auto;
        margin-bottom: 1;
    }
    ReplEntry > .repl-code {
        color: $text;
    }
    ReplEntry > .repl-status {
        color: $text-muted;
        text-style: italic;
    }
    ReplEntry > .repl-error {
        color: $error;
    }
    ReplEntry > .repl-output {
        color: $text-muted;
    }
    ReplEntry > VariablesTree {
        height: auto;
        max-height: 12;
        background: transparent;
    }
    """

    def __init__(self, number: int, code: str, scope: str) -> None:
        super().__init__()
        self.number = number
        """The entry's number, shown as In[n]."""
        self.code = code
        """The code that ran."""
        self.scope = scope
        """Where it ran ("frame add_numbers()", "module __main__")."""
        self.state = "running"
        """"running", "done", "error" or "interrupted"."""

    def _prompt(self, note: str = "") -> Text:
        prompt = Text(f"In [{self.number}] ", style="bold $accent")
        prompt.append(f"({self.scope})", style="dim")
        if note:
            prompt.append(f" {note}", style="italic")
        return prompt

    def note_scope(self, note: str) -> None:
        """Say more of where the code ran, after the scope ("in a later call: ...")."""
        self.query_one(".repl-prompt", Static).update(self._prompt(visible(note)))

    def compose(self) -> ComposeResult:
        yield Static(self._prompt(), classes="repl-prompt")
        yield Static(highlight(self.code, language="python"), classes="repl-code")
        yield Static("running… (Ctrl+C interrupts)", classes="repl-status")

    def _status(self) -> Static:
        return self.query_one(".repl-status", Static)

    def add_output(self, text: str) -> None:
        """Show what the running code printed, as it arrives (before the result)."""
        shown = self.query(ReplOutput)
        if shown:
            shown.last().append(text)
            return
        output = ReplOutput(classes="repl-output")
        self.mount(output, before=self._status())
        output.append(text)

    def show_result(self, value: ValueView | None) -> None:
        """Show the result (None for a statement, which shows nothing more)."""
        self.state = "done"
        status = self._status()
        if value is None:
            status.remove()
            return
        if value.ref is None:
            status.update(Text(visible(value.preview)))
            status.remove_class("repl-status")
            status.add_class("repl-result")
            return
        tree = VariablesTree()
        self.mount(tree, before=status)
        status.remove()
        tree.show_scope("result", f"Out[{self.number}]", [value])

    def show_error(self, traceback: str) -> None:
        """Show a traceback (or why the code could not run)."""
        self.state = "error"
        status = self._status()
        status.update(Text(visible(traceback.rstrip("\n"), keep_lines=True)))
        status.remove_class("repl-status")
        status.add_class("repl-error")

    def show_interrupted(self) -> None:
        """Mark the evaluation as interrupted."""
        self.state = "interrupted"
        self._status().update("interrupted")


class ReplPane(Vertical):
    """A REPL into the target: the transcript, where code runs, and the input.

    Attributes down: ``frame_scope`` and ``module_scope`` describe where code would run;
    ``history`` seeds the input's history. Messages up: ``EvalRequested``, ``InterruptRequested``
    and the transcript trees' ``VariablesTree.ExpandRequested``.

    | Key | Action |
    | :- | :- |
    | ctrl+t | Evaluate in the selected frame / in the module. |
    | ctrl+c | Interrupt the running evaluation. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+t", "toggle_scope", "Frame/module"),
        Binding("ctrl+l", "clear", "Clear output", show=False),
    ]

    DEFAULT_CSS = """
    ReplPane {
        height: 1fr;
    }
    ReplPane > #repl-transcript {
        height: 1fr;
    }
    ReplPane > #repl-scope {
        color: $text-muted;
        width: 1fr;
    }
    ReplPane > #repl-completions {
        color: $text-muted;
        height: auto;
        max-height: 4;
        display: none;
    }
    ReplPane > #repl-completions.shown {
        display: block;
    }
    """

    eval_in: reactive[EvalScope] = reactive("module")
    """Where code runs: the watched module (at first) or the frame selected in the stack view."""

    frame_scope: reactive[str] = reactive("")
    """Describes the selected frame ("add_numbers() in thread MainThread"); empty when there is none."""

    module_scope: reactive[str] = reactive("__main__")
    """The module code runs in when ``eval_in`` is "module"."""

    class EvalRequested(Message):
        """Run ``code`` in the target."""

        def __init__(self, pane: ReplPane, entry: ReplEntry, code: str, eval_in: EvalScope) -> None:
            self.pane = pane
            """The pane it came from."""
            self.entry = entry
            """Where to show the result (``show_result``/``show_error``)."""
            self.code = code
            """The code to run."""
            self.eval_in = eval_in
            """"frame" (the selected frame) or "module" (the watched module)."""
            super().__init__()

    class InterruptRequested(Message):
        """Interrupt the running evaluation."""

    class CompletionRequested(Message):
        """Complete ``text`` (the input up to the cursor) where code would run; answer with ``show_completions``."""

        def __init__(self, pane: ReplPane, text: str, eval_in: EvalScope) -> None:
            self.pane = pane
            """The pane it came from."""
            self.text = text
            """The input up to the cursor."""
            self.eval_in = eval_in
            """"frame" (the selected frame) or "module" (the watched module)."""
            super().__init__()

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._count = 0
        self.completions: list[str] = []
        """The matches of the latest completion (for tests and the listing)."""
        self._listed_for: str | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="repl-transcript")
        yield Label("", id="repl-scope")
        yield Static("", id="repl-completions", markup=False)
        yield ReplInput(id="repl-input")

    def on_mount(self) -> None:
        self._update_scope()

    @property
    def history(self) -> list[str]:
        """The input's history, oldest first."""
        return self.query_one(ReplInput).input_history

    @history.setter
    def history(self, entries: Sequence[str]) -> None:
        self.query_one(ReplInput).input_history = list(entries)

    @property
    def entries(self) -> list[ReplEntry]:
        """The transcript, oldest first."""
        return list(self.query(ReplEntry))

    def running(self) -> list[ReplEntry]:
        """Entries still waiting for their result."""
        return [entry for entry in self.entries if entry.state == "running"]

    def watch_eval_in(self) -> None:
        self._update_scope()

    def watch_frame_scope(self) -> None:
        self._update_scope()

    def watch_module_scope(self) -> None:
        self._update_scope()

    def scope_description(self) -> str:
        """Where the next evaluation runs, in words."""
        if self.eval_in == "frame" and self.frame_scope:
            return f"frame {self.frame_scope}"
        return f"module {self.module_scope}"

    def _update_scope(self) -> None:
        if not self.is_mounted:
            return
        label = Text("runs in ", style="dim")
        label.append(visible(self.scope_description()), style="bold")
        label.append("  (ctrl+t switches)", style="dim")
        self.query_one("#repl-scope", Label).update(label)

    @on(ReplInput.Submitted)
    async def _on_submitted(self, message: ReplInput.Submitted) -> None:
        message.stop()
        self._count += 1
        history = self.history
        if not history or history[-1] != message.code:
            history.append(message.code)
        eval_in: EvalScope = self.eval_in if self.frame_scope else "module"
        entry = ReplEntry(self._count, message.code, self.scope_description())
        transcript = self.query_one("#repl-transcript", VerticalScroll)
        await transcript.mount(entry)
        self.scroll_to_end()
        self.post_message(self.EvalRequested(self, entry, message.code, eval_in))

    @on(ReplInput.CompletionRequested)
    def _on_completion_requested(self, message: ReplInput.CompletionRequested) -> None:
        message.stop()
        eval_in: EvalScope = self.eval_in if self.frame_scope else "module"
        self.post_message(self.CompletionRequested(self, message.text, eval_in))

    def show_completions(self, text: str, start: int, matches: Sequence[str], *, more: bool = False) -> None:
        """Complete the input (the one match, or what the matches share) and list the matches
        when there are several; ``text`` is what was completed (a stale answer changes nothing)."""
        listing = self.query_one("#repl-completions", Static)
        repl_input = self.query_one(ReplInput)
        if repl_input.text_before_cursor() != text:
            return
        repl_input.complete_with(text, start, matches)
        self.completions = list(matches)
        self._listed_for = repl_input.text
        if len(matches) > 1 or not matches:
            shown = "no completions" if not matches else "  ".join(match.rpartition(".")[2] for match in matches)
            if more:
                shown += "  …"
            listing.update(Text(visible(shown)))
            listing.add_class("shown")
        else:
            listing.update("")
            listing.remove_class("shown")

    def hide_completions(self) -> None:
        """Stop listing completions (the input changed)."""
        listing = self.query_one("#repl-completions", Static)
        if listing.has_class("shown"):
            listing.update("")
            listing.remove_class("shown")

    @on(TextArea.Changed)
    def _on_input_changed(self, message: TextArea.Changed) -> None:
        if message.text_area.id == "repl-input" and message.text_area.text != self._listed_for:
            self.hide_completions()

    @on(ReplInput.Left)
    def _on_left(self, message: ReplInput.Left) -> None:
        message.stop()
        self.hide_completions()
        if message.backwards:
            self.screen.focus_previous()
        else:
            self.screen.focus_next()

    @on(ReplInput.ScopeToggled)
    def _on_scope_toggled(self, message: ReplInput.ScopeToggled) -> None:
        message.stop()
        self.action_toggle_scope()

    @on(ReplInput.Interrupted)
    def _on_interrupted(self, message: ReplInput.Interrupted) -> None:
        message.stop()
        if self.running():
            self.post_message(self.InterruptRequested())
        else:
            self.query_one(ReplInput).load_text("")

    def scroll_to_end(self) -> None:
        """Keep the newest output in view (once the layout includes it)."""
        transcript = self.query_one("#repl-transcript", VerticalScroll)
        self.call_after_refresh(transcript.scroll_end, animate=False, immediate=True)

    @property
    def at_end(self) -> bool:
        """Whether the transcript shows its newest output."""
        transcript = self.query_one("#repl-transcript", VerticalScroll)
        return transcript.scroll_y >= transcript.max_scroll_y

    def action_toggle_scope(self) -> None:
        """Switch between running code in the selected frame and in the module."""
        self.eval_in = "module" if self.eval_in == "frame" else "frame"

    def action_clear(self) -> None:
        """Remove the transcript."""
        self.query_one("#repl-transcript", VerticalScroll).remove_children()
