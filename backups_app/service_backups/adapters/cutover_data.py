"""Cutover's own data in a portable form: ``dumpdata`` of the Cutover apps as gzipped
JSON Lines with natural foreign keys, so it loads into another control plane whose
content-type and permission ids differ.

Configuration: ``{"apps": [...], "exclude": ["app.Model", ...]}`` (defaults: the three
Cutover apps, nothing excluded). A target is a Django database alias: ``{"alias":
"default"}`` is the original. A drill's scratch target is a new PostgreSQL database
holding the current schema and the reference rows (content types, permissions, groups,
applied migrations) that natural keys resolve against, reached through a temporary alias.

The manifest counts the objects per model as they are in the archive; verify counts
them in the target.
"""

import gzip
import json
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connections
from django.db.utils import load_backend

from .base import Adapter, AdapterError, Log, check, report
from .postgres import PostgresAdapter, _binary

DEFAULT_APPS = ["fleet_app", "migrations_app", "backups_app"]
# Rows natural keys point at: a scratch target gets them with the schema.
REFERENCE_TABLES = [
    "django_content_type",
    "auth_permission",
    "auth_group",
    "auth_group_permissions",
    "django_migrations",
]


def _counts(archive: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with gzip.open(archive, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                counts[json.loads(line)["model"]] += 1
    return dict(sorted(counts.items()))


class CutoverDataAdapter(Adapter):
    kind = "cutover_data"
    extension = ".jsonl.gz"

    def _apps(self, config: dict[str, Any]) -> list[str]:
        chosen = config.get("apps") or DEFAULT_APPS
        for label in chosen:
            if not django_apps.is_installed(label) and label not in {
                c.label for c in django_apps.get_app_configs()
            }:
                raise AdapterError(f"No installed app {label!r}.")
        return list(chosen)

    def config_check(self, config: dict[str, Any]) -> None:
        self._apps(config)

    def backup(self, config: dict[str, Any], archive: Path, log: Log) -> dict[str, Any]:
        if not archive.name.endswith(".gz"):
            raise AdapterError("The archive name must end in .gz (dumpdata compresses by it).")
        call_command(
            "dumpdata",
            *self._apps(config),
            exclude=list(config.get("exclude") or []),
            format="jsonl",
            output=str(archive),
            use_natural_foreign_keys=True,
            verbosity=0,
        )
        counts = _counts(archive)
        log(f"dumped {sum(counts.values())} objects of {len(counts)} models")
        return {"models": counts}

    def original_target(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"alias": "default"}

    def target_check(self, target: dict[str, Any]) -> dict[str, Any]:
        alias = (target or {}).get("alias")
        if not isinstance(alias, str) or not alias:
            raise AdapterError("A Cutover data target is a database alias, e.g. alias=default.")
        scratch = (target or {}).get("scratch_database")
        if scratch is None and alias not in connections:
            raise AdapterError(f"No database alias {alias!r} in DATABASES.")
        cleaned = {"alias": alias}
        if scratch is not None:
            cleaned["scratch_database"] = PostgresAdapter().target_check({"database": scratch})[
                "database"
            ]
        return cleaned

    def _connect_alias(self, target: dict[str, Any]) -> str:
        """Make a scratch target's alias usable in this thread.

        The connection is set on the handler without entering ``DATABASES``: it exists
        for this drill only, and nothing else (routers, checks, migrate) ever sees it.
        """
        alias = target["alias"]
        if "scratch_database" in target and not hasattr(connections._connections, alias):
            settings_dict = dict(connections["default"].settings_dict)
            settings_dict["NAME"] = target["scratch_database"]
            backend = load_backend(settings_dict["ENGINE"])
            connections[alias] = backend.DatabaseWrapper(settings_dict, alias)
        return alias

    def _model_counts(self, alias: str, labels) -> dict[str, int]:
        found = {}
        for label in labels:
            model = django_apps.get_model(label)
            found[label] = model._base_manager.using(alias).count()
        return found

    def plan(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        target = self.target_check(target)
        models = manifest.get("models", {})
        existing = {}
        if "scratch_database" not in target:
            existing = self._model_counts(target["alias"], models)
        return {
            "target": target,
            "action": "load the objects (rows with the same primary key are overwritten, "
            "others are left alone)",
            "objects": sum(models.values()),
            "models": models,
            "rows_in_target_now": existing,
        }

    def restore(
        self, config: dict[str, Any], target: dict[str, Any], archive: Path, log: Log
    ) -> None:
        target = self.target_check(target)
        alias = self._connect_alias(target)
        call_command("loaddata", str(archive), database=alias, verbosity=0)
        log(f"loaded {archive.name} into database alias {alias}")

    def verify(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any], log: Log
    ) -> dict[str, Any]:
        target = self.target_check(target)
        alias = self._connect_alias(target)
        models = manifest.get("models", {})
        found = self._model_counts(alias, models)
        checks = [check(f"objects of {label}", n, found[label]) for label, n in models.items()]
        log(f"verify: {sum(c['ok'] for c in checks)}/{len(checks)} models match")
        return report(checks)

    # --- drills: a scratch database with the schema and the reference rows ---------------

    def scratch_target(self, config: dict[str, Any], token: str) -> dict[str, Any]:
        if connections["default"].vendor != "postgresql":
            raise AdapterError("Drills of Cutover's data need PostgreSQL.")
        database = f"cutover_drill_{token}"[:63]
        pg = PostgresAdapter()
        source = {"alias": "default"}
        params = pg._params(source)
        with tempfile.TemporaryDirectory() as work:
            schema = Path(work) / "schema.dump"
            args = [
                _binary("pg_dump"),
                "--format=custom",
                f"--file={schema}",
                f"--dbname={params['dbname']}",
                "--schema-only",
            ]
            pg._run(args, params, lambda line: None)
            reference = Path(work) / "reference.dump"
            args = [
                _binary("pg_dump"),
                "--format=custom",
                f"--file={reference}",
                f"--dbname={params['dbname']}",
                "--data-only",
                *[f"--table={table}" for table in REFERENCE_TABLES],
            ]
            pg._run(args, params, lambda line: None)
            pg.restore(source, {"database": database}, schema, lambda line: None)
            done = subprocess.run(  # noqa: S603 - fixed binary and arguments
                [
                    _binary("pg_restore"),
                    "--no-owner",
                    "--disable-triggers",
                    "--exit-on-error",
                    f"--dbname={database}",
                    str(reference),
                ],
                env=pg._env(pg._params(source, database)),
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise AdapterError(f"pg_restore of the reference rows failed: {done.stderr}")
        return {"alias": f"drill_{token}"[:40], "scratch_database": database}

    def scratch_drop(self, config: dict[str, Any], target: dict[str, Any]) -> None:
        target = self.target_check(target)
        alias = target["alias"]
        if "scratch_database" in target and hasattr(connections._connections, alias):
            try:
                connections[alias].close()
            finally:
                del connections[alias]
        PostgresAdapter().scratch_drop(
            {"alias": "default"}, {"database": target["scratch_database"]}
        )
