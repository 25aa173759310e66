"""Bulk rotation runs: selection, re-keying, the run row, exactly-once chunks, and a real
worker SIGKILLed in the middle of a chunk."""

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import pytest
from celery import current_app
from django.db import OperationalError
from django.utils import timezone

from fleet_app.errors import InvalidInput
from fleet_app.models import AuditEntry, System
from fleet_app.runs import run_claim
from migrations_app.cutover import rotation, tasks
from migrations_app.cutover.rotation import (
    rotation_run_execute_chunk,
    rotation_run_finish,
    rotation_run_start,
)
from migrations_app.models import CutoverDay, LegacyMapping, RotationRun
from tests.conftest import basic_auth, wait_for
from tests.factories import bulk_mappings, make_mapping

PROXY = "/proxy/credentials"
HEARTBEAT = "/collect/api/systems/heartbeat"


def selected(filters):
    return set(
        rotation.rotation_candidates(rotation.rotation_filters_clean(filters)).values_list(
            "legacy_system_id", flat=True
        )
    )


def run_to_the_end(run):
    """What the task does, chunk by chunk, in the test's transaction."""
    assert run_claim(run)
    chunks = 0
    while rotation_run_execute_chunk(run_id=run.pk):
        chunks += 1
    rotation_run_finish(run_id=run.pk)
    run.refresh_from_db()
    return chunks


def digests(mappings):
    return dict(
        System.objects.filter(pk__in=[m.system_id for m in mappings]).values_list(
            "pk", "secret_digest"
        )
    )


# --- Selection ------------------------------------------------------------------------------


def test_the_organization_filter_takes_the_whole_subtree(distributor, customer, other_customer):
    bulk_mappings(customer, 2, prefix="below")
    bulk_mappings(distributor, 1, prefix="at")
    bulk_mappings(other_customer, 2, prefix="beside")

    assert selected({"organization": distributor.pk}) == {"below-00000", "below-00001", "at-00000"}
    assert selected({"organization": str(customer.pk)}) == {"below-00000", "below-00001"}
    assert len(selected({"organization": distributor.parent_id})) == 5


def test_the_prefix_never_rotated_date_and_ids_filters(customer):
    first = bulk_mappings(customer, 3, prefix="eu")
    bulk_mappings(customer, 2, prefix="us")
    LegacyMapping.objects.filter(pk=first[0].pk).update(rotated_at=timezone.now())
    LegacyMapping.objects.filter(pk=first[1].pk).update(
        created_at=timezone.now() - dt.timedelta(days=30)
    )
    last_week = (timezone.now() - dt.timedelta(days=7)).date().isoformat()

    assert selected({"legacy_prefix": "eu"}) == {"eu-00000", "eu-00001", "eu-00002"}
    assert selected({"legacy_prefix": "eu", "only_never_rotated": True}) == {
        "eu-00001",
        "eu-00002",
    }
    assert selected({"created_before": last_week}) == {"eu-00001"}
    assert selected({"ids": [first[2].pk, first[0].pk]}) == {"eu-00000", "eu-00002"}
    assert len(selected({"legacy_prefix": "", "only_never_rotated": False})) == 5


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"colour": "red"}, "Unknown filter 'colour'"),
        ({"organization": "acme"}, "must be an organization id"),
        ({"organization": 987654}, "Organization 987654 does not exist"),
        ({"legacy_prefix": 42}, "prefix must be text"),
        ({"only_never_rotated": "yes"}, "must be true or false"),
        ({"created_before": "last tuesday"}, "is not a date"),
        ({"created_before": "2025-02-30"}, "is not a date"),
        ({"ids": []}, "non-empty list"),
        ({"ids": [1, "two"]}, "non-empty list"),
        ({"ids": 5}, "must be a list"),
        ("everything", "must be a mapping"),
    ],
)
def test_a_bad_filter_is_refused_in_one_sentence(db, filters, message):
    with pytest.raises(InvalidInput, match=message):
        rotation_run_start(actor=None, filters=filters)

    assert not RotationRun.objects.exists()


@pytest.mark.parametrize("chunk_size", [0, -5, 10_001, True, "100"])
def test_a_bad_chunk_size_is_refused(db, chunk_size):
    with pytest.raises(InvalidInput, match="chunk size"):
        rotation_run_start(actor=None, filters={}, chunk_size=chunk_size)


# --- What is re-keyed -----------------------------------------------------------------------


def test_only_unused_credentials_of_active_systems_are_rekeyed(customer):
    now = timezone.now()
    plain, confirmed, released, suspended, deleted = bulk_mappings(customer, 5)
    LegacyMapping.objects.filter(pk=confirmed.pk).update(rotated_at=now, confirmed_at=now)
    LegacyMapping.objects.filter(pk=released.pk).update(released_at=now)
    System.objects.filter(pk=suspended.system_id).update(suspended_at=now)
    System.objects.filter(pk=deleted.system_id).update(deleted_at=now)
    before = digests([plain, confirmed, released, suspended, deleted])

    run = rotation_run_start(actor=None, filters={})
    run_to_the_end(run)

    after = digests([plain, confirmed, released, suspended, deleted])
    assert after[plain.system_id] != before[plain.system_id]
    for skipped in (confirmed, released, suspended, deleted):
        assert after[skipped.system_id] == before[skipped.system_id]
        assert LegacyMapping.objects.get(pk=skipped.pk).last_rotation_run_id is None
    row = LegacyMapping.objects.get(pk=plain.pk)
    assert (row.rotation_count, row.last_rotation_run_id) == (1, run.pk)
    assert row.rotated_at is not None
    assert System.objects.get(pk=plain.system_id).secret_confirmed_at is None
    assert (run.total, run.done, run.state) == (1, 1, "succeeded")


def test_a_handed_out_unused_secret_stops_working(
    client, customer, celery_eager, django_capture_on_commit_callbacks
):
    mapping = make_mapping(customer)
    legacy_auth = basic_auth(mapping.legacy_system_id, mapping.legacy_token)
    handed_out = client.get(PROXY, HTTP_AUTHORIZATION=legacy_auth).json()["data"]
    # Handed out two hours ago and still unused: past the grace period.
    LegacyMapping.objects.filter(pk=mapping.pk).update(
        last_attempt_at=timezone.now() - dt.timedelta(hours=2)
    )

    with django_capture_on_commit_callbacks(execute=True):
        run = rotation_run_start(actor=None, filters={"ids": [mapping.pk]})

    run.refresh_from_db()
    assert run.state == "succeeded"
    old = basic_auth(handed_out["system_key"], handed_out["system_secret"])
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=old).status_code == 401
    # The client asks again and gets working credentials.
    response = client.get(PROXY, HTTP_AUTHORIZATION=legacy_auth)
    assert response.status_code == 200
    fresh = response.json()["data"]
    new = basic_auth(fresh["system_key"], fresh["system_secret"])
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=new).status_code == 200
    row = LegacyMapping.objects.get(pk=mapping.pk)
    assert row.rotation_count == 3 and row.confirmed_at is not None


def test_credentials_fetched_within_the_grace_period_are_left_alone(
    client, customer, celery_eager, settings, django_capture_on_commit_callbacks
):
    settings.ROTATION_GRACE_MINUTES = 60
    mapping = make_mapping(customer)
    legacy_auth = basic_auth(mapping.legacy_system_id, mapping.legacy_token)
    handed_out = client.get(PROXY, HTTP_AUTHORIZATION=legacy_auth).json()["data"]

    with django_capture_on_commit_callbacks(execute=True):
        run = rotation_run_start(actor=None, filters={"ids": [mapping.pk]})

    run.refresh_from_db()
    assert run.total == 0
    fetched = basic_auth(handed_out["system_key"], handed_out["system_secret"])
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=fetched).status_code == 200


def test_credentials_in_use_keep_working(
    client, customer, celery_eager, django_capture_on_commit_callbacks
):
    mapping = make_mapping(customer)
    legacy_auth = basic_auth(mapping.legacy_system_id, mapping.legacy_token)
    data = client.get(PROXY, HTTP_AUTHORIZATION=legacy_auth).json()["data"]
    native = basic_auth(data["system_key"], data["system_secret"])
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=native).status_code == 200  # confirms

    with django_capture_on_commit_callbacks(execute=True):
        run = rotation_run_start(actor=None, filters={})

    run.refresh_from_db()
    assert (run.total, run.done, run.state) == (0, 0, "succeeded")
    assert client.post(HEARTBEAT, HTTP_AUTHORIZATION=native).status_code == 200


# --- The run row ----------------------------------------------------------------------------


def test_the_run_row_shows_state_phase_progress_and_log(customer, alice):
    mappings = bulk_mappings(customer, 5)

    run = rotation_run_start(actor=alice, filters={"organization": customer.pk}, chunk_size=2)

    assert (run.state, run.phase, run.total, run.done) == ("pending", "queued", 5, 0)
    assert run.filters == {"organization": customer.pk, "max_id": mappings[-1].pk}
    audit = AuditEntry.objects.get(action="mapping.bulk_rotate")
    assert audit.actor == alice and audit.object_id == str(run.pk)
    assert audit.organization == customer and audit.after["total"] == 5

    assert run_claim(run)
    assert rotation_run_execute_chunk(run_id=run.pk) is True
    run.refresh_from_db()
    assert (run.state, run.phase, run.done, run.cursor) == (
        "running",
        "rotating",
        2,
        mappings[1].pk,
    )
    assert run.percent == 40

    assert rotation_run_execute_chunk(run_id=run.pk) is True
    assert rotation_run_execute_chunk(run_id=run.pk) is False  # the last, short chunk
    rotation_run_finish(run_id=run.pk)
    run.refresh_from_db()
    assert (run.state, run.phase, run.done, run.percent) == ("succeeded", "done", 5, 100)
    assert run.started_at and run.finished_at and not run.error
    assert "queued by alice@example.com: 5 mapping(s) match" in run.log
    assert "rotated 5/5" in run.log and "finished: rotated 5 of 5" in run.log
    assert AuditEntry.objects.filter(action="mapping.bulk_rotate").count() == 1


def test_mappings_imported_after_the_start_are_not_part_of_the_run(customer):
    bulk_mappings(customer, 2, prefix="before")
    run = rotation_run_start(actor=None, filters={})
    late = bulk_mappings(customer, 1, prefix="after")[0]

    run_to_the_end(run)

    assert run.done == 2
    assert LegacyMapping.objects.get(pk=late.pk).rotation_count == 0


def test_day_counters_count_first_rotations_only(customer):
    mappings = bulk_mappings(customer, 3)
    LegacyMapping.objects.filter(pk=mappings[0].pk).update(
        rotated_at=timezone.now(), rotation_count=1
    )

    run_to_the_end(rotation_run_start(actor=None, filters={}, chunk_size=2))
    run_to_the_end(rotation_run_start(actor=None, filters={}, chunk_size=2))

    assert CutoverDay.objects.get().rotated == 2
    counts = dict(LegacyMapping.objects.values_list("pk", "rotation_count"))
    assert counts == {mappings[0].pk: 3, mappings[1].pk: 2, mappings[2].pk: 2}


def test_a_chunk_delivered_twice_rotates_each_mapping_once(customer):
    mappings = bulk_mappings(customer, 4)
    run = rotation_run_start(actor=None, filters={}, chunk_size=2)
    assert run_claim(run)
    rotation_run_execute_chunk(run_id=run.pk)
    rotated = digests(mappings)
    # A stale message: the cursor as it was before the first chunk committed.
    RotationRun.objects.filter(pk=run.pk).update(cursor=0)

    rotation_run_execute_chunk(run_id=run.pk)

    run.refresh_from_db()
    assert run.done == 4 and run.cursor == mappings[-1].pk
    again = digests(mappings)
    assert again[mappings[0].system_id] == rotated[mappings[0].system_id]
    assert again[mappings[1].system_id] == rotated[mappings[1].system_id]
    assert set(LegacyMapping.objects.values_list("rotation_count", flat=True)) == {1}
    assert CutoverDay.objects.get().rotated == 4


def test_a_message_for_a_finished_run_does_nothing(customer, celery_eager):
    bulk_mappings(customer, 3)
    run = rotation_run_start(actor=None, filters={})
    run_to_the_end(run)
    finished_at = run.finished_at

    tasks.rotation_run_execute.apply(args=(run.pk,))

    run.refresh_from_db()
    assert run.finished_at == finished_at
    assert set(LegacyMapping.objects.values_list("rotation_count", flat=True)) == {1}


def test_eager_runs_loop_over_many_chunks(
    customer, celery_eager, django_capture_on_commit_callbacks
):
    bulk_mappings(customer, 150)

    with django_capture_on_commit_callbacks(execute=True):
        run = rotation_run_start(actor=None, filters={}, chunk_size=1)

    run.refresh_from_db()
    assert (run.state, run.done) == ("succeeded", 150)


def test_a_transient_database_error_is_retried(customer, celery_eager, monkeypatch):
    bulk_mappings(customer, 3)
    run = rotation_run_start(actor=None, filters={})
    real = rotation.rotation_run_execute_chunk
    calls = []

    def flaky(*, run_id):
        calls.append(run_id)
        if len(calls) == 1:
            raise OperationalError("deadlock detected")
        return real(run_id=run_id)

    monkeypatch.setattr(rotation, "rotation_run_execute_chunk", flaky)
    # Eagerly, Celery's retry runs at once inside the first call; a worker would record
    # the first attempt's error rather than raise it.
    monkeypatch.setitem(current_app.conf, "task_eager_propagates", False)

    tasks.rotation_run_execute.apply(args=(run.pk,))

    run.refresh_from_db()
    assert (run.state, run.done, len(calls)) == ("succeeded", 3, 2)


def test_any_other_error_fails_the_run_with_its_message(customer, celery_eager, monkeypatch):
    bulk_mappings(customer, 3)
    run = rotation_run_start(actor=None, filters={})

    def broken(*, run_id):
        raise ValueError("no such thing")

    monkeypatch.setattr(rotation, "rotation_run_execute_chunk", broken)

    with pytest.raises(ValueError):
        tasks.rotation_run_execute.apply(args=(run.pk,))

    run.refresh_from_db()
    assert (run.state, run.phase) == ("failed", "failed")
    assert run.error == "ValueError: no such thing"


# --- A real worker, killed in the middle of a chunk -----------------------------------------

# A Redis database of its own: a worker with a short visibility timeout restores every
# unacknowledged message older than that in its database, other tests' included.
BROKER_DB = 13
VISIBILITY_TIMEOUT = 5


class Workers:
    """Start, SIGKILL and restart real Celery workers on one queue of the test broker."""

    def __init__(self, *, broker_url, database_url, base_dir, log_dir):
        self.broker_url, self.database_url = broker_url, database_url
        self.base_dir, self.log_dir = base_dir, log_dir
        self.queue = f"test-rot-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        number = len(self.processes)
        log = self.log_dir / f"worker-{number}.log"
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.broker_url,
            "CONN_MAX_AGE": "0",
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool", "solo",
             "-Q", self.queue, "-n", f"{self.queue}-{number}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
             "--logfile", str(log)],
            env=env, cwd=self.base_dir,
        )  # fmt: skip
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while "ready" not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return process

    def unacknowledged(self) -> list[str]:
        """Task ids of this queue delivered to a worker and not acknowledged yet."""
        return [message["headers"]["id"] for message in self._unacked().values()]

    def received(self, number: int) -> list[str]:
        """Task ids worker ``number`` received, in order, from its log."""
        log = (self.log_dir / f"worker-{number}.log").read_text()
        return re.findall(r"rotation_run_execute\[([0-9a-f-]+)\] received", log)

    def _unacked(self) -> dict[bytes, dict]:
        import json

        import redis

        client = redis.Redis.from_url(self.broker_url)
        held = {}
        for tag, payload in client.hgetall("unacked").items():
            message, _exchange, routing_key = json.loads(payload)
            if routing_key == self.queue:
                held[tag] = message
        return held

    def forget(self) -> None:
        import redis

        client = redis.Redis.from_url(self.broker_url)
        for tag in self._unacked():
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
        client.delete(
            self.queue, f"_kombu.binding.{self.queue}", f"_kombu.binding_permanent.{self.queue}"
        )

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def workers(transactional_db, settings, tmp_path):
    from django.db import connection

    from controlplane.celery import app

    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        message = "a real worker needs DATABASE_URL (PostgreSQL) and REDIS_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    db = connection.settings_dict
    broker_url = urlsplit(settings.REDIS_URL)._replace(path=f"/{BROKER_DB}").geturl()
    pool = Workers(
        broker_url=broker_url,
        database_url=(
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        base_dir=settings.BASE_DIR,
        log_dir=tmp_path,
    )
    previous = (
        app.conf.broker_url,
        app.conf.broker_transport_options,
        app.conf.task_always_eager,
    )
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
    app.conf.task_always_eager = False
    settings.CELERY_TASK_ALWAYS_EAGER = False
    # The producer pool is bound to the broker URL it was first made with.
    app._pool, app.amqp._producer_pool = None, None
    try:
        yield pool
    finally:
        pool.stop_all()
        app.conf.broker_url, app.conf.broker_transport_options, app.conf.task_always_eager = (
            previous
        )
        app._pool, app.amqp._producer_pool = None, None
        pool.forget()


def _backends_waiting_on_a_lock() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_worker_killed_mid_chunk_is_redone_exactly_once(workers, customer):
    import psycopg

    mappings = bulk_mappings(customer, 3000)
    # A system of the third chunk (of 100) is locked by the test: the worker re-keys two
    # chunks, then waits inside the third one's transaction, where it is killed.
    victim = mappings[250]
    blocker = psycopg.connect(workers.database_url)
    blocker.execute("SELECT 1 FROM fleet_app_system WHERE id = %s FOR UPDATE", [victim.system_id])
    try:
        first = workers.start()
        run = rotation_run_start(actor=None, filters={}, chunk_size=100, queue=workers.queue)
        assert wait_for(lambda: _backends_waiting_on_a_lock() == 1, timeout=30)
        run.refresh_from_db()
        assert 0 < run.done < run.total == 3000
        held = workers.unacknowledged()  # the third chunk's message, not acknowledged
        assert len(held) == 1 and workers.received(0)[-1] == held[0]

        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        blocker.rollback()
        blocker.close()

    # What is committed is consistent: whole chunks, the cursor and the count together.
    assert wait_for(lambda: _backends_waiting_on_a_lock() == 0, timeout=10)
    run.refresh_from_db()
    assert run.done == 200 and run.cursor == mappings[199].pk
    assert LegacyMapping.objects.filter(rotation_count__gt=0).count() == 200
    # Redis hands the unacknowledged message to a worker once the visibility timeout has
    # passed; a new worker restores such messages as it starts.
    time.sleep(VISIBILITY_TIMEOUT + 0.5)
    workers.start()

    assert wait_for(lambda: RotationRun.objects.get(pk=run.pk).is_finished, timeout=40)
    run.refresh_from_db()
    assert (run.state, run.done, run.total) == ("succeeded", 3000, 3000)
    assert run.error == ""
    rows = LegacyMapping.objects.filter(pk__in=[m.pk for m in mappings])
    assert set(rows.values_list("rotation_count", "last_rotation_run_id")) == {(1, run.pk)}
    assert CutoverDay.objects.get().rotated == 3000
    assert workers.unacknowledged() == []
    assert workers.received(1)[0] == held[0]  # redelivered to the new worker
    assert System.objects.get(pk=victim.system_id).secret_digest != victim.system.secret_digest
