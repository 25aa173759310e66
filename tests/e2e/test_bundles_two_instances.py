"""A bundle between two live instances (tests/e2e/instances.py): A exports one reseller's
subtree, B plans and applies it, each run worked by the instance's own Celery worker.

Then B holds exactly the selection: the same rows per kind (by natural keys), the same
blobs (by sha256), the same cutover dashboard numbers, and not one row or blob of the
tenant left out. A system keeps heartbeating with its credentials on B. An incremental
export after changes on A carries exactly those changes, and the same bundle imported
again writes nothing.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from fleet_app import services
from fleet_app.demo import ns8_inventory
from fleet_app.models import Membership, Quota, System
from migrations_app.bundles import services as bundles
from migrations_app.models import BundleExport, LegacyMapping
from tests.conftest import needs_postgresql
from tests.e2e.instances import AdminSession, Instance
from tests.factories import (
    ClusterBackupFactory,
    FingerprintAnomalyFactory,
    InventoryFactory,
    UserFactory,
    make_mapping,
    make_system,
)

pytestmark = [needs_postgresql, pytest.mark.django_db(transaction=True)]

IMPORTS = "migrations_app_bundleimport"
EXPORTS = "migrations_app_bundleexport"
KINDS = (
    "organizations",
    "users",
    "systems",
    "mappings",
    "anomalies",
    "inventories",
    "cluster_backups",
    "quotas",
    "audit",
)


def basic(key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


# --- A's fleet --------------------------------------------------------------------------------


def seed(a: Instance) -> dict[str, Any]:
    """Two customers under a reseller (the selection) and a tenant beside it (left out)."""
    owner = services.organization_create(actor=None, name="A Owner", kind="owner", parent=None)
    reseller = services.organization_create(
        actor=None, name="Northwind", kind="reseller", parent=owner
    )
    alpha = services.organization_create(
        actor=None, name="Alpha Shop", kind="customer", parent=reseller
    )
    beta = services.organization_create(
        actor=None, name="Beta Shop", kind="customer", parent=reseller
    )
    gamma = services.organization_create(
        actor=None, name="Gamma Corp", kind="customer", parent=owner
    )
    admin = UserFactory(email="Ops@Northwind.example", organization=reseller, roles=["admin"])
    reader = UserFactory(email="reader@alpha.example", organization=alpha, roles=["reader"])
    Membership.objects.create(user=admin, organization=alpha, role="owner")
    Membership.objects.create(user=reader, organization=beta, role="member")
    UserFactory(email="admin@gamma.example", organization=gamma, roles=["admin"])

    legacy = {f"NW-{n}": f"nw-token-{n}-{'x' * 16}" for n in range(5)}
    mappings = {
        lid: make_mapping(alpha if n < 3 else beta, legacy_system_id=lid, legacy_token=token)
        for n, (lid, token) in enumerate(legacy.items())
    }
    plain = {
        "alpha": make_system(alpha, name="alpha-fw"),
        "beta": make_system(beta, name="beta-nas"),
    }
    outside = make_system(gamma, name="gamma-cluster")
    # No legacy mappings outside the selection: the cutover dashboard counts the whole
    # fleet, so A's numbers are the selection's and B's must be the same.
    for n, system in enumerate([plain["alpha"], plain["beta"], outside]):
        InventoryFactory(system=system, data=ns8_inventory(seed=n))
    InventoryFactory(system=plain["alpha"], data=ns8_inventory(seed=9))  # a second one
    ClusterBackupFactory(system=plain["alpha"], content=b"alpha backup " * 700)
    ClusterBackupFactory(system=mappings["NW-0"].system, content=b"nw-0 backup " * 300)
    ClusterBackupFactory(system=plain["beta"], content=b"beta backup " * 900)
    ClusterBackupFactory(system=outside, content=b"gamma backup " * 400)
    FingerprintAnomalyFactory(system=mappings["NW-1"].system, claimed_legacy_system_id="NW-9")
    Quota.objects.create(organization=alpha, resource="systems", limit=40, usage=4)
    Quota.objects.create(user=admin, resource="cyclades.vm", limit=3, usage=1)
    Quota.objects.create(organization=gamma, resource="systems", limit=9, usage=1)

    # One mapping all the way through its cutover on A's server and worker: rotated,
    # native credentials used, fingerprinted by an inventory.
    with a.client() as http:
        rotated = http.get("/proxy/credentials", headers=basic("NW-0", legacy["NW-0"]))
        assert rotated.status_code == 200, rotated.text
        pair = rotated.json()["data"]
        native = basic(pair["system_key"], pair["system_secret"])
        assert http.post("/collect/api/systems/heartbeat", headers=native).status_code == 200
        inventory = ns8_inventory(
            seed=5, modules=3, from_legacy_system_id="NW-0", migrated_at="2026-11-23T01:00:00Z"
        )
        sent = http.post("/collect/api/systems/inventory", headers=native, json=inventory)
        assert sent.status_code == 202, sent.text
        plain_auth = basic(plain["alpha"].system_key, plain["alpha"].issued_secret)
        assert http.post("/collect/api/systems/heartbeat", headers=plain_auth).status_code == 200
    a.wait(
        "A's worker to fingerprint NW-0",
        lambda: LegacyMapping.objects.filter(
            legacy_system_id="NW-0", fingerprint_at__isnull=False
        ).exists(),
    )
    return {
        "owner": owner,
        "reseller": reseller,
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "legacy": legacy,
        "mappings": mappings,
        "plain": plain,
        "outside": outside,
        "rotated": (pair["system_key"], pair["system_secret"]),
    }


# --- What each instance holds -----------------------------------------------------------------

SUBTREE = """
    sel AS (
        SELECT o.id FROM fleet_app_organization o JOIN fleet_app_organization r
        ON o.path LIKE r.path || '%%' WHERE r.slug = %s
    )"""

QUERIES = {
    "organizations": """
        SELECT o.slug, o.name, o.kind,
               CASE WHEN o.parent_id IN (SELECT id FROM sel) THEN p.slug END, o.created_at
        FROM fleet_app_organization o LEFT JOIN fleet_app_organization p ON p.id = o.parent_id
        WHERE o.id IN (SELECT id FROM sel)""",
    "users": """
        SELECT lower(u.email), u.full_name, o.slug, u.is_staff, u.is_active, u.password,
               (SELECT array_agg(g.name ORDER BY g.name) FROM fleet_app_user_groups ug
                JOIN auth_group g ON g.id = ug.group_id WHERE ug.user_id = u.id),
               (SELECT array_agg(mo.slug || ':' || m.role ORDER BY mo.slug, m.role)
                FROM fleet_app_membership m JOIN fleet_app_organization mo
                ON mo.id = m.organization_id WHERE m.user_id = u.id)
        FROM fleet_app_user u JOIN fleet_app_organization o ON o.id = u.organization_id
        WHERE u.organization_id IN (SELECT id FROM sel) AND NOT u.is_superuser""",
    # Heartbeat and inventory times move on whichever side hears from the system.
    "systems": """
        SELECT s.system_key, s.name, o.slug, s.type, s.fqdn, s.version, s.secret_public,
               s.secret_digest, s.created_at, s.registered_at, s.suspended_at, s.deleted_at
        FROM fleet_app_system s JOIN fleet_app_organization o ON o.id = s.organization_id
        WHERE s.organization_id IN (SELECT id FROM sel)""",
    "mappings": """
        SELECT m.legacy_system_id, s.system_key, m.legacy_token_digest, m.rotation_count,
               m.created_at, m.rotated_at, m.confirmed_at, m.fingerprint_at, m.migrated_at,
               m.released_at
        FROM proxy_mappings m JOIN fleet_app_system s ON s.id = m.system_id
        WHERE s.organization_id IN (SELECT id FROM sel)""",
    "anomalies": """
        SELECT s.system_key, a.kind, a.claimed_legacy_system_id, a.first_seen_at,
               a.occurrences, a.resolved_at
        FROM migrations_app_fingerprintanomaly a JOIN fleet_app_system s ON s.id = a.system_id
        WHERE s.organization_id IN (SELECT id FROM sel)""",
    "inventories": """
        SELECT s.system_key, i.received_at, i.size, i.facts_digest, md5(i.data::text)
        FROM fleet_app_inventory i JOIN fleet_app_system s ON s.id = i.system_id
        WHERE s.organization_id IN (SELECT id FROM sel)""",
    "cluster_backups": """
        SELECT b.id, s.system_key, o.slug, b.filename, b.size, b.sha256, b.storage_key,
               b.uploaded_at
        FROM backups_app_clusterbackup b JOIN fleet_app_system s ON s.id = b.system_id
        JOIN fleet_app_organization o ON o.id = b.organization_id
        WHERE b.organization_id IN (SELECT id FROM sel)""",
    "quotas": """
        SELECT coalesce('org:' || o.slug, 'user:' || lower(u.email)), q.resource, q.limit,
               q.usage
        FROM fleet_app_quota q LEFT JOIN fleet_app_organization o ON o.id = q.organization_id
        LEFT JOIN fleet_app_user u ON u.id = q.user_id
        WHERE q.organization_id IN (SELECT id FROM sel)
           OR u.organization_id IN (SELECT id FROM sel)""",
    # The instances' own entries about bundles are each instance's history, not the fleet's.
    "audit": """
        SELECT e.at, e.actor_repr, e.action, e.object_repr, o.slug, e.before, e.after
        FROM fleet_app_auditentry e JOIN fleet_app_organization o ON o.id = e.organization_id
        WHERE e.organization_id IN (SELECT id FROM sel) AND e.action NOT LIKE 'bundle.%%'""",
}


def selection_rows(instance: Instance, root: str) -> dict[str, list[tuple]]:
    """Each kind's rows in the subtree of ``root``, by natural keys, sorted."""
    rows = {}
    for kind, query in QUERIES.items():
        found = instance.sql(f"WITH {SUBTREE} {query}", root)
        rows[kind] = sorted(
            (tuple(json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in row)
             for row in found),
            key=repr,
        )  # fmt: skip
    return rows


def selection_blobs(instance: Instance, root: str) -> dict[str, str]:
    """The selection's objects in the instance's blob folder, and their sha256."""
    keys = {
        key
        for (key,) in instance.sql(
            f"WITH {SUBTREE} SELECT storage_key FROM backups_app_clusterbackup "  # noqa: S608
            "WHERE organization_id IN (SELECT id FROM sel)",
            root,
        )
    }
    return {path: sha for path, sha in instance.blobs().items() if path in keys}


def dashboard(instance: Instance, token: str) -> dict[str, Any]:
    """The cutover dashboard's numbers, from its staff API on the instance's server."""
    with instance.client(token) as http:
        answer = http.get("/api/cutover/summary/")
    assert answer.status_code == 200, answer.text
    numbers = answer.json()
    numbers.pop("as_of")
    numbers["projection"].pop("completion_at")
    return numbers


def row_counts(instance: Instance) -> dict[str, int]:
    tables = (
        "fleet_app_organization", "fleet_app_user", "fleet_app_membership", "fleet_app_system",
        "fleet_app_inventory", "fleet_app_quota", "proxy_mappings",
        "migrations_app_fingerprintanomaly", "backups_app_clusterbackup",
        "migrations_app_bundlerowstate",
    )  # fmt: skip
    counts = {table: instance.count(table) for table in tables}
    counts["audit"] = instance.count("fleet_app_auditentry", "action NOT LIKE 'bundle.%%'")
    return counts


def tables_containing(instance: Instance, text: str) -> list[str]:
    """Every table of the instance's database with a row whose text holds ``text``."""
    tables = [
        name
        for (name,) in instance.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
    ]
    return [
        table
        for table in tables
        if instance.sql(
            f'SELECT EXISTS (SELECT 1 FROM "{table}" t WHERE t::text LIKE %s)',  # noqa: S608
            f"%{text}%",
        )[0][0]
    ]


# --- Runs on each side ------------------------------------------------------------------------


def export_on_a(a: Instance, fleet, **options) -> BundleExport:
    """An export of the reseller's subtree, worked by A's worker."""
    run = bundles.bundle_export_create(
        actor=None,
        organizations=[fleet["reseller"].slug],
        credentials=True,
        inventories="full",
        fmt="tar",
        chunk_size=64 * 1024,
        enqueue=True,
        **options,
    )
    done = a.wait_run(EXPORTS, run.pk)
    assert done["state"] == "succeeded", done
    run.refresh_from_db()
    return run


EXPORT_PAGE = "/admin/migrations_app/bundleexport/{}/change/"
IMPORT_PAGE = "/admin/migrations_app/bundleimport/{}/change/"


def download_from_a(staff_a: AdminSession, export: BundleExport, into: Path) -> Path:
    """The export as one file, downloaded from A's admin (B never reads A's folders)."""
    page = EXPORT_PAGE.format(export.pk)
    with staff_a.http.stream(
        "POST",
        page,
        data={
            AdminSession.ACTION: "download",
            "_selected_action": str(export.pk),
            "index": "0",
            "csrfmiddlewaretoken": staff_a.http.cookies["csrftoken"],
        },
    ) as answer:
        assert answer.status_code == 200, answer.read()[:2000]
        assert answer.headers["content-type"] == "application/x-tar"
        with into.open("wb") as handle:
            for piece in answer.iter_bytes():
                handle.write(piece)
    return into


def plan_on_b(staff_b: AdminSession, bundle: Path) -> tuple[int, dict[str, Any]]:
    """Upload the file in B's admin, mapping A's owner onto B's; B's worker plans it."""
    b = staff_b.instance
    with bundle.open("rb") as handle:
        answer = staff_b.post(
            "/admin/migrations_app/bundleimport/add/",
            {"map_org": "a-owner=b-owner", "on_conflict": "skip", "_start": "1"},
            files={"bundle": (bundle.name, handle, "application/x-tar")},
        )
    assert answer.status_code == 302, answer.text[:3000]
    pk = int(answer.headers["location"].rstrip("/").split("/")[-2])
    done = b.wait_run(IMPORTS, pk)
    assert done["state"] == "succeeded", done
    ((plan,),) = b.sql(f"SELECT plan FROM {IMPORTS} WHERE id = %s", pk)  # noqa: S608
    return pk, plan


def apply_on_b(staff_b: AdminSession, pk: int) -> int:
    """Approve the plan from its page; B's worker applies it. Returns the rows written."""
    b = staff_b.instance
    approved = staff_b.action(IMPORT_PAGE.format(pk), pk, "approve")
    assert approved.status_code == 302, approved.text[:3000]
    done = b.wait_run(IMPORTS, pk)
    assert done["state"] == "succeeded", done
    ((written, applied),) = b.sql(
        f"SELECT written, applied_at FROM {IMPORTS} WHERE id = %s",  # noqa: S608
        pk,
    )
    assert applied is not None
    return written


def changes(plan: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The plan's non-zero verdicts per kind, without what is left alone."""
    return {
        kind: {verdict: n for verdict, n in totals.items() if n and verdict != "unchanged"}
        for kind, totals in plan["kinds"].items()
        if any(n for verdict, n in totals.items() if verdict != "unchanged")
    }


def assert_b_equals_a(a, b, fleet, tokens) -> None:
    root = fleet["reseller"].slug
    on_a, on_b = selection_rows(a, root), selection_rows(b, root)
    for kind in QUERIES:
        assert on_b[kind] == on_a[kind], kind
    assert selection_blobs(b, root) == selection_blobs(a, root)
    assert b.blobs() == selection_blobs(a, root)  # and no other object arrived
    assert dashboard(b, tokens["b"]) == dashboard(a, tokens["a"])


# --- The test ---------------------------------------------------------------------------------


def test_a_selection_moves_from_a_to_b_full_then_incremental(instances):
    a, b = instances
    fleet = seed(a)
    # Each side trusts the other's signing key, through the command staff use.
    a.trust(b)
    b.trust(a)
    tokens = {
        "a": a.superuser("root@a.example", "a long test passphrase"),
        "b": b.superuser("root@b.example", "a long test passphrase"),
    }
    staff_a = AdminSession(a, "root@a.example", "a long test passphrase")
    staff_b = AdminSession(b, "root@b.example", "a long test passphrase")
    incoming = b.root / "incoming"
    incoming.mkdir()
    assert fleet["owner"].slug == "a-owner"
    key, secret = fleet["plain"]["alpha"].system_key, fleet["plain"]["alpha"].issued_secret
    with b.client() as http:
        before = http.post("/collect/api/systems/heartbeat", headers=basic(key, secret))
    assert before.status_code == 401  # B has never heard of it

    # Full: A's worker exports, B's worker plans.
    full = export_on_a(a, fleet)
    pk, plan = plan_on_b(staff_b, download_from_a(staff_a, full, incoming / "full.tar"))
    on_a = selection_rows(a, fleet["reseller"].slug)
    expected = {kind: {"create": len(on_a[kind])} for kind in KINDS}
    assert changes(plan) == expected
    assert plan["blobs"]["to_place"] == 3 and plan["conflicts"] == 0

    written = apply_on_b(staff_b, pk)
    assert written >= sum(len(rows) for rows in on_a.values())
    assert_b_equals_a(a, b, fleet, tokens)
    (parent,) = b.sql(
        "SELECT p.slug FROM fleet_app_organization o JOIN fleet_app_organization p "
        "ON p.id = o.parent_id WHERE o.slug = %s",
        fleet["reseller"].slug,
    )
    assert parent == ("b-owner",)

    # Nothing outside the selection arrived: not a row that names the tenant left out.
    outside = fleet["outside"]
    for marker in (fleet["gamma"].slug, outside.system_key, "admin@gamma.example"):
        assert tables_containing(b, marker) == [], marker
    # A's owner is named on B only where the operator mapped it onto B's.
    assert tables_containing(b, "a-owner") == [IMPORTS]
    assert b.count("fleet_app_organization") == 4  # B's owner, the reseller, two customers
    (gamma_blob,) = a.sql(
        "SELECT sha256 FROM backups_app_clusterbackup WHERE system_id = %s", outside.pk
    )
    assert gamma_blob[0] not in b.blobs().values()

    # Its credentials moved with it: the same key and secret heartbeat on B, and so do
    # the native credentials the cutover gave NW-0 on A.
    with b.client() as http:
        for pair in [(key, secret), fleet["rotated"]]:
            beat = http.post("/collect/api/systems/heartbeat", headers=basic(*pair))
            assert beat.status_code == 200, beat.text
            assert beat.json()["data"]["system_key"] == pair[0]

    # Changes on A: two systems, a rotation, a deletion, a backup (uploaded to A's server).
    added = [make_system(fleet["beta"], name=f"beta-new-{n}") for n in range(2)]
    with a.client() as http:
        rotated = http.get("/proxy/credentials", headers=basic("NW-3", fleet["legacy"]["NW-3"]))
        assert rotated.status_code == 200, rotated.text
        upload = http.post(
            "/collect/api/systems/backups",
            headers={**basic(key, secret), "X-Filename": "alpha-2.tar.gz.gpg"},
            content=b"alpha backup, the second " * 500,
        )
        assert upload.status_code == 201, upload.text
    gone = fleet["plain"]["beta"]
    services.system_delete(actor=None, system=gone)
    before_incremental = row_counts(b)

    incremental = export_on_a(a, fleet, since=str(full.pk))
    again = download_from_a(staff_a, incremental, incoming / "incremental.tar")
    pk, plan = plan_on_b(staff_b, again)
    found = changes(plan)
    new_audit = found.pop("audit")
    assert set(new_audit) == {"create"}
    # A rotation re-issues the system's secret; an upload books the organization's
    # backup bytes: both are rows those changes wrote on A.
    assert found == {
        "systems": {"create": 2, "update": 2},
        "mappings": {"update": 1},
        "cluster_backups": {"create": 1},
        "quotas": {"create": 1},
    }, json.dumps(plan["examples"])
    examples = plan["examples"]
    assert sorted(examples["systems"]["create"]) == sorted(s.system_key for s in added)
    rotated_system = fleet["mappings"]["NW-3"].system.system_key
    assert sorted(examples["systems"]["update"]) == sorted([gone.system_key, rotated_system])
    assert examples["mappings"]["update"] == ["NW-3"]
    assert examples["quotas"]["create"] == [f"org:{fleet['alpha'].slug}:backup_bytes"]
    assert plan["blobs"]["to_place"] == 1
    apply_on_b(staff_b, pk)
    assert_b_equals_a(a, b, fleet, tokens)
    (deleted,) = b.sql(
        "SELECT deleted_at FROM fleet_app_system WHERE system_key = %s", gone.system_key
    )
    assert deleted[0] is not None
    assert System.objects.get(pk=gone.pk).deleted_at == deleted[0]
    after_incremental = row_counts(b)
    assert after_incremental["fleet_app_system"] == before_incremental["fleet_app_system"] + 2

    # The same bundle again: all unchanged, and nothing on B moves.
    blobs = b.blobs()
    pk, plan = plan_on_b(staff_b, again)
    assert changes(plan) == {}, plan
    assert plan["blobs"]["to_place"] == 0
    assert apply_on_b(staff_b, pk) == 0
    assert row_counts(b) == after_incremental
    assert b.blobs() == blobs
    staff_a.close()
    staff_b.close()
    a.assert_no_server_errors()
    b.assert_no_server_errors()
