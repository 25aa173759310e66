"""Capture a database as the release at commit 09658a2 leaves it, with a row in every table.

Run against the RELEASE tree, not this one: from a worktree of the release, with the
release's code on the path (this script puts the current directory first on it)::

    git worktree add --detach /work/wt/release 09658a2
    cd /work/wt/release
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/upgrade_capture \\
        python /path/to/this/tree/tests/upgrade/capture_release.py

It drops and recreates the database named by ``DATABASE_URL``, runs the release's
``migrate``, writes rows into every table a model of the release owns (through the
release's services where it has them, ``objects.create`` otherwise), checks that none is
empty, and writes ``pg_dump --no-owner --no-privileges --format=plain`` of it next to this
script as ``release_09658a2.sql``. ``tests/test_upgrade_from_release.py`` loads that dump
and migrates it with the current tree.

SECRET_KEY and CREDENTIAL_DIGEST_KEY are pinned below: the stored digests of the system
secret and the legacy token are keyed by them, and the test migrates with the same keys.
"""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

RELEASE = "09658a2"
HERE = Path(__file__).resolve().parent
DUMP = HERE / f"release_{RELEASE}.sql"

# The test (tests/test_upgrade_from_release.py) repeats these: they are in the dump.
SECRET_KEY = "upgrade-capture-secret-key-" + "Qm7tZ" * 8
CREDENTIAL_DIGEST_KEY = "upgrade-capture-digest-key-" + "r4Wn9" * 8
API_TOKEN_KEY = "5f0c1d2e3a4b59687766554433221100ffeeddcc"  # DRF's shape: 40 hex characters
SYSTEM_KEY = "NETH-0A1B-2C3D-4E5F-6071-8293-A4B5-C6D7-E8F9"
SYSTEM_SECRET_PUBLIC = "0123456789abcdef0123"
SYSTEM_SECRET = f"my_{SYSTEM_SECRET_PUBLIC}.known-secret-of-the-upgrade-capture-system"
LEGACY_SYSTEM_ID = "legacy-0001"
LEGACY_TOKEN = "legacy-token-of-the-upgrade-capture"  # noqa: S105
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG8nM6pJbTq0b3Jd0J3oG0u5Yj2m4y6cVqk3K8xv1c2Z"


def database_recreate(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    if not name:
        raise SystemExit("DATABASE_URL must name the scratch database.")
    admin = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def model_tables() -> list[str]:
    """Every table a model owns, the many-to-many ones included (proxies have none)."""
    from django.apps import apps

    return sorted(
        {
            model._meta.db_table
            for model in apps.get_models(include_auto_created=True)
            if model._meta.managed and not model._meta.proxy
        }
    )


def table_counts(tables: list[str]) -> dict[str, int]:
    from django.db import connection

    counts = {}
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")  # noqa: S608
            counts[table] = cursor.fetchone()[0]
    return counts


def fleet_rows():
    """Organizations, staff, systems with inventories and changes, memberships, quotas."""
    from django.contrib.auth.models import Group, Permission

    from fleet_app import services
    from fleet_app.demo import ns8_inventory
    from fleet_app.models import Organization, User

    operator = User.objects.create_superuser("root@example.com", "upgrade-capture-password")
    owner = services.organization_create(actor=operator, name="Owner", kind=Organization.Kind.OWNER)
    distributor = services.organization_create(
        actor=operator, name="Distributor", kind="distributor", parent=owner
    )
    # Two names that slugify alike: the slug backfill must tell them apart.
    customer = services.organization_create(
        actor=operator, name="Acme Customer", kind="customer", parent=distributor
    )
    services.organization_create(
        actor=operator, name="ACME customer", kind="customer", parent=owner
    )

    staff = User.objects.create_user(
        "staff@example.com", None, full_name="Staff Admin", is_staff=True, organization=owner
    )
    staff.groups.add(Group.objects.get(name="admin"))
    staff.user_permissions.add(Permission.objects.get(codename="view_system"))
    extra = Group.objects.create(name="auditors")
    extra.permissions.add(Permission.objects.get(codename="view_auditentry"))
    staff.groups.add(extra)

    # The release's own service, with its generators pinned so the test knows the secret.
    with (
        mock.patch("fleet_app.credentials.system_key_generate", return_value=SYSTEM_KEY),
        mock.patch(
            "fleet_app.credentials.system_secret_generate",
            return_value=(SYSTEM_SECRET_PUBLIC, SYSTEM_SECRET),
        ),
    ):
        known = services.system_create(
            actor=operator, organization=customer, name="known-cluster", type="ns8"
        ).system
    services.system_register(system_secret=SYSTEM_SECRET)
    known = services.system_authenticate(system_key=SYSTEM_KEY, system_secret=SYSTEM_SECRET)
    services.system_heartbeat(system=known)
    first = ns8_inventory(seed=1, nodes=1, modules=2, version="3.9.0")
    services.inventory_ingest(system=known, payload=first, size=len(str(first)))
    services.system_create(actor=operator, organization=distributor, name="plain-firewall")
    return operator, staff, owner, distributor, customer, known


def cutover_rows(operator, customer, distributor, known):
    """A legacy mapping (imported) with a fingerprint and an anomaly, a rotation run, and
    legacy accounts being deduped."""
    from fleet_app import services as fleet
    from fleet_app.demo import ns8_inventory
    from migrations_app import accounts, services
    from migrations_app.models import LegacyMapping, QuotaRun, RotationRun

    report = services.mappings_import(
        rows=[
            (
                1,
                {
                    "legacy_system_id": LEGACY_SYSTEM_ID,
                    "legacy_token": LEGACY_TOKEN,
                    "name": "legacy-cluster",
                    "organization": str(customer.pk),
                    "legacy_last_seen_at": "2025-01-02T03:04:05+00:00",
                },
            )
        ],
        apply=True,
        born_registered=True,
        actor=operator,
    )
    assert report.created == 1, report.errors
    mapping = LegacyMapping.objects.get(legacy_system_id=LEGACY_SYSTEM_ID)
    run = RotationRun.objects.create(
        filters={"organization": customer.pk}, state="succeeded", total=1, done=1
    )
    LegacyMapping.objects.filter(pk=mapping.pk).update(last_rotation_run=run)
    migrated = ns8_inventory(seed=2, nodes=1, modules=1, from_legacy_system_id=LEGACY_SYSTEM_ID)
    fleet.inventory_ingest(system=mapping.system, payload=migrated, size=len(str(migrated)))
    # The known system's next inventory differs from its first (changes) and claims the
    # mapping's legacy id, which belongs to another system: a mismatch anomaly.
    second = ns8_inventory(
        seed=1, nodes=1, modules=2, version="3.9.1", from_legacy_system_id=LEGACY_SYSTEM_ID
    )
    fleet.inventory_ingest(system=known, payload=second, size=len(str(second)))

    # Two accounts whose e-mails differ only in case: the second is imported inactive and
    # flagged, then merged into the first by a real dedupe run (checkpoint, journal).
    report = accounts.accounts_import(
        sections={
            "organizations": [
                ("organizations.csv line 2", {"legacy_id": "L-ORG-1", "name": "Legacy Customer"}),
                ("organizations.csv line 3", {"legacy_id": "L-ORG-2", "name": "Legacy Branch"}),
            ],
            "users": [
                (
                    "users.csv line 2",
                    {
                        "legacy_id": "L-USER-1",
                        "email": "dana@example.com",
                        "memberships": "L-ORG-1:owner;L-ORG-2:billing",
                    },
                ),
                (
                    "users.csv line 3",
                    {
                        "legacy_id": "L-USER-2",
                        "email": "Dana@example.com",
                        "memberships": "L-ORG-1:member;L-ORG-2:member",
                    },
                ),
            ],
            "quotas": [
                (
                    "quotas.csv line 2",
                    {"organization": "L-ORG-1", "resource": "systems", "limit": 5},
                ),
                ("quotas.csv line 3", {"user": "L-USER-1", "resource": "backup_bytes", "limit": 7}),
            ],
            "usage": [
                (
                    "usage.csv line 2",
                    {"organization": "L-ORG-1", "resource": "systems", "usage": 1},
                ),
                ("usage.csv line 3", {"user": "L-USER-1", "resource": "backup_bytes", "usage": 3}),
            ],
        },
        apply=True,
        under=distributor,
        actor=operator,
    )
    assert not report.errors, report.errors
    plan = accounts.plan_json(accounts.dedupe_plan(accounts.duplicates_find(with_owned=False)))
    assert plan, "the two legacy accounts should form a duplicate group"
    dedupe = accounts.dedupe_run_create(actor=operator, plan=plan)
    accounts.dedupe_run_process(run=dedupe)
    QuotaRun.objects.create(
        mode=QuotaRun.Mode.VERIFY, state="succeeded", result={"differences": []}
    )


def backup_rows(operator, known):
    """A cluster backup, a service with a schedule, a backup run and a restore run."""
    from django.utils import timezone
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    from backups_app import service_backups
    from backups_app.models import BackupRun, ClusterBackup, RestoreRun

    ClusterBackup.objects.create(
        system=known,
        organization=known.organization,
        filename="dump.json.gz.gpg",
        size=1234,
        sha256="ab" * 32,
        storage_key=f"cluster-backups/{known.system_key}/first",
    )
    service = service_backups.service_create(
        actor=operator, name="cutover-data", adapter="cutover_data", config={}
    )
    interval = IntervalSchedule.objects.create(every=6, period=IntervalSchedule.HOURS)
    schedule = service_backups.backup_schedule_create(
        actor=operator, service=service, timing=interval, keep_count=3
    )
    now = timezone.now()
    backup = BackupRun.objects.create(
        service=service,
        schedule=schedule,
        state="succeeded",
        total=3,
        done=3,
        storage_key="service-backups/cutover-data/1.jsonl.gz",
        size=4096,
        sha256="cd" * 32,
        manifest={"models": {"fleet_app.system": 3}},
        started_at=now,
        finished_at=now,
    )
    RestoreRun.objects.create(
        backup=backup,
        service=service,
        purpose=RestoreRun.Purpose.DRILL,
        state="succeeded",
        target={"database": "drill"},
        verify={"ok": True},
        verified=True,
        finished_at=now,
    )
    # The other timings beat knows, each on an entry of its own.
    crontab = CrontabSchedule.objects.create(minute="15", hour="3")
    solar = SolarSchedule.objects.create(event="sunrise", latitude=45.07, longitude=7.69)
    clocked = ClockedSchedule.objects.create(clocked_time=now + dt.timedelta(days=1))
    PeriodicTask.objects.create(name="nightly report", task="fleet.report", crontab=crontab)
    PeriodicTask.objects.create(name="at dawn", task="fleet.dawn", solar=solar)
    PeriodicTask.objects.create(
        name="once", task="fleet.once", clocked=clocked, one_off=True, enabled=False
    )


def zfs_rows(operator):
    """Two storage hosts, a policy, two datasets, a job with a replication run, a snapshot
    run and a divergence report."""
    from backups_app.models import (
        Dataset,
        DivergenceReport,
        ReplicationJob,
        ReplicationRun,
        SnapshotPolicy,
        SnapshotRun,
        StorageHost,
    )

    source_host = StorageHost.objects.create(
        name="tank-a",
        address="10.0.0.5",
        port=2222,
        user="zfsop",
        host_key=HOST_KEY,
        key_path="/etc/cutover/zfs_ed25519",
        capabilities={"pools": {"tank": {"version": 5000}}},
    )
    target_host = StorageHost.objects.create(
        name="backup-local", local=True, zfs_path="/sbin/zfs", zpool_path="/sbin/zpool"
    )
    policy = SnapshotPolicy.objects.create(name="production", hourly=24, daily=14)
    source = Dataset.objects.create(host=source_host, name="tank/data", policy=policy)
    target = Dataset.objects.create(host=target_host, name="backup/tank-a/data")
    job = ReplicationJob.objects.create(name="tank-a-data", source=source, target=target)
    run = ReplicationRun.objects.create(
        job=job,
        state="failed",
        source_dataset=source.name,
        target_dataset=target.name,
        plan_kind="incremental",
        from_snapshot="autosnap_2025-01-01_00:00:00_hourly",
        to_snapshot="autosnap_2025-01-01_01:00:00_hourly",
        error="target diverged",
    )
    SnapshotRun.objects.create(
        dataset=source, state="succeeded", created=["tank/data@autosnap_2025-01-01_01:00:00"]
    )
    DivergenceReport.objects.create(
        job=job,
        run=run,
        source_dataset=source.name,
        target_dataset=target.name,
        reason="The target has snapshots the source does not.",
        last_common="autosnap_2025-01-01_00:00:00_hourly",
        target_only=["manual-1"],
        fixes=[{"kind": "rollback", "to": "autosnap_2025-01-01_00:00:00_hourly"}],
        approved_by=operator,
    )


def django_rows(operator, staff, known):
    """What the contrib apps hold: a session, an admin log entry, the API token."""
    from django.contrib.admin.models import ADDITION, LogEntry
    from django.contrib.contenttypes.models import ContentType
    from django.contrib.sessions.backends.db import SessionStore
    from rest_framework.authtoken.models import Token

    session = SessionStore()
    session["_auth_user_id"] = str(operator.pk)
    session.create()
    LogEntry.objects.create(
        user=operator,
        content_type=ContentType.objects.get_for_model(known),
        object_id=str(known.pk),
        object_repr=str(known)[:200],
        action_flag=ADDITION,
        change_message='[{"added": {}}]',
    )
    Token.objects.create(key=API_TOKEN_KEY, user=staff)


def main() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("DATABASE_URL must point at a PostgreSQL scratch database.")
    sys.path.insert(0, os.getcwd())
    os.environ.update(
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        SECRET_KEY=SECRET_KEY,
        CREDENTIAL_DIGEST_KEY=CREDENTIAL_DIGEST_KEY,
        # Without a broker: whatever a service enqueues runs here, never on a real queue.
        CELERY_TASK_ALWAYS_EAGER="true",
    )
    os.environ.pop("REDIS_URL", None)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if "rest_framework.authtoken" not in settings.INSTALLED_APPS:
        raise SystemExit(
            f"Run this from a worktree of the release {RELEASE} (the current tree "
            "has no rest_framework.authtoken): cd there first."
        )
    database_recreate(url)
    call_command("migrate", interactive=False, verbosity=0)

    from fleet_app import services

    operator, staff, owner, distributor, customer, known = fleet_rows()
    cutover_rows(operator, customer, distributor, known)
    backup_rows(operator, known)
    zfs_rows(operator)
    django_rows(operator, staff, known)
    services.audit_record(
        actor=operator, action="upgrade.capture", obj=owner, after={"release": RELEASE}
    )

    counts = table_counts(model_tables())
    width = max(map(len, counts))
    for table, count in counts.items():
        print(f"{table:<{width}}  {count}")
    empty = [table for table, count in counts.items() if not count]
    if empty:
        raise SystemExit(f"These tables have no row: {', '.join(empty)}")
    connection.close()

    subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            "--no-privileges",
            "--format=plain",
            f"--file={DUMP}",
            f"--dbname={url}",
        ],
        check=True,
    )
    print(f"{len(counts)} tables, dump {DUMP} ({DUMP.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
