"""Tenant boundaries found by trying Cutover as a customer's staff would."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from backups_app.models import ReplicationJob, ReplicationRun
from fleet_app import access
from tests.factories import FingerprintAnomalyFactory, UserFactory


@pytest.fixture
def operator(db):
    return UserFactory(email="ops@example.com", organization=None, roles=["operator"])


def test_a_tenant_reader_cannot_start_a_replication_run(client, bob):
    client.force_login(bob)
    response = client.post(
        reverse("admin:backups_app_replicationjob_changelist"),
        {"action": "run_now", "_selected_action": ["1"]},
    )
    assert response.status_code == 403
    assert not ReplicationRun.objects.exists()


@pytest.mark.parametrize("role", ["reader", "support", "admin"])
def test_no_tenant_role_opens_a_storage_host(client, customer, role):
    user = UserFactory(organization=customer, roles=[role])
    client.force_login(user)
    for url in (
        reverse("admin:backups_app_storagehost_changelist"),
        reverse("admin:backups_app_storagehost_add"),
        reverse("admin:backups_app_storagehost_change", args=[1]),
    ):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("admin:backups_app_storagehost_add"), {}).status_code == 403
    assert client.get(reverse("zfs-dashboard")).status_code == 403


def test_the_operator_runs_infrastructure_and_reads_the_fleet(client, operator, system):
    client.force_login(operator)
    assert client.get(reverse("admin:backups_app_storagehost_add")).status_code == 200
    assert client.get(reverse("zfs-dashboard")).status_code == 200
    assert client.get(reverse("admin:fleet_app_system_change", args=[system.pk])).status_code == 200
    # Reads the fleet, changes none of it.
    changelist = client.get(reverse("admin:fleet_app_system_changelist"))
    assert changelist.context["action_form"] is None
    assert ReplicationJob.objects.count() == 0


def test_a_tenant_admin_grants_tenant_roles_only(client, alice, customer):
    client.force_login(alice)
    response = client.get(reverse("admin:fleet_app_user_add"))
    assert response.status_code == 200
    target = UserFactory(organization=customer, roles=["reader"])
    page = client.get(reverse("admin:fleet_app_user_change", args=[target.pk]))
    choices = {label for _, label in page.context["adminform"].form.fields["groups"].choices}
    assert choices == {"admin", "support", "reader"}
    operator = Group.objects.get(name="operator")
    form = page.context["adminform"].form
    data = {key: value for key, value in form.initial.items() if value is not None}
    data.update(
        email=target.email,
        organization=customer.pk,
        groups=[operator.pk],
        date_joined_0="2026-01-01",
        date_joined_1="00:00:00",
    )
    client.post(reverse("admin:fleet_app_user_change", args=[target.pk]), data)
    assert not target.groups.filter(name="operator").exists()


def test_a_tenant_admin_does_not_see_platform_accounts(client, alice, operator):
    client.force_login(alice)
    listed = client.get(reverse("admin:fleet_app_user_changelist")).context["cl"].result_list
    assert operator not in listed
    assert client.get(reverse("admin:fleet_app_user_change", args=[operator.pk])).status_code == 302


def test_an_anomaly_does_not_tell_a_tenant_whether_a_legacy_id_exists_elsewhere(
    client, bob, system, other_customer
):
    FingerprintAnomalyFactory(
        system=system, kind="mismatch", claimed_legacy_system_id="legacy-of-another-tenant"
    )
    FingerprintAnomalyFactory(system=system, kind="unknown", claimed_legacy_system_id="nobodys")
    client.force_login(bob)
    page = client.get(reverse("admin:migrations_app_fingerprintanomaly_changelist"))
    text = page.content.decode()
    assert page.status_code == 200
    assert "Legacy id of another system" not in text and "Unknown legacy id" not in text
    assert text.count("Does not fit this system") == 2
    # Filtering by kind would tell it by the count: refused.
    url = reverse("admin:migrations_app_fingerprintanomaly_changelist")
    assert client.get(url, {"kind": "mismatch"}).status_code == 400


def test_a_staff_account_without_a_role_is_nobody(db, customer):
    user = UserFactory(organization=customer)
    assert access.persona(user) is None
    assert not access.allowed(user, "dashboard", "fleet-dashboard")


def test_the_header_links_only_to_what_the_user_may_open(client, bob, operator):
    client.force_login(bob)
    header = client.get(reverse("fleet-dashboard")).content.decode()
    assert "Fleet dashboard</a>" in header and "Backup dashboard</a>" in header
    assert "ZFS dashboard" not in header and "Cutover dashboard" not in header
    client.force_login(operator)
    header = client.get(reverse("fleet-dashboard")).content.decode()
    assert "ZFS dashboard</a>" in header and "Cutover dashboard</a>" in header


def test_an_action_the_role_does_not_offer_is_refused_and_audited(client, customer, system):
    from fleet_app.models import AuditEntry

    support = UserFactory(organization=customer, roles=["support"])
    client.force_login(support)
    response = client.post(
        reverse("admin:fleet_app_system_changelist"),
        {"action": "soft_delete", "_selected_action": [str(system.pk)]},
    )
    assert response.status_code == 403
    system.refresh_from_db()
    assert system.deleted_at is None
    refused = AuditEntry.objects.get(action="access.refused", actor=support)
    assert refused.after["what"] == "action fleet_app.system.soft_delete"
