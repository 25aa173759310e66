"""export_bundle: what a bundle holds, that it is signed and hashed, and that nothing
outside the selection leaves."""

import hashlib
import json

import pytest
from django.core.management import CommandError, call_command

from migrations_app.bundles import keys
from migrations_app.models import BundleExport

from .conftest import BLOBS, manifest_of

pytestmark = pytest.mark.django_db


def sections(path):
    manifest = manifest_of(path)
    out = {}
    for section in manifest["sections"]:
        lines = (path / section["path"]).read_text().splitlines()
        out[section["kind"]] = [json.loads(line) for line in lines]
    return out


def test_it_writes_every_file_with_its_size_and_sha256_and_signs_the_manifest(fleet, tmp_path):
    out = tmp_path / "b1"
    call_command("export_bundle", "--output", str(out), "--organization", fleet["customer"].slug)
    manifest = manifest_of(out)
    for item in manifest["files"]:
        data = (out / item["path"]).read_bytes()
        assert len(data) == item["size"]
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
    signature = json.loads((out / "manifest.sig").read_text())
    assert signature["signer"] == keys.own_key_id()
    assert manifest["digest_key_fingerprint"] == keys.digest_key_fingerprint()
    assert manifest["schema"]["migrations_app"] and manifest["cutover_version"]
    export = BundleExport.objects.get()
    assert export.sequence == manifest["sequence"] == 1
    assert (
        export.manifest_sha256 == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    )
    # Blobs by content, each once.
    assert sorted(b["sha256"] for b in manifest["blobs"]) == sorted(
        hashlib.sha256(b).hexdigest() for b in BLOBS
    )
    for blob in BLOBS:
        sha = hashlib.sha256(blob).hexdigest()
        assert (out / "blobs" / "sha256" / sha[:2] / sha[2:]).read_bytes() == blob


def test_nothing_outside_the_selection_leaves(fleet, tmp_path, settings):
    out = tmp_path / "b1"
    call_command("export_bundle", "--output", str(out), "--organization", fleet["customer"].slug)
    rows = sections(out)
    text = "".join((out / s["path"]).read_text() for s in manifest_of(out)["sections"])
    assert {r["key"] for r in rows["organizations"]} == {fleet["customer"].slug}
    assert len(rows["systems"]) == 3 and len(rows["mappings"]) == 3
    assert "legacy-outside" not in text and fleet["outside"].system.system_key not in text
    assert fleet["other"].slug not in text and fleet["shop"].slug not in text
    assert len(manifest_of(out)["blobs"]) == 2


def test_credential_digests_travel_only_when_asked_and_never_the_key(fleet, tmp_path, settings):
    plain, secret = tmp_path / "plain", tmp_path / "secret"
    call_command("export_bundle", "--output", str(plain), "--organization", fleet["customer"].slug)
    call_command(
        "export_bundle",
        "--output",
        str(secret),
        "--organization",
        fleet["customer"].slug,
        "--credentials",
    )
    system = fleet["mappings"][0].system
    assert system.secret_digest not in (plain / "data/systems.jsonl").read_text()
    assert system.secret_digest in (secret / "data/systems.jsonl").read_text()
    for folder in (plain, secret):
        for path in folder.rglob("*"):
            if path.is_file():
                assert settings.CREDENTIAL_DIGEST_KEY.encode() not in path.read_bytes()


def test_a_tenant_admin_exports_its_subtree_only_and_never_credentials(fleet, tmp_path, bob):
    from tests.factories import UserFactory

    own = fleet["customer"].slug
    admin = UserFactory(email="adm@example.com", organization=fleet["customer"], roles=["admin"])
    call_command(
        "export_bundle", "--output", str(tmp_path / "own"), "--organization", own,
        "--actor", admin.email,
    )  # fmt: skip
    with pytest.raises(CommandError, match="own organization's subtree"):
        call_command(
            "export_bundle", "--output", str(tmp_path / "x"), "--organization", fleet["other"].slug,
            "--actor", admin.email,
        )  # fmt: skip
    with pytest.raises(CommandError, match="credential digests"):
        call_command(
            "export_bundle", "--output", str(tmp_path / "y"), "--organization", own,
            "--credentials", "--actor", admin.email,
        )  # fmt: skip
    with pytest.raises(CommandError, match="may not run import_bundle"):
        call_command("import_bundle", str(tmp_path / "own"), "--actor", admin.email)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_row_sections_can_be_zstd_compressed(fleet, tmp_path):
    import zstandard

    out = tmp_path / "z"
    call_command(
        "export_bundle",
        "--output",
        str(out),
        "--organization",
        fleet["customer"].slug,
        "--compress",
    )
    raw = (out / "data/systems.jsonl.zst").read_bytes()
    assert len(zstandard.ZstdDecompressor().stream_reader(raw).read().splitlines()) == 3
