"""The tar layout: one uncompressed tar stream split into chunks of a chosen size, read in
place at the offsets the manifest gives (never extracted); the same bundle as one file;
and an import killed mid-way that resumes after its last committed batch."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from migrations_app.bundles.format import bundle_file_stream
from tests.conftest import needs_postgresql
from tests.factories import bulk_mappings

from .conftest import manifest_of, snapshot

pytestmark = [needs_postgresql, pytest.mark.django_db(transaction=True)]


def export(fleet, out, *extra):
    call_command(
        "export_bundle", "--output", str(out), "--organization", fleet["customer"].parent.slug,
        "--credentials", "--format", "tar", *extra,
    )  # fmt: skip
    return out


MAP = ["--map-org"]


def test_chunks_of_the_chosen_size_with_their_table_of_contents(fleet, instance_b, tmp_path):
    bundle = export(fleet, tmp_path / "t", "--chunk-size", "8KB")
    manifest = manifest_of(bundle)
    chunks = manifest["chunks"]
    assert len(chunks) > 2 and all(c["size"] == 8192 for c in chunks[:-1])
    assert sorted(p.name for p in bundle.glob("bundle.tar.*")) == [c["name"] for c in chunks]
    # The chunks together are a tar stream; the manifest says where each member starts.
    stream = b"".join((bundle / c["name"]).read_bytes() for c in chunks)
    for item in manifest["files"]:
        assert len(stream[item["offset"] : item["offset"] + item["size"]]) == item["size"]
    owner = fleet["customer"].parent.parent.slug
    instance_b.manage("import_bundle", str(bundle), "--apply", "--map-org", f"{owner}=b-owner")
    assert (
        instance_b.count("proxy_mappings") == 3
        and instance_b.count("backups_app_clusterbackup") == 2
    )
    # Read in place: the bundle folder holds what it held, nothing was unpacked beside it.
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [c["name"] for c in chunks] + ["manifest.json", "manifest.sig"]
    )


def test_one_file_bundle_imports_like_the_folder(fleet, trusted_self, tmp_path, settings):
    bundle = export(fleet, tmp_path / "t", "--chunk-size", "16KB")
    one = tmp_path / "bundle.tar"
    with open(one, "wb") as handle:
        for piece in bundle_file_stream(bundle):
            handle.write(piece)
    import tarfile

    with tarfile.open(one) as archive:
        names = archive.getnames()
    assert names[-2:] == ["manifest.json", "manifest.sig"]
    fleet["mappings"][2].delete()
    before = snapshot(settings)
    call_command("import_bundle", str(one), "--apply")
    assert (
        snapshot(settings)["rows"]["migrations_app.LegacyMapping"]
        == before["rows"]["migrations_app.LegacyMapping"] + 1
    )


def test_a_killed_import_resumes_after_its_last_batch(fleet, instance_b, tmp_path):
    bulk_mappings(fleet["customer"], 300, prefix="many")
    bundle = export(fleet, tmp_path / "t", "--chunk-size", "64KB")
    owner = fleet["customer"].parent.parent.slug
    env = {**os.environ, **instance_b.env, "BUNDLE_BATCH_ROWS": "1"}
    args = [
        sys.executable,
        "manage.py",
        "import_bundle",
        str(bundle),
        "--apply",
        "--map-org",
        f"{owner}=b-owner",
    ]
    first = subprocess.Popen(
        args, env=env, cwd=django_settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    mark = None
    while time.monotonic() < deadline and first.poll() is None:
        rows = instance_b.sql(
            "SELECT checkpoint FROM migrations_app_bundleimport ORDER BY id DESC LIMIT 1"
        )
        if rows and rows[0][0] and rows[0][0].get("kind") == "systems" and rows[0][0]["rows"] >= 20:
            first.send_signal(signal.SIGKILL)
            mark = rows[0][0]
            break
        time.sleep(0.05)
    first.wait(timeout=30)
    assert mark is not None, "the import ended before it could be interrupted"
    half = instance_b.count("fleet_app_system")
    assert 20 <= half < 303
    done = instance_b.manage(*args[2:])
    assert "applied:" in done.stdout
    assert instance_b.count("fleet_app_system") == 303 and instance_b.count("proxy_mappings") == 303
    runs = instance_b.sql("SELECT done, checkpoint FROM migrations_app_bundleimport ORDER BY id")
    # The second run did not redo the batches the first had committed.
    assert runs[-1][0] < 303 * 2 + 20
    assert runs[-1][1]["kind"] != "systems" or runs[-1][1]["rows"] > mark["rows"]
