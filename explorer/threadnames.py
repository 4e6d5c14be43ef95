"""Thread names as the target's own ``threading`` module knows them, read from its memory.

``threading._active`` maps each running ``threading`` thread's ident (its pthread_t, the thread
state's ``thread_id``) to its Thread object, whose ``_name`` is the full name (``Thread-1
(_run_loop)``, ``MainThread``), where the OS thread name in ``/proc/PID/task/TID/comm`` is cut to
15 bytes and the main thread has none. A thread that is not in ``_active`` is still starting
(not registered yet), already exiting, or was not started by ``threading``: it has no name here.
Nothing runs in the target. Unless no thread ran Python while it was read, the dict is read again
and only the names both reads agree on are kept (threads come and go while it is read); a read
that fails gives no names.
"""

from __future__ import annotations

from explorer.values import ValueReader

MAX_THREADS = 10_000
"""Entries of ``threading._active`` read at most."""
MAX_NAME_CHARS = 1000
"""Characters of one thread name kept."""


ATTEMPTS = 3
"""Pairs of reads of ``threading._active`` before giving up on names that keep changing."""


def thread_names(reader: ValueReader) -> dict[int, str]:
    """{thread ident: name} of the threads in the target's ``threading._active`` (empty if unreadable)."""
    first, quiet = reader.quiet_read(lambda: _read_names(reader))
    if quiet:
        return first
    second = first
    for _ in range(ATTEMPTS):
        second = _read_names(reader)
        if second == first:
            return second
        first = second
    return {ident: name for ident, name in first.items() if second.get(ident) == name}


def _read_names(reader: ValueReader) -> dict[int, str]:
    module = reader.module_dict("threading")
    if module is None:
        return {}
    active = reader.dict_lookup_safe(module, "_active")
    if active is None:
        return {}
    items = reader.dict_items(active, MAX_THREADS)
    if items is None:
        return {}
    names: dict[int, str] = {}
    for key, thread in items:
        ident = reader.int_value(key)
        name_address = reader.attribute(thread, "_name")
        if ident is None or name_address is None:
            continue
        name = reader.text(name_address, MAX_NAME_CHARS)
        if name is not None:
            names[ident] = name
    return names


__all__ = ["thread_names"]
