"""The demo tells one story: every dashboard's total is the sum of its parts, and a number
shown on two pages (a dashboard, the staff API it comes from, /metrics, the admin) is the
same number on both.

The demo is loaded the way `make run` loads it (seed_demo, seed_demo_cutover and
seed_demo_backups, each with --refresh), then read as the staff superuser.
"""

import datetime as dt
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import F, Q
from django.utils import timezone

from backups_app.models import ClusterBackup
from fleet_app.models import Inventory, System, SystemActivityDay, User
from migrations_app.models import FingerprintAnomaly, LegacyMapping

pytestmark = pytest.mark.django_db


SEEDS = ("seed_demo", "seed_demo_cutover", "seed_demo_backups")


def _make_run_seeds() -> None:
    for command in SEEDS:
        call_command(command, "--refresh", stdout=StringIO())


@pytest.fixture
def demo(settings, tmp_path):
    settings.METRICS_PUBLIC = True
    settings.METRICS_TOKEN = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "backups"
    settings.BACKUP_LOCAL_FSYNC = False
    _make_run_seeds()
    return User.objects.get(email="admin@cutover.local")


@pytest.fixture
def staff(client, demo):
    client.force_login(demo)
    return client


def _html(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def _value(html: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}"[^>]*>\s*([\d,]+)\s*<', html)
    assert match, element_id
    return int(match.group(1).replace(",", ""))


def _heading_count(html: str, heading_id: str) -> int:
    match = re.search(rf'<h2 id="{heading_id}">[^<]*\(([\d,]+)\)</h2>', html)
    assert match, heading_id
    return int(match.group(1).replace(",", ""))


def _gauge(metrics: str, name: str, **labels: str) -> int:
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{label_text}}}" if labels else name) + r" ([\d.e+]+)\n"
    match = re.search(pattern, metrics)
    assert match, (name, labels)
    return int(float(match.group(1)))


def _admin_count(client, query: str) -> int:
    html = _html(client, f"/admin/fleet_app/system/?{query}")
    match = re.search(r'([\d,]+) systems?\s*(<a [^>]*class="showall">[^<]*</a>\s*)?</nav>', html)
    assert match, query
    return int(match.group(1).replace(",", ""))


def _fleet_dashboard_adds_up_and_agrees_with_the_api_metrics_and_admin(staff):
    html = _html(staff, "/dashboard/fleet/")
    tiles = {
        key: _value(html, f"count-{key}")
        for key in (
            "total",
            "active",
            "inactive",
            "unknown",
            "suspended",
            "registered",
            "unregistered",
            "never-inventoried",
        )
    }
    api = staff.get("/api/fleet-summary/").json()
    metrics = staff.get("/metrics").content.decode()

    assert tiles["total"] == tiles["active"] + tiles["inactive"] + tiles["unknown"]
    assert tiles["total"] == tiles["registered"] + tiles["unregistered"]
    assert tiles["total"] == sum(
        int(n) for n in re.findall(r'class="type-count" data-type="[^"]*">(\d+)<', html)
    )
    assert tiles["total"] == sum(row["count"] for row in api["types"])
    assert {key.replace("-", "_"): value for key, value in tiles.items()} == {
        key: value for key, value in api["status"].items()
    }
    assert _heading_count(html, "silent-title") == tiles["inactive"]
    assert _heading_count(html, "never-title") == tiles["never-inventoried"]
    for status in ("active", "inactive", "unknown"):
        assert _gauge(metrics, "cutover_systems", status=status) == tiles[status]
        assert _admin_count(staff, f"status={status}") == tiles[status]
    assert _gauge(metrics, "cutover_systems_unregistered") == tiles["unregistered"]
    assert _gauge(metrics, "cutover_systems_never_inventoried") == tiles["never-inventoried"]
    assert _admin_count(staff, "") == tiles["total"]
    # Every status has something to show.
    assert all(tiles[key] > 0 for key in ("active", "inactive", "unknown", "unregistered"))


def _seen_today_agrees_with_the_heartbeats(staff):
    html = _html(staff, "/dashboard/fleet/")
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today_bar = re.findall(r'data-day="(\d{4}-\d\d-\d\d)" data-count="(\d+)"', html)[-1]
    heard_today = System.objects.not_deleted().filter(last_heartbeat_at__gte=midnight).count()

    assert today_bar == (now.date().isoformat(), str(heard_today))
    if now - midnight > System.heartbeat_timeout():
        # Every active system has called today, so it is among those seen today.
        assert _value(html, "count-active") <= heard_today
    # Each system's last heartbeat has its day in the chart's data.
    heard = System.objects.exclude(last_heartbeat_at=None)
    days = set(SystemActivityDay.objects.values_list("system_id", "day"))
    missing = [s.name for s in heard if (s.pk, s.last_heartbeat_at.date()) not in days]
    assert missing == []


def _every_system_tells_one_story():
    systems = System.objects.not_deleted()
    # Heard from means registered; inventoried means heard from; nothing happens before
    # the system exists.
    assert not systems.filter(registered_at=None).exclude(last_heartbeat_at=None).exists()
    assert not systems.filter(last_heartbeat_at=None).exclude(last_inventory_at=None).exists()
    assert not systems.filter(registered_at__lt=F("created_at")).exists()
    # A system that says it was inventoried has the inventory to show for it.
    inventoried = set(systems.exclude(last_inventory_at=None).values_list("pk", flat=True))
    assert inventoried == set(Inventory.objects.values_list("system_id", flat=True))


def _cutover_adds_up_and_agrees_with_its_rows_the_fleet_and_the_api(staff):
    html = _html(staff, "/dashboard/cutover/")
    tiles = {
        key: _value(html, f"count-{key}")
        for key in (
            "mappings",
            "legacy",
            "rotated",
            "confirmed",
            "fingerprinted",
            "released",
            "anomalies",
        )
    }
    blockers = {
        key: int(value.replace(",", ""))
        for key, value in re.findall(r'data-blocker="(\w+)"><strong>([\d,]+)</strong>', html)
    }
    api = staff.get("/api/cutover/summary/").json()
    metrics = staff.get("/metrics").content.decode()

    assert tiles["mappings"] == tiles["legacy"] + tiles["rotated"]
    assert tiles["rotated"] >= tiles["confirmed"] >= tiles["fingerprinted"] >= tiles["released"]
    assert tiles["mappings"] == (
        blockers["not_rotated"]
        + blockers["rotated_unconfirmed"]
        + blockers["confirmed_unfingerprinted"]
        + tiles["fingerprinted"]
    )
    assert blockers["anomalies_open"] == tiles["anomalies"]
    assert _heading_count(html, "unconfirmed-title") == blockers["rotated_unconfirmed"]
    assert {k: v for k, v in api["totals"].items()} == {
        k: v for k, v in tiles.items() if k != "anomalies"
    }
    assert api["remaining"] == tiles["mappings"] - tiles["fingerprinted"]
    assert {k: v for k, v in api["blockers"].items() if v} == blockers
    for state in ("legacy", "rotated", "confirmed", "fingerprinted", "released"):
        assert _gauge(metrics, "cutover_mappings", state=state) == tiles[state]
    assert _gauge(metrics, "cutover_mappings_total") == tiles["mappings"]
    assert _gauge(metrics, "cutover_fingerprint_anomalies_open") == tiles["anomalies"]

    # The day counters agree with the mappings' own stamps ...
    mappings = LegacyMapping.objects.all()
    assert mappings.count() == tiles["mappings"]
    assert mappings.exclude(rotated_at=None).count() == tiles["rotated"]
    assert mappings.exclude(confirmed_at=None).count() == tiles["confirmed"]
    assert mappings.exclude(fingerprint_at=None).count() == tiles["fingerprinted"]
    assert mappings.exclude(released_at=None).count() == tiles["released"]
    # ... and with their systems: rotated ones are registered, confirmed ones heartbeat
    # (active on the fleet dashboard), fingerprinted ones sent the inventory that says so.
    mapped = System.objects.filter(legacy_mapping__isnull=False)
    assert mapped.exclude(registered_at=None).count() == tiles["rotated"]
    assert mapped.with_status_filter("active").count() == tiles["confirmed"]
    fingerprinted = mapped.exclude(legacy_mapping__fingerprint_at=None)
    assert not fingerprinted.filter(last_inventory_at=None).exists()
    for system in fingerprinted.select_related("legacy_mapping"):
        claims = Inventory.objects.filter(
            system=system,
            data__facts__migration__from_legacy_system_id=(system.legacy_mapping.legacy_system_id),
        )
        assert claims.exists(), system.name
    for anomaly in FingerprintAnomaly.objects.filter(resolved_at=None):
        assert anomaly.inventory is not None
        claimed = anomaly.inventory.data["facts"]["migration"]["from_legacy_system_id"]
        assert claimed == anomaly.claimed_legacy_system_id


def _backup_dashboard_adds_up_and_agrees_with_the_fleet(staff):
    html = _html(staff, "/dashboard/backups/")
    fleet = _html(staff, "/dashboard/fleet/")
    tiles = {key: _value(html, f"count-{key}") for key in ("total", "fresh", "stale", "never")}
    metrics = staff.get("/metrics").content.decode()

    assert tiles["total"] == tiles["fresh"] + tiles["stale"] + tiles["never"]
    assert all(tiles[key] > 0 for key in ("fresh", "stale", "never"))
    assert tiles["total"] == _value(fleet, "count-total")
    assert _heading_count(html, "stale-title") == tiles["stale"]
    registered_never = _heading_count(html, "never-title")
    unregistered_never = System.objects.not_deleted().filter(
        Q(registered_at=None), ~Q(pk__in=_backed_up())
    )
    assert registered_never + unregistered_never.count() == tiles["never"]
    for freshness in ("fresh", "stale", "never"):
        assert (
            _gauge(metrics, "cutover_cluster_backup_systems", freshness=freshness)
            == tiles[freshness]
        )


def _backed_up():
    return ClusterBackup.objects.values("system_id")


def _zfs_dashboard_adds_up(staff):
    html = _html(staff, "/dashboard/zfs/")

    jobs = _value(html, "count-jobs")
    assert jobs == _value(html, "count-ok") + _value(html, "count-warn") + _value(
        html, "count-crit"
    )
    assert _heading_count(html, "divergences-title") == _value(html, "count-divergences")


# The demo takes a few seconds to load: two tests read it, each through several pages.


def test_the_fleet_pages_add_up_and_agree(staff):
    _fleet_dashboard_adds_up_and_agrees_with_the_api_metrics_and_admin(staff)
    _seen_today_agrees_with_the_heartbeats(staff)
    _every_system_tells_one_story()


def test_the_cutover_and_backup_pages_add_up_and_agree(staff):
    _cutover_adds_up_and_agrees_with_its_rows_the_fleet_and_the_api(staff)
    _backup_dashboard_adds_up_and_agrees_with_the_fleet(staff)
    _zfs_dashboard_adds_up(staff)


def _fresh_backups() -> int:
    cutoff = timezone.now() - dt.timedelta(days=2)
    return System.objects.filter(cluster_backups__uploaded_at__gte=cutoff).distinct().count()


def test_make_run_again_revives_a_dark_demo(demo):
    alive = System.objects.with_status_filter("active").count()
    fresh = _fresh_backups()
    backups = ClusterBackup.objects.count()
    # The demo was left alone for three days: everything has gone quiet since.
    three_days = dt.timedelta(days=3)
    System.objects.exclude(last_heartbeat_at=None).update(
        last_heartbeat_at=F("last_heartbeat_at") - three_days
    )
    ClusterBackup.objects.update(uploaded_at=F("uploaded_at") - three_days)
    assert System.objects.with_status_filter("active").count() == 0
    assert _fresh_backups() == 0

    _make_run_seeds()

    assert System.objects.with_status_filter("active").count() == alive
    assert _fresh_backups() == fresh
    assert ClusterBackup.objects.count() == backups  # dated again, none added
