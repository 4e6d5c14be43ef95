"""The target's GIL switch interval, shortened from outside while periscope waits for one of its threads.

On a target whose threads all compute, a thread that wants the GIL waits a whole switch interval
(5 ms by default) before the holder is asked to drop it, and then the GIL goes to any of the
waiting threads, not necessarily the one that asked. Everything periscope waits for on such a
target is such a hand-over: the remote-exec request is picked up by a thread only once it holds
the GIL. The agent shortens the interval itself once it runs (``sys.setswitchinterval``); before
that, periscope writes the same short value into the interpreter's ``_gil.interval`` field, where
``sys.setswitchinterval`` keeps it, and tells the agent the target's own value so that the agent
gives that back (as it gives back its own). An attach that fails gives it back from here.

Only ever written over the target's own value, and only given back over ours: a target that sets
its interval meanwhile keeps what it set. A free-threaded target (no GIL to hand over) and a
layout this module does not recognise are left alone.
"""

from __future__ import annotations

import struct

from explorer.errors import PeriscopeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from explorer.remote import RemoteProcess

SHORT_US = 500
"""The interval periscope and the agent use while a request is served (microseconds)."""

ATTACH_US = 100
"""The interval from the pickup of the agent to its first frame (microseconds). Shorter than for
requests: start-up is a dozen hand-overs in a row, each up to an interval per busy thread, and it
lasts tens of milliseconds, where a compute thread's 12% loss of throughput (6% at 0.5 ms) does
not matter; a request's interval can last as long as an eval runs."""

_LONGEST_US = 10_000_000
"""An interval read above this is not taken for one (a layout this module does not know)."""

_U64 = struct.Struct("<Q")


def _address(process: RemoteProcess) -> int | None:
    """The main interpreter's ``_gil.interval`` (an unsigned long, microseconds), or None."""
    o = process.offsets.interpreter_state
    locked, holder = o.gil_runtime_state_locked, o.gil_runtime_state_holder
    # struct _gil_runtime_state: [int enabled (free-threaded only)], unsigned long interval,
    # PyThreadState *last_holder, int locked, ...
    if not locked or holder != locked - 8:
        return None
    interpreter = process.main_interpreter()
    if o.gil_runtime_state_enabled and not process.memory.read_i32(interpreter.address + o.gil_runtime_state_enabled):
        return None  # free-threaded with the GIL off
    return interpreter.address + locked - 16


def target_interval(process: RemoteProcess) -> int | None:
    """The target's switch interval in microseconds, or None when it is not to be touched."""
    try:
        address = _address(process)
        if address is None:
            return None
        value = process.memory.read_u64(address)
    except (OSError, ValueError, PeriscopeError):
        return None
    return value if 0 < value <= _LONGEST_US else None


def shorten(process: RemoteProcess, expected_us: int | None, address: int | None = None, short_us: int = SHORT_US) -> bool:
    """Write ``short_us`` over the target's interval if it still is ``expected_us`` (read by
    ``target_interval``) and some thread holds the GIL (others then wait for it); whether it did.
    ``address``: the interval's, when the caller keeps it (``_address``)."""
    if expected_us is None or expected_us <= short_us:
        return False
    try:
        address = _address(process) if address is None else address
        if address is None or process.memory.read_u64(address) != expected_us:
            return False
        if not process.memory.read_i32(address + 16):  # _gil.locked, two fields on
            return False  # nobody holds it: a thread that wants it takes it at once
        process.memory.write(address, _U64.pack(short_us))
    except (OSError, ValueError, PeriscopeError):
        return False
    return True


def give_back(process: RemoteProcess, before_us: int, address: int | None = None, short_us: int = SHORT_US) -> None:
    """Write ``before_us`` back if the interval still is ours, ``short_us`` (the agent or the
    target did not set one since); never raises (a target that is gone has nothing to give back)."""
    try:
        address = _address(process) if address is None else address
        if address is not None and process.memory.read_u64(address) == short_us:
            process.memory.write(address, _U64.pack(before_us))
    except (OSError, ValueError, PeriscopeError):
        pass


class Booster:
    """A session's own handle on the target's interval: each request it sends to a busy target
    goes with the interval shortened (``before_request``), and the agent gives it back once the
    request is served, as it gives back its own. The agent's frames at its rate are not requests:
    nothing changes for them."""

    def __init__(self, process: RemoteProcess, target_us: int) -> None:
        self.process: RemoteProcess | None = process
        self.target_us = target_us
        try:
            self.address = _address(process)  # the main interpreter's, for the process's life
        except (OSError, ValueError, PeriscopeError):
            self.address = None
        self.shortened = 0
        """Requests that went with the interval shortened."""

    def before_request(self) -> float | None:
        """Shorten the interval if the target is busy; the target's own (seconds) for the request, or None."""
        if self.process is None or self.address is None or not shorten(self.process, self.target_us, self.address):
            return None
        self.shortened += 1
        return self.target_us / 1e6

    def close(self) -> None:
        """Give the interval back if a request left it short (the agent went before serving it)
        and release the process."""
        process, self.process = self.process, None
        if process is not None:
            try:
                if self.address is not None:
                    give_back(process, self.target_us, self.address)
            finally:
                process.close()
