"""A bundle streamed between two live instances: A (the live server on the test database)
serves a streamed export chunk by chunk; B (its own database, ``manage.py import_bundle
--from``) pulls it. The pull lands what a file import lands; blobs B holds are not sent;
an interrupted pull resumes with only the missing bytes; bad transfers and bad tokens are
refused with B as it was."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from knox.models import AuthToken

from migrations_app.bundles import api
from migrations_app.bundles.stream_source import chunk_pieces
from migrations_app.models import BundleExport
from tests.conftest import needs_postgresql
from tests.factories import ClusterBackupFactory, UserFactory

from .conftest import BLOBS, Instance, _admin
from .test_import_bundle import a_rows, b_rows

pytestmark = [needs_postgresql, pytest.mark.django_db(transaction=True)]

CHUNK = 4096


@pytest.fixture
def served(monkeypatch):
    """Bytes the source sent, chunk by chunk; ``stall_after`` makes it stop sending after
    that many bytes until ``go`` is set; ``flip`` flips one byte of chunk ``flip``."""
    log = {"bytes": 0, "chunks": [], "stall_after": None, "flip": None}
    log["stalled"], log["go"] = threading.Event(), threading.Event()

    def counting(folder, index, start=0):
        log["chunks"].append((index, start))
        for piece in chunk_pieces(folder, index, start):
            if log["flip"] == index and start == 0:
                piece = bytes([piece[0] ^ 1]) + piece[1:]
                log["flip"] = None
            stall = log["stall_after"]
            if stall is not None and log["bytes"] + len(piece) > stall:
                log["stall_after"] = None
                keep = stall - log["bytes"]
                log["bytes"] += keep
                yield piece[:keep]
                log["stalled"].set()
                log["go"].wait(30)
                raise ConnectionAbortedError("the puller is gone")
            log["bytes"] += len(piece)
            yield piece

    monkeypatch.setattr(api, "chunk_pieces", counting)
    return log


@pytest.fixture
def source(fleet, live_server, celery_eager, tmp_path):
    """A's address and a superuser's staff API token there, in a file."""
    root = UserFactory(email="root@example.com", organization=None, is_superuser=True)
    path = tmp_path / "token"
    path.write_text(AuthToken.objects.create(user=root)[1] + "\n")
    return {"url": live_server.url, "token": path}


@pytest.fixture
def b(instance_b):
    instance_b.env["BUNDLE_UPLOAD_ROOT"] = str(instance_b.root / "uploads")
    return instance_b


def pull(b, fleet, source, *extra, token=None):
    owner = fleet["customer"].parent.parent.slug
    return b.manage(
        "import_bundle", "--from", source["url"], "--token-file", str(token or source["token"]),
        "--organization", fleet["customer"].parent.slug, "--credentials", "--chunk-size", "4KB",
        "--map-org", f"{owner}=b-owner", *extra, check=False,
    )  # fmt: skip


def state(b) -> dict:
    return {"rows": b_rows(b), "blobs": b.blobs()}


def pulled_files(b) -> dict[str, int]:
    root = Path(b.env["BUNDLE_UPLOAD_ROOT"])
    return {p.name: p.stat().st_size for p in root.rglob("bundle.tar.*")} if root.exists() else {}


def last_manifest() -> dict:
    run = BundleExport.objects.filter(format="stream").order_by("-sequence").first()
    return json.loads((Path(run.output) / "manifest.json").read_bytes())


def test_a_pull_lands_what_a_file_import_of_the_same_selection_lands(
    fleet, source, b, served, instance_template, tmp_path, settings
):
    done = pull(b, fleet, source, "--apply")
    assert done.returncode == 0, done.stderr
    assert "applied:" in done.stdout
    assert source["token"].read_text().strip() not in done.stdout + done.stderr
    manifest = last_manifest()
    assert len(manifest["chunks"]) > 3 and served["bytes"] == manifest["tar_size"]
    # The source never wrote the tar: its export folder holds the manifest and the rows.
    folder = Path(BundleExport.objects.get(format="stream").output)
    assert not list(folder.glob("bundle.tar.*")) and not (folder / "blobs").exists()

    # The same selection as a file, imported into a third instance C.
    name = f"{instance_template[:-5]}_c"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{instance_template}"')
    try:
        (tmp_path / "c").mkdir()
        c = Instance(name, tmp_path / "c", settings.CREDENTIAL_DIGEST_KEY)
        c.trust(__import__("migrations_app.bundles.keys", fromlist=["x"]).public_hex())
        call_command(
            "export_bundle", "--output", str(tmp_path / "file"),
            "--organization", fleet["customer"].parent.slug, "--credentials",
        )  # fmt: skip
        owner = fleet["customer"].parent.parent.slug
        c.manage(
            "import_bundle", str(tmp_path / "file"), "--apply", "--map-org", f"{owner}=b-owner"
        )
        assert state(b) == state(c)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ours = a_rows(fleet)
    assert b_rows(b)["mappings"] == ours["mappings"] and b_rows(b)["backups"] == ours["backups"]
    assert sorted(b.blobs().values()) == sorted(s for _i, s in ours["backups"])
    # The token is not kept once the pull ended; the pulled chunks are gone once applied.
    assert b.sql("SELECT remote_token FROM migrations_app_bundleimport") == [("",)]
    assert pulled_files(b) == {}


def test_blobs_the_destination_holds_are_not_sent(fleet, source, b, served):
    assert pull(b, fleet, source, "--apply").returncode == 0
    new = ClusterBackupFactory(system=fleet["mappings"][0].system, content=b"new backup " * 50)
    served["bytes"] = 0
    again = pull(b, fleet, source, "--apply")
    assert again.returncode == 0, again.stderr
    manifest = last_manifest()
    assert [blob["sha256"] for blob in manifest["blobs"]] == [new.sha256]
    held = sorted(blob["sha256"] for blob in manifest["held_blobs"])
    assert held == sorted(__import__("hashlib").sha256(blob).hexdigest() for blob in BLOBS)
    # What crossed the wire is the bundle without the held blobs.
    assert served["bytes"] == manifest["tar_size"]
    assert manifest["tar_size"] < sum(f["size"] for f in manifest["files"]) + sum(
        len(blob) for blob in BLOBS
    )
    assert not [f for f in manifest["files"] if any(h[2:] in f["path"] for h in held)]
    assert new.sha256 in b.blobs().values()
    assert (str(new.id), new.sha256) in b_rows(b)["backups"]


def test_a_pull_killed_mid_way_resumes_fetching_only_what_is_missing(
    fleet, source, b, served, settings
):
    before = state(b)
    served["stall_after"] = 3 * CHUNK + 1000
    owner = fleet["customer"].parent.parent.slug
    puller = subprocess.Popen(
        [sys.executable, "manage.py", "import_bundle", "--from", source["url"],
         "--token-file", str(source["token"]), "--organization", fleet["customer"].parent.slug,
         "--credentials", "--chunk-size", "4KB", "--map-org", f"{owner}=b-owner", "--apply"],
        env={**os.environ, **b.env}, cwd=settings.BASE_DIR,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert served["stalled"].wait(60), "the pull never reached the fourth chunk"
        deadline = time.monotonic() + 20
        while pulled_files(b).get("bundle.tar.0003.part") != 1000:
            assert time.monotonic() < deadline, pulled_files(b)
            time.sleep(0.05)
        puller.kill()
        puller.wait(10)
    finally:
        served["go"].set()
        if puller.poll() is None:
            puller.kill()
    # Nothing half-written: three chunks verified, the fourth in part, no row, no blob.
    here = pulled_files(b)
    assert sorted(here) == ["bundle.tar.0000", "bundle.tar.0001", "bundle.tar.0002",
                            "bundle.tar.0003.part"]  # fmt: skip
    assert here["bundle.tar.0003.part"] == 1000
    assert state(b) == before
    # The killed pull's row holds the token sealed, never in clear.
    token = source["token"].read_text().strip()
    [(sealed,)] = b.sql("SELECT remote_token FROM migrations_app_bundleimport")
    assert sealed and token not in sealed
    first = served["bytes"]
    served.update(bytes=0, chunks=[])
    resumed = pull(b, fleet, source, "--apply")
    assert resumed.returncode == 0, resumed.stderr
    manifest = last_manifest()
    assert BundleExport.objects.filter(format="stream").count() == 1
    # Only the missing bytes: the rest of chunk 3 (from byte 1000), then chunks 4, 5, …
    assert served["bytes"] == manifest["tar_size"] - first
    assert served["chunks"][0] == (3, 1000)
    assert [index for index, _start in served["chunks"]] == list(range(3, len(manifest["chunks"])))
    ours = a_rows(fleet)
    rows = b_rows(b)
    assert rows["mappings"] == ours["mappings"] and rows["backups"] == ours["backups"]
    assert [(k, n, d, False) for k, n, d, _x in ours["systems"]] == rows["systems"]
    assert sorted(b.blobs().values()) == sorted(s for _i, s in ours["backups"])


def test_bad_transfers_and_bad_tokens_are_refused_with_the_target_unchanged(
    fleet, source, b, served, bob, charlie, tmp_path
):
    before = state(b)

    def refused(done, reason):
        assert done.returncode != 0 and reason in done.stderr, done.stderr
        assert state(b) == before

    served["flip"] = 1
    refused(pull(b, fleet, source, "--apply"), "bundle.tar.0001 does not match its sha256")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-a-token-of-this-instance")
    refused(pull(b, fleet, source, "--apply", token=wrong), "refused the API token (401)")
    for user, code in ((charlie, "404"), (bob, "403")):
        token = tmp_path / user.email
        token.write_text(AuthToken.objects.create(user=user)[1])
        refused(pull(b, fleet, source, "--apply", token=token), f"({code})")
    b.sql("DELETE FROM migrations_app_trustedbundlekey RETURNING key_id")
    refused(pull(b, fleet, source, "--apply"), "which this instance does not trust")
    plain = b.manage(
        "import_bundle", "--from", "http://example.com", "--token-file", str(source["token"]),
        "--organization", "x", check=False,
    )  # fmt: skip
    refused(plain, "give an https:// address")


def test_the_admin_pull_form_starts_a_pull_that_is_fetched_and_planned(
    fleet, source, trusted_self, admin_client
):
    """The admin's "pull from another instance" (here A pulls its own selection back: the
    plan finds every row unchanged); the run is a worker's (in-process without a broker)."""
    from migrations_app.models import BundleImport

    page = "/admin/migrations_app/bundleimport/pull/"
    assert admin_client.get(page).status_code == 200
    token = source["token"].read_text().strip()
    refused = admin_client.post(page, {"url": "http://example.com", "token": token,
                                       "on_conflict": "skip"})  # fmt: skip
    assert b"give an https:// address" in refused.content
    assert not BundleImport.objects.exists()
    started = admin_client.post(page, {
        "url": source["url"], "token": token, "organizations": fleet["customer"].parent.slug,
        "on_conflict": "skip",
    })  # fmt: skip
    assert started.status_code == 302
    run = BundleImport.objects.get()
    assert run.state == "succeeded" and run.remote_url == source["url"], run.error
    assert run.remote_token == "" and run.bytes_fetched == run.bytes_total > 0
    assert run.plan["kinds"]["systems"]["unchanged"] == 3 and not run.applied_at
    assert token not in str(BundleImport.objects.values().get())


def test_a_tenant_admin_token_reaches_its_own_subtree_only(
    fleet, celery_eager, alice, charlie, trusted_self, tmp_path
):
    from rest_framework.test import APIClient

    from migrations_app.bundles.stream_source import stream_file

    api_client = APIClient()

    def as_user(user):
        token = AuthToken.objects.create(user=user)[1]
        api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    streams = "/api/bundles/streams/"
    as_user(alice)  # an admin at the distributor, the selection's root
    started = api_client.post(
        streams, {"organizations": [fleet["customer"].parent.slug], "chunk_size": 4096}, "json"
    )
    assert started.status_code == 202, started.content
    run = BundleExport.objects.get(pk=started.json()["id"])
    assert run.state == "succeeded" and run.format == "stream"
    assert api_client.get(f"{streams}{run.pk}/manifest/").status_code == 200
    outside = api_client.post(streams, {"organizations": [fleet["other"].slug]}, "json")
    assert outside.status_code == 404 and fleet["other"].slug in outside.json()["detail"]
    # Nothing named: everything alice reaches, which is her own organization's subtree.
    everything = api_client.post(streams, {}, "json")
    assert everything.status_code == 202
    assert BundleExport.objects.get(pk=everything.json()["id"]).scope["organizations"] == [
        fleet["customer"].parent.slug
    ]
    as_user(charlie)  # an admin of another customer: alice's exports do not exist for him
    for url in (f"{streams}{run.pk}/", f"{streams}{run.pk}/manifest/",
                f"{streams}{run.pk}/chunk/?index=0"):  # fmt: skip
        assert api_client.get(url).status_code == 404, url
    assert api_client.get(streams).json()["results"] == []
    # The streamed export as one file (the admin's download) is a bundle like any other.
    one = tmp_path / "stream.tar"
    one.write_bytes(b"".join(stream_file(Path(run.output))))
    call_command("import_bundle", str(one))


def test_a_planned_pull_is_applied_without_fetching_it_again(fleet, source, b, served):
    before = state(b)
    planned = pull(b, fleet, source)
    assert planned.returncode == 0, planned.stderr
    assert "systems: 3 create" in planned.stdout and "dry run" in planned.stdout
    assert state(b) == before
    fetched = served["bytes"]
    assert fetched == last_manifest()["tar_size"]
    applied = pull(b, fleet, source, "--apply")
    assert applied.returncode == 0, applied.stderr
    assert served["bytes"] == fetched and BundleExport.objects.count() == 1
    assert b_rows(b)["backups"] == a_rows(fleet)["backups"]
