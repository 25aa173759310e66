"""manage.py rotate_mappings: dry run, --apply (in-process without a broker), --wait, bad
arguments and the lock."""

import contextlib
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from fleet_app.models import AuditEntry, System
from migrations_app.models import CutoverDay, LegacyMapping, RotationRun
from tests.factories import bulk_mappings


def rotate(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("rotate_mappings", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_dry_run_counts_and_lists_but_writes_nothing(customer, other_customer):
    bulk_mappings(customer, 12, prefix="eu")
    bulk_mappings(other_customer, 3, prefix="us")
    digests = set(System.objects.values_list("secret_digest", flat=True))

    out, _ = rotate("--organization", str(customer.pk), "--legacy-prefix", "eu")

    assert "12 mapping(s) would be rotated." in out
    assert "First: eu-00000, eu-00001," in out and "eu-00009 …" in out
    assert "Dry run: nothing was written" in out
    assert not RotationRun.objects.exists()
    assert not AuditEntry.objects.filter(action="mapping.bulk_rotate").exists()
    assert set(System.objects.values_list("secret_digest", flat=True)) == digests
    assert set(LegacyMapping.objects.values_list("rotation_count", flat=True)) == {0}


def test_the_dry_run_honours_never_rotated_and_created_before(customer):
    old, recent, rotated = bulk_mappings(customer, 3)
    LegacyMapping.objects.filter(pk=old.pk).update(created_at=timezone.now().replace(year=2020))
    LegacyMapping.objects.filter(pk=rotated.pk).update(rotated_at=timezone.now())

    out, _ = rotate("--only-never-rotated")
    assert "2 mapping(s) would be rotated." in out and "bulk-00002" not in out

    out, _ = rotate("--created-before", "2021-01-01")
    assert "1 mapping(s) would be rotated." in out and "First: bulk-00000\n" in out


def test_apply_runs_in_process_without_a_broker(transactional_db, customer, celery_eager):
    bulk_mappings(customer, 25)

    out, _ = rotate("--apply", "--chunk-size", "10")

    run = RotationRun.objects.get()
    assert f"Started rotation run {run.pk} over 25 mapping(s), chunks of 10." in out
    assert (run.state, run.done, run.total, run.created_by) == ("succeeded", 25, 25, None)
    assert set(LegacyMapping.objects.values_list("rotation_count", "last_rotation_run")) == {
        (1, run.pk)
    }
    assert CutoverDay.objects.get().rotated == 25
    audit = AuditEntry.objects.get(action="mapping.bulk_rotate")
    assert audit.actor is None and audit.actor_repr == "system"


def test_wait_shows_progress_until_the_run_ends(transactional_db, customer, celery_eager):
    bulk_mappings(customer, 5, prefix="eu")
    bulk_mappings(customer, 5, prefix="us")

    out, err = rotate("--apply", "--wait", "--legacy-prefix", "us", "--chunk-size", "2")

    run = RotationRun.objects.get()
    assert "5/5 mappings rotated" in err
    assert f"Run {run.pk} succeeded: rotated 5 of 5." in out
    assert LegacyMapping.objects.filter(rotation_count=1).count() == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--organization", "acme"], "must be an organization id"),
        (["--organization", "987654"], "Organization 987654 does not exist."),
        (["--created-before", "2025-13-01"], "is not a date in the form YYYY-MM-DD"),
        (["--chunk-size", "0"], "--chunk-size must be a whole number from 1 to 10000."),
        (["--chunk-size", "lots"], "--chunk-size must be a whole number"),
        (["--wait"], "--wait only makes sense with --apply."),
    ],
)
def test_bad_arguments_are_one_sentence(db, args, message):
    with pytest.raises(CommandError, match=message):
        rotate(*args)

    assert not RotationRun.objects.exists()


def test_two_applies_cannot_overlap(transactional_db, customer, celery_eager):
    """The lock is held elsewhere, as by another copy of the command."""
    bulk_mappings(customer, 2)

    busy = "Another rotate_mappings --apply is running"
    with _lock_held_elsewhere("rotate_mappings"), pytest.raises(CommandError, match=busy):
        rotate("--apply")

    assert not RotationRun.objects.exists()
    rotate("--apply")
    assert RotationRun.objects.get().state == "succeeded"


@contextlib.contextmanager
def _lock_held_elsewhere(name):
    from fleet_app.locks import _lock_id, named_lock

    if connection.vendor != "postgresql":
        # A file lock: a second open file in this process conflicts like another process.
        with named_lock(name):
            yield
        return
    import psycopg

    # An advisory lock is re-entrant within one session: take it from another one.
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True
    ) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [_lock_id(name)])
        yield
        # Released here, not by closing: a closed session's backend lets go of its locks
        # only when it has exited, which a busy server does a moment later.
        other.execute("SELECT pg_advisory_unlock(%s)", [_lock_id(name)])


def test_it_will_not_start_while_a_run_is_in_progress(customer, celery_eager):
    bulk_mappings(customer, 2)
    busy = RotationRun.objects.create(state="running", total=2)

    with pytest.raises(CommandError, match=f"Rotation run {busy.pk} is still running"):
        rotate("--apply")

    assert RotationRun.objects.count() == 1
