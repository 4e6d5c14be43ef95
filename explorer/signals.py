"""SIGTERM and SIGHUP (also a terminal that closes) end periscope the way Ctrl+C does.

A periscope that simply died while it waited for a blocked thread to pick a request up would
leave the request in the target: the agent would start there later, unattended, with the short
start-up switch interval in force until it timed out. Ctrl+C withdraws it (the attach is
cancelled, its worker thread withdraws the request, the directory goes); these two signals take
the same path: in a command they act as Ctrl+C, in the TUI as its quit key.

No Textual here.
"""

from __future__ import annotations

import os

# The C module: the signal module wraps the same functions to return enums, and importing it
# (with enum) is the largest part of ``periscope stack``'s start-up after Python's own.
import _signal as signal

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

ENDING = (signal.SIGTERM, signal.SIGHUP)
"""The signals that end periscope like Ctrl+C."""

received: list[int] = []
"""The ending signals received so far (the exit status names the first)."""


def end_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Signal handler: do what Ctrl+C would do now.

    Under ``asyncio.run`` that is its SIGINT handler (cancel the main task, whose clean-up
    withdraws a pending request, then raise KeyboardInterrupt); elsewhere, KeyboardInterrupt.
    """
    received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler and getattr(handler, "__name__", "") != "_sighandler_noop":
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


QUIT_GRACE = 10.0
"""Seconds the TUI may take to quit after an ending signal before the process ends regardless
(a terminal that is gone can leave the screen's own clean-up waiting for ever)."""


def forget_terminal() -> None:
    """The terminal is gone (SIGHUP): stdin, stdout and stderr become /dev/null, so that nothing
    periscope still writes on its way out blocks or fails on a dead terminal."""
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for standard in (0, 1, 2):
            os.dup2(fd, standard)
    finally:
        os.close(fd)


def _end_after(seconds: float) -> None:
    """End the process after ``seconds`` if it is still there (the status names the signal)."""
    import threading

    timer = threading.Timer(seconds, lambda: os._exit(exit_status()))
    timer.daemon = True
    timer.start()


def install(on_end: Callable[[], None] | None = None) -> None:
    """Handle SIGTERM and SIGHUP from now on: like Ctrl+C, or by calling ``on_end`` (the TUI's quit).

    With ``on_end``, a SIGHUP first points the standard streams at /dev/null (the terminal is
    gone), and the process ends QUIT_GRACE seconds after the first signal if quitting got stuck:
    by then the quit has withdrawn any pending request and detached.
    """
    if on_end is None:
        handler: Callable[[int, FrameType | None], None] = end_like_ctrl_c
    else:

        def handler(signum: int, frame: FrameType | None) -> None:
            first = not received
            received.append(signum)
            if signum == signal.SIGHUP:
                forget_terminal()
            on_end()
            if first:
                _end_after(QUIT_GRACE)

    for signum in ENDING:
        signal.signal(signum, handler)


def exit_status(default: int = 130) -> int:
    """The exit status after an interruption: 128 + the first ending signal, else ``default`` (Ctrl+C)."""
    return 128 + received[0] if received else default
