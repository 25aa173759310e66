"""manage.py seed_demo: the demo fleet, loaded once however often it runs."""

import datetime as dt
import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.db.models import Count
from django.test import RequestFactory
from django.utils import timezone

from fleet_app import selectors
from fleet_app.models import (
    AuditEntry,
    Inventory,
    Organization,
    System,
    SystemActivityDay,
    User,
)

PASSWORD_LINE = re.compile(r"Staff login: admin@cutover\.local / (\S+)")

pytestmark = pytest.mark.django_db


def _seed(*args) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def _snapshot() -> dict:
    return {
        "organizations": list(Organization.objects.values_list("name", "kind", "path")),
        "systems": list(
            System.objects.order_by("pk").values_list(
                "organization__name",
                "name",
                "type",
                "registered_at",
                "last_heartbeat_at",
                "last_inventory_at",
                "suspended_at",
            )
        ),
        "inventories": Inventory.objects.count(),
        "activity_days": SystemActivityDay.objects.count(),
        "users": list(User.objects.values_list("email", "password")),
        "audit_entries": AuditEntry.objects.count(),
    }


def test_a_second_run_changes_nothing():
    first_output = _seed()
    first = _snapshot()

    second_output = _seed()

    assert _snapshot() == first
    assert len(first["systems"]) == 300
    assert len({(org, name) for org, name, *_ in first["systems"]}) == 300
    assert "300 systems (300 created)" in first_output
    assert "300 systems (0 created)" in second_output


def test_it_prints_the_staff_password_on_the_first_run_only():
    first_output = _seed()
    second_output = _seed()

    match = PASSWORD_LINE.search(first_output)
    assert match is not None
    assert first_output.count(match.group(1)) == 1
    signing_in = RequestFactory().post("/admin/login/")  # the sign-in lockout needs one
    assert (
        authenticate(signing_in, username="admin@cutover.local", password=match.group(1))
        is not None
    )
    assert PASSWORD_LINE.search(second_output) is None
    assert match.group(1) not in second_output
    assert "admin@cutover.local already exists" in second_output
    assert "manage.py changepassword admin@cutover.local" in second_output
    admin = User.objects.get(email="admin@cutover.local")
    assert admin.is_staff and admin.is_superuser


def test_it_builds_the_commercial_tree():
    _seed()

    kinds = Organization.objects.values_list("kind", flat=True)
    assert sorted(kinds) == sorted(
        ["owner"] + ["distributor"] * 2 + ["reseller"] * 3 + ["customer"] * 8
    )
    owner = Organization.objects.get(name="Cutover Demo Owner")
    assert owner.kind == "owner" and owner.parent is None
    assert not System.objects.exclude(organization__kind="customer").exists()


def test_the_fleet_has_every_status_to_show():
    _seed()

    counts = selectors.fleet_status_counts(System.objects.all())
    assert counts["total"] == 300
    assert counts["active"] > counts["inactive"] > 0
    assert counts["unknown"] > 0
    assert 0 < counts["unregistered"] < counts["unknown"]
    assert 0 < counts["never_inventoried"] < counts["total"] // 2
    assert counts["suspended"] > 0
    silent = System.objects.with_status_filter("inactive")
    assert silent.filter(last_heartbeat_at__lt=timezone.now() - dt.timedelta(days=1)).exists()
    assert silent.filter(last_heartbeat_at__gt=timezone.now() - dt.timedelta(days=1)).exists()
    types = dict(System.objects.values_list("type").annotate(n=Count("pk")))
    assert types["nethserver"] > types["nethsecurity"] > 0
    # Inventories went through the ingest, which kept the demo names.
    assert Inventory.objects.count() == counts["total"] - counts["never_inventoried"]
    assert System.objects.filter(name__startswith="acme-ns8-").count() > 40


def test_the_chart_has_thirty_days_of_shape():
    _seed()

    activity = selectors.fleet_activity_by_day(System.objects.all(), days=30)
    counts = [count for _, count in activity]
    assert all(count > 0 for count in counts)
    assert len(set(counts)) > 5  # not a flat line
    # Today: the systems heard from since midnight UTC — the ones alive now, and those
    # that went quiet earlier today (so not "the active ones", whatever the hour).
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    heard_today = System.objects.filter(last_heartbeat_at__gte=midnight).count()
    assert 0 < counts[-1] == heard_today


def test_refresh_brings_an_old_demo_back_to_life():
    _seed()
    alive = System.objects.with_status_filter("active").count()
    # The demo loaded three days ago: everything has gone quiet since.
    System.objects.exclude(last_heartbeat_at=None).update(
        last_heartbeat_at=timezone.now() - dt.timedelta(days=3)
    )
    before = _snapshot()

    output = _seed("--refresh")

    assert System.objects.with_status_filter("active").count() == alive
    after = _snapshot()
    assert len(after["systems"]) == len(before["systems"])
    assert after["inventories"] == before["inventories"]
    assert "300 systems (0 created)" in output
