"""The bundle admin pages: start an export, download it as one file, upload it, read the
plan, approve it."""

import io

import pytest
from django.urls import reverse

from migrations_app.models import BundleExport, BundleImport

pytestmark = pytest.mark.django_db(transaction=True)


def test_export_download_upload_plan_approve(fleet, trusted_self, celery_eager, admin_client):
    answer = admin_client.post(
        reverse("admin:migrations_app_bundleexport_add"),
        {"organizations": fleet["customer"].slug, "format": "tar", "chunk_size": "16KB"},
    )
    assert answer.status_code == 302
    export = BundleExport.objects.get()
    assert export.state == "succeeded", export.error
    fleet["mappings"][2].delete()  # what the import must bring back
    download = admin_client.post(
        reverse("admin:migrations_app_bundleexport_changelist"),
        {"action": "download", "_selected_action": [export.pk], "index": 0},
    )
    assert download.status_code == 200
    data = b"".join(download.streaming_content)
    upload = io.BytesIO(data)
    upload.name = "bundle.tar"
    answer = admin_client.post(
        reverse("admin:migrations_app_bundleimport_add"),
        {"bundle": upload, "map_org": "", "on_conflict": "skip"},
    )
    assert answer.status_code == 302
    run = BundleImport.objects.get()
    assert run.state == "succeeded", run.error
    assert run.plan["kinds"]["mappings"]["create"] == 1
    page = admin_client.get(reverse("admin:migrations_app_bundleimport_change", args=[run.pk]))
    assert b"create" in page.content
    admin_client.post(
        reverse("admin:migrations_app_bundleimport_changelist"),
        {"action": "approve", "_selected_action": [run.pk], "index": 0},
    )
    run.refresh_from_db()
    assert run.applied_at is not None and run.written >= 1
