"""Quotas: the model's constraints and defaults, ``manage.py quotas --verify/--sync/
--reset-usage``, and the same work as Celery jobs with run rows."""

import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from fleet_app import quotas, services
from fleet_app.models import AuditEntry, Quota
from migrations_app.accounts import quotas as account_quotas
from migrations_app.models import QuotaRun
from tests.conftest import wait_for
from tests.factories import UserFactory
from tests.migrations_app.accounts_fixtures import make_account

pytestmark = pytest.mark.django_db
LONG_AGO = timezone.now() - dt.timedelta(days=30)


def run_command(*args) -> str:
    out = io.StringIO()
    call_command("quotas", *args, stdout=out)
    return out.getvalue()


def systems(organization, n, *, by=None, deleted=0):
    made = [
        services.system_create(actor=by, organization=organization, name=f"s{i}").system
        for i in range(n + deleted)
    ]
    for system in made[:deleted]:
        services.system_delete(actor=None, system=system)
    return made


@pytest.fixture
def fleet(customer, other_customer, distributor):
    """customer: 2 systems (+1 deleted), stored 5 → differs; other_customer: 1 system,
    stored 1 → fine; distributor: 1 system, no row → differs; ann made 2 systems and has no
    row → differs; a stored backup usage with no backups → differs."""
    ann = make_account("ann@example.com")
    systems(customer, 2, by=ann, deleted=1)
    systems(other_customer, 1)
    systems(distributor, 1)
    Quota.objects.create(organization=customer, resource="systems", usage=5, limit=10)
    Quota.objects.create(organization=other_customer, resource="systems", usage=1)
    Quota.objects.create(organization=other_customer, resource="backup_bytes", usage=4096)
    Quota.objects.update(updated_at=LONG_AGO)
    return {"ann": ann}


# --- Model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("holders", ["both", "neither"])
def test_a_quota_belongs_to_an_organization_or_a_user(customer, holders):
    user = make_account("ann@example.com") if holders == "both" else None
    organization = customer if holders == "both" else None

    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(organization=organization, user=user, resource="systems")


def test_one_quota_per_holder_and_resource(customer):
    user = make_account("ann@example.com")
    Quota.objects.create(organization=customer, resource="systems")
    Quota.objects.create(user=user, resource="systems")
    Quota.objects.create(organization=customer, resource="backup_bytes")

    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(organization=customer, resource="systems")
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(user=user, resource="systems")


def test_a_quota_without_a_limit_has_the_default_from_settings(customer, settings):
    settings.FLEET_QUOTA_DEFAULTS = {"systems": 12, "backup_bytes": 34}

    assert Quota(organization=customer, resource="systems").effective_limit == 12
    assert Quota(organization=customer, resource="systems", limit=3).effective_limit == 3


def test_the_resources_services_report_have_a_usage_source():
    assert set(quotas.USAGE_SOURCES["systems"]) == {"organization", "user"}
    assert set(quotas.USAGE_SOURCES["backup_bytes"]) == {"organization"}
    # The legacy platform's resources are reported by no service here (yet).
    assert not any(
        resource.startswith(("cyclades.", "pithos+.")) for resource in quotas.USAGE_SOURCES
    )


# --- Verify --------------------------------------------------------------------------------


def test_verify_lists_every_account_whose_stored_usage_differs(
    fleet, customer, distributor, other_customer, django_assert_num_queries
):
    # The stored usages; one grouped query per real-usage source (systems per organization
    # and per creator, backup bytes per organization once backups_app registered its
    # source); the names of the organizations and of the users listed.
    sources = sum(len(per_scope) for per_scope in quotas.USAGE_SOURCES.values())
    assert sources >= 2
    with django_assert_num_queries(1 + sources + 2):
        found = account_quotas.quotas_verify()

    assert {(d.scope, d.account_id, d.resource, d.stored, d.real) for d in found} == {
        ("organization", customer.pk, "systems", 5, 2),
        ("organization", distributor.pk, "systems", 0, 1),
        ("organization", other_customer.pk, "backup_bytes", 4096, 0),
        ("user", fleet["ann"].pk, "systems", 0, 2),
    }
    limits = {(d.account_id, d.resource): d.limit for d in found}
    assert limits[(customer.pk, "systems")] == 10
    assert limits[(distributor.pk, "systems")] == 100  # the default


def test_the_verify_command_reports_as_text_json_and_csv(fleet, customer):
    text = run_command("--verify")
    assert f"organization {customer.pk} (Customer A): systems stored 5, real 2 (limit 10)" in text
    assert "4 usage(s) differ. Fix them with: manage.py quotas --sync" in text

    report = json.loads(run_command("--verify", "--json"))
    assert report["mode"] == "verify" and len(report["differences"]) == 4

    lines = run_command("--verify", "--csv").splitlines()
    assert lines[0] == "scope,account_id,account,resource,stored,real,limit"
    assert len(lines) == 5


def test_verify_changes_nothing(fleet):
    before = list(Quota.objects.values())

    run_command("--verify")

    assert list(Quota.objects.values()) == before


# --- Sync and reset ------------------------------------------------------------------------


def test_sync_rewrites_only_the_differing_accounts(fleet, customer, distributor, other_customer):
    out = run_command("--sync")

    assert "4 usage(s) differed; 2 quota row(s) rewritten, 2 created." in out
    assert account_quotas.quotas_verify() == []
    rows = {
        (q.organization_id, q.user_id, q.resource): (q.usage, q.limit) for q in Quota.objects.all()
    }
    assert rows == {
        (customer.pk, None, "systems"): (2, 10),  # the limit is kept
        (other_customer.pk, None, "systems"): (1, None),
        (other_customer.pk, None, "backup_bytes"): (0, None),
        (distributor.pk, None, "systems"): (1, None),  # created, with the default limit
        (None, fleet["ann"].pk, "systems"): (2, None),
    }
    untouched = Quota.objects.get(organization=other_customer, resource="systems")
    assert untouched.updated_at == LONG_AGO
    entry = AuditEntry.objects.get(action="quota.sync")
    assert entry.after["updated"] == 2 and len(entry.after["changes"]) == 4
    assert "0 usage(s) differed" in run_command("--sync")


def test_reset_usage_recomputes_every_account(fleet, other_customer):
    out = run_command("--reset-usage")

    assert "4 usage(s) differed; 3 quota row(s) rewritten, 2 created." in out
    assert not Quota.objects.filter(updated_at=LONG_AGO).exists()
    assert account_quotas.quotas_verify() == []
    assert AuditEntry.objects.filter(action="quota.reset_usage").exists()


def test_a_dedupe_keeps_usage_true(customer):
    survivor = make_account("ann@example.com", login=1)
    other = make_account("ANN@example.com", active=False)
    systems(customer, 1, by=survivor)
    systems(customer, 2, by=other)
    account_quotas.quotas_sync()
    assert account_quotas.quotas_verify() == []

    call_command("dedupe_users", "--apply", stdout=io.StringIO(), stderr=io.StringIO())

    assert Quota.objects.get(user=survivor).usage == 3
    assert account_quotas.quotas_verify() == []


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "one of the arguments --verify --sync --reset-usage is required"),
        (["--verify", "--sync"], "not allowed with argument"),
        (["--verify", "--json", "--csv"], "Choose one report format"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(CommandError, match=message):
        run_command(*args)


# --- Jobs ----------------------------------------------------------------------------------


def test_background_starts_a_quota_run(fleet, django_capture_on_commit_callbacks, monkeypatch):
    sent = []
    monkeypatch.setattr(account_quotas, "run_enqueue", lambda run, queue=None: sent.append(run.pk))

    with django_capture_on_commit_callbacks(execute=True):
        out = run_command("--sync", "--background")

    run = QuotaRun.objects.get()
    assert f"Quota run {run.pk} (sync) queued" in out
    assert sent == [run.pk] and run.state == "pending"


def test_the_admin_starts_quota_runs(
    client, owner, fleet, celery_eager, django_capture_on_commit_callbacks
):
    root = UserFactory(email="root@example.com", organization=owner, is_superuser=True)
    client.force_login(root)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:migrations_app_quotarun_start"), {"mode": "verify"})

    run = QuotaRun.objects.get()
    assert response.status_code == 302
    assert (run.mode, run.state, run.result["differing"], run.created_by) == (
        "verify",
        "succeeded",
        4,
        root,
    )
    page = client.get(reverse("admin:migrations_app_quotarun_change", args=[run.pk]))
    assert "Customer A" in page.content.decode()


@pytest.mark.timeout(120)
def test_quota_runs_run_in_a_real_worker(celery_worker_process, fleet):
    verify = account_quotas.quota_run_start(actor=None, mode="verify", queue=celery_worker_process)
    assert wait_for(lambda: QuotaRun.objects.get(pk=verify.pk).is_finished, timeout=60)
    verify.refresh_from_db()
    assert (verify.state, verify.result["differing"]) == ("succeeded", 4), verify.error
    assert Quota.objects.filter(updated_at=LONG_AGO).count() == 3

    sync = account_quotas.quota_run_start(actor=None, mode="sync", queue=celery_worker_process)
    assert wait_for(lambda: QuotaRun.objects.get(pk=sync.pk).is_finished, timeout=60)
    sync.refresh_from_db()
    assert (sync.state, sync.result["updated"], sync.result["created"]) == ("succeeded", 2, 2)
    assert account_quotas.quotas_verify() == []

    reset = account_quotas.quota_run_start(actor=None, mode="reset", queue=celery_worker_process)
    assert wait_for(lambda: QuotaRun.objects.get(pk=reset.pk).is_finished, timeout=60)
    assert not Quota.objects.filter(updated_at=LONG_AGO).exists()


# --- Usage no service reports ---------------------------------------------------------------


def test_sync_keeps_the_usage_no_service_reports_and_lists_it_unverified(fleet, customer):
    ann = fleet["ann"]
    terabytes = 12_900 * 1024**3
    Quota.objects.create(user=ann, resource="pithos+.diskspace", usage=terabytes)
    Quota.objects.create(organization=customer, resource="cyclades.cpu", usage=24)
    Quota.objects.create(user=ann, resource="backup_bytes", usage=5)  # reported per org only
    before = {q.pk: (q.usage, q.updated_at) for q in Quota.objects.exclude(resource="systems")}

    verify = run_command("--verify")
    out = run_command("--sync")
    report = json.loads(run_command("--sync", "--json"))

    kept = {
        q.pk: (q.usage, q.updated_at)
        for q in Quota.objects.exclude(resource="systems").exclude(
            organization__isnull=False, resource="backup_bytes"
        )
    }
    assert kept == {pk: value for pk, value in before.items() if pk in kept} and len(kept) == 3
    assert "pithos+.diskspace" not in verify.split("unverified:")[0]
    for text in (verify, out):
        assert (
            f"unverified: pithos+.diskspace of 1 user(s), {terabytes} stored: no service "
            "reports it; kept as imported" in text
        )
        assert "unverified: cyclades.cpu of 1 organization(s), 24 stored" in text
        assert "unverified: backup_bytes of 1 user(s), 5 stored" in text
    assert {item["resource"] for item in report["unverified"]} == {
        "backup_bytes",
        "cyclades.cpu",
        "pithos+.diskspace",
    }
