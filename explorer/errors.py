"""Typed errors a user can meet; each message is one line that says what to do about it."""

from __future__ import annotations


class PeriscopeError(Exception):
    """Base of every error periscope reports to the user; ``str()`` is a one-line message with the fix."""


class NotAPythonProcess(PeriscopeError):
    """The process has no CPython runtime that periscope can find."""


class UnsupportedPython(PeriscopeError):
    """The process runs a CPython whose version or build periscope cannot attach to."""

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


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
    """The target did not pick up (or run) the injected script in time."""


class ProtocolError(PeriscopeError):
    """The agent's stream was malformed; the session is closed."""
