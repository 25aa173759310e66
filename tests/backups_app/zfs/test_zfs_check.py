"""``zfs_check``: Nagios-style lines and exit codes 0/1/2 like sanoid --monitor-snapshots,
the same states as the Prometheus metrics and the dashboard."""

import datetime as dt

import pytest
from django.core.management import call_command
from django.utils import timezone

from backups_app.zfs.models import (
    Dataset,
    DivergenceReport,
    ReplicationJob,
    SnapshotPolicy,
    StorageHost,
)


@pytest.fixture
def dataset(db):
    host = StorageHost.objects.create(name="off2")
    policy = SnapshotPolicy.objects.create(name="sanoid-production", hourly=48, daily=30)
    return Dataset.objects.create(host=host, name="zfs-hdd/off", policy=policy)


def check(capsys):
    with pytest.raises(SystemExit) as exit_:
        call_command("zfs_check")
    return exit_.value.code, capsys.readouterr().out.splitlines()


def seen(dataset, minutes_ago):
    Dataset.objects.filter(pk=dataset.pk).update(
        newest_snapshot="autosnap_x_hourly",
        newest_snapshot_at=timezone.now() - dt.timedelta(minutes=minutes_ago),
        listed_at=timezone.now(),
    )


def test_ok_when_snapshots_are_fresh(dataset, capsys):
    seen(dataset, 20)
    code, lines = check(capsys)
    assert code == 0
    assert lines == ["OK: ZFS all 1 checks fine"]


def test_warn_past_the_warn_threshold(dataset, capsys):
    seen(dataset, 120)  # hourly: warn 90 min, crit 360 min (sanoid's defaults)
    code, lines = check(capsys)
    assert code == 1
    assert lines[0] == "WARN: ZFS 0 CRIT, 1 WARN, 0 OK"
    assert lines[1].startswith("WARN: dataset off2:zfs-hdd/off: newest snapshot")
    assert "(warn 90m, crit 6.0h)" in lines[1]


def test_crit_past_the_crit_threshold_or_never_snapshotted(dataset, capsys):
    seen(dataset, 400)
    assert check(capsys)[0] == 2
    Dataset.objects.filter(pk=dataset.pk).update(newest_snapshot_at=None)
    code, lines = check(capsys)
    assert code == 2 and "no snapshot" in lines[1]


def test_a_refused_or_diverged_job_is_critical(dataset, capsys):
    seen(dataset, 5)
    target = Dataset.objects.create(host=dataset.host, name="rpool/off")
    job = ReplicationJob.objects.create(
        name="off-to-ovh3", source=dataset, target=target, last_success_at=timezone.now()
    )
    assert check(capsys)[0] == 0
    report = DivergenceReport.objects.create(
        job=job, source_dataset=dataset.name, target_dataset=target.name, reason="x"
    )
    code, lines = check(capsys)
    assert code == 2
    assert f"CRIT: job off-to-ovh3: diverged, report {report.pk} awaits approval" in lines
    report.status = "dismissed"
    report.save()
    ReplicationJob.objects.filter(pk=job.pk).update(
        refusal="user op on off2 lacks the 'hold' permission"
    )
    code, lines = check(capsys)
    assert code == 2 and "refused: user op on off2 lacks the 'hold' permission" in lines[1]


def test_a_late_job_warns_then_goes_critical(dataset, capsys):
    seen(dataset, 5)
    target = Dataset.objects.create(host=dataset.host, name="rpool/off")
    job = ReplicationJob.objects.create(
        name="late",
        source=dataset,
        target=target,
        every_minutes=60,
        last_success_at=timezone.now() - dt.timedelta(hours=3),
    )
    assert check(capsys)[0] == 1
    ReplicationJob.objects.filter(pk=job.pk).update(
        last_success_at=timezone.now() - dt.timedelta(hours=6)
    )
    assert check(capsys)[0] == 2


def test_no_checks_is_ok(db, capsys):
    code, lines = check(capsys)
    assert code == 0 and "no dataset" in lines[0]
