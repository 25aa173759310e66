"""Live Cutover instances on loopback, each started as production starts it.

An instance is the image's entry point (docker/entrypoint.sh) with its own environment:
its own PostgreSQL database, media and bundle folders, Redis database, signing key and
``SECRET_KEY``, a gunicorn server on a free port and a Celery worker. ``instances`` brings
up two, A and B:

- A runs on the test's database, so a test seeds it with the ORM and the factories, and
  what the test enqueues goes to A's worker (A's broker is the test's). The test's
  settings are pointed at A's folders and keys for the length of the test.
- B runs on a database of its own, a copy of a migrated template made once per session,
  with one owner organization (``b-owner``), and a broker of its own.
- Both share one ``CREDENTIAL_DIGEST_KEY``, as two instances of one operator do: a
  system's credentials work on either.

``Instance.manage`` runs ``manage.py`` against an instance, ``Instance.sql`` queries its
database, ``Instance.client`` talks HTTP to its server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HOST = "cutover.test"
A_KEY = "k3y-for-tests-only-" + "Qw9x2" * 10
# One digest key for both instances: a system's secret verifies on either.
SHARED_DIGEST_KEY = A_KEY + "-shared-credentials"
# What a process of the image must not inherit from the test's environment.
INHERITED = {
    "DEBUG",
    "SECRET_KEY",
    "CREDENTIAL_DIGEST_KEY",
    "ALLOWED_HOSTS",
    "DJANGO_SETTINGS_MODULE",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def needs_services() -> None:
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        message = "the production stack needs DATABASE_URL (PostgreSQL) and REDIS_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def database_url(name: str | None = None) -> str:
    """The URL of a database on the test's server (the test's own database by default)."""
    db = connection.settings_dict
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{host}/{name or db['NAME']}"


def production_env(tmp_path: Path, port: int, **overrides: str) -> dict[str, str]:
    """The environment compose gives every app container, pointed at loopback."""
    env = {name: value for name, value in os.environ.items() if name not in INHERITED}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        APP_USER="",  # already the unprivileged caller: nothing to drop
        SECRET_KEY=A_KEY,
        CREDENTIAL_DIGEST_KEY=A_KEY + "-credentials",
        ALLOWED_HOSTS=HOST,
        PUBLIC_BASE_URL=f"https://{HOST}",
        CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
        TRUSTED_PROXY_COUNT="1",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CONN_MAX_AGE="0",
        MEDIA_ROOT=str(tmp_path / "media"),
        BACKUP_WORK_DIR=str(tmp_path / "work"),
        RUN_DIR=str(tmp_path / "run"),
        BACKUP_PG_BIN_DIR=settings.BACKUP_PG_BIN_DIR,
        WEB_BIND=f"127.0.0.1:{port}",
        WEB_PORT=str(port),
        WEB_WORKERS="1",
        WEB_THREADS="4",
        WEB_WORKER_TMP_DIR=str(tmp_path),
        WORKER_CONCURRENCY="1",
    )
    env.update(overrides)
    return env


def entrypoint(*args: str, env: dict[str, str], timeout: float = 60):
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


class Processes:
    """Long-running processes of the entry point (web, worker, beat), logged to files."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env = env
        self.logs = logs
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            [str(ENTRYPOINT), name, *args], env=self.env, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop_all(self) -> None:
        stop_together([self])

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited ({process.returncode}):\n{self.log(name)}")
            found = predicate()
            if found:
                return found
            time.sleep(0.25)
        logs = "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)
        pytest.fail(f"timed out waiting for {what}\n{logs}")


def stop_together(groups: list[Processes]) -> None:
    """Stop every process of every group: all are told at once, then waited for."""
    running = [(g, name, p) for g in groups for name, p in g.processes.items()]
    for _group, _name, process in running:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for group, name, process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        group.processes.pop(name, None)


class Instance(Processes):
    """One Cutover instance: a server and a worker on their own database and folders."""

    def __init__(self, name: str, root: Path, *, database: str, redis_db: int, digest_key: str):
        root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.root = root
        self.database = database
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = root / "store"
        self.exports = root / "exports"
        self.key_file = root / "signing.key"
        redis = urlsplit(settings.REDIS_URL)._replace(path=f"/{redis_db}").geturl()
        self.redis_url = redis
        super().__init__(
            production_env(
                root,
                self.port,
                SECRET_KEY=f"{A_KEY}-{name}",
                CREDENTIAL_DIGEST_KEY=digest_key,
                DATABASE_URL=database_url(database),
                REDIS_URL=redis,
                # The cache in the broker's database: two instances never share throttles.
                REDIS_CACHE_DB=str(redis_db),
                # Plain HTTP on loopback, no proxy in front: the browser signs in over it.
                ALLOWED_HOSTS="127.0.0.1,localhost",
                PUBLIC_BASE_URL=self.url,
                CSRF_TRUSTED_ORIGINS=self.url,
                TRUSTED_PROXY_COUNT="0",
                SESSION_COOKIE_SECURE="false",
                CSRF_COOKIE_SECURE="false",
                BACKUP_STORAGE_URL="",
                BACKUP_LOCAL_ROOT=str(self.store),
                BUNDLE_EXPORT_ROOT=str(self.exports),
                BUNDLE_UPLOAD_ROOT=str(root / "uploads"),
                BUNDLE_SIGNING_KEY_FILE=str(self.key_file),
                BUNDLE_BATCH_ROWS="7",
                LOG_LEVEL="WARNING",
            ),
            root,
        )

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self.url} db={self.database}>"

    # --- Processes ---------------------------------------------------------------------------

    def up(self, wait: bool = True) -> None:
        """Start web and worker; return once the server answers and the worker is ready."""
        # Messages earlier runs left on this broker are not this instance's.
        Celery("cutover-test", broker=self.redis_url, set_as_current=False).control.purge()
        self.start("web")
        self.start("worker", "--hostname", f"{self.name}@%h", "--loglevel", "INFO")
        if wait:
            self.wait_up()

    def wait_up(self) -> None:
        self.wait(f"{self.name}'s server", self._answers)
        self.wait(f"{self.name}'s worker", lambda: " ready." in self.log("worker"))

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def assert_no_server_errors(self) -> None:
        web = self.log("web")
        assert not re.search(r'HTTP/1\.1" 5\d\d ', web), web[-5000:]
        assert "Traceback" not in web, web[-5000:]

    # --- Commands and queries ------------------------------------------------------------------

    def manage(self, *args: str, check: bool = True, timeout: float = 120):
        done = entrypoint("manage", *args, env=self.env, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(
                f"{self.name}: manage.py {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def python(self, code: str) -> Any:
        """Run ``code`` in ``manage.py shell`` on this instance; it sets ``result``, which
        comes back through JSON."""
        wrapped = f"import json\nresult = None\n{code}\nprint('@@' + json.dumps(result))"
        done = self.manage("shell", "-c", wrapped)
        line = next(line for line in done.stdout.splitlines()[::-1] if line.startswith("@@"))
        return json.loads(line[2:])

    def sql(self, query: str, *params: Any) -> list[tuple]:
        with psycopg.connect(database_url(self.database)) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def count(self, table: str, where: str = "TRUE", *params: Any) -> int:
        return self.sql(f"SELECT count(*) FROM {table} WHERE {where}", *params)[0][0]  # noqa: S608

    def blobs(self) -> dict[str, str]:
        """The blob folder: each file's path under it and its sha256."""
        if not self.store.exists():
            return {}
        return {
            str(p.relative_to(self.store)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.store.rglob("*"))
            if p.is_file()
        }

    def public_key(self) -> str:
        return self.manage("bundle_keys", "--public").stdout.strip()

    def trust(self, other: Instance) -> None:
        path = self.root / f"{other.name}.pub"
        path.write_text(other.public_key())
        self.manage("bundle_keys", "--trust", str(path), "--name", other.name)

    def superuser(self, email: str, password: str) -> str:
        """A superuser (hashed as this instance hashes) and a staff API token for it."""
        return self.python(
            "from knox.models import AuthToken\n"
            "from fleet_app.models import User\n"
            f"user = User.objects.create_superuser({email!r}, {password!r})\n"
            "result = AuthToken.objects.create(user=user)[1]"
        )

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Token {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_run(self, table: str, pk: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the worker has finished a run row; return its state, error and phase."""

        def finished():
            rows = self.sql(
                f"SELECT state, error, phase FROM {table} WHERE id = %s",  # noqa: S608
                pk,
            )
            if rows and rows[0][0] in ("succeeded", "failed", "cancelled"):
                return {"state": rows[0][0], "error": rows[0][1], "phase": rows[0][2]}
            return None

        return self.wait(f"{self.name}: {table} {pk}", finished, timeout)


class AdminSession:
    """A staff member signed in to an instance's admin over HTTP, as a browser would be:
    session cookie, CSRF token, forms posted, change-page actions run."""

    ACTION = "CHANGE_FORM-action"

    def __init__(self, instance: Instance, email: str, password: str):
        self.instance = instance
        self.http = httpx.Client(base_url=instance.url, timeout=60)
        self.http.get("/admin/login/")
        signed_in = self.post(
            "/admin/login/?next=/admin/",
            {"username": email, "password": password, "next": "/admin/"},
        )
        assert signed_in.status_code == 302, signed_in.text[:2000]
        assert signed_in.headers["location"] == "/admin/", signed_in.headers

    def close(self) -> None:
        self.http.close()

    def post(self, path: str, data: dict[str, Any], files: dict | None = None) -> httpx.Response:
        token = self.http.cookies["csrftoken"]
        return self.http.post(path, data={**data, "csrfmiddlewaretoken": token}, files=files)

    def action(self, change_url: str, pk: int, name: str) -> httpx.Response:
        """Run the action ``name`` from an object's change page (``form_action``)."""
        return self.post(change_url, {self.ACTION: name, "_selected_action": str(pk), "index": "0"})


def _admin_sql(statement: str) -> None:
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _base_name() -> str:
    """The operator's database name (``test_`` is pytest-django's): extra databases start
    with it."""
    return str(connection.settings_dict["NAME"]).removeprefix("test_")


@pytest.fixture(scope="session")
def instance_database_template(django_db_setup, django_db_blocker, tmp_path_factory):
    """A migrated database with B's owner organization, copied for every test's B."""
    with django_db_blocker.unblock():
        needs_services()
        name = f"{_base_name()}_e2e_tpl"
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin_sql(f'CREATE DATABASE "{name}"')
    template = Instance(
        "tpl", tmp_path_factory.mktemp("tpl"), database=name, redis_db=0,
        digest_key=SHARED_DIGEST_KEY,
    )  # fmt: skip
    migrated = entrypoint("migrate", env=template.env, timeout=180)
    assert migrated.returncode == 0, migrated.stderr
    template.python(
        "from fleet_app import services\n"
        "services.organization_create(actor=None, name='B Owner', kind='owner', parent=None)"
    )
    yield name
    _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


@pytest.fixture
def instances(
    transactional_db, instance_database_template, tmp_path, settings
) -> Iterator[tuple[Instance, Instance]]:
    """Two live instances, A (on the test's database) and B (on its own), both up."""
    needs_services()
    a_redis = _redis_db(settings.REDIS_URL)
    # B's broker is the test's cache database: Redis databases are what a run may use.
    b_redis = int(os.environ.get("REDIS_CACHE_DB", "1"))
    if a_redis == b_redis:
        pytest.fail("REDIS_CACHE_DB must differ from REDIS_URL's database: B's broker uses it")
    b_name = f"{_base_name()}_e2e_b"
    _admin_sql(f'DROP DATABASE IF EXISTS "{b_name}" WITH (FORCE)')
    _admin_sql(f'CREATE DATABASE "{b_name}" TEMPLATE "{instance_database_template}"')
    a = Instance(
        "a",
        tmp_path / "a",
        database=str(connection.settings_dict["NAME"]),
        redis_db=a_redis,
        digest_key=SHARED_DIGEST_KEY,
    )
    b = Instance(
        "b", tmp_path / "b", database=b_name, redis_db=b_redis, digest_key=SHARED_DIGEST_KEY
    )
    # What the test writes on A with the ORM is written as A's processes would write it.
    settings.CREDENTIAL_DIGEST_KEY = SHARED_DIGEST_KEY
    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = a.store
    settings.BUNDLE_EXPORT_ROOT = a.exports
    settings.BUNDLE_UPLOAD_ROOT = a.root / "uploads"
    settings.BUNDLE_SIGNING_KEY_FILE = a.key_file
    settings.BUNDLE_BATCH_ROWS = 7
    try:
        a.up(wait=False)
        b.up(wait=False)
        a.wait_up()
        b.wait_up()
        yield a, b
    finally:
        stop_together([a, b])
        _admin_sql(f'DROP DATABASE IF EXISTS "{b_name}" WITH (FORCE)')
