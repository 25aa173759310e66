"""PostgreSQL: ``pg_dump -Fc`` / ``pg_restore``, row counts taken in the dump's snapshot.

Configuration (``Service.config``):

``alias``        a Django database alias (``default`` is Cutover's own database): its
                 host, port, user, password and name are used
``database``     a database name (on the alias's server, or on ``host``/``port``)
``host``, ``port``, ``user``   override the alias's
``password_env`` the environment variable holding the password (none is ever stored)
``test_query``   a query verify runs on the restored database (default ``SELECT 1``)

The manifest's row counts are read inside the transaction whose snapshot ``pg_dump``
dumps (``pg_export_snapshot`` + ``--snapshot``), so they are exactly the archive's rows
even while the source is being written to.
"""

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections
from psycopg import sql

from .base import Adapter, AdapterError, Log, check, report

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TABLES = """
    SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%%' AND NOT c.relispartition
    ORDER BY 1, 2
"""


def _binary(name: str) -> str:
    folder = settings.BACKUP_PG_BIN_DIR
    return str(Path(folder) / name) if folder else name


class PostgresAdapter(Adapter):
    kind = "postgres"
    extension = ".dump"

    # --- connection parameters ---------------------------------------------------------

    def _params(self, config: dict[str, Any], database: str | None = None) -> dict[str, Any]:
        alias = config.get("alias", "default")
        if alias not in connections.settings:
            raise AdapterError(f"No database alias {alias!r} in DATABASES.")
        base = connections[alias].settings_dict
        if base["ENGINE"] != "django.db.backends.postgresql" and "host" not in config:
            raise AdapterError(f"Database alias {alias!r} is not PostgreSQL.")
        password = base.get("PASSWORD") or ""
        if config.get("password_env"):
            password = os.environ.get(config["password_env"], "")
        return {
            "host": config.get("host") or base.get("HOST") or "127.0.0.1",
            "port": str(config.get("port") or base.get("PORT") or 5432),
            "user": config.get("user") or base.get("USER") or "postgres",
            "password": password,
            "dbname": database or config.get("database") or base["NAME"],
        }

    def _connect(self, params: dict[str, Any], **kwargs) -> psycopg.Connection:
        return psycopg.connect(
            host=params["host"],
            port=params["port"],
            user=params["user"],
            password=params["password"] or None,
            dbname=params["dbname"],
            **kwargs,
        )

    def _env(self, params: dict[str, Any]) -> dict[str, str]:
        env = {**os.environ, "PGHOST": params["host"], "PGPORT": params["port"]}
        env["PGUSER"] = params["user"]
        if params["password"]:
            env["PGPASSWORD"] = params["password"]
        return env

    def _run(self, args: list[str], params: dict[str, Any], log: Log) -> None:
        log(" ".join(args))
        done = subprocess.run(  # noqa: S603 - fixed binaries, arguments never via a shell
            args, env=self._env(params), capture_output=True, text=True, check=False
        )
        for line in (done.stderr or "").splitlines()[-20:]:
            log(line)
        if done.returncode != 0:
            tail = (done.stderr or "").strip().splitlines()[-3:]
            raise AdapterError(
                f"{Path(args[0]).name} exited with {done.returncode}: {' '.join(tail)}"
            )

    @staticmethod
    def _counts(cursor) -> dict[str, int]:
        cursor.execute(_TABLES)
        counts = {}
        for schema, table in cursor.fetchall():
            cursor.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            )
            counts[f"{schema}.{table}"] = cursor.fetchone()[0]
        return counts

    # --- the interface -----------------------------------------------------------------

    def config_check(self, config: dict[str, Any]) -> None:
        self._params(config)

    def backup(self, config: dict[str, Any], archive: Path, log: Log) -> dict[str, Any]:
        params = self._params(config)
        with self._connect(params) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            with conn.cursor() as cursor:
                counts = self._counts(cursor)
            # The snapshot lives as long as this transaction: pg_dump runs inside it.
            self._run(
                [
                    _binary("pg_dump"),
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--file={archive}",
                    f"--dbname={params['dbname']}",
                ],
                params,
                log,
            )
            conn.rollback()
        log(f"dumped {len(counts)} tables, {sum(counts.values())} rows")
        return {"database": params["dbname"], "tables": counts}

    def original_target(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"database": self._params(config)["dbname"]}

    def target_check(self, target: dict[str, Any]) -> dict[str, Any]:
        database = (target or {}).get("database")
        if not isinstance(database, str) or not _NAME.match(database):
            raise AdapterError("A PostgreSQL target needs a database name (letters, digits, _).")
        return {"database": database}

    def _exists(self, config: dict[str, Any], database: str) -> bool:
        with self._connect(self._params(config, "postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            return row.fetchone() is not None

    def plan(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        target = self.target_check(target)
        exists = self._exists(config, target["database"])
        replaced: dict[str, int] = {}
        if exists:
            params = self._params(config, target["database"])
            with self._connect(params) as conn, conn.cursor() as cursor:
                existing = self._counts(cursor)
            replaced = {t: n for t, n in existing.items() if t in manifest.get("tables", {})}
        tables = manifest.get("tables", {})
        return {
            "target": target,
            "database_exists": exists,
            "action": (
                "drop and re-create the archived objects in the existing database, in one "
                "transaction"
                if exists
                else "create the database and restore into it"
            ),
            "tables": len(tables),
            "rows": sum(tables.values()),
            "tables_replaced": replaced,
        }

    def restore(
        self, config: dict[str, Any], target: dict[str, Any], archive: Path, log: Log
    ) -> None:
        target = self.target_check(target)
        database = target["database"]
        exists = self._exists(config, database)
        if not exists:
            with self._connect(self._params(config, "postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log(f"created database {database}")
        params = self._params(config, database)
        args = [
            _binary("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={database}",
        ]
        if exists:
            args[1:1] = ["--clean", "--if-exists"]
        self._run([*args, str(archive)], params, log)

    def verify(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any], log: Log
    ) -> dict[str, Any]:
        target = self.target_check(target)
        checks = []
        params = self._params(config, target["database"])
        with self._connect(params) as conn, conn.cursor() as cursor:
            found = self._counts(cursor)
            for table, expected in sorted(manifest.get("tables", {}).items()):
                checks.append(check(f"rows in {table}", expected, found.get(table)))
            query = config.get("test_query") or "SELECT 1"
            try:
                cursor.execute(query)
                row = cursor.fetchone()
                checks.append(
                    {"check": f"test query: {query}", "ok": True, "expected": None,
                     "found": list(row) if row else None}
                )  # fmt: skip
            except psycopg.Error as error:
                checks.append(
                    {"check": f"test query: {query}", "ok": False, "expected": None,
                     "found": str(error).strip()}
                )  # fmt: skip
        result = report(checks)
        log(f"verify: {sum(c['ok'] for c in checks)}/{len(checks)} checks passed")
        return result

    def scratch_target(self, config: dict[str, Any], token: str) -> dict[str, Any]:
        return {"database": f"cutover_drill_{token}"[:63]}

    def scratch_drop(self, config: dict[str, Any], target: dict[str, Any]) -> None:
        database = self.target_check(target)["database"]
        with self._connect(self._params(config, "postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
