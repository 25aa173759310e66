"""Bundle benchmark: export and import of a fleet, beside ``tar`` plus ``pg_dump`` of the same.

Creates two fresh PostgreSQL databases, A and B, and migrates both. Seeds A (COPY, from
unsaved model instances, so it follows the models) with an owner organization and a
customer under it, ``--systems`` systems with real credential digests, ``--mappings``
legacy mappings with token digests, and ``--blob-mib`` MiB of cluster backups
(``--blob-size-mib`` each, random bytes, so nothing compresses) in A's blob folder. Then,
in the same run:

1. the peer: ``tar -cf`` of A's blob folder, then ``pg_dump`` (plain, uncompressed) of the
   same four tables (organizations, systems, mappings, cluster backups);
2. ``manage.py export_bundle --credentials`` of the owner's subtree, those four kinds, as a
   tar and as a directory;
3. on B (trusting A's key, sharing its credential digest key, its own blob folder):
   ``manage.py import_bundle`` of the tar bundle (the plan), then ``--apply``; then checks
   that B holds the rows and the blob bytes.

Every command runs in a child process: its peak RSS is the child's VmHWM, its growth is
over a child that loaded Django and the bundle commands and did nothing
(``bundle_keys --public``). Prints the table with the ratios next to the goals (export ≤
1.25× tar + pg_dump, import ≥ 20,000 rows/s and ≤ 2× the export, growth ≤ 128 MiB) and the
load average before and after. It never passes or fails. ``--profile DIR`` runs the
commands under cProfile and leaves one ``.prof`` per command in DIR.

    .venv/bin/python bench/bundles.py              # --help for the options
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import (
    DEFAULT_SERVER,
    ROOT,
    database_drop,
    database_recreate,
    django_setup,
    step,
)

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
GOAL_EXPORT_RATIO = 1.25
GOAL_IMPORT_RATE = 20_000
GOAL_IMPORT_RATIO = 2.0
GOAL_GROWTH_MIB = 128
KINDS = ("organizations", "systems", "mappings", "cluster_backups")
OWNER = "bench-owner"


def main() -> None:
    options = parse_args()
    started = time.monotonic()
    print(
        f"bundle benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"{options.systems:,} systems, {options.mappings:,} mappings, "
        f"{options.blob_mib:,} MiB of blobs; load average {load()}"
    )
    work = Path(tempfile.mkdtemp(prefix="cutover-bench-bundles-", dir=options.workdir))
    instances = {name: instance_env(options, work, name) for name in ("a", "b")}
    figures: dict = {"load_before": load()}
    try:
        for name, env in instances.items():
            database_recreate(options.server, env["_database"])
            step(f"migrate {name.upper()}", lambda env=env: manage(env, "migrate", "--noinput"))
        os.environ.update(public(instances["a"]))
        django_setup()
        figures["seed"] = step("seed A", lambda: seed(options))
        figures["peer"] = peer(options, instances["a"], work)
        figures.update(exports(options, instances["a"], work))
        figures.update(imports(options, instances, work))
        figures["check"] = step("check B against A", lambda: check(options, instances))
    finally:
        figures["load_after"] = load()
        from django.db import connections

        connections.close_all()
        if not options.keep:
            for env in instances.values():
                database_drop(options.server, env["_database"])
            shutil.rmtree(work, ignore_errors=True)
        else:
            names = ", ".join(env["_database"] for env in instances.values())
            print(f"kept: databases {names}, files in {work}")
    report(figures, options)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server URL.")
    parser.add_argument(
        "--database",
        default="cutover_bench_bundles",
        help="Prefix of the two scratch databases (<prefix>_a, <prefix>_b): dropped, "
        "re-created, dropped at the end.",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the databases and files.")
    parser.add_argument("--systems", type=int, default=100_000)
    parser.add_argument("--mappings", type=int, default=100_000, help="At most --systems.")
    parser.add_argument("--blob-mib", type=int, default=1024, help="MiB of cluster backups.")
    parser.add_argument("--blob-size-mib", type=int, default=1, help="MiB per backup.")
    parser.add_argument("--workdir", default=None, help="Folder for the files (default: /tmp).")
    parser.add_argument("--profile", default=None, metavar="DIR", help="cProfile each command.")
    options = parser.parse_args()
    if options.mappings > options.systems:
        parser.error("--mappings is at most --systems (a mapping has a system of its own).")
    return options


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- the two instances -------------------------------------------------------------------------


def instance_env(options, work: Path, name: str) -> dict[str, str]:
    """The environment of instance ``name``: its database, blob folder and exports; both
    share one digest key (a system moved keeps its credentials), A signs, B trusts A."""
    folder = work / name
    database = f"{options.database}_{name}"
    return {
        "_database": database,
        "DATABASE_URL": f"{options.server.rstrip('/')}/{database}",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "SECRET_KEY": "bench-bundles-" + "k" * 40,
        "CREDENTIAL_DIGEST_KEY": "bench-bundles-digest-key-" + "d" * 24,
        "BACKUP_STORAGE_URL": "",
        "MEDIA_ROOT": str(folder / "media"),
        "BACKUP_LOCAL_ROOT": str(folder / "store"),
        "BUNDLE_EXPORT_ROOT": str(folder / "exports"),
        "BUNDLE_UPLOAD_ROOT": str(folder / "uploads"),
        "BUNDLE_SIGNING_KEY_FILE": str(folder / "signing.key"),
    }


def public(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("_")}


def manage(env: dict[str, str], *args) -> str:
    done = subprocess.run(
        [str(BIN / "python"), "manage.py", *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **public(env)},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"manage.py {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


# Run in the child: manage.py under cProfile when asked, then its own VmHWM (the peak RSS of
# this process image). ``ru_maxrss`` would not do: Linux carries it over fork and exec, so
# a child reports the benchmark's own peak when that is higher.
CHILD = """
import os, runpy, sys
sys.argv = sys.argv[1:]
profile = os.environ.get("BENCH_PROFILE")
profiler = None
if profile:
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    with open("/proc/self/status") as status, open(os.environ["BENCH_HWM"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
"""


def measured(env: dict[str, str], label: str, *args, profile: str | None = None) -> dict:
    """Run ``manage.py *args`` in a child; its seconds, peak RSS (KiB) and output."""
    extra = {}
    if profile:
        Path(profile).mkdir(parents=True, exist_ok=True)
        extra["BENCH_PROFILE"] = str(Path(profile) / f"{label.replace(' ', '_')}.prof")
    print(f"  {label} …", end="", flush=True)
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile() as hwm:
        began = time.monotonic()
        done = subprocess.run(
            [str(BIN / "python"), "-c", CHILD, "manage.py", *map(str, args)],
            cwd=ROOT,
            env={**os.environ, **public(env), **extra, "BENCH_HWM": hwm.name},
            stdout=out,
            stderr=out,
        )
        elapsed = time.monotonic() - began
        out.seek(0)
        text = out.read().decode(errors="replace")
        peak = int(Path(hwm.name).read_text() or 0)
    if done.returncode:
        sys.exit(f"\nmanage.py {args[0]} failed:\n{text[-3000:]}")
    print(f" {elapsed:.1f} s, peak RSS {peak / 1024:.0f} MiB", flush=True)
    return {"seconds": elapsed, "peak_kib": peak, "output": text}


# --- seeding A ---------------------------------------------------------------------------------


def _copy(model, instances) -> None:
    """COPY unsaved instances into the model's table (every concrete column but an
    auto id)."""
    from django.db import connection, models

    fields = [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and isinstance(f, models.AutoField | models.BigAutoField))
    ]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        raw = cursor.cursor  # the psycopg cursor under Django's wrapper
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for obj in instances:
                copy.write_row(
                    [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
                )


def seed(options) -> dict:
    """The owner and its customer, the systems, the mappings and the backups with their
    blobs (random bytes, written through the blob store, so laid out as uploads are)."""
    import hashlib

    from django.db import connection, transaction
    from django.utils import timezone

    from backups_app.cluster_backups.models import ClusterBackup
    from backups_app.storage import get_store
    from fleet_app import credentials, services
    from fleet_app.models import System
    from migrations_app.models import LegacyMapping

    owner = services.organization_create(actor=None, name=OWNER, kind="owner")
    customer = services.organization_create(
        actor=None, name="bench-customer", kind="customer", parent=owner
    )
    now = timezone.now()
    with transaction.atomic():
        systems = []
        for number in range(options.systems):
            secret_public, secret = credentials.system_secret_generate()
            systems.append(
                System(
                    organization=customer,
                    name=f"bench-{number:06d}",
                    type="ns8",
                    fqdn=f"bench-{number:06d}.example.com",
                    system_key=credentials.system_key_generate(),
                    secret_public=secret_public,
                    secret_digest=credentials.digest(secret),
                    created_at=now,
                    registered_at=now,
                )
            )
        _copy(System, systems)
        ids = dict(System.objects.filter(organization=customer).values_list("system_key", "pk"))
        _copy(
            LegacyMapping,
            (
                LegacyMapping(
                    legacy_system_id=f"legacy-{number:06d}",
                    legacy_token_digest=credentials.digest(f"legacy-token-{number}"),
                    system_id=ids[system.system_key],
                    created_at=now,
                )
                for number, system in enumerate(systems[: options.mappings])
            ),
        )
    store = get_store()
    size = options.blob_size_mib * MIB
    backups = []
    for number in range(max(1, options.blob_mib // options.blob_size_mib)):
        system = systems[number % len(systems)]
        ident = uuid.uuid4()
        key = f"cluster/{system.system_key}/{ident}"
        data = os.urandom(size)
        writer = store.writer(key)
        writer.write(data)
        writer.commit()
        backups.append(
            ClusterBackup(
                id=ident,
                system_id=ids[system.system_key],
                organization=customer,
                filename=f"backup-{number}.json.gz.gpg",
                size=size,
                sha256=hashlib.sha256(data).hexdigest(),
                storage_key=key,
                uploaded_at=now,
            )
        )
    ClusterBackup.objects.bulk_create(backups, batch_size=1000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    rows = 2 + options.systems + options.mappings + len(backups)
    return {"rows": rows, "blobs": len(backups), "blob_bytes": len(backups) * size}


def tables() -> list[str]:
    from backups_app.cluster_backups.models import ClusterBackup
    from fleet_app.models import Organization, System
    from migrations_app.models import LegacyMapping

    return [m._meta.db_table for m in (Organization, System, LegacyMapping, ClusterBackup)]


# --- 1. the peer ---------------------------------------------------------------------------


def peer(options, env: dict[str, str], work: Path) -> dict:
    out = work / "peer"
    out.mkdir()
    print("\n1. the peer: tar of the blob folder, pg_dump of the same tables")

    def tar():
        subprocess.run(
            ["tar", "-cf", str(out / "blobs.tar"), "-C", env["BACKUP_LOCAL_ROOT"], "cluster"],
            check=True,
        )

    def dump():
        args = ["pg_dump", "--format=plain", "--file", str(out / "tables.sql")]
        for table in tables():
            args += ["--table", table]
        subprocess.run([*args, env["DATABASE_URL"]], check=True)

    _, tar_s = timed_quiet("tar -cf", tar)
    _, dump_s = timed_quiet("pg_dump", dump)
    size = sum(p.stat().st_size for p in out.iterdir())
    shutil.rmtree(out)
    return {"tar": tar_s, "pg_dump": dump_s, "bytes": size}


def timed_quiet(label: str, action):
    print(f"  {label} …", end="", flush=True)
    began = time.monotonic()
    value = action()
    elapsed = time.monotonic() - began
    print(f" {elapsed:.1f} s", flush=True)
    return value, elapsed


# --- 2. exports ------------------------------------------------------------------------------


def exports(options, env: dict[str, str], work: Path) -> dict:
    print("\n2. export_bundle of the owner's subtree")
    figures = {"floor": measured(env, "floor (bundle_keys --public)", "bundle_keys", "--public")}
    kinds = [arg for kind in KINDS for arg in ("--kind", kind)]
    for fmt in ("tar", "dir"):
        out = work / f"bundle-{fmt}"
        run = measured(
            env,
            f"export {fmt}",
            "export_bundle",
            "--output",
            out,
            "--organization",
            OWNER,
            "--format",
            fmt,
            "--credentials",
            *kinds,
            profile=options.profile,
        )
        run["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        figures[f"export_{fmt}"] = run
    shutil.rmtree(work / "bundle-dir")
    return figures


# --- 3. imports ------------------------------------------------------------------------------


def imports(options, instances: dict, work: Path) -> dict:
    print("\n3. import_bundle of the tar bundle into B")
    a, b = instances["a"], instances["b"]
    key = work / "a.pub"
    key.write_text(manage(a, "bundle_keys", "--public").strip().splitlines()[-1])
    manage(b, "bundle_keys", "--trust", key)
    bundle = work / "bundle-tar"
    plan = measured(b, "import plan", "import_bundle", bundle, profile=options.profile)
    applied = measured(
        b, "import --apply", "import_bundle", bundle, "--apply", profile=options.profile
    )
    return {"plan": plan, "apply": applied}


def check(options, instances: dict) -> dict:
    """B's counts of the four tables and its blob bytes, against A's."""
    import psycopg

    counts = {}
    for name, env in instances.items():
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            counts[name] = [
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - model tables
                for table in tables()
            ]
        store = Path(env["BACKUP_LOCAL_ROOT"]) / "cluster"
        counts[name].append(sum(p.stat().st_size for p in store.rglob("*") if p.is_file()))
    if counts["a"] != counts["b"]:
        print(f"  B differs from A: A {counts['a']}, B {counts['b']} (orgs, systems, mappings, "
              "backups, blob bytes)")  # fmt: skip
    return counts


# --- the table ---------------------------------------------------------------------------------


def report(figures: dict, options) -> None:
    if "apply" not in figures:
        return
    seed, peer_ = figures["seed"], figures["peer"]
    rows, blob_bytes = seed["rows"], seed["blob_bytes"]
    floor = figures["floor"]["peak_kib"]
    peer_s = peer_["tar"] + peer_["pg_dump"]
    export_s = figures["export_tar"]["seconds"]
    print(
        f"\nsummary: {rows:,} rows, {seed['blobs']:,} blobs of {options.blob_size_mib} MiB "
        f"({blob_bytes / MIB:,.0f} MiB); a Django process that does nothing: "
        f"{figures['floor']['seconds']:.1f} s, {floor / 1024:.0f} MiB"
    )
    print(
        f"{'step':<22} {'seconds':>8} {'rows/s':>9} {'MiB/s':>7} {'ratio':>16} "
        f"{'RSS growth MiB':>15}"
    )

    def line(label, seconds, ratio="", run=None, volume=blob_bytes, count=rows):
        growth = f"{(run['peak_kib'] - floor) / 1024:.0f}" if run else ""
        rate = f"{count / seconds:,.0f}" if count else ""
        print(
            f"{label:<22} {seconds:>8.1f} {rate:>9} {volume / MIB / seconds:>7.0f} "
            f"{ratio:>16} {growth:>15}"
        )

    line("tar -cf (blobs)", peer_["tar"], count=0)
    line("pg_dump (4 tables)", peer_["pg_dump"], volume=0)
    line("tar + pg_dump", peer_s)
    for fmt in ("tar", "dir"):
        run = figures[f"export_{fmt}"]
        line(f"export {fmt}", run["seconds"], f"{run['seconds'] / peer_s:.2f}× peer", run)
    plan, applied = figures["plan"], figures["apply"]
    line("import plan", plan["seconds"], f"{plan['seconds'] / export_s:.2f}× export", plan)
    line(
        "import --apply",
        applied["seconds"],
        f"{applied['seconds'] / export_s:.2f}× export",
        applied,
    )
    growth = max(
        figures[k]["peak_kib"] - floor for k in ("export_tar", "export_dir", "plan", "apply")
    )
    print(
        f"goals: export ≤ {GOAL_EXPORT_RATIO}× peer (tar: {export_s / peer_s:.2f}×); "
        f"import ≥ {GOAL_IMPORT_RATE:,} rows/s ({rows / applied['seconds']:,.0f}) and "
        f"≤ {GOAL_IMPORT_RATIO}× export ({applied['seconds'] / export_s:.2f}×); "
        f"RSS growth ≤ {GOAL_GROWTH_MIB} MiB (largest {growth / 1024:.0f})"
    )
    check_ = figures.get("check")
    if check_:
        same = "equal" if check_["a"] == check_["b"] else "DIFFERENT"
        print(f"B against A (orgs, systems, mappings, backups, blob bytes): {same} {check_['b']}")
    print(f"load average before {figures['load_before']}, after {figures['load_after']}")


if __name__ == "__main__":
    main()
