"""Where periscope looks: this machine, or hosts, containers and pods reached over a Link.

A ``Host`` offers what the CLI and the TUI ask of the machine they run on: the process list, an
attach that returns a Session, and read-only commands run there. The CLI picks the hosts
(``--host``, ``--exec``, ``--hosts-file``) once; commands ask ``current()`` and take the local
path when it is None.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from explorer.errors import PeriscopeError, ProtocolError
from explorer.transport import Endpoint, HostError, Link, exec_endpoint, ssh_endpoint

_hosts: list[Host] = []


def use(endpoints: list[Endpoint]) -> None:
    """The hosts the commands of this run go through (connected on first use)."""
    _hosts[:] = [Host(endpoint) for endpoint in endpoints]


def current() -> Host | None:
    """The one host commands go through (None: this machine)."""
    return _hosts[0] if _hosts else None


def all_hosts() -> list[Host]:
    """Every host named on the command line (the fleet view)."""
    return list(_hosts)


def close_all() -> None:
    """Close every link (each far side detaches from its targets and exits)."""
    for host in _hosts:
        host.close()


def read_hosts_file(path: str) -> list[Endpoint]:
    """One ``[user@]host`` per line (``exec: CMD`` for an exec command); ``#`` starts a comment."""
    endpoints = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("exec:"):
                endpoints.append(exec_endpoint(line.removeprefix("exec:").strip()))
            else:
                endpoints.append(ssh_endpoint(line))
    return endpoints


def take_host_options(argv: list[str]) -> tuple[list[str], list[Endpoint]]:
    """``argv`` without ``--host H``, ``--exec CMD`` and ``--hosts-file F`` (anywhere), and the endpoints they name."""
    rest: list[str] = []
    endpoints: list[Endpoint] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            rest.extend(argv[index:])
            break
        name, equals, value = arg.partition("=")
        if name in ("--host", "--exec", "--hosts-file"):
            if not equals:
                if index + 1 >= len(argv):
                    raise HostError(f"{name} needs a value", "for example --host user@host or --exec 'docker exec -i CTR'")
                value = argv[index + 1]
                index += 1
            if name == "--host":
                endpoints.append(ssh_endpoint(value))
            elif name == "--exec":
                endpoints.append(exec_endpoint(value))
            else:
                try:
                    endpoints.extend(read_hosts_file(value))
                except OSError as error:
                    raise HostError(f"cannot read the hosts file {value}: {error.strerror}") from None
        else:
            rest.append(arg)
        index += 1
    return rest, endpoints


def make_session(host: Host, pid: int, result: dict[str, Any]) -> Any:
    """A Session over the relayed stream that the far side's attach ``result`` opened."""
    from explorer import wire
    from explorer.session import Session
    from explorer.transport import RelayWriter

    sid = result.get("sid")
    hello_data = result.get("hello")
    if type(sid) is not int or not isinstance(hello_data, dict):
        raise ProtocolError(f"{host.name} answered attach with a malformed result")
    hello = wire.decode_hello(hello_data)  # refuses an agent protocol this side does not speak
    stream = host.link.stream(sid)
    if stream is None:
        raise HostError(f"the session with process {pid} on {host.name} closed before it started", "attach again")

    class RemoteSession(Session):
        """A Session whose bytes travel over a Link; the far side owns the target's session directory."""

        host_name = host.name
        """The host the target runs on (the process screen's header names it)."""

        def _why_closed(self, what: str) -> tuple[str, str | None]:
            # The pid is the far side's: whether it exited is for the far side to say.
            return f"{stream.reason} in process {self.pid} on {host.name}", "attach again"

    injected_via = result.get("injected_via")
    reader = asyncio.StreamReader(limit=1 << 20)
    session = RemoteSession(
        pid, hello, reader, RelayWriter(stream), wire.Decoder(), None, injected_via if type(injected_via) is int else None  # type: ignore[arg-type]
    )
    agent_code = result.get("agent_code")
    if agent_code in ("compiled", "precompiled", "rejected"):
        session.agent_code = agent_code
    stream.install(reader, asyncio.get_running_loop())
    session._start()
    return session


class Host:
    """One far side (an ssh host or an exec command), connected on first use."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._link: Link | None = None
        self._connecting = threading.Lock()
        """Held while the link starts: workers that ask at once (the list's scan, the profile's
        start) share one connection instead of each starting its own."""

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def link(self) -> Link:
        """The running link (started now if it is not; HostError when the far side cannot be reached)."""
        with self._connecting:
            if self._link is None or self._link.dead is not None:
                if self._link is not None:
                    self._link.close(timeout=1.0)
                    self._link = None
                self._link = Link(self.endpoint)
            return self._link

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.dead is None

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    # -- what the commands ask -----------------------------------------------------------------

    def scan(self, interval: float = 0.0, timeout: float | None = 60.0) -> list[Any]:
        """The far side's Python processes as explorer.discovery.ProcessInfo (checked field by field)."""
        rows = self.link.request("ps", timeout=timeout, interval=float(interval))
        if not isinstance(rows, list):
            raise ProtocolError(f"{self.name} answered ps with a malformed list")
        return [process_from_json(row, self.name) for row in rows]

    def target_thread(self, pid: int, native_id: int) -> int:
        """The far side's native thread id ``native_id`` of ``pid`` as the target itself knows it
        (they differ when the target runs in a pid namespace below the far side's)."""
        found = self.link.request("target_thread", pid=pid, native_id=native_id)
        if type(found) is not int or not 0 < found < 1 << 32:
            raise ProtocolError(f"{self.name} answered target_thread with a malformed thread id")
        return found

    def run(self, argv: list[str], file: tuple[int, bytes] | None = None) -> tuple[int, str, str]:
        """Run a periscope command there: its exit status, stdout and stderr (hostile text).

        ``file`` (index in ``argv``, contents) sends a file of this machine along: the far side
        puts it in a private directory and passes that path instead (``exec``'s script)."""
        extra: dict[str, Any] = {} if file is None else {"file_arg": file[0], "file": file[1]}
        result = self.link.request("run", timeout=None, argv=list(argv), **extra)
        if not (isinstance(result, dict) and type(result.get("status")) is int):
            raise ProtocolError(f"{self.name} answered with a malformed result")
        out, err = result.get("stdout"), result.get("stderr")
        return result["status"], out if isinstance(out, str) else "", err if isinstance(err, str) else ""

    async def attach(
        self,
        pid: int,
        *,
        thread: Any = "auto",
        timeout: float = 10.0,
        rate: float = 2.0,
        modules: tuple[str, ...] = ("__main__",),
        limits: dict[str, Any] | None = None,
        progress: Callable[[Any], None] | None = None,
        blocked_fix: str | None = None,
    ) -> Any:
        """The far side attaches (injection, handshake); a Session over the relayed agent stream."""
        import time

        from explorer.attach import AttachProgress, AttachState

        loop = asyncio.get_running_loop()
        link = self._link if self.connected else await asyncio.to_thread(lambda: self.link)
        assert link is not None
        started = time.monotonic()

        def on_progress(message: dict[str, Any]) -> None:
            state = AttachState.__members__.get(message.get("state")) if isinstance(message.get("state"), str) else None
            native_id = message.get("native_id")
            text = message.get("message")
            if progress is None or state is None or not isinstance(text, str):
                return
            step = AttachProgress(state, text[:1000], time.monotonic() - started, native_id if type(native_id) is int else None)
            loop.call_soon_threadsafe(progress, step)

        arguments: dict[str, Any] = {
            "pid": pid,
            "thread": thread,
            "timeout": float(timeout),
            "rate": float(rate),
            "modules": list(modules),
            "limits": dict(limits or {}),
        }
        if blocked_fix is not None:
            arguments["blocked_fix"] = blocked_fix
        future = link.submit("attach", progress=on_progress, **arguments)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Withdraw the request there; a session that opens anyway is closed at once.
            request_id = getattr(future, "request_id", None)
            if request_id is not None:
                link.submit("cancel", request=request_id)
            future.add_done_callback(lambda done: _close_late(link, done))
            raise
        session = make_session(self, pid, result)
        if progress is not None:
            from explorer.attach import AttachProgress as Step

            progress(Step(AttachState.CONNECTED, f"connected to the agent in process {pid} on {self.name}", time.monotonic() - started, session.injected_via))
        return session


def _close_late(link: Link, done: Any) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    result = done.result()
    if isinstance(result, dict) and type(result.get("sid")) is int:
        link.forget(result["sid"])
        with contextlib.suppress(PeriscopeError):
            link.submit("close", sid=result["sid"])


def _host_process_class() -> Any:
    """ProcessInfo with the name of the host it runs on (a class made once, on first use)."""
    global _HostProcessInfo
    if _HostProcessInfo is None:
        from explorer.discovery import ProcessInfo

        @dataclasses.dataclass(frozen=True)
        class HostProcessInfo(ProcessInfo):
            """A far side's process, and the host (``--host``/``--exec`` name) it runs on."""

            host: str = ""

        _HostProcessInfo = HostProcessInfo
    return _HostProcessInfo


_HostProcessInfo: Any = None


_PROCESS_TYPES: dict[str, Any] = {
    "pid": int,
    "ppid": int,
    "user": str,
    "uid": int,
    "cmdline": list,
    "exe": (str, type(None)),
    "name": str,
    "cpu_percent": (int, float),
    "rss": int,
    "num_threads": int,
    "create_time": (int, float),
    "python": (str, type(None)),
    "free_threaded": (bool, type(None)),
    "runtime_path": (str, type(None)),
    "remote_debug_enabled": (bool, type(None)),
    "attachable": bool,
    "reason": (str, type(None)),
    "fix": (str, type(None)),
}


def process_from_json(row: Any, host: str) -> Any:
    """A far-side process row as a ProcessInfo; ProtocolError when a field is missing or of another type."""
    from explorer.discovery import ProcessInfo

    if not isinstance(row, dict):
        raise ProtocolError(f"{host} sent a process that is not a map")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ProcessInfo):
        types = _PROCESS_TYPES.get(field.name)
        if types is None:
            continue
        value = row.get(field.name)
        if not isinstance(value, types) or (type(value) is bool and types in (int, (int, float))):
            raise ProtocolError(f"{host} sent a process whose {field.name!r} is malformed")
        if field.name == "cmdline":
            if not all(isinstance(arg, str) for arg in value):
                raise ProtocolError(f"{host} sent a process whose command line is malformed")
            value = tuple(value)
        values[field.name] = value
    return _host_process_class()(**values, host=host)


async def attach(pid: int, **options: Any) -> Any:
    """explorer.attach.attach on this machine, or the same through the current host."""
    host = current()
    if host is None:
        from explorer.attach import attach as attach_here

        return await attach_here(pid, **options)
    return await host.attach(pid, **options)



# -- the CLI and the TUI over a host ------------------------------------------------------------

RUN_THERE = frozenset({"stack", "tasks", "target-python", "snapshot", "record", "exec"})
"""Commands that run whole on the far side (read-only reads, or their own attach and fallback);
their output is shown here as they print it there, with control characters written out."""
RELAYED = frozenset({"eval", "watch"})
"""Commands that run here, their agent session relayed from the far side."""
STREAMED = frozenset({"top"})
"""Commands that run here on what the far side streams (the profile sampler's counts)."""


def run_command(command: str, argv: list[str], args: Any = None) -> int:
    """Run ``periscope COMMAND ARGV`` through the current host(s); the exit status."""
    import sys

    from explorer.text import visible

    hosts = all_hosts()
    if command == "ps":
        return _fleet_ps(hosts, bool(getattr(args, "json", False)), float(getattr(args, "interval", 0.3)))
    if len(hosts) > 1:
        raise HostError(f"periscope {command} works on one host at a time", "give one --host or --exec (the process list takes several)")
    if command not in RUN_THERE:
        raise HostError(f"periscope {command} does not work over --host or --exec yet", "run it on that machine")
    file = None
    if command == "exec" and args is not None:
        # The script is read here and sent along; the far side runs it from a private copy.
        try:
            with open(args.file, "rb") as handle:
                file = (len(argv) - argv[::-1].index(args.file), handle.read())
        except OSError as error:
            raise HostError(f"cannot read {args.file}: {error.strerror or error}") from None
    status, out, err = hosts[0].run([command, *argv], file)
    sys.stdout.write(visible(out, keep_lines=True))
    sys.stdout.flush()
    sys.stderr.write(visible(err, keep_lines=True))
    return status


def _fleet_ps(hosts: list[Host], as_json: bool, interval: float) -> int:
    """``ps`` on every host: one table with a HOST column (``--json``: a ``host`` key); a host that
    cannot be reached is reported, the others still listed."""
    import json
    import sys

    from explorer.commands.ps import write_table
    from explorer.text import visible

    from concurrent.futures import ThreadPoolExecutor

    listed: list[tuple[str, list[Any]]] = []
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:  # every host at once
        scans = [(host, pool.submit(host.scan, interval)) for host in hosts]
        for host, scan in scans:
            try:
                listed.append((host.name, scan.result()))
            except PeriscopeError as error:
                failed.append((host.name, str(error)))
    if as_json:
        rows = [{"host": name, **process.to_json()} for name, processes in listed for process in processes]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        processes = [process for _name, found in listed for process in found]
        names = [name for name, found in listed for _process in found]
        if processes or not failed:  # "no Python processes found" only when every host answered
            write_table(processes, sys.stdout, hosts=names)
    for name, why in failed:
        print(f"periscope: {visible(name)}: {visible(why)}", file=sys.stderr)
    return 1 if failed else 0


class HostScanner:
    """The TUI's process scanner (``scan()``) for one host.

    A host that drops off is not fatal: its last rows stay, marked as unreachable (not
    attachable, the reason saying why), and the next scan connects again.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        self.problem: str | None = None
        """Why the last scan could not reach the host (None when it could)."""
        self._last: list[Any] = []

    def scan(self) -> list[Any]:
        try:
            self._last = self.host.scan(timeout=SCAN_TIMEOUT)
        except PeriscopeError as error:
            self.problem = str(error)
            return [
                dataclasses.replace(
                    process,
                    attachable=False,
                    reason=f"{self.host.name} is unreachable: {error}",
                    fix="periscope connects again at the next scan",
                )
                for process in self._last
            ]
        self.problem = None
        return self._last


class FleetScanner:
    """The fleet view's scanner: every host's processes in one list, each host scanned at once;
    a host that drops off keeps its rows, marked (see HostScanner)."""

    def __init__(self, hosts: list[Host]) -> None:
        self.scanners = [HostScanner(host) for host in hosts]

    def scan(self) -> list[Any]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(self.scanners))) as pool:
            return [process for found in pool.map(lambda scanner: scanner.scan(), self.scanners) for process in found]


SCAN_TIMEOUT = 15.0
"""Seconds a host may take to list its processes before it counts as unreachable for that scan."""
