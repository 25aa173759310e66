"""Targets and holds on real ZFS (issue failures 5 and 8): overlapping targets refused
when a job is saved; holds listed per dataset with who placed them and why, abandoned ones
released from the admin (audited); a dead worker's run seen within a minute; ``release``
named as a pull operator's permission; a rolled-back target reported as such."""

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from backups_app.zfs import holds, selectors, services, tasks
from backups_app.zfs.models import Dataset, DivergenceReport, ReplicationJob, ReplicationRun
from fleet_app.errors import Conflict
from fleet_app.models import AuditEntry, User
from fleet_app.runs import RunState, run_claim


def run_job(rows, **kw):
    run = services.replication_run_start(job=rows.job, enqueue=False, **kw)
    tasks.replication_run_execute(run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def root(db):
    return User.objects.create_superuser(email="root@example.com", password="x" * 12)


def test_a_job_whose_target_overlaps_another_is_refused_when_saved(zfs_rows, root, client):
    """Failure 5."""
    rows = zfs_rows
    rows.job.recursive = True
    rows.job.save(update_fields=["recursive"])
    inside = Dataset.objects.create(host=rows.target_host, name=f"{rows.target.name}/child")
    other_source = Dataset.objects.create(
        host=rows.source_host, name=rows.lab.dataset(rows.lab.source_pool)
    )
    clash = ReplicationJob(name="second", source=other_source, target=inside)
    with pytest.raises(ValidationError, match=f"overlaps the target of job {rows.job.name}"):
        clash.full_clean()
    same = ReplicationJob(name="third", source=other_source, target=rows.target)
    with pytest.raises(ValidationError, match="take turns"):
        same.full_clean()

    client.force_login(root)
    response = client.post(
        reverse("admin:backups_app_replicationjob_add"),
        {
            "name": "second",
            "source": other_source.pk,
            "target": inside.pk,
            "every_minutes": 60,
            "enabled": "on",
            "next_run_at_0": "2026-01-01",
            "next_run_at_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "overlaps the target of job" in response.content.decode()
    assert not ReplicationJob.objects.filter(name="second").exists()
    # A sibling path is no overlap.
    sibling = Dataset.objects.create(host=rows.target_host, name=f"{rows.target.name}-other")
    ReplicationJob(name="fourth", source=other_source, target=sibling).full_clean()


def test_holds_are_listed_with_who_and_why_and_abandoned_ones_released(zfs_rows, root, client):
    """Failure 8: the hold left on a dataset moved aside blocks destroy until released."""
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    assert run_job(rows).state == RunState.SUCCEEDED
    lab.snapshot(rows.target.name, "made-on-target", data=0)
    assert run_job(rows).phase == "diverged"
    report = DivergenceReport.objects.get(job=rows.job)
    services.divergence_approve(report=report, fix="rename_aside", actor=root, enqueue=False)
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)
    rerun = ReplicationRun.objects.get(job=rows.job, state=RunState.PENDING)
    assert tasks.replication_run_execute(rerun.pk) == RunState.SUCCEEDED
    aside_name = report.fix("rename_aside")["aside"]
    aside = Dataset.objects.create(host=rows.target_host, name=aside_name)
    assert lab.userrefs(f"{aside_name}@s1") == 1

    (hold,) = holds.dataset_holds(dataset=aside)
    assert (hold.snapshot, hold.tag) == (f"{aside_name}@s1", rows.job.hold_tag)
    assert hold.who == f"job {rows.job.name}" and hold.why.startswith("abandoned")
    (live,) = holds.dataset_holds(dataset=rows.source)
    assert live.live and live.why.startswith("live")
    with pytest.raises(Conflict, match="disable the job"):
        holds.hold_release(dataset=rows.source, snapshot=live.snapshot, tag=live.tag, actor=root)

    client.force_login(root)
    url = reverse("admin:backups_app_dataset_changelist")
    page = client.post(url, {"action": "release_holds", "_selected_action": [aside.pk]})
    assert page.status_code == 200
    assert "abandoned" in page.content.decode() and rows.job.hold_tag in page.content.decode()
    done = client.post(
        url,
        {
            "action": "release_holds",
            "_selected_action": [aside.pk],
            "post": "yes",
            "hold": [f"{aside.pk}|{hold.key}"],
        },
    )
    assert done.status_code == 302
    assert lab.userrefs(f"{aside_name}@s1") == 0
    entry = AuditEntry.objects.get(action="zfs.hold.release")
    assert entry.actor == root and entry.after["tag"] == rows.job.hold_tag
    lab.zfs("destroy", "-r", aside_name)  # no longer blocked


def test_a_run_whose_worker_died_is_seen_within_a_minute(zfs_rows, settings):
    """Failure 8: no ten-minute silence; the tick reaps it and the row says why."""
    rows, lab = zfs_rows, zfs_rows.lab
    assert settings.ZFS_RUN_STALE_SECONDS == 60
    lab.snapshot(rows.source.name, "s1")
    dead = services.replication_run_start(job=rows.job, enqueue=False)
    assert run_claim(dead)
    ReplicationRun.objects.filter(pk=dead.pk).update(
        updated_at=timezone.now() - dt.timedelta(seconds=70)
    )
    (row,) = [r for r in selectors.job_rows() if r["job"].pk == rows.job.pk]
    assert row["state"] == selectors.WARN and "interrupted: its worker stopped" in row["message"]

    services.zfs_tick()

    dead.refresh_from_db()
    assert dead.state == RunState.FAILED and dead.phase == "lost"
    assert dead.error.startswith("Interrupted: the worker running this stopped")
    # The same tick started the due job afresh.
    again = ReplicationRun.objects.get(job=rows.job, state=RunState.PENDING)
    assert tasks.replication_run_execute(again.pk) == RunState.SUCCEEDED


def test_a_pull_operator_without_release_is_refused_naming_it(zfs_rows, settings):
    rows, lab = zfs_rows, zfs_rows.lab
    settings.ZFS_SSH_KEY_PATH = str(lab.keys["norelease"])
    lab.snapshot(rows.source.name, "s1")
    run = run_job(rows)
    assert run.phase == "refused"
    assert "lacks the 'release' permission" in run.error
    assert "release the previous common snapshot's hold" in run.error


def test_a_target_rolled_back_is_its_own_report_and_goes_on_from_common(zfs_rows, alice):
    rows, lab = zfs_rows, zfs_rows.lab
    lab.snapshot(rows.source.name, "s1")
    lab.snapshot(rows.source.name, "s2")
    assert run_job(rows).state == RunState.SUCCEEDED
    lab.zfs("release", rows.job.hold_tag, f"{rows.target.name}@s2")
    lab.zfs("rollback", "-r", f"{rows.target.name}@s1")
    lab.snapshot(rows.source.name, "s3")

    run = run_job(rows)

    assert run.phase == "diverged" and run.bytes == 0
    report = DivergenceReport.objects.get(job=rows.job)
    assert report.kind == "target_rolled_back"
    assert "rolled back to s1" in report.reason and "s2" in report.reason
    assert [f["kind"] for f in report.fixes] == ["resume_from_common", "rename_aside"]
    services.divergence_approve(report=report, fix="resume_from_common", actor=alice, enqueue=False)
    services.divergence_fix_apply(report_id=report.pk, enqueue=False)
    rerun = ReplicationRun.objects.get(job=rows.job, state=RunState.PENDING)
    assert tasks.replication_run_execute(rerun.pk) == RunState.SUCCEEDED
    assert lab.snapshots(rows.target.name) == ["s1", "s2", "s3"]
    assert lab.userrefs(f"{rows.source.name}@s2") == 0  # the lost base's hold released
    assert lab.userrefs(f"{rows.source.name}@s3") == 1
