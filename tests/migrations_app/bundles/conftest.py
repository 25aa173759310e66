"""A small fleet to export: a customer subtree with systems, mappings, inventories,
cluster backups (with their blobs) and a quota, and another customer that must never
leave with it."""

import hashlib
import json
from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection

from fleet_app import services
from fleet_app.demo import ns8_inventory
from migrations_app.bundles import keys
from migrations_app.bundles.services import trusted_key_add
from tests.factories import ClusterBackupFactory, InventoryFactory, UserFactory, make_mapping

BLOBS = [b"backup one " * 300, b"backup two " * 500]


@pytest.fixture
def bundle_settings(settings, tmp_path):
    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"
    settings.BUNDLE_EXPORT_ROOT = tmp_path / "exports"
    settings.BUNDLE_SIGNING_KEY_FILE = tmp_path / "signing.key"
    settings.BUNDLE_BATCH_ROWS = 2
    return settings


@pytest.fixture
def trusted_self(bundle_settings):
    """This instance trusts its own key: its bundles can be imported back onto it."""
    trusted_key_add(actor=None, text=keys.public_hex(), name="self")


@pytest.fixture
def fleet(bundle_settings, customer, other_customer):
    shop = services.organization_create(
        actor=None, name="Shop", kind="customer", parent=customer.parent
    )
    mappings = [
        make_mapping(customer, legacy_system_id=f"legacy-{n}", legacy_token=f"tok-{n}-xxxxxxxxxx")
        for n in range(3)
    ]
    for n, mapping in enumerate(mappings):
        InventoryFactory(system=mapping.system, data=ns8_inventory(seed=n))
    ClusterBackupFactory(system=mappings[0].system, content=BLOBS[0])
    ClusterBackupFactory(system=mappings[1].system, content=BLOBS[1])
    UserFactory(email="Reader@Example.com", organization=customer, roles=["reader"])
    outside = make_mapping(
        other_customer, legacy_system_id="legacy-outside", legacy_token="tok-out-xxxxxxxx"
    )
    ClusterBackupFactory(system=outside.system, content=b"outside " * 100)
    return {
        "customer": customer,
        "shop": shop,
        "other": other_customer,
        "mappings": mappings,
        "outside": outside,
    }


COUNTED = [
    "fleet_app.Organization",
    "fleet_app.User",
    "fleet_app.Membership",
    "fleet_app.System",
    "fleet_app.Inventory",
    "fleet_app.Quota",
    "fleet_app.AuditEntry",
    "migrations_app.LegacyMapping",
    "migrations_app.FingerprintAnomaly",
    "migrations_app.BundleRowState",
    "backups_app.ClusterBackup",
]


def snapshot(settings) -> dict:
    """Row counts of every table a bundle writes, and the blob folder's files and hashes."""
    counts = {label: apps.get_model(label).objects.count() for label in COUNTED}
    counts["fleet_app.AuditEntry"] = (
        apps.get_model("fleet_app.AuditEntry").objects.exclude(action__startswith="bundle.").count()
    )
    root = Path(settings.BACKUP_LOCAL_ROOT)
    files = (
        {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        if root.exists()
        else {}
    )
    return {"rows": counts, "blobs": files}


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_bytes())


def resign(path: Path, manifest: dict) -> None:
    """Rewrite a bundle's manifest and sign it again with this instance's (trusted) key."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    signer, signature = keys.sign(data)
    (path / "manifest.json").write_bytes(data)
    (path / "manifest.sig").write_text(json.dumps({"signer": signer, "signature": signature}))


def db_url(name: str | None = None) -> str:
    db = connection.settings_dict
    host = f"{db['HOST']}:{db['PORT']}"
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{host}/{name or db['NAME']}"


# --- Instance B: a second database (and media folder, key file) driven by manage.py --------


class Instance:
    """Another Cutover instance: its own database, blob folder and signing key, sharing
    this one's code (and, unless told otherwise, its credential digest key)."""

    def __init__(self, name: str, root: Path, digest_key: str):
        self.name = name
        self.root = root
        self.store = root / "store"
        self.env = {
            "DATABASE_URL": db_url(name),
            "BACKUP_LOCAL_ROOT": str(self.store),
            "BACKUP_STORAGE_URL": "",
            "BUNDLE_EXPORT_ROOT": str(root / "exports"),
            "BUNDLE_SIGNING_KEY_FILE": str(root / "signing.key"),
            "BUNDLE_BATCH_ROWS": "2",
            "CREDENTIAL_DIGEST_KEY": digest_key,
            "CONN_MAX_AGE": "0",
        }

    def manage(self, *args: str, check: bool = True):
        import os
        import subprocess
        import sys

        from django.conf import settings

        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            env={**os.environ, **self.env},
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode:
            raise AssertionError(
                f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def sql(self, query: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(db_url(self.name)) as conn:
            return conn.execute(query, params).fetchall()

    def count(self, table: str) -> int:
        return self.sql(f"SELECT count(*) FROM {table}")[0][0]  # noqa: S608 - test tables

    def trust(self, public_hex: str) -> None:
        path = self.root / "trusted.pub"
        path.write_text(public_hex)
        self.manage("bundle_keys", "--trust", str(path), "--name", "A")

    def blobs(self) -> dict[str, str]:
        return (
            {
                str(p.relative_to(self.store)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.store.rglob("*"))
                if p.is_file()
            }
            if self.store.exists()
            else {}
        )


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(db_url("postgres"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def instance_template(django_db_setup, django_db_blocker, tmp_path_factory):
    """A migrated database with one owner organization, copied for every test's B."""
    with django_db_blocker.unblock():
        name = f"{connection.settings_dict['NAME']}_btpl"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    from django.conf import settings

    instance = Instance(name, tmp_path_factory.mktemp("tpl"), settings.CREDENTIAL_DIGEST_KEY)
    instance.manage("migrate", "-v0")
    instance.manage(
        "shell", "-c",
        "from fleet_app import services; services.organization_create(actor=None, "
        "name='B Owner', kind='owner', parent=None)",
    )  # fmt: skip
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def instance_b(instance_template, tmp_path, settings):
    name = f"{instance_template[:-5]}_b"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{instance_template}"')
    root = tmp_path / "b"
    root.mkdir()
    instance = Instance(name, root, settings.CREDENTIAL_DIGEST_KEY)
    instance.trust(keys.public_hex())
    yield instance
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
