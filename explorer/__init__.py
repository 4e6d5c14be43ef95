"""periscope: look inside running CPython 3.14 and 3.15 processes without restarting them."""

import sys as _sys

__version__ = "0.1.0"


def _import_msgspec_without_typing_extensions() -> None:
    """Import msgspec with the standard library's ``typing.get_type_hints``.

    msgspec takes ``get_type_hints`` and ``Required`` from typing_extensions when that is
    installed (Textual installs it) and from ``typing`` otherwise. On Python 3.11+ the two do the
    same for every annotation periscope's records use, but importing typing_extensions brings in
    inspect, ast, dis and tokenize: 6 ms of every one-shot command's start-up. Where
    typing_extensions is already imported (the TUI, after Textual) nothing changes.
    """
    if "msgspec" in _sys.modules or "typing_extensions" in _sys.modules:
        return
    _sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # "import typing_extensions" raises ImportError
    try:
        import msgspec  # noqa: F401
    finally:
        del _sys.modules["typing_extensions"]


_import_msgspec_without_typing_extensions()
