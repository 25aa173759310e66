"""ZFS pull replication benchmark: Cutover's pipeline beside the same pipeline by hand.

On real ZFS (zfs-fuse, as root; ``.ci/run`` installs it), with the tests' lab: two
file-backed pools, a non-root operator behind a forced-command key, sshd on loopback.
Each round adds 50 snapshots (``--size`` random bytes each) to a source dataset already
replicated to two targets, then brings both targets up to date:

- by hand: ``ssh … '/usr/sbin/zfs send -I @base @newest' | zfs receive target`` (one
  ssh connection, the same pinned host key and forced-command key);
- through Cutover: ``pipeline.replicate`` (list both sides, plan from the common snapshot
  matched by name and GUID, the same send | receive with bytes counted through the pipe,
  hold the new common snapshot on both sides and release the previous one), and
  ``preflight`` (pool and permission detection) as a separate figure;
- through the job, as a worker runs it (``--no-service`` to skip): a run row claimed in a
  scratch PostgreSQL database, preflight, the pipeline, the run and job rows written.

Each round starts without an SSH master connection, so every path pays one handshake.

The two run in alternating order; the script prints each round and the medians, next to
the target (Cutover ≤ 1.1× the hand pipeline's wall time). It never passes or fails.

Then the small tree (``--tree 50``, 0 to skip): a parent and 50 children of a few KiB,
replicated once by each, then each round adds one snapshot to every dataset and brings
three targets up to date, in rotating order:

- syncoid (Debian's ``sanoid`` package): ``syncoid --recursive --no-sync-snap
  --no-privilege-elevation op@source:tree target`` (its own ControlMaster; its key runs
  whatever syncoid asks, with ``/usr/sbin`` on the PATH);
- by hand: one ``ssh … zfs send -I | zfs receive`` per dataset, as an operator's loop;
- Cutover: the recursive job as a worker runs it (run row, preflight, one listing per side,
  sends pipelined over one SSH master, holds, per-dataset rows).

The goal is Cutover ≤ 1.0× syncoid's wall time.

    .venv/bin/python bench/zfs_replication.py [--rounds 5] [--snapshots 50] [--size 262144]
        [--tree 50] [--tree-rounds 3]
"""

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from common import DEFAULT_SERVER, ROOT, database_drop, database_recreate, django_setup

sys.path.insert(0, str(ROOT))

from backups_app.zfs.pipeline import Endpoint, preflight, replicate  # noqa: E402
from tests.backups_app.zfs.lab import Lab  # noqa: E402

TARGET_RATIO = 1.1
TREE_TARGET_RATIO = 1.0
DATABASE = "cutover_bench_zfs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--snapshots", type=int, default=50)
    parser.add_argument("--size", type=int, default=256 * 1024, help="bytes per snapshot")
    parser.add_argument("--no-service", dest="service", action="store_false")
    parser.add_argument("--tree", type=int, default=50, help="children of the small tree")
    parser.add_argument("--tree-rounds", type=int, default=3)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL for the job path")
    options = parser.parse_args()
    # zfs-fuse dies when a pool fills up: room for every copy twice over (files are sparse).
    copies = 3 if options.service else 2
    data = (options.rounds + 1) * options.snapshots * options.size
    pool_mib = max(256, int(data * copies * 2) // 2**20 + 128)
    print(
        f"ZFS pull replication benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {options.rounds} rounds of {options.snapshots} snapshots "
        f"of {options.size // 1024} KiB, pools of {pool_mib} MiB (zfs-fuse)"
    )
    lab = Lab.create(pool_mib=pool_mib)
    try:
        if options.service:
            database_recreate(options.server, DATABASE)
            os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{DATABASE}"
            # The workers' settings, as an operator sets them: the lab's key, the target local.
            os.environ["ZFS_SSH_KEY_PATH"] = str(lab.keys["full"])
            os.environ["ZFS_LOCAL_HOSTS"] = "target"
            django_setup()
            from django.core.management import call_command

            call_command("migrate", verbosity=0)
        run(lab, options)
        if options.tree and options.service:
            small_tree(lab, options)
    finally:
        lab.close()
        if options.service:
            database_drop(options.server, DATABASE)


def add_snapshots(lab: Lab, dataset: str, prefix: str, count: int, size: int) -> str:
    for i in range(count):
        lab.snapshot(dataset, f"{prefix}-{i:03d}", data=size)
    return f"{prefix}-{count - 1:03d}"


def hand_pipeline(lab: Lab, source: str, base: str, newest: str, target: str) -> float:
    runner = lab.source_runner()
    runner.multiplex = False  # one plain connection, as an operator would type it
    ssh = " ".join(shlex.quote(a) for a in runner.ssh_argv())
    command = (
        f"{ssh} {shlex.quote(f'/usr/sbin/zfs send -I {source}@{base} {source}@{newest}')}"
        f" | /usr/sbin/zfs receive {shlex.quote(target)}"
    )
    began = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.monotonic() - began


def run(lab: Lab, options) -> None:
    source = lab.dataset(lab.source_pool, "data")
    src = Endpoint(lab.source_runner(), source)
    tgt = Endpoint(lab.target_runner(), f"{lab.target_pool}/ours")
    by_hand = f"{lab.target_pool}/by-hand"
    base = add_snapshots(lab, source, "r0", 1, options.size)
    began = time.monotonic()
    assessment = preflight(src, tgt, user=lab.user)
    preflight_seconds = time.monotonic() - began
    print(
        f"  preflight (pools, permissions): {preflight_seconds * 1000:.0f} ms, "
        f"guarantee {assessment.guarantee}"
    )
    replicate(src, tgt, hold_tag="cutover_bench", assessment=assessment)
    first = f"/usr/sbin/zfs send {source}@{base} | /usr/sbin/zfs receive {by_hand}"
    subprocess.run(["bash", "-o", "pipefail", "-c", first], check=True)
    job = job_create(lab, source, base) if options.service else None
    print(
        f"  {'round':>5} {'bytes':>12} {'by hand':>9} {'Cutover':>9} {'ratio':>6} {'MB/s':>7}"
        + (f" {'as a job':>9} {'ratio':>6}" if job else "")
    )
    hands, cutovers, jobs = [], [], []
    for round_ in range(1, options.rounds + 1):
        newest = add_snapshots(lab, source, f"r{round_}", options.snapshots, options.size)
        lab.zfs("list", "-H", "-o", "name", source)  # let the writes settle equally
        outcome = None

        def through_cutover():
            nonlocal outcome
            src.runner.close()  # a cold SSH connection, as the hand pipeline has
            began = time.monotonic()
            outcome = replicate(src, tgt, hold_tag="cutover_bench", assessment=assessment)
            return time.monotonic() - began

        if round_ % 2:
            hand = hand_pipeline(lab, source, base, newest, by_hand)
            cutover = through_cutover()
        else:
            cutover = through_cutover()
            hand = hand_pipeline(lab, source, base, newest, by_hand)
        assert outcome.plan.kind == "incremental" and outcome.held == newest
        base = newest
        hands.append(hand)
        cutovers.append(cutover)
        line = (
            f"  {round_:>5} {outcome.bytes:>12,} {hand:>8.2f}s {cutover:>8.2f}s "
            f"{cutover / hand:>6.2f} {outcome.bytes / cutover / 1e6:>7.1f}"
        )
        if job is not None:
            as_job = job_run(job)
            jobs.append(as_job)
            line += f" {as_job:>8.2f}s {as_job / hand:>6.2f}"
        print(line)
    hand, cutover = statistics.median(hands), statistics.median(cutovers)
    print(
        f"  median: by hand {hand:.2f} s, Cutover {cutover:.2f} s → {cutover / hand:.2f}× "
        f"(target ≤ {TARGET_RATIO}×); with preflight each time "
        f"{(cutover + preflight_seconds) / hand:.2f}×"
    )
    if jobs:
        as_job = statistics.median(jobs)
        print(
            f"  median as a job (run row, preflight, pipeline): {as_job:.2f} s → "
            f"{as_job / hand:.2f}× the hand pipeline"
        )
    snapshots = lab.snapshots(f"{lab.target_pool}/ours")
    print(f"  target holds {len(snapshots)} snapshots; by hand {len(lab.snapshots(by_hand))}")


def job_create(lab: Lab, source: str, base: str):
    """Rows for the same pull as a job: the source over SSH, the target local."""
    from tests.factories import DatasetFactory, ReplicationJobFactory, StorageHostFactory

    remote = StorageHostFactory(
        name="source",
        address="127.0.0.1",
        port=lab.port,
        user=lab.user,
        host_key=lab.host_key,
    )
    # Named in ZFS_LOCAL_HOSTS: reached without SSH, so no connection fields.
    local = StorageHostFactory(name="target", address="", user="", host_key="")
    job = ReplicationJobFactory(
        name="bench",
        source=DatasetFactory(host=remote, name=source),
        target=DatasetFactory(host=local, name=f"{lab.target_pool}/as-job"),
    )
    job_run(job)  # the first run is the full one
    return job


def job_run(job) -> float:
    from backups_app.zfs import services, tasks

    began = time.monotonic()
    run = services.replication_run_start(job=job, enqueue=False)
    state = tasks.replication_run_execute(run.pk)
    seconds = time.monotonic() - began
    run.refresh_from_db()
    assert state == "succeeded", run.error
    return seconds


# --- The small tree ----------------------------------------------------------------------

SYNCOID = "/usr/sbin/syncoid"


# syncoid lists snapshots with ``zfs get -t snapshot``, which zfs-fuse lacks, and its
# fallback for that is broken over SSH in Debian 12's syncoid: the key's forced command
# drops ``-t snapshot`` and keeps the snapshot lines, which is what the flag would do.
SYNCOID_GATE = r"""#!/bin/bash
export PATH=/usr/sbin:/usr/bin:/bin
cmd="$SSH_ORIGINAL_COMMAND"
if [[ "$cmd" == *" -t snapshot "* ]]; then
    cmd="${cmd/ -t snapshot / }"
    eval "$cmd" | grep -F "@"
    exit "${PIPESTATUS[0]}"
fi
eval "$cmd"
"""


def syncoid_key(lab: Lab):
    """A key for syncoid: it runs ``zfs`` by name and probes for helpers, so its forced
    command runs what it asks with ``/usr/sbin`` on the PATH."""
    key = lab.root / "id_syncoid"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    gate = lab.root / "syncoid-gate"
    gate.write_text(SYNCOID_GATE)
    gate.chmod(0o755)
    public = key.with_suffix(".pub").read_text().strip()
    authorized = f"/home/{lab.user}/.ssh/authorized_keys"
    with open(authorized, "a") as handle:
        handle.write(f'command="{gate}",no-pty {public}\n')
    known = lab.root / "known_hosts_syncoid"
    known.write_text(f"[127.0.0.1]:{lab.port} {lab.host_key}\n")
    return key, known


def through_syncoid(lab: Lab, key, known, source: str, target: str) -> float:
    argv = [
        SYNCOID,
        "--recursive",
        "--no-sync-snap",
        "--no-privilege-elevation",
        "--quiet",
        f"--sshkey={key}",
        f"--sshport={lab.port}",
        f"--sshoption=UserKnownHostsFile={known}",
        "--sshoption=StrictHostKeyChecking=yes",
        f"{lab.user}@127.0.0.1:{source}",
        target,
    ]
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - began
    if done.returncode:
        raise RuntimeError(f"syncoid failed: {done.stderr[-2000:]}")
    return seconds


def by_hand_tree(lab: Lab, names: list[str], source: str, target: str, prev, new) -> float:
    runner = lab.source_runner()
    runner.multiplex = False
    ssh = " ".join(shlex.quote(a) for a in runner.ssh_argv())
    began = time.monotonic()
    for name in names:
        there = target + name[len(source) :]
        send = (
            f"/usr/sbin/zfs send {name}@{new}"
            if prev is None
            else (f"/usr/sbin/zfs send -I {name}@{prev} {name}@{new}")
        )
        command = f"{ssh} {shlex.quote(send)} | /usr/sbin/zfs receive {shlex.quote(there)}"
        subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.monotonic() - began


def small_tree(lab: Lab, options) -> None:
    from backups_app.zfs.models import ReplicatedDataset

    source = lab.dataset(lab.source_pool, "tree")
    names = [source] + [lab.dataset(lab.source_pool, f"tree/c{i:02d}") for i in range(options.tree)]
    for name in names:
        lab.snapshot(name, "t0", data=4096)
    key, known = syncoid_key(lab)
    job = tree_job(lab, source)
    theirs, hand = f"{lab.target_pool}/tree-syncoid", f"{lab.target_pool}/tree-hand"
    through_syncoid(lab, key, known, source, theirs)  # the full sends, not timed
    by_hand_tree(lab, names, source, hand, None, "t0")
    print(
        f"\nSmall tree: a parent and {options.tree} children, one snapshot of 4 KiB each "
        f"per round, {options.tree_rounds} rounds"
    )
    print(
        f"  {'round':>5} {'syncoid':>9} {'by hand':>9} {'Cutover':>9} {'/syncoid':>9} {'/hand':>6}"
    )
    rows = []
    for round_ in range(1, options.tree_rounds + 1):
        for name in names:
            lab.snapshot(name, f"t{round_}", data=4096)
        times = {}
        order = ["syncoid", "hand", "cutover"]
        order = order[round_ % 3 :] + order[: round_ % 3]
        for who in order:
            if who == "syncoid":
                times[who] = through_syncoid(lab, key, known, source, theirs)
            elif who == "hand":
                times[who] = by_hand_tree(lab, names, source, hand, f"t{round_ - 1}", f"t{round_}")
            else:
                times[who] = job_run(job)
        rows.append(times)
        print(
            f"  {round_:>5} {times['syncoid']:>8.2f}s {times['hand']:>8.2f}s "
            f"{times['cutover']:>8.2f}s {times['cutover'] / times['syncoid']:>9.2f} "
            f"{times['cutover'] / times['hand']:>6.2f}"
        )
    med = {w: statistics.median(r[w] for r in rows) for w in ("syncoid", "hand", "cutover")}
    print(
        f"  median: syncoid {med['syncoid']:.2f} s, by hand {med['hand']:.2f} s, Cutover "
        f"{med['cutover']:.2f} s → {med['cutover'] / med['syncoid']:.2f}× syncoid "
        f"(goal ≤ {TREE_TARGET_RATIO}×), {med['cutover'] / med['hand']:.2f}× by hand"
    )
    synced = ReplicatedDataset.objects.filter(job=job, state="ok").count()
    print(f"  Cutover's job: {synced} of {len(names)} datasets in sync")


def tree_job(lab: Lab, source: str):
    from backups_app.zfs.models import StorageHost
    from tests.factories import DatasetFactory, ReplicationJobFactory

    remote = StorageHost.objects.get(name="source")
    local = StorageHost.objects.get(name="target")
    job = ReplicationJobFactory(
        name="bench-tree",
        recursive=True,
        source=DatasetFactory(host=remote, name=source),
        target=DatasetFactory(host=local, name=f"{lab.target_pool}/tree-ours"),
    )
    job_run(job)  # the full sends
    return job


if __name__ == "__main__":
    main()
