"""import_bundle onto another instance: the plan, the apply, idempotent re-import, and
incrementals that carry exactly the changes (new systems, a rotation, a deletion, a new
backup) and nothing else."""

import json

import pytest
from django.core.management import call_command

from fleet_app import services
from tests.conftest import needs_postgresql
from tests.factories import ClusterBackupFactory, make_mapping

pytestmark = [needs_postgresql, pytest.mark.django_db(transaction=True)]


def export(fleet, out, *extra):
    call_command(
        "export_bundle", "--output", str(out), "--organization", fleet["customer"].parent.slug,
        "--credentials", *extra,
    )  # fmt: skip
    return out


def map_args(fleet):
    return ["--map-org", f"{fleet['customer'].parent.parent.slug}=b-owner"]


def b_rows(b):
    return {
        "systems": sorted(
            b.sql(
                "SELECT system_key, name, secret_digest, deleted_at IS NOT NULL"
                " FROM fleet_app_system"
            )
        ),
        "mappings": sorted(
            b.sql(
                "SELECT legacy_system_id, legacy_token_digest, rotation_count FROM proxy_mappings"
            )
        ),
        "orgs": sorted(r[0] for r in b.sql("SELECT slug FROM fleet_app_organization")),
        "backups": sorted(b.sql("SELECT id::text, sha256 FROM backups_app_clusterbackup")),
    }


def a_rows(fleet):
    from backups_app.cluster_backups.models import ClusterBackup
    from fleet_app.models import System
    from migrations_app.models import LegacyMapping

    tree = fleet["customer"].parent.path
    return {
        "systems": sorted(
            System.objects.filter(organization__path__startswith=tree).values_list(
                "system_key", "name", "secret_digest", "deleted_at"
            )
        ),
        "mappings": sorted(
            LegacyMapping.objects.filter(system__organization__path__startswith=tree).values_list(
                "legacy_system_id", "legacy_token_digest", "rotation_count"
            )
        ),
        "backups": sorted(
            (str(i), s)
            for i, s in ClusterBackup.objects.filter(
                organization__path__startswith=tree
            ).values_list("id", "sha256")
        ),
    }


def test_plan_writes_nothing_then_apply_makes_b_equal_a_for_the_selection(
    fleet, instance_b, tmp_path
):
    bundle = export(fleet, tmp_path / "full")
    before = b_rows(instance_b)
    plan = instance_b.manage("import_bundle", str(bundle), *map_args(fleet))
    assert "systems: 3 create" in plan.stdout and "dry run" in plan.stdout
    assert b_rows(instance_b) == before
    instance_b.manage("import_bundle", str(bundle), "--apply", *map_args(fleet))
    rows, ours = b_rows(instance_b), a_rows(fleet)
    assert [(k, n, d, False) for k, n, d, _x in ours["systems"]] == rows["systems"]
    assert ours["mappings"] == rows["mappings"] and ours["backups"] == rows["backups"]
    assert set(rows["orgs"]) == {
        "b-owner",
        fleet["customer"].parent.slug,
        fleet["customer"].slug,
        fleet["shop"].slug,
    }
    # The blobs, by content.
    assert sorted(instance_b.blobs().values()) == sorted(s for _i, s in ours["backups"])
    # Nothing outside the selection arrived.
    assert not instance_b.sql(
        "SELECT 1 FROM proxy_mappings WHERE legacy_system_id = 'legacy-outside'"
    )
    assert not instance_b.sql(
        "SELECT 1 FROM fleet_app_organization WHERE slug = %s", fleet["other"].slug
    )
    # The same bundle again: nothing to write.
    blobs = instance_b.blobs()
    again = instance_b.manage("import_bundle", str(bundle), "--apply", *map_args(fleet))
    assert "applied: 0 rows" in again.stdout
    assert b_rows(instance_b) == rows and instance_b.blobs() == blobs


def test_an_incremental_carries_exactly_the_changes(fleet, instance_b, tmp_path):
    from fleet_app.models import System
    from migrations_app.models import BundleExport, LegacyMapping

    full = export(fleet, tmp_path / "full")
    instance_b.manage("import_bundle", str(full), "--apply", *map_args(fleet))
    # Changes on A: a new system, a rotation, a deletion, a new backup.
    new = make_mapping(
        fleet["shop"], legacy_system_id="legacy-new", legacy_token="tok-new-xxxxxxxxxx"
    )
    rotated = fleet["mappings"][1]
    LegacyMapping.objects.filter(pk=rotated.pk).update(rotation_count=1)
    services.system_secret_reissue(actor=None, system=rotated.system)
    gone = fleet["mappings"][2]
    LegacyMapping.objects.filter(pk=gone.pk).delete()
    backup = ClusterBackupFactory(system=fleet["mappings"][0].system, content=b"new backup " * 50)
    since = str(BundleExport.objects.get().pk)
    inc = export(fleet, tmp_path / "inc", "--since", since)
    manifest = json.loads((inc / "manifest.json").read_text())
    assert manifest["incremental"] and manifest["base_bundle_id"]
    carried = {s["kind"]: s["rows"] for s in manifest["sections"]}
    assert carried["systems"] == 2 and carried["mappings"] == 2
    assert carried["cluster_backups"] == 1 and carried["tombstones"] == 1
    assert [b["sha256"] for b in manifest["blobs"]] == [backup.sha256]
    instance_b.manage("import_bundle", str(inc), "--apply", *map_args(fleet))
    rows = b_rows(instance_b)
    assert ("legacy-new", new.legacy_token_digest, 0) in rows["mappings"]
    assert not [m for m in rows["mappings"] if m[0] == "legacy-2"]
    assert [m for m in rows["mappings"] if m[0] == "legacy-1"][0][2] == 1
    rotated_b = [s for s in rows["systems"] if s[0] == rotated.system.system_key][0]
    assert rotated_b[2] == System.objects.get(pk=rotated.system.pk).secret_digest
    assert (str(backup.id), backup.sha256) in rows["backups"]
    assert backup.sha256 in instance_b.blobs().values()
    # Imported twice: nothing written.
    again = instance_b.manage("import_bundle", str(inc), "--apply", *map_args(fleet))
    assert "applied: 0 rows" in again.stdout and b_rows(instance_b) == rows
    # And the full one, older, is refused now.
    old = instance_b.manage("import_bundle", str(full), *map_args(fleet), check=False)
    assert old.returncode and "sequence 1 is older than 2" in old.stderr
    assert b_rows(instance_b) == rows


def test_users_arrive_with_their_e_mail_keys(fleet, instance_b, tmp_path):
    from tests.factories import UserFactory

    # Two accounts: a key left empty by a bulk write would collide on the unique index.
    UserFactory(email="Second.Reader@Example.com", organization=fleet["shop"], roles=["reader"])
    bundle = export(fleet, tmp_path / "bundle")

    instance_b.manage("import_bundle", str(bundle), "--apply", *map_args(fleet))

    assert sorted(instance_b.sql("SELECT email, email_key FROM fleet_app_user")) == [
        ("Reader@Example.com", "reader@example.com"),
        ("Second.Reader@Example.com", "second.reader@example.com"),
    ]
