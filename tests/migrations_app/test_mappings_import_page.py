"""The "Import mappings" page: upload an export, see its plan (a job with progress), confirm
to import it (another job), or discard it; a wrong upload is a form error, and tenant
staff reach only their own subtree's imports."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from fleet_app.models import AuditEntry
from migrations_app.models import LegacyMapping, MappingImportRun
from tests.conftest import rows_containing, wait_for
from tests.factories import UserFactory

PAGE = reverse("mappings-import")
TOKEN = "legacy-token-in-clear-0123456789"


def _run_url(run) -> str:
    return reverse("mappings-import-run", kwargs={"run_id": run.pk})


def _csv(*rows: str) -> bytes:
    return ("legacy_system_id,legacy_token,name,organization\n" + "\n".join(rows) + "\n").encode()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def _upload(client, content: bytes, name: str = "mappings.csv", **fields):
    return client.post(PAGE, {"file": SimpleUploadedFile(name, content), **fields})


def _stored(media) -> list:
    folder = media / "imports" / "mappings"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_an_upload_shows_its_plan_and_writes_nothing_until_confirmed(
    client, alice, customer, other_customer, media, celery_eager, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    content = _csv(
        f"L-1,{TOKEN}1,edge-one,{customer.pk}",
        f"L-2,{TOKEN}2,edge-two,{customer.pk}",
        f"L-3,{TOKEN}3,intruder,{other_customer.pk}",
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(client, content)

    plan = MappingImportRun.objects.get()
    assert response.status_code == 302 and response["Location"] == _run_url(plan)
    page = client.get(_run_url(plan))
    text = page.content.decode()
    assert plan.mode == "plan"
    assert page.context["run"].state == "succeeded"
    assert page.context["report"]["created"] == 2 and page.context["report"]["refused"] == 1
    assert "L-1 → edge-one (Customer A)" in text and "L-2 → edge-two" in text
    assert "line 4" in text  # the refused row, named by its line
    assert "Import 2 mappings" in text
    assert LegacyMapping.objects.count() == 0
    # The upload is kept sealed: its tokens are nowhere in clear, on disk or in a row.
    [stored] = _stored(media)
    assert TOKEN.encode() not in stored.read_bytes()
    assert rows_containing(TOKEN) == []

    with django_capture_on_commit_callbacks(execute=True):
        applied = client.post(_run_url(plan), {"do": "apply"})

    run = MappingImportRun.objects.get(mode="apply")
    assert applied.status_code == 302 and applied["Location"] == _run_url(run)
    run.refresh_from_db()
    assert run.state == "partially_failed" and run.plan == plan
    assert run.report["created"] == 2 and run.report["refused"] == 1
    assert set(LegacyMapping.objects.values_list("legacy_system_id", flat=True)) == {"L-1", "L-2"}
    assert _stored(media) == []
    assert AuditEntry.objects.filter(action="mapping_import.apply", actor=alice).exists()
    # Confirming the same plan again imports nothing more.
    again = client.post(_run_url(plan), {"do": "apply"})
    assert again.status_code == 409
    assert MappingImportRun.objects.filter(mode="apply").count() == 1


def test_a_discarded_upload_is_gone_and_cannot_be_imported(
    client, alice, customer, media, celery_eager, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        _upload(client, _csv(f"L-1,{TOKEN},edge,{customer.pk}"))
    plan = MappingImportRun.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_run_url(plan), {"do": "discard"})

    assert response.status_code == 302 and response["Location"] == PAGE
    assert _stored(media) == []
    refused = client.post(_run_url(plan), {"do": "apply"})
    assert refused.status_code == 400
    assert "discarded" in refused.content.decode()
    assert LegacyMapping.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("mappings.txt", b"legacy_system_id,legacy_token\nL,t\n", "must end in"),
        ("mappings.csv", b"", "The submitted file is empty"),
        ("mappings.csv", b"legacy_system_id,name\nL-1,x\n", "lacks legacy_token"),
        ("mappings.csv", b"\x00\xff\xfe\x00binary", "header"),
        ("mappings.json", b'{"proxy_mappings": [{"legacy_system_id": ', "not valid JSON"),
        ("mappings.json", json.dumps({"other": []}).encode(), "JSON list of mappings"),
        ("mappings.csv", b"legacy_system_id,legacy_token\n" + b"L,t\n" * 80, "larger than"),
    ],
)
def test_a_wrong_upload_is_a_form_error_and_leaves_nothing(
    client, alice, media, settings, name, content, says
):
    settings.MAPPINGS_UPLOAD_MAX_BYTES = 200
    client.force_login(alice)

    response = _upload(client, content, name)

    assert response.status_code == 400
    assert says in response.content.decode()
    assert 'class="errorlist"' in response.content.decode()
    assert not MappingImportRun.objects.exists()
    assert _stored(media) == []


def test_tenant_staff_reach_only_their_own_subtree(
    client, alice, charlie, customer, other_customer, media, celery_eager,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        _upload(client, _csv(f"L-1,{TOKEN},edge,{customer.pk}"))
    plan = MappingImportRun.objects.get()
    client.force_login(charlie)

    page = client.get(PAGE)
    assert plan.file_name not in page.content.decode()
    choices = {str(o) for o in page.context["form"].fields["organization"].queryset}
    assert choices == {str(other_customer)}
    assert client.get(_run_url(plan)).status_code == 404
    assert client.post(_run_url(plan), {"do": "apply"}).status_code == 404
    # Nor by naming the other tenant's organization as the default.
    forged = _upload(client, _csv(f"L-9,{TOKEN}9,x,"), organization=customer.pk)
    assert forged.status_code == 400
    assert MappingImportRun.objects.count() == 1
    assert LegacyMapping.objects.count() == 0


def test_an_upload_left_unconfirmed_is_deleted_once_too_old(
    client, alice, customer, media, celery_eager, django_capture_on_commit_callbacks
):
    import datetime as dt

    from django.utils import timezone

    from migrations_app.cutover import imports

    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        _upload(client, _csv(f"L-1,{TOKEN},edge,{customer.pk}"))
    plan = MappingImportRun.objects.get()
    assert imports.mapping_uploads_expire() == 0 and len(_stored(media)) == 1

    later = timezone.now() + dt.timedelta(hours=25)
    assert imports.mapping_uploads_expire(now=later) == 1

    assert _stored(media) == []
    plan.refresh_from_db()
    assert plan.stored_name == "" and plan.phase == "expired"
    assert client.post(_run_url(plan), {"do": "apply"}).status_code == 400


def test_the_pages_run_a_bounded_number_of_queries(
    client, alice, customer, media, celery_eager, django_capture_on_commit_callbacks,
    django_assert_max_num_queries,
):  # fmt: skip
    client.force_login(alice)
    for n in range(5):
        with django_capture_on_commit_callbacks(execute=True):
            _upload(client, _csv(f"L-{n},{TOKEN}{n},edge-{n},{customer.pk}"))
    plan = MappingImportRun.objects.first()

    # Session, user, persona, organization (scope), the organization choices, the runs.
    with django_assert_max_num_queries(10):
        assert client.get(PAGE).status_code == 200
    # Session, user, persona, organization, the run, its confirmed import.
    with django_assert_max_num_queries(10):
        assert client.get(_run_url(plan)).status_code == 200


@pytest.mark.parametrize("role", ["reader", "support"])
def test_staff_without_the_right_are_refused_the_page(client, customer, role):
    client.force_login(UserFactory(organization=customer, roles=[role]))

    assert client.get(PAGE).status_code == 403
    assert _upload(client, _csv("L-1,t,x,")).status_code == 403
    assert not MappingImportRun.objects.exists()


def test_the_plan_and_the_import_run_in_a_real_worker(customer, celery_worker_process):
    from migrations_app.cutover import imports

    root = UserFactory(is_superuser=True, is_staff=True, organization=None)
    rows = [f"W-{n},{TOKEN}{n},worker-{n},{customer.pk}" for n in range(30)]

    plan = imports.mapping_import_upload(
        actor=root,
        upload=SimpleUploadedFile("mappings.csv", _csv(*rows)),
        queue=celery_worker_process,
    )
    assert wait_for(lambda: MappingImportRun.objects.get(pk=plan.pk).is_finished)
    plan.refresh_from_db()
    assert plan.state == "succeeded", plan.error
    assert plan.report["created"] == 30 and plan.done == plan.total == plan.size
    assert LegacyMapping.objects.count() == 0
    run = imports.mapping_import_apply_start(actor=root, plan=plan, queue=celery_worker_process)
    assert wait_for(lambda: MappingImportRun.objects.get(pk=run.pk).is_finished)

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert LegacyMapping.objects.filter(legacy_system_id__startswith="W-").count() == 30
