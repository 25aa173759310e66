"""Run ZFS commands locally or on a storage host over SSH, as argv lists.

Over SSH the host key is pinned: the runner writes the one key it was given into a
known_hosts file of its own and runs ``ssh -o StrictHostKeyChecking=yes
-o UserKnownHostsFile=<that file>``, so a host that presents another key is refused and
no key is ever learnt on first use. The remote command is a single string (that is what
the SSH protocol carries); every name in it was validated against ZFS's characters and is
quoted for the remote shell all the same.

Within a ``with runner:`` block the SSH connections share one master connection
(``ControlMaster``), so listing, holds and the send pay for one handshake.
"""

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?)$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/=]+$")

DEFAULT_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 15

# What ssh prints when the connection (not the command) fails, and what it means.
SSH_CAUSES = (
    ("Connection refused", "the host is up but nothing accepts SSH connections on that port"),
    ("Connection timed out", "the host did not answer in time: it is down or a firewall drops"),
    ("timed out during banner exchange", "the host accepted the connection but SSH never answered"),
    ("No route to host", "there is no network route to the host"),
    ("Network is unreachable", "the host's network is unreachable from this worker"),
    ("Could not resolve hostname", "the host name does not resolve"),
    ("Host key verification failed", "the host presented a key other than the pinned one"),
    ("Permission denied (publickey", "the host refused the workers' key for this user"),
)


def ssh_failed(stderr: str) -> bool:
    """ssh's own words for a connection that failed (exit status 255 carries them)."""
    return any(marker in stderr for marker, _ in SSH_CAUSES)


class ZfsCommandError(RuntimeError):
    """A ZFS command (or the SSH connection carrying it) failed."""

    def __init__(self, where: str, argv: Sequence[str], returncode: int, stderr: str):
        self.where = where
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        summary = self.summary
        full = f"\n{self.stderr}" if self.stderr and self.stderr != summary else ""
        super().__init__(f"{where}: `{' '.join(self.argv[:2])}` failed: {summary}{full}")

    @property
    def summary(self) -> str:
        """What went wrong, in words where the SSH connection failed, else the line that
        says it (ssh frames a host key mismatch in @s)."""
        for marker, words in SSH_CAUSES:
            if marker in self.stderr:
                return f"{words} ({marker.lower()})"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in lines:
            if "Host key verification failed" in line or "Permission denied" in line:
                return line
        for line in lines:
            if not line.startswith("@") and not line.startswith("WARNING"):
                return line
        return f"exit status {self.returncode}"


class HostUnreachable(ZfsCommandError):
    """No command could be built for a host: it is neither local nor fully reachable over
    SSH, or the workers lack the key. A run fails with this, like a failed command."""

    def __init__(self, where: str, message: str):
        self.where, self.argv, self.returncode, self.stderr = where, [], -1, message
        RuntimeError.__init__(self, f"{where}: {message}")

    @property
    def summary(self) -> str:
        return self.stderr


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runner:
    """Where ZFS commands run. Subclasses say how an argv becomes a local process."""

    zfs_path = "/usr/sbin/zfs"
    zpool_path = "/usr/sbin/zpool"
    label = "local"

    def command(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs ``argv`` (whose first item is the remote binary)."""
        raise NotImplementedError

    def zfs_argv(self, args: Sequence[str]) -> list[str]:
        return self.command([self.zfs_path, *args])

    def zpool_argv(self, args: Sequence[str]) -> list[str]:
        return self.command([self.zpool_path, *args])

    def _run(self, full: list[str], shown: list[str], check: bool, timeout: float) -> Result:
        try:
            done = subprocess.run(  # noqa: S603 - argv list, validated names
                full, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ZfsCommandError(
                self.label, shown, -1, f"timed out after {timeout:.0f} s"
            ) from None
        result = Result(shown, done.returncode, done.stdout, done.stderr)
        if done.returncode == 255 and self.label != "local" and ssh_failed(done.stderr):
            # The connection failed, not the command: never mistaken for zfs's answer.
            raise ZfsCommandError(self.label, shown, done.returncode, done.stderr)
        if check and not result.ok:
            raise ZfsCommandError(self.label, shown, done.returncode, done.stderr)
        return result

    def zfs(self, args: Sequence[str], *, check: bool = True, timeout: float = DEFAULT_TIMEOUT):
        return self._run(self.zfs_argv(args), ["zfs", *args], check, timeout)

    def zpool(self, args: Sequence[str], *, check: bool = True, timeout: float = DEFAULT_TIMEOUT):
        return self._run(self.zpool_argv(args), ["zpool", *args], check, timeout)

    def close(self) -> None:
        """Release what the runner holds (an SSH master connection, a known_hosts file)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalRunner(Runner):
    """ZFS on this machine (the target of a pull replication when the worker runs there)."""

    def __init__(self, *, zfs_path: str = "/usr/sbin/zfs", zpool_path: str = "/usr/sbin/zpool"):
        self.zfs_path, self.zpool_path = zfs_path, zpool_path

    def command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """The known_hosts entry pinning ``host_key`` for ``host:port``."""
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {host_key}\n"


def host_key_validate(host_key: str) -> str:
    """``<type> <base64>`` (a comment after it is dropped)."""
    parts = (host_key or "").split()
    key = " ".join(parts[:2])
    if not _KEY_RE.match(key):
        raise ValueError("The host key must be '<type> <base64>', e.g. 'ssh-ed25519 AAAA…'.")
    return key


class SshRunner(Runner):
    """ZFS on a storage host, reached as ``user`` with ``key_path`` and the host key pinned.

    ``ssh_path``, ``key_path``, ``zfs_path`` and ``zpool_path`` come from the workers'
    settings (``backups_app.zfs.hosts.host_runner``), never from a host row.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int = 22,
        user: str,
        key_path: str | Path,
        host_key: str,
        zfs_path: str = "/usr/sbin/zfs",
        zpool_path: str = "/usr/sbin/zpool",
        ssh_path: str = "ssh",
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        multiplex: bool = True,
    ):
        if not _HOST_RE.match(host or ""):
            raise ValueError(f"{host!r} is not a host name or address.")
        if not _USER_RE.match(user or ""):
            raise ValueError(f"{user!r} is not a user name.")
        if not 0 < int(port) < 65536:
            raise ValueError(f"{port!r} is not a TCP port.")
        self.host, self.port, self.user = host, int(port), user
        self.key_path = str(key_path)
        self.host_key = host_key_validate(host_key)
        self.zfs_path, self.zpool_path = zfs_path, zpool_path
        self.ssh_path = ssh_path
        self.connect_timeout = connect_timeout
        self.multiplex = multiplex
        self.label = f"{user}@{host}:{port}"
        self._dir: Path | None = None

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            # Short path: the control socket's name must fit in a sun_path (108 bytes).
            # The pid names whose it is: a killed worker's folder can be told apart.
            self._dir = Path(tempfile.mkdtemp(prefix=f"cz-{os.getpid()}-", dir="/tmp"))
            (self._dir / "known_hosts").write_text(
                known_hosts_line(self.host, self.port, self.host_key)
            )
        return self._dir

    def ssh_argv(self) -> list[str]:
        """``ssh`` with the pinned key, nothing read from any user's SSH configuration."""
        argv = [
            self.ssh_path,
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.workdir / 'known_hosts'}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=2",
        ]
        if self.multiplex:
            argv += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={self.workdir / 'cm'}",
                "-o",
                "ControlPersist=60",
            ]
        return [*argv, "-p", str(self.port), "-i", self.key_path, "-l", self.user, self.host]

    def command(self, argv: Sequence[str]) -> list[str]:
        return [*self.ssh_argv(), "--", " ".join(shlex.quote(a) for a in argv)]

    def close(self) -> None:
        if self._dir is None:
            return
        if self.multiplex and (self._dir / "cm").exists():
            control = ["-o", f"ControlPath={self._dir / 'cm'}", "-O", "exit", self.host]
            subprocess.run(  # noqa: S603
                [self.ssh_path, "-F", "/dev/null", *control],
                capture_output=True,
                timeout=10,
                check=False,
            )
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
