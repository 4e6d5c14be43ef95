"""Where periscope keeps its per-user cache: ``$XDG_CACHE_HOME/periscope``, or ``~/.cache/periscope``.

A module of its own so that the paths on the one-shot commands' way (the ELF cache, the session
records, the compiled agent) are found without importing explorer.pythons (the interpreter
provisioning: subprocess, pathlib and more).
"""

from __future__ import annotations

import os


def cache_path() -> str:
    """The per-user cache directory (it may not exist yet)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "periscope")
