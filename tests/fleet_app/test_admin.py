"""The fleet admin: systems created through the service with their secret shown once,
actions that call services, organization scoping, and lists that stay cheap."""

import datetime as dt

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from fleet_app import credentials, services
from fleet_app.admin import base as fleet_admin
from fleet_app.admin import systems as system_admin
from fleet_app.models import AuditEntry, Inventory, InventoryChange, System, User
from tests.factories import UserFactory, make_system

SYSTEMS = reverse("admin:fleet_app_system_changelist")
ADD_SYSTEM = reverse("admin:fleet_app_system_add")


def _change_url(system):
    return reverse("admin:fleet_app_system_change", args=[system.pk])


def _ago(**delta):
    return timezone.now() - dt.timedelta(**delta)


def _as(client, user):
    client.force_login(user)
    return client


def _action(client, name, *systems, url=SYSTEMS, confirmed=True):
    # ``confirmed``: the second POST, the one the confirmation page sends.
    data = {"action": name, "_selected_action": [s.pk for s in systems], "index": 0}
    return client.post(url, {**data, "confirmed": "yes"} if confirmed else data)


@pytest.fixture
def root(db):
    return User.objects.create_superuser(email="root@example.com", password="x" * 12)


# --- Creating a system --------------------------------------------------------------------


def test_it_creates_a_system_through_the_service_and_shows_the_secret_once(
    client, alice, customer, monkeypatch
):
    calls = []
    real_create = services.system_create

    def spy(**kwargs):
        calls.append(kwargs)
        return real_create(**kwargs)

    monkeypatch.setattr(services, "system_create", spy)
    _as(client, alice)

    response = client.post(
        ADD_SYSTEM,
        {"organization": customer.pk, "name": "  edge-fw  ", "type": "nethsecurity"},
        follow=True,
    )

    # POST, redirect, GET: the page that shows the secret is not the POST's response.
    assert len(response.redirect_chain) == 1
    assert "/secret/" in response.redirect_chain[0][0]
    assert response.status_code == 200
    assert [c["actor"] for c in calls] == [alice]
    system = System.objects.get()
    secret = response.context["issued"][0].system_secret
    body = response.content.decode()
    assert secret in body
    assert system.system_key in body
    assert "no-store" in response["Cache-Control"]
    # The database holds the digest and the lookup part, never the secret itself.
    assert system.name == "edge-fw"
    assert system.type == "nethsecurity"
    assert system.created_by == alice
    assert system.secret_digest == credentials.digest(secret)
    stored = [str(v) for v in System.objects.filter(pk=system.pk).values().get().values()]
    assert not any(secret in value for value in stored)
    # The shown secret is the real one: the system can register with it.
    assert services.system_register(system_secret=secret).pk == system.pk
    # Not in a message, the session or the audit: the next page cannot show it again.
    assert all(secret not in str(m) for m in get_messages(response.wsgi_request))
    assert secret not in str(dict(client.session))
    # A refresh of the page shows nothing and creates nothing.
    again = client.get(response.redirect_chain[0][0])
    assert again.status_code == 410
    assert secret not in again.content.decode()
    assert "already shown" in again.content.decode()
    assert System.objects.count() == 1 and len(calls) == 1
    for url in (_change_url(system), SYSTEMS):
        assert secret not in client.get(url).content.decode()
    entry = AuditEntry.objects.get(action="system.create")
    assert entry.actor == alice
    assert entry.object_id == str(system.pk)
    assert entry.after["name"] == "edge-fw"
    assert secret not in str(entry.after)


def test_it_offers_only_organizations_of_the_users_subtree(
    client, alice, distributor, customer, other_customer
):
    _as(client, alice)

    choices = client.get(ADD_SYSTEM).context["adminform"].form.fields["organization"].queryset
    refused = client.post(ADD_SYSTEM, {"organization": other_customer.pk, "name": "intruder"})

    assert set(choices) == {distributor, customer}
    assert refused.status_code == 200
    assert "organization" in refused.context["adminform"].form.errors
    assert not System.objects.exists()


def test_a_reader_cannot_add_a_system(client, bob, customer):
    _as(client, bob)

    assert client.get(ADD_SYSTEM).status_code == 403
    assert client.post(ADD_SYSTEM, {"organization": customer.pk, "name": "x"}).status_code == 403
    assert not System.objects.exists()


# --- Scoping ------------------------------------------------------------------------------


def test_alice_sees_the_systems_below_her_distributor_and_not_charlies(
    client, alice, system, other_system
):
    _as(client, alice)

    listed = list(client.get(SYSTEMS).context["cl"].result_list)
    foreign = client.get(_change_url(other_system))

    assert listed == [system]
    # Outside the subtree is "does not exist", not a page.
    assert foreign.status_code == 302
    assert foreign["Location"] == reverse("admin:index")


def test_charlie_sees_only_his_own_customer(client, charlie, system, other_system):
    _as(client, charlie)

    assert list(client.get(SYSTEMS).context["cl"].result_list) == [other_system]


def test_bob_can_look_at_a_system_but_not_change_it(client, bob, system):
    _as(client, bob)

    page = client.get(_change_url(system))
    refused = client.post(
        _change_url(system), {"name": "renamed", "organization": system.organization_id}
    )
    action = _action(client, "suspend", system)

    assert page.status_code == 200
    assert 'name="name"' not in page.content.decode()
    assert refused.status_code == 403
    # The reader is offered no action at all, and a forged one does nothing.
    assert client.get(SYSTEMS).context["action_form"] is None
    assert action.status_code == 200
    system.refresh_from_db()
    assert system.name == "cluster-a"
    assert system.suspended_at is None
    assert not AuditEntry.objects.filter(action__in=["system.update", "system.suspend"]).exists()


# --- Actions ------------------------------------------------------------------------------


def test_suspend_writes_an_audit_entry_with_before_and_after(client, alice, system):
    _as(client, alice)

    response = _action(client, "suspend", system)

    assert response.status_code == 302
    system.refresh_from_db()
    assert system.suspended_at is not None
    entry = AuditEntry.objects.get(action="system.suspend")
    assert entry.actor == alice
    assert entry.object_id == str(system.pk)
    assert entry.organization_id == system.organization_id
    assert entry.before["suspended_at"] is None
    assert entry.after["suspended_at"] is not None
    with pytest.raises(Exception, match="suspended"):
        services.system_authenticate(
            system_key=system.system_key, system_secret=system.issued_secret
        )


def test_suspend_skips_systems_already_suspended(client, alice, system):
    services.system_suspend(actor=None, system=system)
    _as(client, alice)

    _action(client, "suspend", system)

    assert AuditEntry.objects.filter(action="system.suspend").count() == 1


def test_reactivate_and_soft_delete_go_through_their_services(client, alice, system):
    _as(client, alice)

    _action(client, "suspend", system)
    _action(client, "reactivate", system)
    _action(client, "soft_delete", system)

    system.refresh_from_db()
    assert system.suspended_at is None
    assert system.deleted_at is not None
    assert list(
        AuditEntry.objects.filter(object_id=str(system.pk), content_type__model="system")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["system.create", "system.suspend", "system.reactivate", "system.delete"]
    # Soft: the row and its history stay, and no hard delete is offered at all.
    actions = dict(client.get(SYSTEMS).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions
    assert "soft_delete" in actions
    assert client.get(reverse("admin:fleet_app_system_delete", args=[system.pk])).status_code == 403


def test_a_support_user_cannot_soft_delete(client, customer, system):

    support = UserFactory(organization=customer, roles=["support"])
    _as(client, support)

    actions = dict(client.get(SYSTEMS).context["action_form"].fields["action"].choices)

    assert "suspend" in actions
    assert "soft_delete" not in actions


def test_the_change_form_offers_the_actions_the_user_may_run(client, customer, system):
    _as(client, UserFactory(organization=customer, roles=["support"]))

    page = client.get(_change_url(system)).content.decode()

    assert 'name="CHANGE_FORM-action"' in page and 'value="suspend"' in page
    assert 'value="soft_delete"' not in page
    assert f'name="_selected_action" value="{system.pk}"' in page


def test_a_change_form_action_only_acts_on_the_object_of_the_page(
    client, alice, system, other_system
):
    _as(client, alice)

    response = client.post(
        _change_url(system), {"CHANGE_FORM-action": "suspend", "_selected_action": other_system.pk}
    )

    assert response.status_code == 400
    system.refresh_from_db()
    other_system.refresh_from_db()
    assert system.suspended_at is None and other_system.suspended_at is None


def test_an_action_runs_from_the_change_form_too(client, alice, system):
    _as(client, alice)

    response = client.post(
        _change_url(system), {"CHANGE_FORM-action": "suspend", "_selected_action": system.pk}
    )

    assert response.status_code == 302
    system.refresh_from_db()
    assert system.suspended_at is not None


def test_reissuing_a_secret_shows_the_new_one_once_and_stops_the_old_one(client, alice, system):
    old_secret = system.issued_secret
    _as(client, alice)

    response = client.post(
        SYSTEMS,
        {
            "action": "reissue_secret",
            "_selected_action": [system.pk],
            "index": 0,
            "confirmed": "yes",
        },
        follow=True,
    )

    assert response.status_code == 200
    new_secret = response.context["issued"][0].system_secret
    assert new_secret in response.content.decode()
    assert new_secret != old_secret
    system.refresh_from_db()
    assert credentials.verify(new_secret, system.secret_digest)
    assert not credentials.verify(old_secret, system.secret_digest)
    entry = AuditEntry.objects.get(action="system.secret_reissue")
    assert entry.actor == alice
    assert new_secret not in str(entry.before) + str(entry.after)
    assert new_secret not in client.get(_change_url(system)).content.decode()


def test_reissuing_skips_deleted_systems(client, alice, system):
    services.system_delete(actor=None, system=system)
    _as(client, alice)

    response = _action(client, "reissue_secret", system)

    assert response.status_code == 302
    assert not AuditEntry.objects.filter(action="system.secret_reissue").exists()


# --- Editing ------------------------------------------------------------------------------


def test_editing_a_systems_name_writes_audit_with_before_and_after(
    client, alice, system, distributor
):
    _as(client, alice)

    response = client.post(
        _change_url(system),
        {"name": "cluster-renamed", "organization": distributor.pk, "_save": "1"},
    )

    assert response.status_code == 302
    system.refresh_from_db()
    assert system.name == "cluster-renamed"
    assert system.organization == distributor
    entry = AuditEntry.objects.get(action="system.update")
    assert entry.actor == alice
    assert entry.before["name"] == "cluster-a"
    assert entry.after["name"] == "cluster-renamed"
    assert entry.before["organization"] != entry.after["organization"] == distributor.pk


def test_an_edit_is_rolled_back_when_its_audit_cannot_be_written(
    client, alice, system, monkeypatch
):
    def broken(**kwargs):
        raise RuntimeError("audit table unavailable")

    monkeypatch.setattr(services, "audit_record", broken)
    _as(client, alice)

    with pytest.raises(RuntimeError):
        client.post(
            _change_url(system),
            {"name": "cluster-renamed", "organization": system.organization_id, "_save": "1"},
        )

    system.refresh_from_db()
    assert system.name == "cluster-a"


def test_an_edit_does_not_overwrite_a_heartbeat_that_came_in_meanwhile(
    client, alice, system, monkeypatch
):
    """Only the fields the form changed are written: the admin's copy of
    last_heartbeat_at is stale as soon as the system phones home."""
    real_get_object = system_admin.SystemAdmin.get_object
    fresh = timezone.now()

    def get_object_then_heartbeat(self, request, object_id, from_field=None):
        loaded = real_get_object(self, request, object_id, from_field)
        # The system phones home after the admin loaded it and before it saves.
        System.objects.filter(pk=object_id).update(last_heartbeat_at=fresh)
        return loaded

    monkeypatch.setattr(system_admin.SystemAdmin, "get_object", get_object_then_heartbeat)
    _as(client, alice)

    client.post(
        _change_url(system),
        {"name": "cluster-renamed", "organization": system.organization_id, "_save": "1"},
    )

    system.refresh_from_db()
    assert system.name == "cluster-renamed"
    assert system.last_heartbeat_at == fresh
    entry = AuditEntry.objects.get(action="system.update")
    changed = {k for k in entry.after if entry.after[k] != entry.before[k]}
    assert changed == {"name"}


def test_saving_an_unchanged_system_writes_no_audit_entry(client, alice, system):
    _as(client, alice)

    client.post(_change_url(system), {"name": system.name, "organization": system.organization_id})

    assert not AuditEntry.objects.filter(action="system.update").exists()


@pytest.mark.parametrize("persona", ["alice", "root"])
def test_the_change_form_never_shows_the_secret_fields(client, request, persona, system):
    _as(client, request.getfixturevalue(persona))

    body = client.get(_change_url(system)).content.decode()

    assert system.system_key in body
    assert 'name="system_key"' not in body
    for hidden in (system.secret_digest, system.secret_public, system.issued_secret):
        assert hidden not in body
    assert "secret_digest" not in body
    assert "secret_public" not in body


# --- Lists --------------------------------------------------------------------------------


def test_the_changelist_runs_a_bounded_number_of_queries(
    client, alice, customer, django_assert_max_num_queries
):
    for i in range(50):
        make_system(customer, name=f"cluster-{i:02}", last_heartbeat_at=_ago(minutes=i))
    _as(client, alice)

    # session, user, user's organization (scope), alice's permissions (user, groups),
    # organization filter choices, type filter values, count, the page (systems joined
    # with their organization): 9 whatever the number of systems; 2 spare.
    with django_assert_max_num_queries(11):
        response = client.get(SYSTEMS)

    assert response.context["cl"].result_count == 50
    assert len(response.context["cl"].result_list) == 50


def test_the_status_filter_lists_only_systems_with_that_status(client, alice, customer):
    active = make_system(customer, name="active", last_heartbeat_at=_ago(minutes=1))
    inactive = make_system(customer, name="inactive", last_heartbeat_at=_ago(hours=2))
    unknown = make_system(customer, name="unknown", registered=False)
    _as(client, alice)

    def listed(query):
        return set(client.get(f"{SYSTEMS}?{query}").context["cl"].result_list)

    assert listed("status=active") == {active}
    assert listed("status=inactive") == {inactive}
    assert listed("status=unknown") == {unknown}
    assert listed("") == {active, inactive, unknown}


def test_the_last_seen_filter_groups_systems_by_heartbeat_age(client, alice, customer):
    minutes = make_system(customer, name="minutes", last_heartbeat_at=_ago(minutes=5))
    hours = make_system(customer, name="hours", last_heartbeat_at=_ago(hours=5))
    days = make_system(customer, name="days", last_heartbeat_at=_ago(days=3))
    weeks = make_system(customer, name="weeks", last_heartbeat_at=_ago(days=9))
    never = make_system(customer, name="never")
    _as(client, alice)

    def listed(value):
        return set(client.get(f"{SYSTEMS}?last_seen={value}").context["cl"].result_list)

    assert listed("hour") == {minutes}
    assert listed("day") == {minutes, hours}
    assert listed("week") == {minutes, hours, days}
    assert listed("older") == {weeks}
    assert listed("never") == {never}


def test_the_organization_filter_takes_the_subtree_and_offers_only_visible_ones(
    client, alice, distributor, customer, other_customer, system, other_system
):
    at_distributor = make_system(distributor, name="at-distributor")
    _as(client, alice)

    response = client.get(f"{SYSTEMS}?organization={distributor.pk}")
    org_filter = next(
        f for f in response.context["cl"].filter_specs if f.parameter_name == "organization"
    )
    offered = {value for value, _ in org_filter.lookup_choices}
    outside = client.get(f"{SYSTEMS}?organization={other_customer.pk}")

    assert set(response.context["cl"].result_list) == {system, at_distributor}
    assert offered == {str(distributor.pk), str(customer.pk)}
    assert list(outside.context["cl"].result_list) == []


def test_search_finds_a_system_by_its_key(client, alice, system, customer):
    make_system(customer, name="another")
    _as(client, alice)

    found = client.get(SYSTEMS, {"q": system.system_key}).context["cl"].result_list

    assert list(found) == [system]


# --- Counting big tables ------------------------------------------------------------------


def _analyze(model):
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class is PostgreSQL's")
def test_the_paginator_returns_the_planner_estimate_for_a_big_unfiltered_table(
    customer, monkeypatch, django_assert_num_queries
):
    for i in range(3):
        make_system(customer, name=f"s{i}")
    _analyze(System)
    # Rows the estimate has not seen yet: the count below can only be the estimate.
    make_system(customer, name="s3")
    make_system(customer, name="s4")
    monkeypatch.setattr(fleet_admin, "ESTIMATED_COUNT_THRESHOLD", 2)

    paginator = fleet_admin.EstimatedCountPaginator(System.objects.order_by("-pk"), 100)
    with django_assert_num_queries(1) as captured:
        count = paginator.count

    assert count == 3
    assert "pg_class" in captured.captured_queries[0]["sql"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class is PostgreSQL's")
def test_the_paginator_counts_for_real_below_the_threshold_or_when_filtered(customer, monkeypatch):
    for i in range(3):
        make_system(customer, name=f"s{i}")
    _analyze(System)
    make_system(customer, name="s3")
    paginator = fleet_admin.EstimatedCountPaginator

    systems = System.objects.order_by("-pk")

    assert paginator(systems, 100).count == 4  # the estimate, 3, is under 10,000
    monkeypatch.setattr(fleet_admin, "ESTIMATED_COUNT_THRESHOLD", 2)
    assert paginator(systems.filter(name__in=["s0", "s3"]), 100).count == 2
    assert paginator(systems.filter(organization=customer), 100).count == 4


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class is PostgreSQL's")
def test_the_unfiltered_changelist_does_not_count_a_big_table(
    client, root, customer, monkeypatch, django_assert_max_num_queries
):
    for i in range(3):
        make_system(customer, name=f"s{i}")
    _analyze(System)
    monkeypatch.setattr(fleet_admin, "ESTIMATED_COUNT_THRESHOLD", 2)
    _as(client, root)

    with django_assert_max_num_queries(12) as captured:
        response = client.get(SYSTEMS)

    assert response.context["cl"].result_count == 3
    sql = [q["sql"] for q in captured.captured_queries]
    assert any("pg_class" in s for s in sql)
    assert not any("COUNT(" in s.upper() and "fleet_app_system" in s for s in sql)


def test_the_estimate_is_not_used_off_postgresql(customer, monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")

    assert fleet_admin.table_row_estimate(System.objects.all()) is None


# --- Pages and roles ----------------------------------------------------------------------


def test_every_fleet_admin_page_renders_for_each_role(
    client, alice, bob, root, customer, system, inventory_payload
):
    services.inventory_ingest(system=system, payload=inventory_payload, size=100)
    services.inventory_ingest(
        system=system, payload=dict(inventory_payload, installation="x"), size=100
    )
    objects = [
        customer,
        bob,
        system,
        Inventory.objects.first(),
        InventoryChange.objects.first(),
        AuditEntry.objects.first(),
    ]
    pages = [reverse("admin:index")]
    for obj in objects:
        name = obj._meta.model_name
        pages += [
            reverse(f"admin:fleet_app_{name}_changelist"),
            reverse(f"admin:fleet_app_{name}_change", args=[obj.pk]),
            reverse(f"admin:fleet_app_{name}_history", args=[obj.pk]),
        ]
    writable = ["organization", "user", "system"]
    adds = [reverse(f"admin:fleet_app_{name}_add") for name in writable]

    for user, can_add in ((alice, True), (root, True), (bob, False)):
        _as(client, user)
        assert {url: client.get(url).status_code for url in pages} == dict.fromkeys(pages, 200)
        expected = 200 if can_add else 403
        assert {url: client.get(url).status_code for url in adds} == dict.fromkeys(adds, expected)


def test_a_scoped_admin_may_grant_roles_but_not_redefine_them(client, alice, root):
    reader = Group.objects.get(name="reader")
    before = set(reader.permissions.all())
    delete_system = Permission.objects.get(codename="delete_system")
    url = reverse("admin:auth_group_change", args=[reader.pk])
    _as(client, alice)

    page = client.get(url)
    refused = client.post(url, {"name": "reader", "permissions": [delete_system.pk]})

    assert page.status_code == 200
    assert refused.status_code == 403
    assert set(reader.permissions.all()) == before
    _as(client, root)
    client.post(url, {"name": "reader", "permissions": [p.pk for p in before | {delete_system}]})
    assert delete_system in reader.permissions.all()
    entry = AuditEntry.objects.get(action="group.update")
    assert entry.actor == root
    assert delete_system.pk in entry.after["permissions"]
    assert delete_system.pk not in entry.before["permissions"]


# --- Inventories and changes --------------------------------------------------------------


def test_inventories_are_read_only_scoped_and_listed_without_their_document(
    client, alice, system, other_system, inventory_payload, django_assert_max_num_queries
):
    mine = services.inventory_ingest(system=system, payload=inventory_payload, size=100)
    services.inventory_ingest(system=other_system, payload=inventory_payload, size=100)
    _as(client, alice)

    with django_assert_max_num_queries(12) as captured:
        listed = client.get(reverse("admin:fleet_app_inventory_changelist"))
    # Read before the next request, which resets the connection's query log.
    page_query = captured.captured_queries[-1]["sql"]
    detail = client.get(reverse("admin:fleet_app_inventory_change", args=[mine.pk]))

    assert list(listed.context["cl"].result_list) == [mine]
    assert page_query.startswith('SELECT "fleet_app_inventory"."id"')
    assert '"fleet_app_inventory"."data"' not in page_query
    assert detail.status_code == 200
    assert "<pre" in detail.content.decode()
    assert 'name="size"' not in detail.content.decode()
    assert client.get(reverse("admin:fleet_app_inventory_add")).status_code == 403
    assert Inventory.objects.count() == 2


def test_inventory_changes_are_read_only_and_scoped(
    client, alice, system, other_system, inventory_payload
):
    changed = dict(inventory_payload, installation="changed")
    for target in (system, other_system):
        services.inventory_ingest(system=target, payload=inventory_payload, size=100)
        services.inventory_ingest(system=target, payload=changed, size=100)
    _as(client, alice)

    listed = client.get(reverse("admin:fleet_app_inventorychange_changelist"))
    mine = InventoryChange.objects.filter(system=system).first()
    detail = client.get(reverse("admin:fleet_app_inventorychange_change", args=[mine.pk]))

    assert {c.system_id for c in listed.context["cl"].result_list} == {system.pk}
    assert detail.status_code == 200
    assert (
        client.post(
            reverse("admin:fleet_app_inventorychange_change", args=[mine.pk]), {"path": "x"}
        ).status_code
        == 403
    )
