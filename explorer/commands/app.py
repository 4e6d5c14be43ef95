"""``periscope``, ``periscope PID`` and ``periscope --demo``: the TUI.

``--demo`` starts ``explorer/demo_target.py`` under a CPython 3.14 interpreter, opens the app
attached to it, and stops the demo when the app exits (also on Ctrl+C or a crash).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any
from pathlib import Path

from explorer.errors import PeriscopeError, ProcessGone

DEMO_START_TIMEOUT = 10.0
"""Seconds to wait for the demo target to start running Python."""


class DemoFailed(PeriscopeError):
    """The demo target could not be started."""


def demo_script() -> Path:
    """The demo target's source file (shipped inside the package)."""
    return Path(__file__).resolve().parent.parent / "demo_target.py"


def demo_log() -> Path:
    """Where the demo target's output goes."""
    return Path(tempfile.gettempdir()) / f"periscope-demo-{os.getuid()}.log"


def start_demo() -> subprocess.Popen[bytes]:
    """Start the demo target under the target interpreter; it runs until ``stop_demo``."""
    from explorer.pythons import TargetPythonError, find_target_python

    try:
        python = find_target_python()
    except TargetPythonError as error:
        raise DemoFailed(f"cannot start the demo: {error}") from None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHON_DISABLE_REMOTE_DEBUG")}
    log = open(demo_log(), "wb")
    try:
        process = subprocess.Popen(
            [python, str(demo_script())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl+C in the terminal reaches periscope, not the demo
            preexec_fn=_die_with_parent,  # even if periscope is killed outright
        )
    finally:
        log.close()
    _wait_until_python_runs(process)
    return process


def _die_with_parent() -> None:
    """In the demo's child process, before exec: ask the kernel for SIGTERM when periscope dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _exit_on_hangup(signum: int, frame: object) -> None:
    """SIGHUP / SIGTERM (terminal closed, or asked to stop): unwind so the demo is stopped too."""
    raise SystemExit(128 + signum)


def _wait_until_python_runs(process: subprocess.Popen[bytes]) -> None:
    """Wait until the demo's interpreter is initialised (its main thread has started the workers)."""
    import psutil

    deadline = time.monotonic() + DEMO_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailed(f"the demo target exited at once (status {process.returncode}): see {demo_log()}")
        try:
            if psutil.Process(process.pid).num_threads() >= 3:  # main, feeder, cruncher
                return
        except psutil.Error:
            raise ProcessGone(f"the demo target {process.pid} vanished: see {demo_log()}") from None
        time.sleep(0.05)
    stop_demo(process)
    raise DemoFailed(f"the demo target did not start within {DEMO_START_TIMEOUT:.0f} s: see {demo_log()}")


def stop_demo(process: subprocess.Popen[bytes]) -> None:
    """Stop the demo target (SIGTERM, then SIGKILL) and reap it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def run_app(pid: int | None, demo: bool, profile: tuple[str, float] | None = None, **app_options: Any) -> int:
    """Run the TUI: the process list, ``pid``'s screen, or the demo's; returns the exit status.

    ``profile`` (mode, rate) opens ``pid``'s Profile view instead of attaching (``periscope top``).
    ``app_options`` go to PeriscopeApp (a host's connector and scanner: host_app_options).
    """
    from explorer.app import PeriscopeApp

    if pid is not None and pid <= 0:
        print(f"periscope: {pid} is not a process id", file=sys.stderr)
        return 2
    if demo and pid is not None:
        print("periscope: give either PID or --demo, not both", file=sys.stderr)
        return 2
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        # A full-screen app on a pipe would wait for keys nobody types (a hung script).
        which = "output" if not sys.stdout.isatty() else "input"
        target = str(pid) if pid is not None else "PID"
        print(
            f"periscope: the TUI needs a terminal and its {which} is not one: in a script, use "
            f"'periscope snapshot {target}' (one frame) or 'periscope watch {target}' (JSON lines)",
            file=sys.stderr,
        )
        return 2
    demo_process = start_demo() if demo else None
    if demo_process is not None:
        for signum in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, _exit_on_hangup)
    try:
        from explorer import signals

        app = PeriscopeApp(pid=demo_process.pid if demo_process else pid, profile=profile, **app_options)
        app.quit_on_signals = True
        try:
            result = app.run()
        finally:
            # The app's loop is gone: from here on the signals end periscope as Ctrl+C would (the
            # demo, if any, is stopped on the way out).
            if demo_process is not None:
                for signum in (signal.SIGHUP, signal.SIGTERM):
                    signal.signal(signum, _exit_on_hangup)
            else:
                signals.install()
        if signals.received:
            return signals.exit_status()
        if app.return_code not in (None, 0):
            return int(app.return_code or 1)
        return int(result or 0)
    finally:
        if demo_process is not None:
            stop_demo(demo_process)


class HostConnector:
    """The TUI's connector (explorer.screens.attach.Connector) through one host (explorer.hosts.Host)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.host_name = host.name
        """Names the host in the attach screen and the process screen (which then reads no pid here)."""
        self.profiling = HostProfiling(host)
        """The Profile view's sampler on that host (explorer.screens.profile.Profiling)."""

    def inspect(self, pid: int) -> Any:
        """What the far side's discovery says about ``pid`` (None: not listed there)."""
        return self.profiling.inspect(pid)

    def sources(self, pid: int) -> Any:
        """Source lines of the far side's frames: none (its files are not this machine's)."""
        return self.profiling.sources(pid)

    def read_outside(self, pid: int, selected: int | None) -> Any:
        """The attach screen's read from outside, done by the far side (explorer.screens.attach.read_outside)."""
        from explorer.remote_outside import outside_from_json

        document = self.host.link.request("stack", pid=pid, locals=True, locals_thread=selected)
        return outside_from_json(document)

    async def __call__(self, pid: int, *, thread: int | None, progress: Any) -> Any:
        from explorer.screens.attach import _STATE_STEPS, ATTACH_TIMEOUT, BLOCKED_FIX, STREAM_RATE

        def report(step: Any) -> None:
            progress(_STATE_STEPS.get(step.state.value, "injecting"), step.message, None)

        return await self.host.attach(
            pid,
            thread="any" if thread is None else thread,
            timeout=ATTACH_TIMEOUT,
            rate=STREAM_RATE,
            progress=report,
            blocked_fix=BLOCKED_FIX,
        )


class HostProfiling:
    """Profiles a process of one host: the far side samples it (explorer.remote_profile)."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def sampler(self, pid: int, rate: float) -> Any:
        from explorer.remote_profile import RemoteSampler

        return RemoteSampler(self.host.link, pid, rate=rate, where=self.host.name)

    def sources(self, pid: int) -> Any:
        from explorer.screens.sources import NoSources

        return NoSources()

    def inspect(self, pid: int) -> Any:
        return next((process for process in self.host.scan() if process.pid == pid), None)


class NoProfiling:
    """The fleet view without a row: which host's process is meant is not known."""

    def sampler(self, pid: int, rate: float) -> Any:
        from explorer.errors import PeriscopeError

        raise PeriscopeError(f"profile {pid} from the process list: its row says which host it runs on")

    def sources(self, pid: int) -> Any:
        from explorer.screens.sources import NoSources

        return NoSources()

    def inspect(self, pid: int) -> Any:
        return None


def host_app_options() -> dict[str, Any]:
    """PeriscopeApp keyword arguments that put the TUI on the current host (empty: this machine)."""
    from explorer import hosts

    host = hosts.current()
    if host is None:
        return {}
    fleet = hosts.all_hosts()
    if len(fleet) > 1:
        return {"connector": FleetConnector(fleet), "scanner_factory": lambda: hosts.FleetScanner(fleet), "show_host": True}
    return {"connector": HostConnector(host), "scanner_factory": lambda: hosts.HostScanner(host)}


class FleetConnector:
    """The fleet view's connector: ``for_process`` picks the connector of the row's host."""

    def __init__(self, fleet: list[Any]) -> None:
        self.connectors = {host.name: HostConnector(host) for host in fleet}
        self.host_name = ", ".join(self.connectors)
        self.profiling = NoProfiling()

    def for_process(self, process: Any) -> HostConnector | FleetConnector:
        return self.connectors.get(getattr(process, "host", ""), self)

    async def __call__(self, pid: int, *, thread: int | None, progress: Any) -> Any:
        from explorer.errors import PeriscopeError

        raise PeriscopeError(f"attach to {pid} from the process list: its row says which host it runs on")

    def read_outside(self, pid: int, selected: int | None) -> Any:
        from explorer.errors import PeriscopeError

        raise PeriscopeError(f"pick {pid} in the process list: its row says which host it runs on")
