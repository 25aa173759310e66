"""The audit trail of staff changes made in the admin, and the audit log's own admin.

Every create, update and delete made through an admin form writes one audit entry in
the same transaction, with the state before and after; the log itself is read-only and
scoped like everything else.
"""

import datetime as dt
import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from django.utils import timezone

from fleet_app import services
from fleet_app.models import AuditEntry, Organization, User
from tests.factories import make_system

ORGANIZATIONS = reverse("admin:fleet_app_organization_changelist")
ADD_ORGANIZATION = reverse("admin:fleet_app_organization_add")
ADD_USER = reverse("admin:fleet_app_user_add")
AUDIT = reverse("admin:fleet_app_auditentry_changelist")


def _as(client, user):
    client.force_login(user)
    return client


def _url(obj, view="change"):
    return reverse(f"admin:fleet_app_{obj._meta.model_name}_{view}", args=[obj.pk])


def _user_form(user, **changes):
    """What the user change form posts for ``user`` as it stands, with ``changes``."""
    data = {
        "email": user.email,
        "full_name": user.full_name,
        "organization": user.organization_id or "",
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "groups": list(user.groups.values_list("pk", flat=True)),
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "_save": "Save",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


@pytest.fixture
def bob(bob):
    # The form posts seconds: a whole-second date_joined keeps "nothing else changed" true.
    bob.date_joined = bob.date_joined.replace(microsecond=0)
    bob.save(update_fields=["date_joined"])
    return bob


# --- Organizations ------------------------------------------------------------------------


def test_it_creates_an_organization_through_the_service(client, alice, distributor, monkeypatch):
    calls = []
    real_create = services.organization_create

    def spy(**kwargs):
        calls.append(kwargs)
        return real_create(**kwargs)

    monkeypatch.setattr(services, "organization_create", spy)
    _as(client, alice)

    response = client.post(
        ADD_ORGANIZATION, {"name": "Reseller R", "kind": "reseller", "parent": distributor.pk}
    )

    assert response.status_code == 302
    assert [c["actor"] for c in calls] == [alice]
    reseller = Organization.objects.get(name="Reseller R")
    # The materialized path the service computes: scoping depends on it.
    assert reseller.path == f"{distributor.path}{reseller.pk}/"
    entry = AuditEntry.objects.get(object_id=str(reseller.pk))  # one, not one per layer
    assert entry.action == "organization.create"
    assert entry.actor == alice
    assert entry.organization == reseller
    assert entry.before is None
    assert entry.after["name"] == "Reseller R"


def test_it_refuses_a_kind_its_parent_cannot_hold(client, alice, distributor):
    _as(client, alice)

    response = client.post(
        ADD_ORGANIZATION, {"name": "Nested", "kind": "distributor", "parent": distributor.pk}
    )

    assert response.status_code == 200
    assert "cannot be placed under a distributor" in str(
        response.context["adminform"].form.errors["parent"]
    )
    assert not Organization.objects.filter(name="Nested").exists()


def test_a_scoped_admin_cannot_create_an_organization_outside_their_tree(
    client, alice, other_customer
):
    _as(client, alice)

    root = client.post(ADD_ORGANIZATION, {"name": "Rogue owner", "kind": "owner"})
    elsewhere = client.post(
        ADD_ORGANIZATION, {"name": "Rogue", "kind": "customer", "parent": other_customer.pk}
    )

    assert "parent" in root.context["adminform"].form.errors
    assert "parent" in elsewhere.context["adminform"].form.errors
    assert not Organization.objects.filter(name__startswith="Rogue").exists()


def test_renaming_an_organization_writes_audit_with_before_and_after(client, alice, customer):
    _as(client, alice)

    response = client.post(_url(customer), {"name": "Customer A (renamed)", "_save": "Save"})

    assert response.status_code == 302
    customer.refresh_from_db()
    assert customer.name == "Customer A (renamed)"
    entry = AuditEntry.objects.get(action="organization.update")
    assert entry.actor == alice
    assert entry.organization == customer
    assert entry.before["name"] == "Customer A"
    assert entry.after["name"] == "Customer A (renamed)"
    # Kind and parent are not form edits: moving a node would rewrite its whole subtree.
    assert entry.before["parent"] == entry.after["parent"]


def test_a_rename_is_rolled_back_when_its_audit_cannot_be_written(
    client, alice, customer, monkeypatch
):
    def broken(**kwargs):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(services, "audit_record", broken)
    _as(client, alice)

    with pytest.raises(RuntimeError):
        client.post(_url(customer), {"name": "Customer A (renamed)", "_save": "Save"})

    customer.refresh_from_db()
    assert customer.name == "Customer A"


def test_deleting_an_organization_is_audited_under_its_parent(client, alice, distributor):
    reseller = services.organization_create(
        actor=None, name="Short-lived", kind="reseller", parent=distributor
    )
    _as(client, alice)

    response = client.post(_url(reseller, "delete"), {"post": "yes"})

    assert response.status_code == 302
    assert not Organization.objects.filter(pk=reseller.pk).exists()
    entry = AuditEntry.objects.get(action="organization.delete")
    assert entry.actor == alice
    assert entry.object_id == str(reseller.pk)
    assert entry.before["name"] == "Short-lived"
    assert entry.after is None
    # Filed under the parent, so the entry stays visible to the distributor's staff.
    assert entry.organization == distributor
    assert entry in client.get(AUDIT).context["cl"].result_list


def test_deleting_several_organizations_at_once_audits_each(client, alice, distributor):
    doomed = [
        services.organization_create(
            actor=None, name=f"Doomed {i}", kind="reseller", parent=distributor
        )
        for i in range(2)
    ]
    _as(client, alice)

    response = client.post(
        ORGANIZATIONS,
        {"action": "delete_selected", "_selected_action": [o.pk for o in doomed], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Organization.objects.filter(name__startswith="Doomed").exists()
    deleted = AuditEntry.objects.filter(action="organization.delete")
    assert sorted(e.before["name"] for e in deleted) == ["Doomed 0", "Doomed 1"]
    assert {e.actor for e in deleted} == {alice}


def test_the_organization_list_is_scoped(client, alice, distributor, customer, other_customer):
    _as(client, alice)

    listed = set(client.get(ORGANIZATIONS).context["cl"].result_list)

    assert listed == {distributor, customer}


# --- Users --------------------------------------------------------------------------------


def test_a_role_change_is_audited_with_the_groups(client, alice, bob):
    reader, support = Group.objects.get(name="reader"), Group.objects.get(name="support")
    _as(client, alice)

    response = client.post(_url(bob), _user_form(bob, groups=[reader.pk, support.pk]))

    assert response.status_code == 302
    assert set(bob.groups.all()) == {reader, support}
    entry = AuditEntry.objects.get(action="user.update")
    assert entry.actor == alice
    assert entry.object_id == str(bob.pk)
    assert entry.organization_id == bob.organization_id
    assert entry.before["groups"] == [reader.pk]
    assert entry.after["groups"] == sorted([reader.pk, support.pk])
    assert entry.before["password"] == entry.after["password"] == "***"


def test_a_scoped_admin_cannot_grant_superuser_or_single_permissions(client, alice, bob):
    permission = Permission.objects.get(codename="delete_system")
    _as(client, alice)

    client.post(_url(bob), _user_form(bob, is_superuser="on", user_permissions=[permission.pk]))

    bob.refresh_from_db()
    assert not bob.is_superuser
    assert not bob.user_permissions.exists()


def test_a_scoped_admin_cannot_open_a_superuser_in_their_tree(client, alice, customer):
    boss = User.objects.create_superuser(
        email="boss@example.com", password="x" * 12, organization=customer
    )
    _as(client, alice)

    assert client.get(_url(boss)).status_code == 302
    assert (
        boss not in client.get(reverse("admin:fleet_app_user_changelist")).context["cl"].result_list
    )


def test_creating_a_user_is_audited_without_the_password(client, alice, customer):
    passphrase = "plum-orbit-cellar-42"
    _as(client, alice)

    response = client.post(
        ADD_USER,
        {
            "email": "dave@example.com",
            "full_name": "Dave",
            "organization": customer.pk,
            "usable_password": "true",
            "password1": passphrase,
            "password2": passphrase,
        },
    )

    assert response.status_code == 302
    dave = User.objects.get(email="dave@example.com")
    assert dave.check_password(passphrase)
    assert dave.organization == customer
    entry = AuditEntry.objects.get(action="user.create")
    assert entry.actor == alice
    assert entry.after["email"] == "dave@example.com"
    assert entry.after["password"] == "***"
    assert passphrase not in json.dumps(entry.after)
    assert dave.password not in json.dumps(entry.after)


def test_a_scoped_admin_must_place_a_new_user_in_an_organization(client, alice):
    _as(client, alice)

    response = client.post(ADD_USER, {"email": "eve@example.com", "usable_password": "false"})

    assert "organization" in response.context["adminform"].form.errors
    assert not User.objects.filter(email="eve@example.com").exists()


def test_a_second_active_account_with_the_same_email_is_refused(client, alice, bob, customer):
    _as(client, alice)

    response = client.post(
        ADD_USER,
        {"email": "BOB@example.com", "organization": customer.pk, "usable_password": "false"},
    )

    assert response.status_code == 200
    assert "already exists" in str(response.context["adminform"].form.errors["email"])
    assert User.objects.filter(email__iexact="bob@example.com").count() == 1


def test_a_password_change_is_audited(client, alice, bob):
    _as(client, alice)

    response = client.post(
        reverse("admin:auth_user_password_change", args=[bob.pk]),
        {
            "usable_password": "true",
            "password1": "quartz-meadow-lantern-7",
            "password2": "quartz-meadow-lantern-7",
        },
    )

    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.check_password("quartz-meadow-lantern-7")
    entry = AuditEntry.objects.get(action="user.password_change")
    assert entry.actor == alice
    assert entry.object_id == str(bob.pk)
    assert "quartz" not in json.dumps([entry.before, entry.after])


def test_the_user_list_is_scoped(client, alice, bob, charlie):
    _as(client, alice)

    listed = set(client.get(reverse("admin:fleet_app_user_changelist")).context["cl"].result_list)

    assert listed == {alice, bob}


# --- The audit log's admin ----------------------------------------------------------------


@pytest.fixture
def suspended(alice, system):
    """An entry with a before and an after: alice suspended cluster-a."""
    services.system_suspend(actor=alice, system=system)
    return AuditEntry.objects.get(action="system.suspend")


def test_audit_entries_are_read_only(client, alice, suspended):
    _as(client, alice)

    page = client.get(_url(suspended))

    assert page.status_code == 200
    for field in ("action", "actor_repr", "object_id", "before", "after"):
        assert f'name="{field}"' not in page.content.decode()
    assert client.get(reverse("admin:fleet_app_auditentry_add")).status_code == 403
    assert client.post(_url(suspended), {"action": "forged"}).status_code == 403
    assert client.post(_url(suspended, "delete"), {"post": "yes"}).status_code == 403
    suspended.refresh_from_db()
    assert suspended.action == "system.suspend"


def test_an_audit_entry_shows_before_and_after_as_pretty_json(client, alice, suspended):
    _as(client, alice)

    body = client.get(_url(suspended)).content.decode()

    assert body.count('<pre class="fleet-json">') == 2
    assert "\n  &quot;suspended_at&quot;: null," in body
    assert "\n  &quot;name&quot;: &quot;cluster-a&quot;," in body
    assert (
        f'href="{_url(suspended.content_type.get_object_for_this_type(pk=suspended.object_id))}"'
        in body
    )


def test_the_audit_log_never_shows_a_secret(client, alice, system):
    services.system_secret_reissue(actor=alice, system=system)
    _as(client, alice)

    for entry in AuditEntry.objects.filter(object_id=str(system.pk)):
        body = client.get(_url(entry)).content.decode()
        system.refresh_from_db()
        assert system.secret_digest not in body
        assert system.secret_public not in body


def test_the_audit_log_is_scoped(client, alice, charlie, system, other_system):
    services.system_suspend(actor=alice, system=system)
    services.system_suspend(actor=charlie, system=other_system)

    def listed(user):
        _as(client, user)
        return {(e.action, e.object_id) for e in client.get(AUDIT).context["cl"].result_list}

    alices, charlies = listed(alice), listed(charlie)

    assert ("system.suspend", str(system.pk)) in alices
    assert ("system.suspend", str(other_system.pk)) not in alices
    assert ("system.suspend", str(other_system.pk)) in charlies
    assert {object_id for _, object_id in charlies} == {
        str(other_system.pk),
        str(other_system.organization_id),
    }


def test_the_audit_log_filters_by_action_and_offers_recent_actions(client, alice, system):
    services.system_suspend(actor=alice, system=system)
    services.system_reactivate(actor=alice, system=system)
    old = services.audit_record(actor=alice, action="system.ancient", obj=system)
    AuditEntry.objects.filter(pk=old.pk).update(at=timezone.now() - dt.timedelta(days=90))
    _as(client, alice)

    response = client.get(AUDIT, {"action": "system.suspend"})
    action_filter = next(
        f for f in response.context["cl"].filter_specs if f.parameter_name == "action"
    )
    offered = {value for value, _ in action_filter.lookup_choices}

    assert [e.action for e in response.context["cl"].result_list] == ["system.suspend"]
    assert {"system.create", "system.suspend", "system.reactivate"} <= offered
    assert "system.ancient" not in offered
    assert [e.action for e in client.get(AUDIT, {"q": "ancient"}).context["cl"].result_list] == [
        "system.ancient"
    ]


def test_the_audit_log_filters_by_date(client, alice, system):
    old = services.audit_record(actor=alice, action="system.ancient", obj=system)
    AuditEntry.objects.filter(pk=old.pk).update(at=timezone.now() - dt.timedelta(days=90))
    _as(client, alice)
    changelist = client.get(AUDIT).context["cl"]
    date_filter = next(f for f in changelist.filter_specs if getattr(f, "field_path", None) == "at")
    today = next(c for c in date_filter.choices(changelist) if c["display"] == "Today")

    response = client.get(AUDIT + today["query_string"])

    actions = {e.action for e in response.context["cl"].result_list}
    assert "system.create" in actions
    assert "system.ancient" not in actions


def test_the_audit_list_runs_a_bounded_number_of_queries(
    client, alice, customer, django_assert_max_num_queries
):
    for i in range(10):
        system = make_system(customer, name=f"cluster-{i}")
        services.system_suspend(actor=alice, system=system)
        services.system_reactivate(actor=alice, system=system)
    _as(client, alice)

    # session, user, user's organization (scope), alice's permissions (user, groups),
    # recent actions for the filter, count, the page (entries joined with content type
    # and organization): 8 whatever the number of entries; 2 spare.
    with django_assert_max_num_queries(10) as captured:
        response = client.get(AUDIT)
    page_query = captured.captured_queries[-1]["sql"]

    assert response.context["cl"].result_count >= 30
    # The snapshots are not read for a list page.
    assert '"fleet_app_auditentry"."before"' not in page_query
