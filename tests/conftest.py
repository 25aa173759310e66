"""Shared fixtures: personas (alice the operator, bob the reader, charlie the outsider)
and systems of two organizations, healthchecks-style."""

import base64
import os

import pytest

from fleet_app import services
from fleet_app.demo import ns8_inventory
from fleet_app.models import Organization
from tests.factories import OrganizationFactory, UserFactory, make_system

# Tests that run PostgreSQL-only machinery (its SQL, a second database, pg_dump): on a bare
# developer machine (SQLite) they skip; under CI, which always has PostgreSQL, they run.
needs_postgresql = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres") and not os.environ.get("CI"),
    reason="needs DATABASE_URL pointing at PostgreSQL",
)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite the test database is a file, as the embedded default's is (WAL, a busy
    timeout): Django's in-memory test database shares one cache between threads, where a
    second writer fails at once with "database table is locked" whatever the timeout, so
    a test of concurrent requests would fail there and never on the real thing."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3" and not db.get("TEST", {}).get("NAME"):
        folder = tmp_path_factory.mktemp("sqlite")
        db.setdefault("TEST", {})["NAME"] = str(folder / "test.sqlite3")


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Staff passwords use Django's slow hasher in production; tests need not pay for it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def forget_hot_systems():
    """The heartbeat fast path remembers systems per process; tests start without."""
    from fleet_app import hot

    hot.forget_all()
    yield
    hot.forget_all()


@pytest.fixture
def celery_eager(settings):
    """Tasks run in-process, as in the embedded default without a broker."""
    from controlplane.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def owner(db):
    return OrganizationFactory(name="Owner", kind=Organization.Kind.OWNER)


@pytest.fixture
def distributor(owner):
    return services.organization_create(
        actor=None, name="Distributor", kind="distributor", parent=owner
    )


@pytest.fixture
def customer(distributor):
    return services.organization_create(
        actor=None, name="Customer A", kind="customer", parent=distributor
    )


@pytest.fixture
def other_customer(owner):
    return services.organization_create(
        actor=None, name="Customer B", kind="customer", parent=owner
    )


@pytest.fixture
def alice(distributor):
    """Operator: admin role at the distributor."""
    return UserFactory(email="alice@example.com", organization=distributor, roles=["admin"])


@pytest.fixture
def bob(customer):
    """Reader at one customer."""
    return UserFactory(email="bob@example.com", organization=customer, roles=["reader"])


@pytest.fixture
def charlie(other_customer):
    """Outsider: admin of another customer, outside the distributor's tree."""
    return UserFactory(email="charlie@example.com", organization=other_customer, roles=["admin"])


@pytest.fixture
def system(customer):
    return make_system(customer, name="cluster-a")


@pytest.fixture
def other_system(other_customer):
    return make_system(other_customer, name="cluster-b")


def basic_auth(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture
def auth_header(system):
    return {"HTTP_AUTHORIZATION": basic_auth(system.system_key, system.issued_secret)}


@pytest.fixture
def inventory_payload():
    """A realistic ns8 phonehome document (about 50 KB)."""
    return ns8_inventory(seed=7)


@pytest.fixture
def celery_worker_process(transactional_db, settings, tmp_path):
    """A real Celery worker process on the real Redis broker and the test database.

    Yields the queue name to send to; tasks sent there run in the worker, which sees
    what the test has committed (hence ``transactional_db``). Needs PostgreSQL and
    Redis, which CI always provides. The worker's ZFS settings are the test's when the
    worker starts (so request this after the fixtures that set them, e.g. ``zfs_rows``).
    """
    import os
    import subprocess
    import sys
    import time
    import uuid

    from django.db import connection

    from controlplane.celery import app

    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        message = "a real worker needs DATABASE_URL (PostgreSQL) and REDIS_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    db = connection.settings_dict
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL,
        "CONN_MAX_AGE": "0",
        "ZFS_BIN": settings.ZFS_BIN,
        "ZPOOL_BIN": settings.ZPOOL_BIN,
        "ZFS_SSH_BIN": settings.ZFS_SSH_BIN,
        "ZFS_SSH_KEY_PATH": settings.ZFS_SSH_KEY_PATH,
        "ZFS_LOCAL_HOSTS": ",".join(sorted(settings.ZFS_LOCAL_HOSTS)),
    }
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool", "solo",
         "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "INFO", "--logfile", str(log)],
        env=env, cwd=settings.BASE_DIR,
    )  # fmt: skip
    previous = (app.conf.broker_url, app.conf.task_always_eager)
    app.conf.broker_url, app.conf.task_always_eager = settings.REDIS_URL, False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    try:
        deadline = time.monotonic() + 60
        while "ready" not in (log.read_text() if log.exists() else ""):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield queue
    finally:
        app.conf.broker_url, app.conf.task_always_eager = previous
        worker.terminate()
        worker.wait(timeout=30)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def rows_containing(text: str) -> list[str]:
    """Every table of the database with a row whose text contains ``text``."""
    from django.db import connection

    quote = connection.ops.quote_name
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            # Column by column, each cast to text: the same on PostgreSQL and SQLite (a
            # whole-row cast is PostgreSQL's only, and quotes what it renders).
            columns = connection.introspection.get_table_description(cursor, table)
            where = " OR ".join(f"CAST({quote(c.name)} AS TEXT) LIKE %s" for c in columns)
            cursor.execute(
                f"SELECT count(*) FROM {quote(table)} WHERE {where}",  # noqa: S608
                [f"%{text}%"] * len(columns),
            )
            if cursor.fetchone()[0]:
                found.append(table)
    return found


@pytest.fixture
def metrics_auth(settings):
    """The header a configured Prometheus scrapes /metrics with (METRICS_TOKEN set)."""
    settings.METRICS_TOKEN = "test-scrape-token"
    return {"Authorization": "Bearer test-scrape-token"}


@pytest.fixture
def live_server(live_server, settings):
    """pytest-django's live server, whose host the tests' settings (DEBUG off, so no
    loopback default in ALLOWED_HOSTS) must allow, as Django's LiveServerTestCase does."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1", "localhost"]
    return live_server
