"""Typed errors a user can meet: what happened (``reason``) and what to do about it (``fix``)."""

from __future__ import annotations


class PeriscopeError(Exception):
    """Base of every error periscope reports to the user; front ends format ``reason`` and ``fix``.

    ``str()`` is the one line the CLI prints: ``"{reason}; {fix}"``, or the reason alone.
    """

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(f"{reason}; {fix}" if fix else reason)
        self.reason = reason
        """What happened, in one line ("process 42 exited")."""
        self.fix = fix
        """What to do about it, in the words of the front end at hand; None when there is nothing to do."""


class NotAPythonProcess(PeriscopeError):
    """The process has no CPython runtime that periscope can find."""


class UnsupportedPython(PeriscopeError):
    """The process runs a CPython whose version or build periscope cannot attach to."""

    def __init__(self, reason: str, fix: str | None = None, *, version: str | None = None) -> None:
        super().__init__(reason, fix)
        self.version = version
        """The target's CPython version ("3.11.2"), when it is known."""


class RemoteDebuggingDisabled(PeriscopeError):
    """The target was started with remote debugging switched off."""


class PermissionDenied(PeriscopeError):
    """The kernel does not let this user read or write the target's memory."""


class ProcessGone(PeriscopeError):
    """The process does not exist (any more), or its pid now belongs to another process."""


class TargetNotReady(PeriscopeError):
    """The interpreter is still starting or already finalizing; try again."""


class ScriptPathTooLong(PeriscopeError):
    """The script path does not fit the 512-byte buffer of the remote debugging protocol."""


class InjectionTimeout(PeriscopeError):
    """The target did not pick up (or run) the injected script in time.

    ``fix`` is in the words of the front end that asked (the CLI names its options, the TUI its
    keys: see ``explorer.attach.attach(blocked_fix=...)``, or ``with_fix``).
    """

    def __init__(self, reason: str, fix: str | None = None, *, no_thread_ran: bool = False) -> None:
        super().__init__(reason, fix)
        self.no_thread_ran = no_thread_ran
        """No thread picked the request up: all were blocked in C (input(), a sleep, a lock), so
        another thread, or a moment when the program works, may do. False: the agent started but
        did not answer in time."""

    def with_fix(self, fix: str) -> InjectionTimeout:
        """The same timeout telling another fix (a front end's own words)."""
        return InjectionTimeout(self.reason, fix, no_thread_ran=self.no_thread_ran)


class ProtocolError(PeriscopeError):
    """The agent's stream was malformed; the session is closed."""
