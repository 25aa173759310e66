"""What every benchmark script needs: timed steps, a scratch PostgreSQL database, Django.

Imported by the scripts in this folder (``python bench/<name>.py`` puts it on the path).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432"
# A server started with DEBUG off refuses the embedded key and an empty ALLOWED_HOSTS
# (controlplane/production.py): the loopback servers of the benchmarks get their own.
SERVER_ENV = {
    "SECRET_KEY": "bench-only-" + "k" * 8 + os.urandom(24).hex(),
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
}


def scratch_parser(doc: str, database: str) -> argparse.ArgumentParser:
    """The options every benchmark on a scratch database takes: ``--server``,
    ``--database`` (dropped and re-created) and ``--keep``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help="PostgreSQL server URL (without a database name)."
    )
    parser.add_argument(
        "--database",
        default=database,
        help="Scratch database: dropped and re-created, dropped at the end.",
    )
    parser.add_argument("--keep", action="store_true", help="Do not drop the database.")
    return parser


def timed(label: str, action):
    """Run ``action``, printing its label and duration; return ``(value, seconds)``."""
    began = time.monotonic()
    print(f"  {label} …", end="", flush=True)
    value = action()
    elapsed = time.monotonic() - began
    print(f" {elapsed:.1f} s", flush=True)
    return value, elapsed


def step(label: str, action):
    """``timed`` for when only the value matters."""
    return timed(label, action)[0]


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in the project folder; fail loudly, capture its output."""
    return subprocess.run(
        [str(c) for c in command], cwd=ROOT, check=True, capture_output=True, text=True, **kwargs
    )


def admin_connection(server: str):
    import psycopg

    return psycopg.connect(f"{server.rstrip('/')}/postgres", autocommit=True)


def database_recreate(server: str, name: str) -> None:
    """Drop (if present) and create the scratch database ``name``."""
    from psycopg import sql

    with admin_connection(server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_drop(server: str, name: str) -> None:
    """Close this process's connections and drop the scratch database."""
    from psycopg import sql

    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()
    with admin_connection(server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def django_setup() -> None:
    """Set Django up in this process (DATABASE_URL must already point at the database)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()


def systems_seed(count: int, *, at, steady: tuple[str, ...]) -> tuple[list, list[str], dict]:
    """``count`` registered systems of one bench customer with real credentials, bulk
    inserted, each of the ``steady`` timestamp fields set to ``at`` (only those the model
    has, so the benchmarks keep working while the model evolves). One is checked through
    ``services.system_authenticate``. Returns the systems, their Basic headers and the
    secret of each key."""
    import base64

    from fleet_app import credentials, services
    from fleet_app.models import System

    owner = services.organization_create(actor=None, name="bench-owner", kind="owner")
    customer = services.organization_create(
        actor=None, name="bench-customer", kind="customer", parent=owner
    )
    names = {f.name for f in System._meta.concrete_fields}
    fields = {name: at for name in steady if name in names}
    systems, auths, secrets = [], [], {}
    for number in range(count):
        public, secret = credentials.system_secret_generate()
        key = credentials.system_key_generate()
        systems.append(
            System(
                organization=customer,
                name=f"bench-{number:05d}",
                type="nethserver",
                system_key=key,
                secret_public=public,
                secret_digest=credentials.digest(secret),
                **fields,
            )
        )
        secrets[key] = secret
        auths.append("Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode())
    System.objects.bulk_create(systems, batch_size=500)
    sample = systems[0].system_key
    services.system_authenticate(system_key=sample, system_secret=secrets[sample])
    return systems, auths, secrets
