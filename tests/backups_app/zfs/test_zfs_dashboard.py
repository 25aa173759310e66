"""The replication dashboard, the Prometheus metrics and the admin's approval action."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from backups_app.zfs.models import (
    Dataset,
    DivergenceReport,
    ReplicationJob,
    ReplicationRun,
    SnapshotPolicy,
    StorageHost,
)
from fleet_app.models import AuditEntry, User


@pytest.fixture
def jobs(db):
    host = StorageHost.objects.create(name="off2")
    policy = SnapshotPolicy.objects.create(name="prod", hourly=48)
    now = timezone.now()
    source = Dataset.objects.create(
        host=host,
        name="zfs-hdd/off",
        policy=policy,
        newest_snapshot="autosnap_a_hourly",
        newest_snapshot_at=now - dt.timedelta(minutes=30),
        listed_at=now,
    )
    ok = ReplicationJob.objects.create(
        name="off-ok",
        source=source,
        target=Dataset.objects.create(host=host, name="r/a"),
        last_success_at=now,
        last_snapshot_at=now - dt.timedelta(hours=2),
        guarantee="incremental-with-holds",
    )
    ReplicationRun.objects.create(
        job=ok,
        source_dataset=source.name,
        target_dataset="r/a",
        state="succeeded",
        bytes=3 * 1024**2,
        finished_at=now,
    )
    diverged = ReplicationJob.objects.create(
        name="off-diverged", source=source, target=Dataset.objects.create(host=host, name="r/b")
    )
    report = DivergenceReport.objects.create(
        job=diverged,
        source_dataset=source.name,
        target_dataset="r/b",
        reason="the target has snapshots the source lacks",
        last_common="s1",
        fixes=[
            {
                "kind": "rollback",
                "target": "r/b",
                "snapshot": "r/b@s1",
                "destroys": [],
                "describe": "roll r/b back",
                "commands": ["zfs rollback -r r/b@s1"],
            }
        ],
    )
    return ok, diverged, report


@pytest.fixture
def root(db):
    return User.objects.create_superuser(email="root@example.com", password="x" * 12)


def test_the_dashboard_shows_jobs_lag_bytes_guarantee_and_divergences(client, root, jobs):
    ok, diverged, report = jobs
    client.force_login(root)
    page = client.get(reverse("zfs-dashboard"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-job="off-ok" data-state="OK"' in html
    assert 'data-job="off-diverged" data-state="CRIT"' in html
    assert "Incremental with holds" in html
    assert "3.0 MiB" in html
    assert ">90m<" in html  # lag: the source took its newest snapshot 90 min after
    assert "the target has snapshots the source lacks" in html
    assert 'data-dataset="off2:zfs-hdd/off" data-state="OK"' in html
    assert "cdn" not in html.lower()


def test_the_dashboard_is_for_staff_only(client, jobs):
    assert client.get(reverse("zfs-dashboard")).status_code == 302


def test_metrics_carry_the_same_states(client, jobs, metrics_auth):
    body = client.get("/metrics", headers=metrics_auth).content.decode()
    assert 'cutover_zfs_job_state{job="off-ok"} 0.0' in body
    assert 'cutover_zfs_job_state{job="off-diverged"} 2.0' in body
    assert 'cutover_zfs_job_lag_seconds{job="off-ok"} 5400' in body
    assert "cutover_zfs_divergences_open 1.0" in body
    assert 'cutover_zfs_dataset_state{dataset="off2:zfs-hdd/off"} 0.0' in body


def test_staff_approve_a_fix_in_the_admin_and_it_is_audited(client, root, jobs):
    _, _, report = jobs
    client.force_login(root)
    url = reverse("admin:backups_app_divergencereport_changelist")
    page = client.get(reverse("admin:backups_app_divergencereport_change", args=[report.pk]))
    assert "zfs rollback -r r/b@s1" in page.content.decode()
    asked = client.post(url, {"action": "approve_rollback", "_selected_action": [report.pk]})
    # First the confirmation: the report, the fix and its commands; nothing approved yet.
    assert "zfs rollback -r r/b@s1" in asked.content.decode()
    report.refresh_from_db()
    assert report.status == "open"
    client.post(
        url, {"action": "approve_rollback", "_selected_action": [report.pk], "confirmed": "yes"}
    )
    report.refresh_from_db()
    assert report.status in ("approved", "applying", "applied", "failed")
    assert report.approved_by == root and report.approved_fix == "rollback"
    assert AuditEntry.objects.filter(action="zfs.divergence.approve", actor=root).exists()


@pytest.mark.parametrize(
    "model",
    [
        "storagehost",
        "snapshotpolicy",
        "dataset",
        "replicationjob",
        "replicationrun",
        "snapshotrun",
        "divergencereport",
    ],
)
def test_every_zfs_admin_page_renders(client, root, jobs, model):
    client.force_login(root)
    assert client.get(reverse(f"admin:backups_app_{model}_changelist")).status_code == 200


def test_a_storage_host_is_added_with_its_pinned_key_and_audited(client, root):
    client.force_login(root)
    response = client.post(
        reverse("admin:backups_app_storagehost_add"),
        {
            "name": "off2",
            "address": "off2.example",
            "port": 22,
            "user": "ovh3operator",
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedKey",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert AuditEntry.objects.filter(action="storagehost.create").exists()
    bad = client.post(
        reverse("admin:backups_app_storagehost_add"),
        {
            "name": "off3",
            "address": "off3.example",
            "port": 22,
            "user": "op",
            "host_key": "not a key",
        },
    )
    assert bad.status_code == 200 and "host key must be" in bad.content.decode()
