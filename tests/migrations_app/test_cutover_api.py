"""The cutover staff API under /api/cutover/: summary, stragglers, anomalies, mappings."""

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from fleet_app.models import System
from migrations_app.cutover import services as cutover
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping
from tests.factories import UserFactory, make_mapping

API = "/api/cutover/"


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def olivia(owner):
    """Reader at the owner organization."""
    return UserFactory(email="olivia@example.com", organization=owner, roles=["reader"])


def _ago(**delta):
    return timezone.now() - dt.timedelta(**delta)


def _stamp(mapping, **stamps):
    LegacyMapping.objects.filter(pk=mapping.pk).update(**stamps)


@pytest.fixture
def mix(customer):
    """legacy: m-0 (released), m-1, m-2; rotated: m-3, m-4; confirmed: m-5;
    fingerprinted: m-6, m-7. One open anomaly, one resolved."""
    m = [make_mapping(customer, legacy_system_id=f"m-{i}", legacy_token=f"t-{i}") for i in range(8)]
    _stamp(m[0], created_at=_ago(days=2), released_at=_ago(hours=1))
    _stamp(m[1], created_at=_ago(days=9))
    _stamp(m[2], created_at=_ago(days=5), legacy_last_seen_at=_ago(days=30))
    System.objects.filter(pk=m[2].system_id).update(last_heartbeat_at=_ago(days=3))
    _stamp(m[3], rotated_at=_ago(days=1))
    _stamp(m[4], rotated_at=_ago(days=3))
    _stamp(m[5], rotated_at=_ago(days=2), confirmed_at=_ago(days=2))
    for mapping in m[6:]:
        _stamp(
            mapping, rotated_at=_ago(days=4), confirmed_at=_ago(days=4), fingerprint_at=_ago(days=3)
        )
    cutover.cutover_counters_rebuild()
    FingerprintAnomaly.objects.create(
        system=m[6].system, kind="unknown", claimed_legacy_system_id="ghost-open"
    )
    FingerprintAnomaly.objects.create(
        system=m[7].system,
        kind="mismatch",
        claimed_legacy_system_id="ghost-closed",
        resolved_at=timezone.now(),
    )
    return m


def ids(response):
    return [row["legacy_system_id"] for row in response.json()["results"]]


# --- Permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["summary/", "stragglers/?kind=not_rotated", "anomalies/", "mappings/"]
)
def test_it_requires_authentication(api, db, path):
    assert api.get(API + path).status_code in (401, 403)


@pytest.mark.parametrize(
    "path", ["summary/", "stragglers/?kind=not_rotated", "anomalies/", "mappings/"]
)
def test_staff_below_the_owner_are_refused(api, alice, path):
    api.force_authenticate(alice)

    response = api.get(API + path)

    assert response.status_code == 403
    assert "root organization" in response.json()["detail"]


def test_owner_staff_without_a_role_are_refused(api, owner):
    api.force_authenticate(UserFactory(organization=owner, roles=[]))

    assert api.get(API + "summary/").status_code == 403


def test_a_superuser_is_let_in(api, db):
    api.force_authenticate(UserFactory(organization=None, is_superuser=True))

    assert api.get(API + "summary/").status_code == 200


def test_it_is_read_only(api, olivia, mix):
    api.force_authenticate(olivia)

    assert api.post(API + "mappings/", {}).status_code in (403, 405)
    assert api.delete(f"{API}mappings/{mix[0].pk}/").status_code in (403, 405)


# --- Summary --------------------------------------------------------------------------------


def test_the_summary_has_the_dashboard_numbers(api, olivia, mix):
    api.force_authenticate(olivia)

    data = api.get(API + "summary/").json()

    assert data["totals"] == {
        "mappings": 8,
        "legacy": 3,
        "rotated": 5,
        "confirmed": 3,
        "fingerprinted": 2,
        "released": 1,
    }
    assert data["remaining"] == 6
    assert data["percent_done"] == 25.0
    assert data["decommission_ready"] is False
    assert data["blockers"] == {
        "not_rotated": 3,
        "rotated_unconfirmed": 2,
        "confirmed_unfingerprinted": 1,
        "anomalies_open": 1,
    }
    assert data["projection"]["window_days"] == 7
    # Two fingerprinted three days ago, six to go: 2/7 a day, 21 days.
    assert data["projection"]["fingerprinted_in_window"] == 2
    completion = dt.datetime.fromisoformat(data["projection"]["completion_at"])
    assert abs(completion - (timezone.now() + dt.timedelta(days=21))) < dt.timedelta(minutes=1)


def test_the_summary_says_when_there_is_no_progress(api, olivia):
    CutoverDay.objects.create(day=timezone.now().date() - dt.timedelta(days=9), mappings=4)
    api.force_authenticate(olivia)

    projection = api.get(API + "summary/").json()["projection"]

    assert projection["completion_at"] is None
    assert projection["note"] == "No progress in the last 7 days."


def test_the_summary_costs_the_same_at_any_size(api, olivia, mix, django_assert_num_queries):
    api.force_authenticate(olivia)
    # 1. the caller's role groups (the persona; the root check reads the organization
    # the user object already holds), 2. every CutoverDay row, 3. COUNT open anomalies
    with django_assert_num_queries(3):
        assert api.get(API + "summary/").status_code == 200


# --- Stragglers -----------------------------------------------------------------------------


def test_not_rotated_stragglers_are_oldest_first(api, olivia, mix):
    api.force_authenticate(olivia)

    response = api.get(API + "stragglers/", {"kind": "not_rotated"})

    assert response.status_code == 200
    assert ids(response) == ["m-1", "m-2", "m-0"]
    row = response.json()["results"][1]
    assert row["state"] == "legacy"
    # The heartbeat (3 days) is later than the legacy side's last sighting (30 days).
    contact = dt.datetime.fromisoformat(row["last_contact_at"])
    assert abs(contact - _ago(days=3)) < dt.timedelta(minutes=1)
    assert "legacy_token_digest" not in row


def test_unconfirmed_stragglers_are_by_oldest_rotation(api, olivia, mix):
    api.force_authenticate(olivia)

    assert ids(api.get(API + "stragglers/", {"kind": "unconfirmed"})) == ["m-4", "m-3"]


def test_stragglers_page_with_a_cursor(api, olivia, customer, django_assert_num_queries):
    for i in range(5):
        mapping = make_mapping(customer, legacy_system_id=f"p-{i}", legacy_token=f"t{i}")
        _stamp(mapping, created_at=_ago(days=10 - i))
    api.force_authenticate(olivia)

    first = api.get(API + "stragglers/", {"kind": "not_rotated", "page_size": 2})
    # 1. a page of mappings + system + organization (the persona was read by the first
    # page, on the same user object)
    with django_assert_num_queries(1):
        second = api.get(first.json()["next"])
    third = api.get(second.json()["next"])

    assert ids(first) + ids(second) + ids(third) == [f"p-{i}" for i in range(5)]
    assert third.json()["next"] is None


def test_an_unknown_straggler_kind_is_400(api, olivia, mix):
    api.force_authenticate(olivia)

    for params in ({}, {"kind": "lost"}):
        response = api.get(API + "stragglers/", params)
        assert response.status_code == 400
        assert "kind=not_rotated" in response.json()["kind"]


# --- Anomalies ------------------------------------------------------------------------------


def test_anomalies_are_listed_and_filtered(api, olivia, mix):
    api.force_authenticate(olivia)

    every = api.get(API + "anomalies/").json()["results"]
    open_ = api.get(API + "anomalies/", {"open": "true"}).json()["results"]

    assert [a["claimed_legacy_system_id"] for a in every] == ["ghost-closed", "ghost-open"]
    assert [a["claimed_legacy_system_id"] for a in open_] == ["ghost-open"]
    assert open_[0]["system"]["system_key"] == mix[6].system.system_key


@pytest.mark.parametrize("value", ["-58800", "maybe", "yes please"])
def test_an_open_filter_that_is_not_true_or_false_is_400(api, olivia, mix, value):
    api.force_authenticate(olivia)

    response = api.get(API + "anomalies/", {"open": value})

    assert response.status_code == 400
    assert response.json() == {"open": ["Give true or false."]}


def test_a_wrong_page_size_of_stragglers_is_400(api, olivia, mix):
    api.force_authenticate(olivia)

    response = api.get(API + "stragglers/", {"kind": "not_rotated", "page_size": "null"})

    assert response.status_code == 400
    assert response.json() == {"page_size": ["Give page_size as a whole number from 1 to 1000."]}


# --- Mappings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("legacy", ["m-2", "m-1", "m-0"]),
        ("rotated", ["m-4", "m-3"]),
        ("confirmed", ["m-5"]),
        ("fingerprinted", ["m-7", "m-6"]),
        ("released", ["m-0"]),
    ],
)
def test_mappings_filter_by_state(api, olivia, mix, state, expected):
    api.force_authenticate(olivia)

    response = api.get(API + "mappings/", {"state": state})

    assert response.status_code == 200
    assert ids(response) == expected


def test_an_unknown_state_is_400(api, olivia, mix):
    api.force_authenticate(olivia)

    assert api.get(API + "mappings/", {"state": "gone"}).status_code == 400


def test_mappings_are_found_by_legacy_id_or_system_key(api, olivia, mix):
    api.force_authenticate(olivia)

    by_legacy = api.get(API + "mappings/", {"q": "m-3"})
    by_key = api.get(API + "mappings/", {"q": mix[5].system.system_key})
    nothing = api.get(API + "mappings/", {"q": "m-"})

    assert ids(by_legacy) == ["m-3"]
    assert ids(by_key) == ["m-5"]
    assert ids(nothing) == []


def test_the_mapping_list_costs_the_same_at_any_size(
    api, olivia, mix, customer, django_assert_num_queries
):
    api.force_authenticate(olivia)
    # 1. the caller's role groups (the persona, once per user object), 2. a page of
    # mappings + system + organization
    with django_assert_num_queries(2):
        first = api.get(API + "mappings/")
    for i in range(10):
        make_mapping(customer, legacy_system_id=f"more-{i}", legacy_token=f"x{i}")
    # The same page query, whatever the number of mappings (the persona is known).
    with django_assert_num_queries(1):
        second = api.get(API + "mappings/")
    assert len(first.json()["results"]) == 8
    assert len(second.json()["results"]) == 18


def test_one_mapping_in_detail(api, olivia, mix):
    api.force_authenticate(olivia)

    data = api.get(f"{API}mappings/{mix[5].pk}/").json()

    assert data["legacy_system_id"] == "m-5"
    assert data["state"] == "confirmed"
    assert data["system"]["organization"] == "Customer A"


# --- Schema ---------------------------------------------------------------------------------


def test_the_openapi_schema_still_builds_and_lists_the_cutover(api, olivia):
    api.force_authenticate(olivia)

    response = api.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("summary/", "stragglers/", "anomalies/", "mappings/", "mappings/{id}/"):
        assert API + path in paths, path
    kind = next(p for p in paths[API + "stragglers/"]["get"]["parameters"] if p["name"] == "kind")
    assert kind["required"] is True
    assert kind["schema"]["enum"] == ["not_rotated", "unconfirmed"]


def test_the_schema_says_the_summary_is_one_object(api, olivia):
    api.force_authenticate(olivia)

    paths = api.get("/api/schema/", {"format": "json"}).json()["paths"]

    summary = paths[API + "summary/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert summary["schema"] == {"$ref": "#/components/schemas/Summary"}
