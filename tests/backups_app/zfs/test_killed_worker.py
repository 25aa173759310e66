"""A replication run whose Celery worker is SIGKILLed mid-transfer leaves the job
re-runnable: the row stays ``running`` (a dead worker writes nothing), ZFS discards the
interrupted receive, and the next start reaps the lost run and completes."""

import os
import shutil
import signal
import time
from pathlib import Path

from backups_app.zfs import services, tasks
from backups_app.zfs.models import ReplicationRun
from fleet_app.runs import RunState
from tests.conftest import wait_for


def _worker_pid(queue: str) -> int:
    """The worker the fixture started (found by its queue name among our processes)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if queue.encode() in argv and b"worker" in argv:
            return int(cmdline.parent.name)
    raise LookupError(queue)


def test_a_killed_worker_leaves_the_job_re_runnable(zfs_rows, celery_worker_process, settings):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "big", data=128 * 1024 * 1024)  # seconds to send
    run = services.replication_run_start(job=rows.job, enqueue=False)
    tasks.replication_run_execute.apply_async(args=[run.pk], queue=celery_worker_process)

    pid = _worker_pid(celery_worker_process)
    deadline = time.monotonic() + 60
    while ReplicationRun.objects.get(pk=run.pk).phase != "sending":
        assert time.monotonic() < deadline, "the worker never started sending"
        time.sleep(0.02)
    time.sleep(0.1)  # the listing is done and the stream flows (it takes seconds)
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    for left in Path("/tmp").glob(f"cz-{pid}-*"):  # noqa: S108 - the dead worker's folder
        shutil.rmtree(left, ignore_errors=True)
    run.refresh_from_db()
    assert run.state == RunState.RUNNING  # the dead worker could not say otherwise
    # The interrupted receive left nothing behind on the target (zfs-fuse on a busy machine
    # can take a while to end the orphaned receive and drop its partial dataset).
    assert wait_for(
        lambda: rows.target.name not in lab.zfs("list", "-H", "-o", "name", "-r", lab.target_pool),
        timeout=90,
    )

    settings.ZFS_RUN_STALE_SECONDS = 1
    time.sleep(1.5)
    again = services.replication_run_start(job=rows.job, enqueue=False)
    assert tasks.replication_run_execute(again.pk) == RunState.SUCCEEDED
    run.refresh_from_db()
    assert run.state == RunState.FAILED and run.phase == "lost"
    again.refresh_from_db()
    assert again.plan_kind == "full" and again.bytes > 64 * 1024 * 1024
    assert lab.snapshots(rows.target.name) == ["big"]
    assert (
        ReplicationRun.objects.filter(job=rows.job, state__in=["pending", "running"]).count() == 0
    )
