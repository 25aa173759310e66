"""A real ZFS replication lab on this machine: zfs-fuse, two file-backed pools, a non-root
operator whose SSH key is restricted by a forced command, and a real sshd on loopback.

Used by the tests' session fixture and by ``bench/zfs_replication.py``. Needs root (pools,
a user, sshd) and Debian's ``zfs-fuse`` and ``openssh-server``, which ``.ci/run`` installs.
Everything it creates carries a random suffix and is removed by ``Lab.close``.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backups_app.zfs.runner import LocalRunner, SshRunner

ZFS = "/usr/sbin/zfs"
ZPOOL = "/usr/sbin/zpool"
SSHD = "/usr/sbin/sshd"
# The commands pull replication needs on the source (issue 7): the key allows no others.
REPLICATION_COMMANDS = ("send", "list", "get", "hold", "release", "holds")
# A snapshot operator also takes, prunes and mounts (README's delegation grants).
SNAPSHOT_COMMANDS = (*REPLICATION_COMMANDS, "snapshot", "destroy", "mount")

# The forced command: only /usr/sbin/zfs, only the subcommands given as arguments, only
# arguments made of ZFS name characters and option letters.
GATE = r"""#!/bin/bash
allowed=" $* "
read -r -a words <<< "$SSH_ORIGINAL_COMMAND"
if [ "${words[0]}" != "/usr/sbin/zfs" ] || [ "${#words[@]}" -lt 2 ]; then
    echo "zfs-gate: only /usr/sbin/zfs may run with this key" >&2
    exit 126
fi
case "$allowed" in
    *" ${words[1]} "*) ;;
    *) echo "zfs-gate: 'zfs ${words[1]}' is not permitted for this key" >&2; exit 126 ;;
esac
for word in "${words[@]}"; do
    if ! [[ "$word" =~ ^[A-Za-z0-9_.:/@#%+=,-]+$ ]]; then
        echo "zfs-gate: argument refused" >&2
        exit 126
    fi
done
exec /usr/sbin/zfs "${words[@]:1}"
"""


class LabUnavailable(RuntimeError):
    """zfs-fuse or sshd is missing, or this process is not root."""


def _run(*argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=check, **kwargs
    )


def zfs_fuse_ready() -> bool:
    return _run(ZPOOL, "list", "-H", check=False).returncode == 0


def ensure_zfs_fuse() -> None:
    """Start the zfs-fuse daemon when it is not running; open its socket to non-root users."""
    if os.geteuid() != 0:
        raise LabUnavailable("the ZFS lab needs root (pools, a user, sshd)")
    for tool in ("/usr/sbin/zfs-fuse", ZFS, ZPOOL, SSHD):
        if not os.access(tool, os.X_OK):
            raise LabUnavailable(f"{tool} is missing: install zfs-fuse and openssh-server")
    if not zfs_fuse_ready():
        # zfs-fuse silently refuses to start over the pid file of a daemon that died.
        pidfile = Path("/run/zfs-fuse.pid")
        if pidfile.exists() and not Path(f"/proc/{pidfile.read_text().strip()}").exists():
            pidfile.unlink()
        _run("/usr/sbin/zfs-fuse", "--pidfile", pidfile, check=False)
        deadline = time.monotonic() + 20
        while not zfs_fuse_ready():
            if time.monotonic() > deadline:
                raise LabUnavailable("the zfs-fuse daemon did not start")
            time.sleep(0.2)
    # zfs-fuse makes its socket root-only; the operator reaches it through zfs(8).
    os.chmod("/var/run/zfs", 0o755)  # noqa: S103 - the point: let the operator in
    os.chmod("/var/run/zfs/zfs_socket", 0o666)  # noqa: S103


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    root: Path
    source_pool: str
    target_pool: str
    user: str
    port: int = 0
    host_key: str = ""
    keys: dict[str, Path] = field(default_factory=dict)
    sshd: subprocess.Popen | None = None
    _cleanups: list = field(default_factory=list)
    _runners: list = field(default_factory=list)

    # --- Building ---------------------------------------------------------------------

    @classmethod
    def create(cls, *, pool_mib: int = 256) -> "Lab":
        ensure_zfs_fuse()
        suffix = uuid.uuid4().hex[:6]
        root = Path(tempfile.mkdtemp(prefix=f"czlab-{suffix}-", dir="/tmp"))
        root.chmod(0o755)
        lab = cls(
            root=root,
            source_pool=f"czsrc{suffix}",
            target_pool=f"cztgt{suffix}",
            user=f"czop{suffix}",
        )
        lab._cleanups.append(lambda: shutil.rmtree(root, ignore_errors=True))
        try:
            for pool in (lab.source_pool, lab.target_pool):
                lab._pool_create(pool, pool_mib)
            lab._user_create()
            lab._sshd_start()
        except BaseException:
            lab.close()
            raise
        return lab

    def _pool_create(self, pool: str, mib: int) -> None:
        image = self.root / f"{pool}.img"
        with image.open("wb") as handle:
            handle.truncate(mib * 1024 * 1024)
        self._cleanups.append(lambda: self._pool_destroy(pool))
        _run(ZPOOL, "create", "-f", "-m", self.root / "mnt" / pool, pool, image)
        if pool == self.target_pool:
            # A replication target is not mounted (OpenZFS receives with -u; zfs-fuse has
            # no -u): a mounted parent is modified by its children's mountpoints.
            _run(ZFS, "set", "mountpoint=none", pool)

    @staticmethod
    def _pool_destroy(pool: str) -> None:
        # A dataset still being unmounted makes the pool busy for a moment.
        for _ in range(20):
            result = _run(ZPOOL, "destroy", "-f", pool, check=False)
            if result.returncode == 0 or "no such pool" in result.stderr:
                return
            time.sleep(0.25)
        raise RuntimeError(f"could not destroy the lab pool {pool}: {result.stderr}")

    def _user_create(self) -> None:
        self._cleanups.append(lambda: _run("userdel", "-r", "-f", self.user, check=False))
        _run("useradd", "-m", "-s", "/bin/bash", self.user)
        # useradd leaves the password locked, and sshd then refuses even a key login.
        _run("usermod", "-p", "*", self.user)
        gate = self.root / "zfs-gate"
        gate.write_text(GATE)
        gate.chmod(0o755)
        home = Path(f"/home/{self.user}")
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        lines = []
        # "full": what replication needs; "nohold"/"norelease": the same without one;
        # "snapshot": a snapshot operator's.
        for name, allowed in (
            ("full", REPLICATION_COMMANDS),
            ("nohold", tuple(c for c in REPLICATION_COMMANDS if c != "hold")),
            ("norelease", tuple(c for c in REPLICATION_COMMANDS if c != "release")),
            ("snapshot", SNAPSHOT_COMMANDS),
        ):
            key = self.root / f"id_{name}"
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
            self.keys[name] = key
            public = key.with_suffix(".pub").read_text().strip()
            options = (
                f'command="{gate} {" ".join(allowed)}",no-pty,no-port-forwarding,'
                "no-agent-forwarding,no-X11-forwarding"
            )
            lines.append(f"{options} {public}\n")
        (home / ".ssh" / "authorized_keys").write_text("".join(lines))
        _run("chown", "-R", f"{self.user}:{self.user}", home / ".ssh")

    def _sshd_start(self) -> None:
        host_key = self.root / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key)
        self.host_key = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        self.port = free_port()
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"PidFile {self.root / 'sshd.pid'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PermitRootLogin no\nAllowUsers {self.user}\nX11Forwarding no\n"
            "AllowTcpForwarding no\nPrintMotd no\nMaxStartups 50\nMaxSessions 50\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.sshd = subprocess.Popen(  # noqa: S603
            [SSHD, "-D", "-f", str(config), "-E", str(self.root / "sshd.log")]
        )
        self._cleanups.append(self._sshd_stop)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.sshd.poll() is not None or time.monotonic() > deadline:
                    raise LabUnavailable(
                        f"sshd did not start: {(self.root / 'sshd.log').read_text()}"
                    ) from None
                time.sleep(0.1)

    def _sshd_stop(self) -> None:
        for runner in self._runners:
            runner.close()
        # Sessions still open are children of the listener: end them by their pids.
        if self.sshd is not None:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.sshd.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(stat.parent.name), signal.SIGTERM)
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()

    def close(self) -> None:
        """Undo everything, in reverse order, carrying on past a step that fails."""
        errors = []
        for runner in self._runners:
            runner.close()
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # noqa: BLE001 - reported below, after the rest
                errors.append(exc)
        if errors:
            raise RuntimeError(f"the ZFS lab was not fully removed: {errors}")

    # --- Using ----------------------------------------------------------------------

    def source_runner(self, key: str = "full", *, host_key: str | None = None) -> SshRunner:
        """The operator on the source pool's host, through its forced-command key."""
        runner = SshRunner(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            key_path=self.keys[key],
            host_key=host_key or self.host_key,
        )
        self._runners.append(runner)
        return runner

    def configure(self, settings, *, local_hosts=(), key: str = "full") -> None:
        """The workers' ZFS settings for this lab: its binaries, ``key`` as the private key
        and ``local_hosts`` as the storage hosts the workers run on."""
        settings.ZFS_BIN, settings.ZPOOL_BIN = ZFS, ZPOOL
        settings.ZFS_SSH_BIN = shutil.which("ssh") or "ssh"
        settings.ZFS_SSH_KEY_PATH = str(self.keys[key])
        settings.ZFS_LOCAL_HOSTS = frozenset(local_hosts)

    def target_runner(self) -> LocalRunner:
        return LocalRunner()

    def zfs(self, *args) -> str:
        """Run zfs as root on this machine (setting up and inspecting, not the code under test)."""
        return _run(ZFS, *args).stdout

    def dataset(self, pool: str, name: str | None = None) -> str:
        name = name or f"ds{uuid.uuid4().hex[:6]}"
        self.zfs("create", f"{pool}/{name}")
        return f"{pool}/{name}"

    def mount(self, dataset: str) -> str:
        """The dataset's mountpoint, giving it one (and mounting it) when it has none."""
        mountpoint = self.zfs("get", "-H", "-o", "value", "mountpoint", dataset).strip()
        if mountpoint in ("none", "-", "legacy"):
            mountpoint = str(self.root / "mnt" / dataset)
            self.zfs("set", f"mountpoint={mountpoint}", dataset)
        if self.zfs("get", "-H", "-o", "value", "mounted", dataset).strip() != "yes":
            self.zfs("mount", dataset)
        return mountpoint

    def write(self, dataset: str, filename: str, size: int = 64 * 1024) -> None:
        mountpoint = self.mount(dataset)
        Path(mountpoint, filename).write_bytes(os.urandom(size))

    def snapshot(self, dataset: str, short: str, *, data: int = 16 * 1024) -> str:
        if data:
            self.write(dataset, short.replace(":", "-"), data)
        self.zfs("snapshot", f"{dataset}@{short}")
        return f"{dataset}@{short}"

    def rename(self, old: str, new: str) -> None:
        """Rename as an operator would (zfs-fuse renames only an unmounted dataset)."""
        _run(ZFS, "unmount", old, check=False)  # a target may not be mounted at all
        for _ in range(10):  # zfs-fuse may call it busy for a moment after the unmount
            if _run(ZFS, "rename", old, new, check=False).returncode == 0:
                break
            time.sleep(0.5)
        _run(ZFS, "mount", new, check=False)

    def snapshots(self, dataset: str) -> list[str]:
        out = self.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dataset)
        return [
            line.split("@", 1)[1] for line in out.splitlines() if line.startswith(dataset + "@")
        ]

    def guid(self, snapshot: str) -> int:
        return int(self.zfs("get", "-H", "-p", "-o", "value", "guid", snapshot).strip())

    def userrefs(self, snapshot: str) -> int:
        return int(self.zfs("get", "-H", "-p", "-o", "value", "userrefs", snapshot).strip())
