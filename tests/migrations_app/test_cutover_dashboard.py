"""GET /dashboard/cutover/: totals, readiness, burn-down, projection, stragglers."""

import datetime as dt
import json
import re

import pytest
from django.utils import timezone

from fleet_app import services as fleet_services
from fleet_app.demo import ns8_inventory
from fleet_app.models import System
from migrations_app.cutover import services as cutover
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping, RotationRun
from tests.conftest import basic_auth
from tests.factories import UserFactory, make_mapping, make_system

URL = "/dashboard/cutover/"


@pytest.fixture(autouse=True)
def fresh_throttle():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def olivia(owner):
    """Reader at the owner organization: sees the global cutover numbers."""
    return UserFactory(email="olivia@example.com", organization=owner, roles=["reader"])


def _ago(**delta):
    return timezone.now() - dt.timedelta(**delta)


def _login(client, user):
    client.force_login(user)
    return client


def _mappings(organization, count, prefix="m"):
    return [
        make_mapping(organization, legacy_system_id=f"{prefix}-{i:03d}", legacy_token=f"t-{i}")
        for i in range(count)
    ]


def _stamp(mapping, **stamps):
    LegacyMapping.objects.filter(pk=mapping.pk).update(**stamps)


@pytest.fixture
def mix(customer):
    """Ten mappings: three legacy (one released), two rotated, one confirmed, four
    fingerprinted; one open and one resolved anomaly. Counters rebuilt from the stamps."""
    m = _mappings(customer, 10)
    # Legacy, imported in an order that differs from the primary keys.
    _stamp(m[0], created_at=_ago(days=3), legacy_last_seen_at=_ago(days=40))
    _stamp(m[1], created_at=_ago(days=9), last_attempt_at=_ago(hours=5))
    _stamp(m[2], created_at=_ago(days=5), released_at=_ago(days=1))
    System.objects.filter(pk=m[1].system_id).update(last_heartbeat_at=_ago(days=2))
    # Rotated, never confirmed, the later pk rotated first.
    _stamp(m[3], rotated_at=_ago(days=1))
    _stamp(m[4], rotated_at=_ago(days=2))
    _stamp(m[5], rotated_at=_ago(days=2), confirmed_at=_ago(days=2))
    for mapping in m[6:]:
        _stamp(
            mapping,
            rotated_at=_ago(days=4),
            confirmed_at=_ago(days=4),
            fingerprint_at=_ago(days=3),
        )
    cutover.cutover_counters_rebuild()
    FingerprintAnomaly.objects.create(
        system=m[6].system, kind="unknown", claimed_legacy_system_id="ghost-1"
    )
    FingerprintAnomaly.objects.create(
        system=m[7].system,
        kind="unknown",
        claimed_legacy_system_id="ghost-2",
        resolved_at=timezone.now(),
    )
    return m


# --- Access ---------------------------------------------------------------------------------


def test_it_sends_anonymous_users_to_the_admin_login(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


def test_it_sends_non_staff_users_to_the_admin_login(client, owner):
    user = UserFactory(organization=owner, is_staff=False, roles=["admin"])

    response = _login(client, user).get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_staff_below_the_owner_are_refused_with_a_reason(client, alice):
    response = _login(client, alice).get(URL)

    assert response.status_code == 403
    assert "root organization" in response.content.decode()


def test_owner_staff_without_a_role_are_refused(client, owner):
    user = UserFactory(organization=owner, roles=[])

    assert _login(client, user).get(URL).status_code == 403


def test_owner_staff_with_a_role_and_superusers_see_it(client, olivia, owner):
    assert _login(client, olivia).get(URL).status_code == 200
    root = UserFactory(organization=None, is_superuser=True)
    assert _login(client, root).get(URL).status_code == 200


# --- Numbers --------------------------------------------------------------------------------


def _tile(html, name):
    match = re.search(rf'id="count-{name}" data-value="(\d+)"', html)
    assert match, name
    return int(match.group(1))


def test_it_counts_a_known_mix(client, olivia, mix):
    response = _login(client, olivia).get(URL)

    assert response.status_code == 200
    summary = response.context["summary"]
    html = response.content.decode()
    expected = {
        "mappings": 10,
        "legacy": 3,
        "rotated": 7,
        "confirmed": 5,
        "fingerprinted": 4,
        "released": 1,
        "anomalies": 1,
    }
    assert {name: _tile(html, name) for name in expected} == expected
    assert summary.percent_done == 40.0
    assert re.search(r'id="percent-done">40.0<', html)
    assert summary.remaining == 6
    assert not summary.decommission_ready
    assert summary.blockers == {
        "not_rotated": 3,
        "rotated_unconfirmed": 2,
        "confirmed_unfingerprinted": 1,
        "anomalies_open": 1,
    }
    assert 'data-ready="no"' in html
    for key, count in summary.blockers.items():
        assert re.search(rf'data-blocker="{key}"><strong>{count}</strong>', html), key


def test_the_totals_come_from_the_counters_not_from_the_mappings(client, olivia, mix):
    # The counters are what the page reads: drift them and the page follows.
    CutoverDay.objects.create(day=timezone.now().date() - dt.timedelta(days=100), mappings=90)

    response = _login(client, olivia).get(URL)

    assert response.context["summary"].mappings == 100
    assert _tile(response.content.decode(), "mappings") == 100


def test_no_mappings_is_not_ready(client, olivia):
    response = _login(client, olivia).get(URL)

    assert response.status_code == 200
    assert not response.context["summary"].decommission_ready
    assert "No mappings imported yet" in response.content.decode()


# --- Readiness ------------------------------------------------------------------------------


def _rotate(client, mapping):
    data = client.get(
        "/proxy/credentials",
        HTTP_AUTHORIZATION=basic_auth(mapping.legacy_system_id, mapping.legacy_token),
    ).json()["data"]
    return {"HTTP_AUTHORIZATION": basic_auth(data["system_key"], data["system_secret"])}


def _inventory(client, header, from_id):
    payload = ns8_inventory(
        seed=5, modules=2, from_legacy_system_id=from_id, migrated_at="2026-11-20T10:00:00Z"
    )
    response = client.post(
        "/collect/api/systems/inventory",
        json.dumps(payload),
        content_type="application/json",
        **header,
    )
    assert response.status_code == 202
    fleet_services.inventory_inbox_drain()


def test_ready_flips_exactly_when_the_last_mapping_is_fingerprinted(client, olivia, customer):
    first, last = _mappings(customer, 2)
    _inventory(client, _rotate(client, first), first.legacy_system_id)
    header = _rotate(client, last)
    client.post("/collect/api/systems/heartbeat", **header)  # confirmed, no inventory yet

    before = _login(client, olivia).get(URL)
    client.logout()
    _inventory(client, header, last.legacy_system_id)
    after = _login(client, olivia).get(URL)

    assert not before.context["summary"].decommission_ready
    assert [b["key"] for b in before.context["blockers"]] == ["confirmed_unfingerprinted"]
    assert 'data-ready="no"' in before.content.decode()
    assert after.context["summary"].decommission_ready
    assert after.context["blockers"] == []
    html = after.content.decode()
    assert 'data-ready="yes"' in html
    assert 'id="blockers"' not in html
    assert re.search(r'id="percent-done">100.0<', html)


def test_open_anomalies_are_listed_but_do_not_hold_back_readiness(client, olivia, customer):
    (mapping,) = _mappings(customer, 1)
    _stamp(mapping, rotated_at=_ago(days=1), confirmed_at=_ago(days=1), fingerprint_at=_ago(days=1))
    cutover.cutover_counters_rebuild()
    FingerprintAnomaly.objects.create(
        system=mapping.system, kind="unknown", claimed_legacy_system_id="ghost"
    )

    response = _login(client, olivia).get(URL)

    assert response.context["summary"].decommission_ready
    assert 'id="ready-anomalies"' in response.content.decode()


def test_one_percent_short_never_reads_100(client, olivia):
    today = timezone.now().date()
    CutoverDay.objects.create(day=today, mappings=10_000, fingerprinted=9_999)

    summary = _login(client, olivia).get(URL).context["summary"]

    assert summary.percent_done == 99.9
    assert not summary.decommission_ready


# --- Lists ----------------------------------------------------------------------------------


def test_stragglers_are_listed_oldest_first_with_their_last_contact(client, olivia, mix):
    response = _login(client, olivia).get(URL)

    not_rotated = response.context["not_rotated"]
    assert [m.legacy_system_id for m in not_rotated] == ["m-001", "m-002", "m-000"]
    contacts = {m.legacy_system_id: m.last_contact_at for m in not_rotated}
    # m-001: heartbeat 2 days ago, proxy attempt 5 hours ago: the latest wins.
    assert timezone.now() - contacts["m-001"] < dt.timedelta(hours=5, minutes=1)
    assert contacts["m-000"] < _ago(days=39)  # only the legacy side has seen it
    assert contacts["m-002"] is None
    unconfirmed = response.context["unconfirmed"]
    assert [m.legacy_system_id for m in unconfirmed] == ["m-004", "m-003"]
    html = response.content.decode()
    assert html.index('data-legacy-id="m-001"') < html.index('data-legacy-id="m-000"')
    assert "released" in html


def test_stragglers_are_capped_at_fifty(client, olivia, customer):
    _mappings(customer, 52)
    cutover.cutover_counters_rebuild()

    response = _login(client, olivia).get(URL)

    assert len(response.context["not_rotated"]) == 50
    assert "The 50 oldest mappings never rotated." in response.content.decode()


def test_open_anomalies_and_latest_runs_are_shown(client, olivia, mix):
    for state, done in (("succeeded", 10), ("running", 4)):
        RotationRun.objects.create(state=state, total=10, done=done, created_by=olivia)

    response = _login(client, olivia).get(URL)

    anomalies = response.context["anomalies"]
    assert [a.claimed_legacy_system_id for a in anomalies] == ["ghost-1"]
    runs = response.context["runs"]
    assert [(r.state, r.percent) for r in runs] == [("running", 40), ("succeeded", 100)]
    html = response.content.decode()
    assert "ghost-1" in html and "ghost-2" not in html
    assert "4 / 10" in html


# --- Burn-down and projection ---------------------------------------------------------------


def test_the_projection_extrapolates_the_last_seven_days(client, olivia):
    today = timezone.now().date()
    CutoverDay.objects.create(day=today - dt.timedelta(days=30), mappings=100)
    CutoverDay.objects.create(day=today - dt.timedelta(days=10), fingerprinted=50)
    # Outside the window (today - 7): not part of the rate.
    CutoverDay.objects.create(day=today - dt.timedelta(days=7), fingerprinted=6)
    for back in range(7):  # today - 6 … today: 2 a day
        CutoverDay.objects.create(day=today - dt.timedelta(days=back), fingerprinted=2)

    response = _login(client, olivia).get(URL)

    summary = response.context["summary"]
    assert summary.remaining == 100 - 50 - 6 - 14
    assert summary.fingerprinted_in_window == 14
    assert summary.rate_per_day == 2
    # 30 remaining at 2 a day: 15 days from now.
    projected = summary.projected_completion_at
    assert abs(projected - (summary.now + dt.timedelta(days=15))) < dt.timedelta(seconds=1)
    html = response.content.decode()
    assert projected.strftime("%Y-%m-%d") in html
    assert 'id="burndown-projection"' in html
    # 15 days fit in the extended axis: the line reaches zero on a labelled day.
    assert response.context["chart"]["projection"]["reaches_zero"]
    assert re.search(r'class="day-label projected"[^>]*>' + projected.strftime("%b %-d"), html)


def test_no_progress_in_the_window_has_no_projection(client, olivia):
    today = timezone.now().date()
    CutoverDay.objects.create(day=today - dt.timedelta(days=20), mappings=10, fingerprinted=3)
    CutoverDay.objects.create(day=today - dt.timedelta(days=7), fingerprinted=1)

    response = _login(client, olivia).get(URL)

    assert response.context["summary"].projected_completion_at is None
    html = response.content.decode()
    assert "No progress in the last 7 days." in html
    assert 'id="burndown-projection"' not in html


def test_the_burn_down_is_cumulative_per_day(client, olivia):
    today = timezone.now().date()
    CutoverDay.objects.create(day=today - dt.timedelta(days=3), mappings=10, rotated=4)
    CutoverDay.objects.create(day=today - dt.timedelta(days=1), rotated=2, fingerprinted=5)

    chart = _login(client, olivia).get(URL).context["chart"]

    assert chart["days"] == 14  # at least two weeks, gaps filled
    remaining = [float(xy.split(",")[1]) for xy in chart["remaining"].split()]
    not_rotated = [float(xy.split(",")[1]) for xy in chart["not_rotated"].split()]
    baseline = chart["baseline"]
    # SVG y grows downwards: zero before the import, 10 for three days, then 5.
    assert remaining[:10] == [baseline] * 10
    assert remaining[10] == remaining[11] < baseline
    assert remaining[12] == remaining[13] > remaining[11]
    assert remaining[10] < not_rotated[10] == not_rotated[11] < baseline  # 6 of 10 left
    assert not_rotated[12] > not_rotated[11]  # 2 more rotated: 4 left


# --- Cost -----------------------------------------------------------------------------------


def _fleet_of(organization, size):
    mappings = _mappings(organization, size, prefix=f"s{size}")
    for index, mapping in enumerate(mappings):
        step = index % 5
        stamps = {}
        if step >= 1:
            stamps["rotated_at"] = _ago(days=3)
        if step >= 2:
            stamps["confirmed_at"] = _ago(days=2)
        if step >= 3:
            stamps["fingerprint_at"] = _ago(days=1)
        if stamps:
            _stamp(mapping, **stamps)
    cutover.cutover_counters_rebuild()
    for index in range(min(size, 25)):
        FingerprintAnomaly.objects.create(
            system=mappings[index].system, kind="unknown", claimed_legacy_system_id=f"g-{index}"
        )
    for _ in range(min(size, 8)):
        RotationRun.objects.create(total=size, done=size // 2)


@pytest.mark.parametrize("size", [5, 50])
def test_it_costs_the_same_queries_for_any_number_of_mappings(
    client, olivia, customer, size, django_assert_num_queries
):
    _fleet_of(customer, size)
    make_system(customer, name="native")  # a system without a mapping changes nothing
    _login(client, olivia)
    # 1. SELECT the session
    # 2. SELECT the user
    # 3. SELECT the user's role groups (the persona) and 4. the user's organization
    #    (a role at the root organization reads the fleet-wide numbers)
    # 5. SELECT every CutoverDay row (totals, projection and burn-down)
    # 6. COUNT open anomalies
    # 7. not rotated, oldest first, LIMIT 50 (mapping_not_rotated_idx) + system + org
    # 8. rotated, unconfirmed, LIMIT 50 (mapping_unconfirmed_idx) + system + org, with
    #    the count of each one's pending secrets
    # 9. open anomalies, latest 20, + system + org
    # 10. latest 5 rotation runs + who started them
    # 11. /proxy/credentials calls of the last 7 days by outcome (ProxyAttemptDay)
    # 12. mappings whose last call was refused, latest 20 (mapping_refused_idx)
    # 13. knocking after cutover, latest 50 (mapping_knocked_idx)
    # (The header's links and the admin's app list come from the permission table: no
    # permission query.)
    with django_assert_num_queries(13):
        response = client.get(URL)
    assert response.status_code == 200
    assert response.context["summary"].mappings == size
