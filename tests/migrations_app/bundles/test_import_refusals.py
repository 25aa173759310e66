"""Bad bundles are refused before the first write, naming the file and the reason, and the
target is exactly as it was: row counts and the blob folder compared before and after.

The target is this instance itself, made to lack one mapping and one backup (row and
blob), so an import that went through would write them back (the control test shows it)."""

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from backups_app.storage import get_store
from migrations_app.models import BundleImport, TrustedBundleKey

from .conftest import manifest_of, resign, snapshot

pytestmark = pytest.mark.django_db


def export(fleet, out, *extra):
    call_command(
        "export_bundle", "--output", str(out), "--organization", fleet["customer"].slug,
        "--credentials", *extra,
    )  # fmt: skip
    return out


def lose_some(fleet):
    """What an import of the bundle would write back: one mapping, one backup and its blob."""
    from backups_app.cluster_backups.models import ClusterBackup

    fleet["mappings"][2].delete()
    backup = ClusterBackup.objects.filter(system=fleet["mappings"][0].system).get()
    get_store().delete(backup.storage_key)
    backup.delete()


def refused(path, settings, match, *extra):
    before = snapshot(settings)
    with pytest.raises(CommandError, match=match):
        call_command("import_bundle", str(path), "--apply", "--on-conflict", "source", *extra)
    assert snapshot(settings) == before
    assert BundleImport.objects.order_by("-pk").first().applied_at is None


def flip(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_control_the_same_target_takes_a_good_bundle(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "good")
    lose_some(fleet)
    before = snapshot(settings)
    call_command("import_bundle", str(bundle), "--apply")
    after = snapshot(settings)
    assert (
        after["rows"]["migrations_app.LegacyMapping"]
        == before["rows"]["migrations_app.LegacyMapping"] + 1
    )
    assert (
        after["rows"]["backups_app.ClusterBackup"]
        == before["rows"]["backups_app.ClusterBackup"] + 1
    )
    assert len(after["blobs"]) == len(before["blobs"]) + 1


def test_a_flipped_byte_in_a_row_section(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    flip(bundle / "data/mappings.jsonl")
    refused(bundle, settings, "data/mappings.jsonl does not match its sha256")


def test_a_flipped_byte_in_a_blob(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    blob = next((bundle / "blobs").rglob("*/*/*"))
    flip(blob)
    refused(bundle, settings, "does not match its sha256")


def test_a_manifest_changed_after_signing(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    text = (bundle / "manifest.json").read_text().replace('"sequence": 1', '"sequence": 7')
    (bundle / "manifest.json").write_text(text)
    refused(bundle, settings, "does not match its signature")


def test_a_key_this_instance_does_not_trust(fleet, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    assert not TrustedBundleKey.objects.exists()
    refused(bundle, settings, "which this instance does not trust")


def test_a_newer_schema_and_a_newer_version(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    manifest = manifest_of(bundle)
    manifest["schema"]["fleet_app"] = ["9999_from_the_future"]
    resign(bundle, manifest)
    refused(bundle, settings, "migration fleet_app.9999_from_the_future")
    manifest = manifest_of(bundle)
    manifest["schema"]["fleet_app"] = manifest_of(bundle)["schema"]["fleet_app"][:0] or []
    manifest["cutover_version"] = "99.0.0"
    resign(bundle, manifest)
    refused(bundle, settings, "newer than this")


def test_another_credential_digest_key(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    settings.CREDENTIAL_DIGEST_KEY = "another key entirely"
    refused(bundle, settings, "under another digest key")


def test_a_replayed_older_sequence(fleet, trusted_self, tmp_path, settings):
    first = export(fleet, tmp_path / "one")
    second = export(fleet, tmp_path / "two")
    call_command("import_bundle", str(second), "--apply")
    lose_some(fleet)
    refused(first, settings, "sequence 1 is older than 2")


def test_an_incremental_whose_base_was_never_imported(fleet, trusted_self, tmp_path, settings):
    export(fleet, tmp_path / "one")
    from migrations_app.models import BundleExport

    inc = export(fleet, tmp_path / "inc", "--since", str(BundleExport.objects.get().pk))
    lose_some(fleet)
    refused(inc, settings, "base bundle was never applied")


def test_a_full_disk(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "b")
    lose_some(fleet)
    settings.BUNDLE_DISK_RESERVE_BYTES = 1 << 62
    refused(bundle, settings, "bytes are needed and only")


def test_a_missing_or_truncated_chunk(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "t", "--format", "tar", "--chunk-size", "4KB")
    lose_some(fleet)
    chunks = sorted(bundle.glob("bundle.tar.*"))
    assert len(chunks) > 3
    data = chunks[2].read_bytes()
    chunks[2].write_bytes(data[:-100])
    refused(bundle, settings, f"{chunks[2].name} is {len(data) - 100} bytes")
    chunks[2].unlink()
    refused(bundle, settings, f"{chunks[2].name} is missing")


def test_a_bundle_that_is_not_one(settings, trusted_self, tmp_path, db):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    (tmp_path / "junk" / "manifest.sig").write_text("{}")
    before = snapshot(settings)
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_bundle", str(tmp_path / "junk"))
    with pytest.raises(CommandError, match="no such bundle"):
        call_command("import_bundle", str(tmp_path / "nowhere"))
    assert snapshot(settings) == before
