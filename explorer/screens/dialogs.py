"""Modal dialogs: an error that names its fix, and a question with yes/no."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static
from textual.worker import Worker, WorkerState

from explorer.errors import PeriscopeError
from explorer.text import visible


class ErrorDialog(ModalScreen[None]):
    """An error, and what to do about it; Enter or Escape closes it.

    | Key | Action |
    | :- | :- |
    | enter, escape | Close the dialog. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter", "close", "Close"),
    ]

    DEFAULT_CSS = """
    ErrorDialog {
        align: center middle;
    }
    ErrorDialog > Vertical {
        width: 72;
        max-width: 90%;
        height: auto;
        border: thick $error;
        background: $surface;
        padding: 1 2;
    }
    ErrorDialog #dialog-title {
        text-style: bold;
        color: $error;
        margin-bottom: 1;
    }
    ErrorDialog #fix {
        margin-top: 1;
        color: $success;
    }
    ErrorDialog Horizontal {
        height: auto;
        align-horizontal: right;
        margin-top: 1;
    }
    """

    def __init__(self, title: str, message: str, fix: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        """What failed, in the user's words ("Cannot attach to 1234")."""
        self.message = message
        """What happened."""
        self.fix = fix
        """What to do about it, when known."""

    @classmethod
    def from_error(cls, title: str, error: BaseException) -> ErrorDialog:
        """A dialog for ``error``: a PeriscopeError's reason, and its fix apart; anything else is a bug."""
        if isinstance(error, PeriscopeError):
            return cls(title, error.reason, error.fix)
        return cls(
            title,
            f"{type(error).__name__}: {error}",
            "this is a bug in periscope: please report it with the steps that led here",
        )

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(visible(self.title_text)), id="dialog-title")
            yield Static(visible(self.message, keep_lines=True), id="message", markup=False)
            if self.fix:
                yield Static(visible(f"fix: {self.fix}", keep_lines=True), id="fix", markup=False)
            with Horizontal():
                yield Button("OK", variant="primary", id="ok")

    def on_mount(self) -> None:
        # (No button when the app quits at once: it takes the dialog's children down first.)
        for button in self.query("#ok").results(Button):
            button.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        """Close the dialog."""
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question; Enter or y answers yes, Escape or n answers no.

    | Key | Action |
    | :- | :- |
    | y | Yes. |
    | n, escape | No. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    DEFAULT_CSS = """
    ConfirmDialog {
        align: center middle;
    }
    ConfirmDialog > Vertical {
        width: 72;
        max-width: 90%;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmDialog #dialog-title {
        text-style: bold;
        color: $warning;
        margin-bottom: 1;
    }
    ConfirmDialog Horizontal {
        height: auto;
        align-horizontal: right;
        margin-top: 1;
    }
    ConfirmDialog Button {
        margin-left: 2;
    }
    """

    def __init__(self, title: str, message: str, yes: str = "Yes") -> None:
        super().__init__()
        self.title_text = title
        """The question, in the user's words ("Attach to a process of user alice?")."""
        self.message = message
        """What answering yes does."""
        self.yes = yes
        """The label of the yes button."""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(visible(self.title_text)), id="dialog-title")
            yield Static(visible(self.message, keep_lines=True), id="message", markup=False)
            with Horizontal():
                yield Button("Cancel", id="no")
                yield Button(self.yes, variant="warning", id="yes")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        """Answer the question."""
        self.dismiss(yes)


class WorkerFailed(Message):
    """A screen's worker failed; the app turns this into something the user sees (it bubbles)."""

    def __init__(self, worker: Worker[object]) -> None:
        self.worker = worker
        """The failed worker (``worker.error`` says why)."""
        super().__init__()


def forward_failure(screen_event: Worker.StateChanged, post: object) -> None:
    """Post WorkerFailed for a worker that ended in error (Worker.StateChanged does not bubble)."""
    if screen_event.state == WorkerState.ERROR:
        post(WorkerFailed(screen_event.worker))  # type: ignore[operator]
