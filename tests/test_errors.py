"""Errors carry ``reason`` and ``fix`` as fields of the base class: every error class periscope has
keeps ``str()`` the one line the CLI prints (``reason; fix``, or the reason alone), and the serve
protocol carries both fields apart (a far side that sends only the one line still decodes)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator

import pytest

import explorer
from explorer import errors
from explorer.errors import InjectionTimeout, PeriscopeError, UnsupportedPython
from explorer.serve import BadRequest, _error
from explorer.tasks import AsyncioUnavailable
from explorer.transport import RemoteError, rebuild_error


def _every_module() -> None:
    """Import every module of explorer (each error class is defined on import), not the entry points."""
    for info in pkgutil.walk_packages(explorer.__path__, "explorer."):
        if not info.name.endswith(("__main__", "demo_target")):
            importlib.import_module(info.name)


def _subclasses(cls: type[PeriscopeError]) -> Iterator[type[PeriscopeError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


_every_module()
CLASSES = sorted({PeriscopeError, *_subclasses(PeriscopeError)}, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")

MAKERS: dict[str, Callable[..., PeriscopeError]] = {
    "AttachRefused": lambda cls, reason, fix=None: cls(42, reason, fix),
    "AsyncioUnavailable": lambda cls, reason, fix=None: cls(reason, fix, imported=True),
}
"""Classes whose constructor takes more than (reason, fix): how to make one."""


def make(cls: type[PeriscopeError], reason: str, fix: str | None = None) -> PeriscopeError:
    maker = MAKERS.get(cls.__name__)
    return maker(cls, reason, fix) if maker is not None else cls(reason, fix)


def test_every_module_defines_the_classes_it_is_known_for() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"ProcessGone", "HostError", "SessionTampered", "AgentBusy", "BadRequest", "AttachRefused", "NotTaken"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_is_its_reason_and_its_fix_in_one_line(cls: type[PeriscopeError]) -> None:
    error = make(cls, "process 42 exited", "attach again")
    assert (error.reason, error.fix) == ("process 42 exited", "attach again")
    assert str(error) == "process 42 exited; attach again"
    alone = make(cls, "process 42 exited")
    assert (alone.reason, alone.fix) == ("process 42 exited", None)
    assert str(alone) == "process 42 exited"


def test_the_fields_of_subclasses_stay() -> None:
    old = UnsupportedPython("CPython 3.11.2: periscope supports CPython 3.14 and 3.15", "restart it under CPython 3.14 or 3.15", version="3.11.2")
    assert old.version == "3.11.2" and str(old) == "CPython 3.11.2: periscope supports CPython 3.14 and 3.15; restart it under CPython 3.14 or 3.15"
    assert AsyncioUnavailable("process 42 has not imported asyncio: it has no tasks", imported=False).imported is False
    timeout = InjectionTimeout("no thread of process 42 ran Python", "press t", no_thread_ran=True).with_fix("use --via any")
    assert (timeout.fix, timeout.no_thread_ran, str(timeout)) == ("use --via any", True, "no thread of process 42 ran Python; use --via any")


@pytest.mark.parametrize("cls", [cls for cls in CLASSES if cls.__module__ == "explorer.errors"], ids=lambda cls: cls.__name__)
def test_periscope_own_classes_cross_the_serve_protocol_as_themselves(cls: type[PeriscopeError]) -> None:
    sent = _error(make(cls, "process 42 exited", "attach again"))
    assert sent == {"type": cls.__name__, "message": "process 42 exited; attach again", "reason": "process 42 exited", "fix": "attach again"}
    rebuilt = rebuild_error(sent, "far")
    assert type(rebuilt) is cls and (rebuilt.reason, rebuilt.fix) == ("process 42 exited", "attach again")


def test_other_classes_cross_as_remote_errors_that_keep_the_fix() -> None:
    rebuilt = rebuild_error(_error(BadRequest("'pid' has the wrong type", "give a number")), "far")
    assert type(rebuilt) is RemoteError
    assert (rebuilt.reason, rebuilt.fix) == ("far: 'pid' has the wrong type", "give a number")
    plain = rebuild_error(_error(ValueError("bad value")), "far")
    assert (type(plain), plain.reason, plain.fix) == (RemoteError, "far: bad value", None)


def test_an_older_far_side_s_one_line_still_decodes() -> None:
    """Before ``reason``: ``message`` was the whole line, and ``fix`` set only by a few classes."""
    line = "remote debugging disabled by PYTHON_DISABLE_REMOTE_DEBUG: restart the target without that variable"
    rebuilt = rebuild_error({"type": "RemoteDebuggingDisabled", "message": line, "fix": None}, "far")
    assert type(rebuilt) is errors.RemoteDebuggingDisabled and (rebuilt.reason, rebuilt.fix) == (line, None)
    old_timeout = {"type": "InjectionTimeout", "message": "no thread of process 7 ran Python within the timeout; press t", "fix": "press t"}
    rebuilt = rebuild_error(old_timeout, "far")
    assert isinstance(rebuilt, InjectionTimeout) and rebuilt.no_thread_ran
    assert (rebuilt.reason, rebuilt.fix) == ("no thread of process 7 ran Python within the timeout", "press t")
    assert str(rebuilt) == old_timeout["message"]


@pytest.mark.parametrize(
    "data",
    [None, "text", {"type": "ProcessGone"}, {"type": "ProcessGone", "reason": 7, "message": b"x"}],
    ids=["none", "text", "no-line", "wrong-types"],
)
def test_a_malformed_error_is_a_remote_error(data: object) -> None:
    rebuilt = rebuild_error(data, "far")
    assert type(rebuilt) is RemoteError and rebuilt.reason == "far failed (the far side sent a malformed error)"
