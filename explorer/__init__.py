"""periscope: look inside running CPython 3.14 and 3.15 processes without restarting them."""

import sys as _sys

__version__ = "0.1.0"


class _MsgspecWithoutTypingExtensions:
    """Imports msgspec, when something first does, with the standard library's ``typing.get_type_hints``.

    msgspec takes ``get_type_hints`` and ``Required`` from typing_extensions when that is
    installed (Textual installs it) and from ``typing`` otherwise. On Python 3.11+ the two do the
    same for every annotation periscope's records use, but importing typing_extensions brings in
    inspect, ast, dis and tokenize: 6 ms of every one-shot command's start-up. Where
    typing_extensions is already imported (the TUI, after Textual) nothing changes, and commands
    that never import msgspec (``stack``) import nothing more for this.
    """

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> object:
        if name != "msgspec":
            return None
        _sys.meta_path.remove(cls)  # once
        spec = _sys.modules["_frozen_importlib_external"].PathFinder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        execute = loader.exec_module

        def exec_module(module: object) -> None:
            if "typing_extensions" in _sys.modules:
                execute(module)
                return
            _sys.modules["typing_extensions"] = None  # "import typing_extensions" raises ImportError
            try:
                execute(module)
            finally:
                if _sys.modules.get("typing_extensions", 0) is None:
                    del _sys.modules["typing_extensions"]

        loader.exec_module = exec_module
        return spec


if "msgspec" not in _sys.modules:
    _sys.meta_path.insert(0, _MsgspecWithoutTypingExtensions)
