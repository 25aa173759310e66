"""An unreachable storage host answers within the configured timeout with its cause in
words (never a long hang with a misleading error), on the lab's real ssh client."""

import time

from backups_app.zfs import services, tasks
from backups_app.zfs.models import StorageHost
from fleet_app.runs import RunState

from .lab import free_port


def run_job(rows):
    run = services.replication_run_start(job=rows.job, enqueue=False)
    tasks.replication_run_execute(run.pk)
    run.refresh_from_db()
    return run


def test_a_closed_port_is_named_as_such_at_once(zfs_rows):
    StorageHost.objects.filter(pk=zfs_rows.source_host.pk).update(port=free_port())
    began = time.monotonic()
    run = run_job(zfs_rows)
    assert time.monotonic() - began < 10
    assert run.state == RunState.FAILED
    assert "nothing accepts SSH connections on that port (connection refused)" in run.error


def test_a_host_that_never_answers_fails_within_the_timeout(zfs_rows, settings):
    settings.ZFS_SSH_CONNECT_TIMEOUT = 2
    # TEST-NET-1 (RFC 5737): never routed, so the connection times out (or has no route).
    StorageHost.objects.filter(pk=zfs_rows.source_host.pk).update(address="192.0.2.1")
    began = time.monotonic()
    run = run_job(zfs_rows)
    assert time.monotonic() - began < 2 + 8
    assert run.state == RunState.FAILED
    assert any(
        words in run.error
        for words in (
            "the host did not answer in time",
            "there is no network route to the host",
            "the host's network is unreachable",
            "nothing accepts SSH connections",  # where a firewall rejects rather than drops
        )
    ), run.error
