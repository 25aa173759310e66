"""GET /dashboard/fleet/: the staff fleet dashboard."""

import datetime as dt
import re

import pytest
from django.utils import timezone

from fleet_app.models import System, SystemActivityDay
from tests.factories import UserFactory, make_system

URL = "/dashboard/fleet/"


def _ago(**delta):
    return timezone.now() - dt.timedelta(**delta)


@pytest.fixture
def fleet(customer):
    """A known fleet: three alive, two silent, one never heard from, one unregistered."""
    inventoried = _ago(hours=1)
    systems = {
        "alive-1": make_system(
            customer,
            name="alive-1",
            last_heartbeat_at=_ago(minutes=1),
            last_inventory_at=inventoried,
            type="nethserver",
        ),
        "alive-2": make_system(
            customer,
            name="alive-2",
            last_heartbeat_at=_ago(minutes=5),
            last_inventory_at=inventoried,
            type="nethserver",
        ),
        "alive-3": make_system(
            customer,
            name="alive-3",
            last_heartbeat_at=_ago(minutes=19),
            last_inventory_at=inventoried,
            type="nethsecurity",
        ),
        "silent-hours": make_system(
            customer,
            name="silent-hours",
            last_heartbeat_at=_ago(hours=2),
            last_inventory_at=inventoried,
            type="nethserver",
        ),
        "silent-days": make_system(
            customer,
            name="silent-days",
            last_heartbeat_at=_ago(days=3),
            type="nethserver",
        ),
        "never": make_system(customer, name="never"),
        "unregistered": make_system(customer, name="unregistered", registered=False),
    }
    # A deleted system counts nowhere.
    make_system(
        customer, name="deleted", last_heartbeat_at=_ago(minutes=1), deleted_at=_ago(days=1)
    )
    return systems


def _login(client, user):
    client.force_login(user)
    return client


def test_it_sends_anonymous_users_to_the_admin_login(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


def test_it_sends_non_staff_users_to_the_admin_login(client, customer):
    user = UserFactory(organization=customer, is_staff=False)

    response = _login(client, user).get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_it_counts_the_fleet_by_status(client, alice, fleet):
    response = _login(client, alice).get(URL)

    assert response.status_code == 200
    assert response.context["counts"] == {
        "total": 7,
        "active": 3,
        "inactive": 2,
        "unknown": 2,
        "suspended": 0,
        "registered": 6,
        "unregistered": 1,
        "never_inventoried": 3,
    }
    html = response.content.decode()
    for tile_id, value in {
        "count-total": 7,
        "count-active": 3,
        "count-inactive": 2,
        "count-unknown": 2,
        "count-suspended": 0,
        "count-registered": 6,
        "count-unregistered": 1,
        "count-never-inventoried": 3,
    }.items():
        assert re.search(rf'id="{tile_id}">\s*{value}\s*<', html), tile_id


def test_it_counts_the_fleet_by_type(client, alice, fleet):
    response = _login(client, alice).get(URL)

    types = [(row["type"], row["count"]) for row in response.context["types"]]
    assert types == [("nethserver", 4), ("", 2), ("nethsecurity", 1)]
    assert "(no type yet)" in response.content.decode()


def test_an_outsider_sees_none_of_them(client, charlie, fleet, other_system):
    response = _login(client, charlie).get(URL)

    assert response.status_code == 200
    assert response.context["counts"]["total"] == 1  # charlie's own cluster-b
    html = response.content.decode()
    for name in fleet:
        assert f">{name}<" not in html
    assert response.context["silent"] == []


def test_a_reader_below_sees_only_their_customer(client, bob, fleet, other_system):
    response = _login(client, bob).get(URL)

    assert response.context["counts"]["total"] == 7


def test_a_superuser_sees_every_organization(client, fleet, other_system, owner):
    admin = UserFactory(organization=owner, is_superuser=True)

    response = _login(client, admin).get(URL)

    assert response.context["counts"]["total"] == 8


def test_it_lists_silent_systems_longest_silent_first_with_admin_links(client, alice, fleet):
    response = _login(client, alice).get(URL)

    assert [s.name for s in response.context["silent"]] == ["silent-days", "silent-hours"]
    html = response.content.decode()
    for name in ("silent-days", "silent-hours"):
        link = f'<a href="/admin/fleet_app/system/{fleet[name].pk}/change/">{name}</a>'
        assert link in html
    assert html.index(">silent-days<") < html.index(">silent-hours<")


def test_it_lists_systems_that_never_sent_an_inventory(client, alice, fleet):
    response = _login(client, alice).get(URL)

    names = {s.name for s in response.context["never_inventoried"]}
    assert names == {"silent-days", "never", "unregistered"}


def test_it_draws_thirty_days_of_activity(client, alice, fleet):
    today = timezone.now().date()
    SystemActivityDay.objects.bulk_create(
        [
            SystemActivityDay(system=fleet["alive-1"], day=today - dt.timedelta(days=d))
            for d in range(3)
        ]
        + [SystemActivityDay(system=fleet["alive-2"], day=today)]
        # Outside the window: not drawn.
        + [SystemActivityDay(system=fleet["alive-3"], day=today - dt.timedelta(days=30))]
    )

    response = _login(client, alice).get(URL)

    bars = response.context["chart"]["bars"]
    assert len(bars) == 30
    assert bars[0]["day"] == today - dt.timedelta(days=29)
    assert [bar["count"] for bar in bars[-3:]] == [1, 1, 2]
    assert sum(bar["count"] for bar in bars) == 4
    html = response.content.decode()
    assert html.count('<rect class="bar"') == 30
    assert today.strftime("%b %-d") in html  # today's date labels the last bar


def _fleet_of(organization, size):
    for index in range(size):
        system = make_system(organization, name=f"cluster-{index}", type="nethserver")
        heartbeat = _ago(minutes=1) if index % 2 else _ago(days=index % 5 + 1)
        System.objects.filter(pk=system.pk).update(last_heartbeat_at=heartbeat)
        SystemActivityDay.objects.create(system=system, day=heartbeat.date())


@pytest.mark.parametrize("size", [5, 50])
def test_it_costs_the_same_queries_for_any_fleet_size(
    client, alice, customer, size, django_assert_num_queries
):
    _fleet_of(customer, size)
    _login(client, alice)
    # 1. SELECT the session
    # 2. SELECT the user
    # 3. SELECT the user's role groups (the persona, once per request)
    # 4. SELECT the user's organization (its path scopes everything below)
    # 5. aggregate: counts by status
    # 6. GROUP BY type
    # 7. SELECT the user's permissions and 8. their groups' permissions (the admin's
    #    app list, computed by admin.site.each_context for the page header)
    # 9. silent systems with their organization (bounded list)
    # 10. never-inventoried systems with their organization (bounded list)
    # 11. GROUP BY day: systems seen over the last 30 days
    # 12. aggregate: the inventory inbox's depth, oldest row and failed rows
    with django_assert_num_queries(12):
        response = client.get(URL)
    assert response.status_code == 200
    assert response.context["counts"]["total"] == size
