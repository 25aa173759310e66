"""Staff API for cluster backups: scoped list, streamed and audited download, delete."""

import pytest
from django.urls import reverse

from backups_app.cluster_backups.models import ClusterBackup
from fleet_app.models import AuditEntry
from tests.backups_app.helpers import post_backup

pytestmark = pytest.mark.django_db


@pytest.fixture
def ours(client, system, other_system):
    post_backup(client, other_system, b"theirs")
    backup_id = post_backup(client, system, b"ours").json()["data"]["id"]
    return ClusterBackup.objects.get(pk=backup_id)


def test_the_list_is_scoped_to_the_callers_subtree(client, alice, ours):
    client.force_login(alice)
    rows = client.get(reverse("cluster-backup-list")).json()["results"]
    assert [row["id"] for row in rows] == [str(ours.pk)]
    assert rows[0]["system_key"] == ours.system.system_key


def test_download_is_streamed_and_audited(client, bob, ours):
    client.force_login(bob)
    response = client.get(reverse("cluster-backup-download", args=[ours.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"ours"
    assert AuditEntry.objects.filter(action="cluster_backup.download", actor=bob).exists()


def test_a_reader_cannot_delete_an_admin_can(client, alice, bob, ours):
    client.force_login(bob)
    assert client.delete(reverse("cluster-backup-detail", args=[ours.pk])).status_code == 403
    client.force_login(alice)
    assert client.delete(reverse("cluster-backup-detail", args=[ours.pk])).status_code == 204
    assert not ClusterBackup.objects.filter(pk=ours.pk).exists()
    assert AuditEntry.objects.filter(action="cluster_backup.delete", actor=alice).exists()


def test_an_outsider_does_not_see_it(client, charlie, ours):
    client.force_login(charlie)
    assert client.get(reverse("cluster-backup-detail", args=[ours.pk])).status_code == 404
