"""``--host`` over a loopback OpenSSH server (tests/sshd.py): what the remote path costs.

* attach to first frame through the ssh link (serve attaches there, the agent's stream is
  relayed), against the local figure plus one round trip of the link (``hello``, measured);
  goal: within 1.5x of local + one round trip;
* link bytes/s while streaming at the default rates (2 Hz, the session's; 4 Hz, the TUI's) from
  the 100-thread target, against what the agent itself sends; goal: under 50 KiB/s (with
  protocol v2's deltas, once they land);
* link bytes/s while the TUI's process screen (Pilot, headless) streams the 100-thread target
  through the host, per second, beside the same screen's agent stream locally;
* the ssh client killed mid-stream: time until the agent has left the target; goal: 2 s.

The machine may be shared: every figure is a median with its range, and the load average is printed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from explorer.hosts import Host
from explorer.attach import attach
from explorer.transport import ssh_endpoint
from tests import targets
from tests.bench import load_average
from tests.bench.bench_agent import IDLE, WIDE
from tests.sshd import start_sshd

ATTACHES = 20
STREAM_SECONDS = 8.0
KILLS = 5


def _range(values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    """``median 12.34 ms (min 9.10, max 20.00, n=20)``."""
    return (
        f"median {statistics.median(values) * scale:.2f} {unit} "
        f"(min {min(values) * scale:.2f}, max {max(values) * scale:.2f}, n={len(values)})"
    )


def _agent_present(pid: int) -> bool:
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            if "periscope" in Path(f"/proc/{pid}/task/{task}/comm").read_text():
                return True
        except OSError:
            continue
    return False


async def _first_frame(connect) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    session = await connect()
    await session.next_frame(timeout=30)
    elapsed = time.perf_counter() - start
    await session.detach()
    return elapsed


async def _attach(host: Host, pid: int) -> None:
    local, remote, trips = [], [], []
    for _ in range(ATTACHES):
        local.append(await _first_frame(lambda: attach(pid, rate=2)))
        remote.append(await _first_frame(lambda: host.attach(pid, rate=2)))
        start = time.perf_counter()
        await asyncio.to_thread(host.link.request, "hello")
        trips.append(time.perf_counter() - start)
    print("  attach to first frame, single-threaded target:")
    print(f"    local                      {_range(local)}")
    print(f"    over ssh (loopback)        {_range(remote)}")
    print(f"    one round trip of the link {_range(trips, scale=1000)}")
    budget = 1.5 * statistics.median(local) + statistics.median(trips)
    print(
        f"    over ssh / (1.5 x local + one round trip): {statistics.median(remote) / budget:.2f} "
        f"(goal: at most 1; medians)"
    )


async def _stream(host: Host, pid: int) -> None:
    print(f"  streaming the 100-thread target for {STREAM_SECONDS:g} s:")
    for rate in (2.0, 4.0):
        session = await host.attach(pid, rate=rate)
        await session.next_frame(timeout=30)
        link, agent = host.link.bytes_received, session.bytes_received
        start = time.perf_counter()
        frames = 0
        while time.perf_counter() - start < STREAM_SECONDS:
            await session.next_frame(timeout=30)
            frames += 1
        elapsed = time.perf_counter() - start
        link_rate = (host.link.bytes_received - link) / elapsed
        agent_rate = (session.bytes_received - agent) / elapsed
        await session.detach()
        print(
            f"    {rate:g} Hz: link {link_rate / 1024:8.1f} KiB/s, agent stream {agent_rate / 1024:8.1f} KiB/s, "
            f"{frames / elapsed:.1f} frames/s (goal: link under 50 KiB/s with protocol v2's deltas)"
        )


async def _tui_rates(connector, pid: int, link_bytes) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """(link, agent stream) bytes/s, one figure per second, while the TUI's process screen shows ``pid``."""
    from explorer.app import PeriscopeApp
    from explorer.screens.process import ProcessScreen

    with tempfile.TemporaryDirectory(prefix="periscope-bench-tui-") as directory:
        options = {} if connector is None else {"connector": connector}
        app = PeriscopeApp(pid=pid, history_path=Path(directory) / "history", **options)
        async with app.run_test(size=(130, 40)) as pilot:
            deadline = time.monotonic() + 60
            while not (isinstance(app.screen, ProcessScreen) and app.screen.frames_applied >= 2):
                assert time.monotonic() < deadline, "the process screen did not show the target"
                await pilot.pause(0.05)
            screen = app.screen
            links, agents = [], []
            last = time.perf_counter(), link_bytes(screen), screen.session.bytes_received
            for _ in range(int(STREAM_SECONDS)):
                await pilot.pause(1.0)
                now = time.perf_counter(), link_bytes(screen), screen.session.bytes_received
                links.append((now[1] - last[1]) / (now[0] - last[0]))
                agents.append((now[2] - last[2]) / (now[0] - last[0]))
                last = now
            await screen.detach()
    return links, agents


async def _tui(host: Host, pid: int) -> None:
    from explorer.commands.app import HostConnector
    from explorer.screens.attach import STREAM_RATE

    print(f"  the TUI's process screen on the 100-thread target at its default {STREAM_RATE:g} Hz, per second for {STREAM_SECONDS:g} s:")
    links, agents = await _tui_rates(HostConnector(host), pid, lambda screen: host.link.bytes_received)
    print(f"    over ssh: link        {_range(links, 'KiB/s', 1 / 1024)} (goal: under 50 KiB/s)")
    print(f"    over ssh: agent stream {_range(agents, 'KiB/s', 1 / 1024)}")
    local, _ = await _tui_rates(None, pid, lambda screen: screen.session.bytes_received)
    print(f"    locally: agent stream {_range(local, 'KiB/s', 1 / 1024)}")


def _profile(host: Host, pid: int) -> None:
    """The Profile view's sampler on the far side (serve's profile op): what its updates cost the link."""
    from explorer.remote_profile import RemoteSampler

    sampler = RemoteSampler(host.link, pid, rate=100.0, where=host.name)
    try:
        time.sleep(1.0)  # the first updates carry the stacks, once
        rates = []
        last = time.perf_counter(), host.link.bytes_received
        for _ in range(int(STREAM_SECONDS)):
            time.sleep(1.0)
            now = time.perf_counter(), host.link.bytes_received
            rates.append((now[1] - last[1]) / (now[0] - last[0]))
            last = now
        stats = sampler.stats()
    finally:
        sampler.stop()
    print(
        f"  the profile sampler on the far side, 100-thread target at 100 Hz: link {_range(rates, 'KiB/s', 1 / 1024)}, "
        f"{stats.achieved_rate:.0f} ticks/s there"
    )


async def _kill(endpoint, pid: int) -> None:  # type: ignore[no-untyped-def]
    gone = []
    for _ in range(KILLS):
        host = Host(endpoint)
        session = await host.attach(pid, rate=4)
        await session.next_frame(timeout=30)
        os.kill(host.link.pid, signal.SIGKILL)
        start = time.perf_counter()
        while _agent_present(pid):
            await asyncio.sleep(0.005)
        gone.append(time.perf_counter() - start)
        await session.close()
        host.close()
    print(f"  ssh killed mid-stream, until the agent has left the target: {_range(gone)} (goal: under 2 s)")


async def _main(host: Host) -> None:
    idle = targets.spawn(IDLE)
    wide = targets.spawn(WIDE)
    try:
        idle.wait_for_line("ready")
        wide.wait_for_line("ready")
        await _attach(host, idle.pid)
        await _stream(host, wide.pid)
        await _tui(host, wide.pid)
        await asyncio.to_thread(_profile, host, wide.pid)
        await _kill(host.endpoint, idle.pid)
    finally:
        idle.stop()
        wide.stop()


def main() -> None:
    print(f"load average {load_average()} (a shared machine: figures are noisy)")
    with tempfile.TemporaryDirectory(prefix="periscope-bench-sshd-") as directory:
        server = start_sshd(Path(directory))
        try:
            os.environ.update({key: value for key, value in server.env().items() if key.startswith("PERISCOPE_")})
            host = Host(ssh_endpoint(server.destination))
            start = time.perf_counter()
            host.link  # noqa: B018 - the connection, once
            print(f"  ssh connection and far side's hello: {(time.perf_counter() - start) * 1000:.1f} ms (once per session)")
            try:
                asyncio.run(_main(host))
            finally:
                host.close()
        finally:
            server.stop()
