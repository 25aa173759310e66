"""Staff side of cluster backups: scoped lists, per-system usage with the organization's
quota, streamed download and delete, both audited; the freshness dashboard."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from backups_app.cluster_backups.models import ClusterBackup
from fleet_app.models import AuditEntry, Quota
from tests.backups_app.helpers import payload, post_backup
from tests.factories import make_system

pytestmark = pytest.mark.django_db


@pytest.fixture
def backups(client, system, other_system):
    ours = post_backup(client, system, payload(3000), filename="ours.gpg").json()["data"]["id"]
    theirs = post_backup(client, other_system, b"theirs", filename="theirs.gpg").json()["data"]
    client.logout()
    return ClusterBackup.objects.get(pk=ours), ClusterBackup.objects.get(pk=theirs["id"])


def test_staff_see_only_the_backups_of_their_subtree(client, alice, backups):
    client.force_login(alice)
    page = client.get(reverse("admin:backups_app_clusterbackup_changelist")).content.decode()
    assert "ours.gpg" in page and "theirs.gpg" not in page


def test_the_per_system_list_shows_the_organization_quota_used(client, alice, system, backups):
    Quota.objects.filter(organization=system.organization).update(limit=6000)
    client.force_login(alice)
    page = client.get(reverse("admin:backups_app_systembackups_changelist")).content.decode()
    assert "cluster-a" in page and "cluster-b" not in page
    assert "2.9\xa0KB of 5.9\xa0KB (50%)" in page
    filtered = client.get(
        reverse("admin:backups_app_clusterbackup_changelist"),
        {"system__id__exact": system.pk},
    ).content.decode()
    assert "uses 2.9\xa0KB of 5.9\xa0KB" in filtered


def test_staff_download_is_streamed_and_audited(client, alice, backups):
    ours, _ = backups
    client.force_login(alice)
    response = client.get(reverse("admin:backups_app_clusterbackup_download", args=[ours.pk]))
    assert response.status_code == 200 and response.streaming
    assert b"".join(response.streaming_content) == payload(3000)
    assert response["Content-Disposition"] == 'attachment; filename="ours.gpg"'
    entry = AuditEntry.objects.get(action="cluster_backup.download")
    assert entry.actor == alice and entry.object_id == str(ours.pk)


def test_an_outsider_cannot_download(client, charlie, backups):
    ours, _ = backups
    client.force_login(charlie)
    response = client.get(reverse("admin:backups_app_clusterbackup_download", args=[ours.pk]))
    assert response.status_code == 404
    assert not AuditEntry.objects.filter(action="cluster_backup.download").exists()


def test_staff_delete_is_audited_and_removes_the_object(
    client, alice, backups, local_store, django_capture_on_commit_callbacks
):
    ours, theirs = backups
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:backups_app_clusterbackup_delete", args=[ours.pk]), {"post": "yes"}
        )
    assert response.status_code == 302
    assert list(ClusterBackup.objects.all()) == [theirs]
    assert local_store.keys() == [theirs.storage_key]
    entry = AuditEntry.objects.get(action="cluster_backup.delete")
    assert entry.actor == alice and entry.before["sha256"] == ours.sha256


def test_a_reader_cannot_delete(client, bob, backups):
    ours, _ = backups
    client.force_login(bob)
    response = client.post(
        reverse("admin:backups_app_clusterbackup_delete", args=[ours.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert ClusterBackup.objects.filter(pk=ours.pk).exists()


def test_the_dashboard_lists_systems_without_a_recent_backup(client, alice, customer, backups):
    ours, _ = backups
    ClusterBackup.objects.filter(pk=ours.pk).update(
        uploaded_at=timezone.now() - dt.timedelta(days=5)
    )
    make_system(customer, name="never-backed-up")
    fresh = make_system(customer, name="fresh-one")
    post_backup(client, fresh, b"new")
    client.force_login(alice)
    response = client.get(reverse("backup-dashboard"))
    assert response.status_code == 200
    counts = response.context["counts"]
    assert (counts["total"], counts["fresh"], counts["stale"], counts["never"]) == (3, 1, 1, 1)
    page = response.content.decode()
    assert 'id="stale-systems"' in page and "cluster-a" in page
    assert "never-backed-up" in page
    # Cutover's own services are for superusers only.
    assert response.context["services"] is None
