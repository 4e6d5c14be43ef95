"""A real OpenSSH server on a loopback port, for the ``--host`` tests: a throwaway host key, user
key and ``authorized_keys`` in the test's directory, its own config (``sshd -f``), nothing of
the system's configuration read or changed.

As root, sshd wants its privilege separation directory ``/run/sshd``, which a machine that
never ran the ssh service lacks: the server runs in a private mount namespace (``unshare
--mount``) with a tmpfs of its own on ``/run``, so the directory exists for it alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
SSH = shutil.which("ssh")
CHECKOUT = Path(__file__).resolve().parent.parent
SERVE_HERE = f"{shlex.quote(sys.executable)} -m explorer serve --stdio"
"""The far side's command: this checkout's periscope, as ``python -m explorer`` (cwd is set by ssh)."""


@dataclass
class SshServer:
    """A running sshd, and the ssh command line that reaches it."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    command: list[str]

    @property
    def destination(self) -> str:
        return "root@127.0.0.1" if os.getuid() == 0 else f"{os.environ.get('USER', 'user')}@127.0.0.1"

    @property
    def ssh_command(self) -> str:
        """PERISCOPE_SSH_COMMAND: ssh with this server's key, known_hosts and port, no user config."""
        d = self.directory
        return (
            f"ssh -F none -p {self.port} -i {d / 'id'} -o IdentitiesOnly=yes -o UserKnownHostsFile={d / 'known_hosts'} "
            "-o StrictHostKeyChecking=yes -o ConnectTimeout=10"
        )

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for a periscope that goes through this server to this checkout's periscope."""
        remote = f"env PYTHONPATH={shlex.quote(str(CHECKOUT))} {SERVE_HERE}"
        return {**os.environ, "PERISCOPE_SSH_COMMAND": self.ssh_command, "PERISCOPE_REMOTE_COMMAND": remote, **extra}

    def wait_listening(self, timeout: float = 15.0) -> bool:
        """Whether the server answers with its banner within ``timeout`` (False when it exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def start_again(self) -> None:
        """Start the stopped server again, on the same port with the same keys."""
        self.process = _launch(self.command, self.directory)
        if not self.wait_listening():
            self.stop()
            raise RuntimeError(f"sshd did not start again: {(self.directory / 'sshd.log').read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _launch(command: list[str], directory: Path) -> subprocess.Popen[bytes]:
    with open(directory / "sshd.log", "ab") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sshd(directory: Path) -> SshServer:
    """Keys, config and a server listening on 127.0.0.1 (raises RuntimeError with its log if it does not start)."""
    assert SSHD is not None
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / key)], check=True, timeout=30)
    shutil.copy(directory / "id.pub", directory / "authorized_keys")
    for attempt in range(5):
        port = _free_port()
        (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {(directory / 'host_key.pub').read_text()}")
        (directory / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {directory / 'host_key'}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    "StrictModes no",  # the test's tmp directory is not laid out as a home directory
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PidFile none",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        command = [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")]
        if os.getuid() == 0:
            inner = f"mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec {shlex.join(command)}"
            command = ["unshare", "--mount", "sh", "-c", inner]
        server = SshServer(_launch(command, directory), port, directory, command)
        if server.wait_listening():
            return server
        server.stop()
        if attempt == 4:
            raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text(errors='replace')}")
    raise AssertionError("unreachable")
