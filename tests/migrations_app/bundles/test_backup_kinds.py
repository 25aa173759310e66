"""The platform's own infrastructure in bundles: service backups (services, schedules,
finished backups with their archives) and ZFS replication job definitions (with the hosts,
policies and datasets they need). Only a platform export by a superuser carries them; on
the target they arrive switched off; re-importing writes nothing; an incremental carries
exactly the changes."""

import hashlib
import json

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import IntervalSchedule

from backups_app.service_backups.models import BackupRun, Service
from backups_app.service_backups.schedules import backup_schedule_create
from backups_app.storage import get_store
from backups_app.zfs.models import ReplicationJob
from migrations_app.models import BundleExport
from tests.conftest import needs_postgresql
from tests.factories import (
    BackupRunFactory,
    DatasetFactory,
    ReplicationJobFactory,
    ServiceFactory,
    SnapshotPolicyFactory,
    StorageHostFactory,
    UserFactory,
)

from .conftest import manifest_of

KINDS = ["--kind", "service_backups", "--kind", "replication_jobs"]
ARCHIVES = [b"archive one " * 400, b"archive two " * 300]


def finished_backup(service, content: bytes, key: str) -> BackupRun:
    writer = get_store().writer(key)
    writer.write(content)
    writer.commit()
    return BackupRunFactory(
        service=service,
        finished=True,
        storage_key=key,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        manifest={"files": {"a": {"size": 3}}},
    )


@pytest.fixture
def platform(bundle_settings):
    service = ServiceFactory(
        name="files", config={"path": "/srv/files", "api_token": "tok-do-not-travel"}
    )
    schedule = backup_schedule_create(
        actor=None, service=service, timing=IntervalSchedule(every=1, period="days")
    )
    runs = [finished_backup(service, data, f"services/files/{n}.tar.gz") for n, data in
            enumerate(ARCHIVES)]  # fmt: skip
    BackupRun.objects.filter(pk=runs[0].pk).update(schedule=schedule)
    BackupRunFactory(service=service, state="failed")  # nothing to restore: stays home
    policy = SnapshotPolicyFactory(name="hourly-48", hourly=48)
    source = DatasetFactory(host=StorageHostFactory(name="nas1"), name="tank/data", policy=policy)
    target = DatasetFactory(host=StorageHostFactory(name="vault"), name="backup/data")
    job = ReplicationJobFactory(
        name="nas1-data", source=source, target=target, every_minutes=30, enabled=True
    )
    DatasetFactory(host=source.host, name="tank/unreplicated")  # no job needs it
    old = ReplicationJobFactory(
        name="nas1-old",
        source=DatasetFactory(host=source.host, name="tank/old"),
        target=DatasetFactory(host=target.host, name="backup/old"),
    )
    return {"service": service, "schedule": schedule, "runs": runs, "job": job, "old": old}


def sections(path):
    out = {}
    for section in manifest_of(path)["sections"]:
        lines = (path / section["path"]).read_text().splitlines()
        out[section["kind"]] = [json.loads(line) for line in lines]
    return out


@pytest.mark.django_db
def test_a_platform_export_carries_the_infrastructure_and_no_secret(platform, tmp_path):
    out = tmp_path / "p"
    call_command("export_bundle", "--output", str(out), *KINDS)
    rows = sections(out)
    keys = [r["key"] for r in rows["service_backups"]]
    assert keys[0] == "service:files" and "schedule:files|every 1 days" in keys
    assert len([k for k in keys if k.startswith("run:")]) == 2  # the failed one stays
    assert [r["key"] for r in rows["replication_jobs"]] == [
        "host:nas1", "host:vault", "policy:hourly-48",
        "dataset:nas1|tank/data", "dataset:nas1|tank/old",
        "dataset:vault|backup/data", "dataset:vault|backup/old",
        "job:nas1-data", "job:nas1-old",
    ]  # fmt: skip
    text = "".join(p.read_text() for p in (out / "data").iterdir())
    assert "tok-do-not-travel" not in text and "unreplicated" not in text
    assert sorted(b["sha256"] for b in manifest_of(out)["blobs"]) == sorted(
        hashlib.sha256(a).hexdigest() for a in ARCHIVES
    )
    assert manifest_of(out)["selection"]["platform"] is True


@pytest.mark.django_db
def test_a_tenant_export_never_reaches_the_platform(platform, fleet, tmp_path):
    admin = UserFactory(email="adm@example.com", organization=fleet["customer"], roles=["admin"])
    operator = UserFactory(email="op@example.com", organization=None, roles=["operator"])
    own = fleet["customer"].slug
    for actor in (admin, operator):
        with pytest.raises(CommandError, match="platform's infrastructure"):
            call_command(
                "export_bundle", "--output", str(tmp_path / str(actor.pk)), "--organization", own,
                "--kind", "service_backups", "--actor", actor.email,
            )  # fmt: skip
        assert not (tmp_path / str(actor.pk)).exists()
    # Every kind by default: every kind of the subtree, none of the platform's.
    call_command(
        "export_bundle", "--output", str(tmp_path / "own"), "--organization", own,
        "--actor", admin.email,
    )  # fmt: skip
    carried = {s["kind"] for s in manifest_of(tmp_path / "own")["sections"]}
    assert "systems" in carried and not carried & {"service_backups", "replication_jobs"}
    text = "".join(p.read_text() for p in (tmp_path / "own" / "data").iterdir())
    assert "nas1" not in text and "files" not in text
    # Without the platform kinds a selection still needs its organizations.
    with pytest.raises(CommandError, match="Name the organizations"):
        call_command("export_bundle", "--output", str(tmp_path / "none"), "--kind", "systems")


def b_state(b):
    return {
        "services": b.sql("SELECT name, adapter, config::text, enabled FROM backups_app_service"),
        "schedules": b.sql(
            "SELECT s.keep_count, s.enabled, t.enabled, i.every, i.period"
            " FROM backups_app_backupschedule s"
            " JOIN django_celery_beat_periodictask t ON t.id = s.periodic_task_id"
            " JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id"
        ),
        "runs": sorted(
            b.sql(
                "SELECT r.sha256, r.size, r.schedule_id IS NOT NULL, r.storage_key"
                " FROM backups_app_backuprun r"
            )
        ),
        "hosts": sorted(b.sql("SELECT name, address, host_key FROM backups_app_storagehost")),
        "datasets": sorted(
            b.sql(
                "SELECT h.name, d.name, d.policy_id FROM backups_app_dataset d"
                " JOIN backups_app_storagehost h ON h.id = d.host_id"
            )
        ),
        "policies": b.sql("SELECT name, hourly FROM backups_app_snapshotpolicy"),
        "jobs": b.sql("SELECT name, every_minutes, enabled FROM backups_app_replicationjob"),
    }


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_b_gets_them_switched_off_and_a_second_import_writes_nothing(
    platform, instance_b, tmp_path
):
    bundle = tmp_path / "full"
    call_command("export_bundle", "--output", str(bundle), *KINDS)
    plan = instance_b.manage("import_bundle", str(bundle))
    assert "service_backups: 4 create" in plan.stdout
    assert "replication_jobs: 9 create" in plan.stdout
    assert not instance_b.count("backups_app_service")
    instance_b.manage("import_bundle", str(bundle), "--apply")
    state = b_state(instance_b)
    assert state["services"] == [("files", "directory", '{"path": "/srv/files"}', True)]
    # The schedule and the job arrive disabled, the dataset without its policy: B never
    # backs up, snapshots or pulls what A does until B's staff say so.
    assert state["schedules"] == [(7, False, False, 1, "days")]
    assert sorted(state["jobs"]) == [("nas1-data", 30, False), ("nas1-old", 60, False)]
    assert ("nas1", "tank/data", None) in state["datasets"]
    assert state["policies"] == [("hourly-48", 48)]
    nas1 = platform["job"].source.host
    assert ("nas1", nas1.address, nas1.host_key) in state["hosts"]
    # The archives, by content, under keys of B's own, one run of them on the schedule.
    shas = sorted(hashlib.sha256(a).hexdigest() for a in ARCHIVES)
    assert sorted(r[0] for r in state["runs"]) == shas
    assert sorted(r[2] for r in state["runs"]) == [False, True]
    assert all(r[3].startswith("services/files/imported/") for r in state["runs"])
    assert sorted(instance_b.blobs().values()) == shas
    # Again: nothing to write, not one blob.
    blobs = instance_b.blobs()
    again = instance_b.manage("import_bundle", str(bundle), "--apply")
    assert "applied: 0 rows" in again.stdout
    assert b_state(instance_b) == state and instance_b.blobs() == blobs


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_an_incremental_carries_exactly_the_changes_and_leaves_b_switches_alone(
    platform, instance_b, tmp_path
):
    full = tmp_path / "full"
    call_command("export_bundle", "--output", str(full), *KINDS)
    instance_b.manage("import_bundle", str(full), "--apply")
    # B's staff take the job over: that is B's own decision from now on.
    instance_b.sql("UPDATE backups_app_replicationjob SET enabled = true RETURNING id")
    # A service changed on both sides since: a conflict, left as B has it by default.
    instance_b.sql("UPDATE backups_app_service SET enabled = false RETURNING id")
    Service.objects.filter(pk=platform["service"].pk).update(config={"path": "/srv/moved"})
    # On A: a new backup, one pruned, the job runs more often, a second job.
    new = finished_backup(platform["service"], b"archive three " * 200, "services/files/9.tar.gz")
    BackupRun.objects.filter(pk=platform["runs"][1].pk).update(
        pruned_at=platform["runs"][1].created_at
    )
    ReplicationJob.objects.filter(pk=platform["job"].pk).update(every_minutes=15, enabled=False)
    old = platform["old"]
    old.delete()
    old.source.delete()
    old.target.delete()
    ReplicationJobFactory(
        name="nas1-more",
        source=DatasetFactory(host=platform["job"].source.host, name="tank/more"),
        target=DatasetFactory(host=platform["job"].target.host, name="backup/more"),
    )
    since = str(BundleExport.objects.get().pk)
    inc = tmp_path / "inc"
    call_command("export_bundle", "--output", str(inc), *KINDS, "--since", since)
    carried = {s["kind"]: s["rows"] for s in manifest_of(inc)["sections"]}
    # The service and a new run; the changed job, two new datasets and the new job;
    # tombstones of the pruned run, the old job and its two datasets.
    assert carried["service_backups"] == 2 and carried["replication_jobs"] == 4
    assert carried["tombstones"] == 4
    assert [b["sha256"] for b in manifest_of(inc)["blobs"]] == [new.sha256]
    plan = instance_b.manage("import_bundle", str(inc))
    assert "service_backups: 1 create, 1 delete, 1 conflict" in plan.stdout
    assert "replication_jobs: 3 create, 3 delete, 1 update" in plan.stdout
    assert "conflict: service:files" in plan.stdout
    instance_b.manage("import_bundle", str(inc), "--apply")
    state = b_state(instance_b)
    assert state["services"] == [("files", "directory", '{"path": "/srv/files"}', False)]
    assert sorted(r[0] for r in state["runs"]) == sorted([platform["runs"][0].sha256, new.sha256])
    assert sorted(state["jobs"]) == [("nas1-data", 15, True), ("nas1-more", 60, False)]
    assert not [d for d in state["datasets"] if d[1].endswith("/old")]
    again = instance_b.manage("import_bundle", str(inc), "--apply")
    assert "applied: 0 rows" in again.stdout and b_state(instance_b) == state
