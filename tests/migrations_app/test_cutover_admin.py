"""The cutover admin: proxy mappings listed, filtered and searched cheaply and scoped,
changed only through actions that call services; rotation runs, anomalies, day counts."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from fleet_app.models import AuditEntry, User
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping, RotationRun
from tests.conftest import basic_auth
from tests.factories import UserFactory, make_mapping

MAPPINGS = reverse("admin:migrations_app_legacymapping_changelist")
RUNS = reverse("admin:migrations_app_rotationrun_changelist")
ANOMALIES = reverse("admin:migrations_app_fingerprintanomaly_changelist")
DAYS = reverse("admin:migrations_app_cutoverday_changelist")


def _mapping_url(mapping):
    return reverse("admin:migrations_app_legacymapping_change", args=[mapping.pk])


def _as(client, user):
    client.force_login(user)
    return client


def _action(client, url, name, *objects):
    # Confirmed: the second POST, the one the confirmation page sends.
    return client.post(
        url,
        {
            "action": name,
            "_selected_action": [o.pk for o in objects],
            "index": 0,
            "confirmed": "yes",
        },
    )


def _listed(client, url, query=""):
    return list(client.get(f"{url}?{query}").context["cl"].result_list)


def _rotate(client, mapping):
    return client.get(
        "/proxy/credentials",
        HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, mapping.legacy_token),
    )


def _heartbeat(client, data):
    return client.post(
        "/collect/api/systems/heartbeat",
        HTTP_AUTHORIZATION=basic_auth(data["system_key"], data["system_secret"]),
    )


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def root(db):
    return User.objects.create_superuser(email="root@example.com", password="x" * 12)


@pytest.fixture
def mapping(customer):
    return make_mapping(customer, legacy_system_id="a-legacy", legacy_token="a-token")


@pytest.fixture
def other_mapping(other_customer):
    return make_mapping(other_customer, legacy_system_id="b-legacy", legacy_token="b-token")


# --- Scoping ------------------------------------------------------------------------------


def test_alice_sees_the_mappings_below_her_distributor_and_not_charlies(
    client, alice, mapping, other_mapping
):
    _as(client, alice)

    foreign = client.get(_mapping_url(other_mapping))

    assert _listed(client, MAPPINGS) == [mapping]
    assert client.get(_mapping_url(mapping)).status_code == 200
    # Outside the subtree is "does not exist", not a page.
    assert foreign.status_code == 302
    assert foreign["Location"] == reverse("admin:index")


def test_charlie_sees_only_his_customers_mappings_and_root_sees_all(
    client, charlie, root, mapping, other_mapping
):
    assert _listed(_as(client, charlie), MAPPINGS) == [other_mapping]
    assert set(_listed(_as(client, root), MAPPINGS)) == {mapping, other_mapping}


def test_a_staff_user_without_an_organization_sees_nothing(client, mapping):
    orphan = UserFactory(organization=None, roles=["admin"])

    # A tenant role means nothing without its organization: refused, not an empty list.
    assert _as(client, orphan).get(MAPPINGS).status_code == 403


def test_anomalies_are_scoped_like_mappings(client, alice, mapping, other_mapping):
    FingerprintAnomaly.objects.create(
        system=mapping.system, kind="unknown", claimed_legacy_system_id="ghost-1"
    )
    FingerprintAnomaly.objects.create(
        system=other_mapping.system, kind="unknown", claimed_legacy_system_id="ghost-2"
    )

    listed = _listed(_as(client, alice), ANOMALIES)

    assert [a.claimed_legacy_system_id for a in listed] == ["ghost-1"]


# --- Filters and search -------------------------------------------------------------------


@pytest.fixture
def one_of_each(customer):
    """A mapping in each state (and a released one, and one with an open anomaly)."""
    now = timezone.now()
    stamps = {
        "legacy": {},
        "rotated": {"rotated_at": now},
        "confirmed": {"rotated_at": now, "confirmed_at": now},
        "fingerprinted": {"rotated_at": now, "confirmed_at": now, "fingerprint_at": now},
        "released": {"rotated_at": now, "confirmed_at": now, "released_at": now},
        "anomalous": {"rotated_at": now},
    }
    made = {}
    for name, fields in stamps.items():
        m = make_mapping(customer, legacy_system_id=f"id-{name}", legacy_token=f"t-{name}")
        LegacyMapping.objects.filter(pk=m.pk).update(**fields)
        made[name] = LegacyMapping.objects.get(pk=m.pk)
    FingerprintAnomaly.objects.create(
        system=made["anomalous"].system, kind="unknown", claimed_legacy_system_id="ghost"
    )
    # A resolved anomaly does not count.
    FingerprintAnomaly.objects.create(
        system=made["legacy"].system,
        kind="unknown",
        claimed_legacy_system_id="old-ghost",
        resolved_at=now,
    )
    return made


@pytest.mark.parametrize(
    "state, expected",
    [
        ("legacy", {"legacy"}),
        ("rotated", {"rotated", "anomalous"}),
        ("confirmed", {"confirmed", "released"}),
        ("fingerprinted", {"fingerprinted"}),
        ("released", {"released"}),
        ("anomaly", {"anomalous"}),
    ],
)
def test_the_state_filter_lists_exactly_the_mappings_in_that_state(
    client, alice, one_of_each, state, expected
):
    _as(client, alice)

    listed = _listed(client, MAPPINGS, f"state={state}")

    assert {m.legacy_system_id for m in listed} == {f"id-{name}" for name in expected}
    # The filter agrees with the state column (released and anomaly cut across states).
    if state not in ("released", "anomaly"):
        assert {m.state for m in listed} == {state}


def test_every_state_adds_up_to_the_whole_list(client, alice, one_of_each):
    _as(client, alice)

    counts = [
        len(_listed(client, MAPPINGS, f"state={s}"))
        for s in ("legacy", "rotated", "confirmed", "fingerprinted")
    ]

    assert sum(counts) == len(_listed(client, MAPPINGS)) == len(one_of_each)


def test_the_date_presence_filters_split_on_the_stamp(client, alice, one_of_each):
    _as(client, alice)

    released = _listed(client, MAPPINGS, "released_at__isnull=False")
    never_rotated = _listed(client, MAPPINGS, "rotated_at__isnull=True")
    unconfirmed = _listed(client, MAPPINGS, "confirmed_at__isnull=True")

    assert {m.legacy_system_id for m in released} == {"id-released"}
    assert {m.legacy_system_id for m in never_rotated} == {"id-legacy"}
    assert {m.legacy_system_id for m in unconfirmed} == {"id-legacy", "id-rotated", "id-anomalous"}


def test_search_finds_a_mapping_by_its_legacy_id_or_its_system_key(
    client, alice, mapping, customer
):
    make_mapping(customer, legacy_system_id="another", legacy_token="t2")
    _as(client, alice)

    by_id = _listed(client, MAPPINGS, "q=a-legacy")
    by_key = _listed(client, MAPPINGS, f"q={mapping.system.system_key}")
    by_lower_key = _listed(client, MAPPINGS, f"q={mapping.system.system_key.lower()}")
    partial = _listed(client, MAPPINGS, "q=legacy")

    assert by_id == by_key == by_lower_key == [mapping]
    assert partial == []  # exact only: the unique indexes, not a scan


def test_search_stays_inside_the_users_subtree(client, alice, other_mapping):
    _as(client, alice)

    assert _listed(client, MAPPINGS, "q=b-legacy") == []
    assert _listed(client, MAPPINGS, f"q={other_mapping.system.system_key}") == []


def test_the_anomaly_filters_and_search(client, root, mapping):
    open_one = FingerprintAnomaly.objects.create(
        system=mapping.system, kind="unknown", claimed_legacy_system_id="ghost-1"
    )
    FingerprintAnomaly.objects.create(
        system=mapping.system,
        kind="mismatch",
        claimed_legacy_system_id="other-1",
        resolved_at=timezone.now(),
    )
    # The platform filters by kind; a tenant is not told the kind (test_tenant_boundaries).
    _as(client, root)

    assert _listed(client, ANOMALIES, "resolved=no") == [open_one]
    assert _listed(client, ANOMALIES, "kind__exact=unknown") == [open_one]
    assert _listed(client, ANOMALIES, "q=ghost") == [open_one]
    assert len(_listed(client, ANOMALIES, "resolved=yes")) == 1


# --- Nothing secret, nothing editable -----------------------------------------------------


@pytest.mark.parametrize("persona", ["alice", "root"])
def test_the_change_page_never_shows_the_token_or_its_digest(client, request, persona, mapping):
    _as(client, request.getfixturevalue(persona))

    body = client.get(_mapping_url(mapping)).content.decode()

    assert mapping.legacy_system_id in body
    assert mapping.system.system_key in body
    assert mapping.legacy_token_digest not in body
    assert mapping.legacy_token not in body
    assert "legacy_token" not in body
    # A read-only page: no form field to edit anything.
    assert 'name="legacy_system_id"' not in body
    assert 'name="_save"' not in body


def test_nothing_is_changed_added_or_deleted_through_a_form(client, root, mapping):
    _as(client, root)

    refused = client.post(_mapping_url(mapping), {"legacy_system_id": "renamed", "_save": "1"})

    assert refused.status_code == 403
    assert client.get(reverse("admin:migrations_app_legacymapping_add")).status_code == 403
    delete = reverse("admin:migrations_app_legacymapping_delete", args=[mapping.pk])
    assert client.get(delete).status_code == 403
    assert LegacyMapping.objects.get(pk=mapping.pk).legacy_system_id == "a-legacy"
    actions = dict(client.get(MAPPINGS).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in actions
    assert {"reopen", "start_rotation"} <= set(actions)


# --- Actions ------------------------------------------------------------------------------


def test_reopen_writes_audit_and_lets_the_legacy_pair_rotate_again(client, alice, mapping):
    data = _rotate(client, mapping).json()["data"]
    assert _heartbeat(client, data).status_code == 200
    assert _rotate(client, mapping).status_code == 409  # confirmed: closed
    _as(client, alice)

    response = _action(client, MAPPINGS, "reopen", mapping)

    assert response.status_code == 302
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.confirmed_at is None and row.reopened_at is not None
    entry = AuditEntry.objects.get(action="mapping.reopen")
    assert entry.actor == alice
    assert entry.object_id == str(mapping.pk)
    assert entry.before["confirmed_at"] is not None
    assert entry.after["confirmed_at"] is None
    assert entry.before["legacy_token_digest"] == "***"
    again = _rotate(client, mapping)
    assert again.status_code == 200
    assert again.json()["data"]["system_secret"] != data["system_secret"]
    assert _heartbeat(client, data).status_code == 401  # the lost secret is dead
    assert _heartbeat(client, again.json()["data"]).status_code == 200


def test_reopen_skips_mappings_that_are_not_confirmed(client, alice, mapping):
    _as(client, alice)

    response = _action(client, MAPPINGS, "reopen", mapping)

    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("0 mapping(s) re-opened" in m and "1 skipped" in m for m in messages)
    assert not AuditEntry.objects.filter(action="mapping.reopen").exists()


def test_reopen_runs_from_the_change_page_too(client, alice, mapping):
    LegacyMapping.objects.filter(pk=mapping.pk).update(
        rotated_at=timezone.now(), confirmed_at=timezone.now()
    )
    _as(client, alice)

    form = {"CHANGE_FORM-action": "reopen", "_selected_action": mapping.pk}
    asked = client.post(_mapping_url(mapping), form)
    # The object's page asks first too, and posts back to itself.
    assert asked.status_code == 200
    assert f'action="{_mapping_url(mapping)}"' in asked.content.decode()
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None
    response = client.post(_mapping_url(mapping), {**form, "confirmed": "yes"})

    assert response.status_code == 302
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is None


def test_a_reader_is_offered_no_action_and_a_forged_one_does_nothing(client, bob, mapping):
    LegacyMapping.objects.filter(pk=mapping.pk).update(
        rotated_at=timezone.now(), confirmed_at=timezone.now()
    )
    _as(client, bob)

    page = client.get(MAPPINGS)
    forged = _action(client, MAPPINGS, "reopen", mapping)

    assert page.status_code == 200
    assert page.context["action_form"] is None
    assert forged.status_code == 200
    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None
    assert not AuditEntry.objects.filter(action="mapping.reopen").exists()


def test_an_action_cannot_reach_a_mapping_outside_the_subtree(client, charlie, mapping):
    LegacyMapping.objects.filter(pk=mapping.pk).update(
        rotated_at=timezone.now(), confirmed_at=timezone.now()
    )
    _as(client, charlie)

    _action(client, MAPPINGS, "reopen", mapping)

    assert LegacyMapping.objects.get(pk=mapping.pk).confirmed_at is not None


def test_resolve_marks_anomalies_resolved_and_audits(client, alice, mapping):
    anomaly = FingerprintAnomaly.objects.create(
        system=mapping.system, kind="unknown", claimed_legacy_system_id="ghost"
    )
    _as(client, alice)

    response = _action(client, ANOMALIES, "resolve", anomaly)
    _action(client, ANOMALIES, "resolve", anomaly)  # again: nothing more

    assert response.status_code == 302
    anomaly.refresh_from_db()
    assert anomaly.resolved_at is not None
    entry = AuditEntry.objects.get(action="anomaly.resolve")
    assert entry.actor == alice
    assert entry.object_id == str(anomaly.pk)
    # Resolved, a new inventory with the same claim opens a new anomaly.
    assert _listed(client, ANOMALIES, "resolved=no") == []


def test_a_reader_cannot_resolve_an_anomaly(client, bob, mapping):
    anomaly = FingerprintAnomaly.objects.create(
        system=mapping.system, kind="unknown", claimed_legacy_system_id="ghost"
    )
    _as(client, bob)

    _action(client, ANOMALIES, "resolve", anomaly)

    assert FingerprintAnomaly.objects.get(pk=anomaly.pk).resolved_at is None


def test_bulk_rotation_starts_a_run_and_links_to_it(
    client, alice, customer, celery_eager, django_capture_on_commit_callbacks
):
    pytest.importorskip("migrations_app.cutover.rotation")
    chosen = [
        make_mapping(customer, legacy_system_id=f"bulk-{i}", legacy_token=f"t{i}") for i in range(3)
    ]
    in_use = chosen[2]
    LegacyMapping.objects.filter(pk=in_use.pk).update(
        rotated_at=timezone.now(), confirmed_at=timezone.now()
    )
    bystander = make_mapping(customer, legacy_system_id="not-chosen", legacy_token="tx")
    _as(client, alice)

    # The task runs eagerly once the action's transaction commits.
    with django_capture_on_commit_callbacks(execute=True):
        response = _action(client, MAPPINGS, "start_rotation", *chosen)

    assert response.status_code == 302
    run = RotationRun.objects.get()
    assert run.created_by == alice
    assert run.filters["ids"] == sorted(m.pk for m in chosen)
    run_url = reverse("admin:migrations_app_rotationrun_change", args=[run.pk])
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any(
        f"Rotation run {run.pk} started: 2 of the 3 selected" in m and run_url in m
        for m in messages
    )
    assert run.state == "succeeded" and run.done == 2
    for m in chosen[:2]:
        row = LegacyMapping.objects.get(pk=m.pk)
        assert row.rotation_count == 1 and row.last_rotation_run_id == run.pk
    # A confirmed mapping's credentials are in use: the run leaves it alone.
    assert LegacyMapping.objects.get(pk=in_use.pk).last_rotation_run_id is None
    assert LegacyMapping.objects.get(pk=bystander.pk).rotation_count == 0
    assert AuditEntry.objects.get(action="mapping.bulk_rotate").actor == alice
    page = client.get(run_url)
    assert page.status_code == 200
    assert "2/2 (100%)" in page.content.decode()
    mapping_page = client.get(_mapping_url(chosen[0])).content.decode()
    assert f"run {run.pk}" in mapping_page
    # The legacy client still fetches (fresh) credentials after a bulk rotation.
    assert _rotate(client, chosen[0]).status_code == 200


def test_bulk_rotation_is_refused_without_the_rotation_module(client, alice, mapping, monkeypatch):
    import sys

    # A None entry in sys.modules makes the import fail, as if the module did not exist.
    monkeypatch.setitem(sys.modules, "migrations_app.cutover.rotation", None)
    _as(client, alice)

    response = _action(client, MAPPINGS, "start_rotation", mapping)

    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("not available" in m for m in messages)
    assert not RotationRun.objects.exists()


def test_bulk_rotation_needs_the_permission_to_add_runs(client, customer, mapping):
    # Support may change mappings (re-open them) but not start runs.
    user = UserFactory(organization=customer, roles=["support"])
    _as(client, user)

    actions = dict(client.get(MAPPINGS).context["action_form"].fields["action"].choices)
    forged = _action(client, MAPPINGS, "start_rotation", mapping)

    assert "reopen" in actions
    assert "start_rotation" not in actions
    assert forged.status_code == 403  # not offered: refused (and audited), never run
    assert not RotationRun.objects.exists()


# --- Lists stay cheap ---------------------------------------------------------------------


def test_the_changelist_runs_a_bounded_number_of_queries(
    client, alice, customer, django_assert_max_num_queries
):
    for i in range(50):
        make_mapping(customer, legacy_system_id=f"legacy-{i:02}", legacy_token=f"token-{i}")
    _as(client, alice)

    # session, user, user's organization (scope), alice's permissions (user, groups),
    # organization filter choices, count (scoped, so real), the page (mappings joined
    # with their system and its organization): 8 whatever the number of mappings; 3 spare.
    with django_assert_max_num_queries(11):
        response = client.get(MAPPINGS)

    assert response.context["cl"].result_count == 50
    assert len(response.context["cl"].result_list) == 50
    body = response.content.decode()
    assert "legacy-49" in body and "token-49" not in body


def test_a_filtered_search_is_bounded_too(client, alice, customer, django_assert_max_num_queries):
    for i in range(20):
        make_mapping(customer, legacy_system_id=f"legacy-{i:02}", legacy_token=f"token-{i}")
    _as(client, alice)

    # As above, plus the system looked up by key for the search: 9; 3 spare.
    with django_assert_max_num_queries(12):
        response = client.get(f"{MAPPINGS}?q=legacy-07&state=legacy")

    assert [m.legacy_system_id for m in response.context["cl"].result_list] == ["legacy-07"]


# --- Runs and days ------------------------------------------------------------------------


def test_a_run_is_listed_with_its_progress_and_shown_with_its_log_and_error(client, alice):
    run = RotationRun.objects.create(
        created_by=alice,
        state="partially_failed",
        phase="rotating",
        total=200,
        done=50,
        failed=3,
        filters={"ids": [1, 2, 3]},
        log="2026-11-20 10:00:00 chunk 1 done\n",
        error="3 mappings <failed>",
    )
    _as(client, alice)

    listing = client.get(RUNS).content.decode()
    detail = client.get(reverse("admin:migrations_app_rotationrun_change", args=[run.pk]))
    body = detail.content.decode()

    assert "50/200 (25%)" in listing
    assert '<progress value="25" max="100"' in listing
    assert detail.status_code == 200
    assert "chunk 1 done" in body
    assert "3 mappings &lt;failed&gt;" in body  # escaped
    assert "3 selected mapping(s)" in body
    assert 'name="_save"' not in body
    assert client.get(reverse("admin:migrations_app_rotationrun_add")).status_code == 403


def test_runs_are_scoped_by_who_started_them(client, alice, charlie, root):
    mine = RotationRun.objects.create(created_by=alice)
    RotationRun.objects.create(created_by=charlie)
    RotationRun.objects.create(created_by=None)  # from a command

    assert _listed(_as(client, alice), RUNS) == [mine]
    assert len(_listed(_as(client, root), RUNS)) == 3


def test_the_day_counts_are_for_superusers_only(client, alice, root, mapping):
    assert CutoverDay.objects.exists()  # the import counted the mapping

    assert _as(client, alice).get(DAYS).status_code == 403
    listed = _listed(_as(client, root), DAYS)

    assert [d.mappings for d in listed] == [1]
    assert client.get(reverse("admin:migrations_app_cutoverday_add")).status_code == 403


@pytest.mark.parametrize("persona", ["alice", "bob", "root"])
def test_every_cutover_admin_page_renders_for_each_role(client, request, persona, mapping):
    user = request.getfixturevalue(persona)
    anomaly = FingerprintAnomaly.objects.create(
        system=mapping.system,
        kind="mismatch",
        claimed_legacy_system_id=mapping.legacy_system_id,
        expected_legacy_system_id="x",
    )
    run = RotationRun.objects.create(created_by=user)
    LegacyMapping.objects.filter(pk=mapping.pk).update(last_rotation_run=run)
    _as(client, user)

    pages = [
        MAPPINGS,
        _mapping_url(mapping),
        ANOMALIES,
        reverse("admin:migrations_app_fingerprintanomaly_change", args=[anomaly.pk]),
        RUNS,
        reverse("admin:migrations_app_rotationrun_change", args=[run.pk]),
        reverse("admin:app_list", args=["migrations_app"]),
        reverse("admin:index"),
    ]
    for url in pages:
        assert client.get(url).status_code == 200, url
    body = client.get(_mapping_url(mapping)).content.decode()
    assert f"run {run.pk}" in body


def test_the_admin_module_loads_without_the_rotation_module():
    """The bulk rotation import is lazy: the admin must not need the rotation module
    (migrations_app.cutover.rotation)."""
    import ast
    import inspect

    from migrations_app.cutover import admin as cutover_admin

    tree = ast.parse(inspect.getsource(cutover_admin))
    top_level = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ]
    assert "rotation" not in top_level and "migrations_app.cutover.rotation" not in top_level
