"""Accounts: quota usage verified against the real usage, synced or reset; quota runs."""

import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from fleet_app import quotas
from fleet_app import services as fleet
from fleet_app.errors import InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.models import Organization, Quota, User
from fleet_app.runs import RunState, run_enqueue, run_finish

from .models import (
    QuotaRun,
)

logger = logging.getLogger(__name__)


# --- Quotas ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageDifference:
    """An account whose stored usage of a resource is not its real usage."""

    scope: str
    account_id: int
    account: str
    resource: str
    stored: int
    real: int
    limit: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "account_id": self.account_id,
            "account": self.account,
            "resource": self.resource,
            "stored": self.stored,
            "real": self.real,
            "limit": self.limit,
        }


def _real_usage() -> dict[tuple[str, int, str], int]:
    real: dict[tuple[str, int, str], int] = {}
    for resource, sources in quotas.USAGE_SOURCES.items():
        for scope, source in sources.items():
            for account_id, n in source().items():
                real[(scope, account_id, resource)] = n
    return real


def _stored_usage(*, lock: bool = False) -> dict[tuple[str, int, str], tuple[int, int | None, int]]:
    rows = Quota.objects.all()
    if lock:
        rows = rows.select_for_update()
    stored = {}
    for pk, org_id, user_id, resource, usage, limit in rows.values_list(
        "pk", "organization_id", "user_id", "resource", "usage", "limit"
    ):
        key = ("organization", org_id, resource) if org_id else ("user", user_id, resource)
        stored[key] = (pk, limit, usage)
    return stored


def _names(differences: list[tuple]) -> dict[tuple[str, int], str]:
    org_ids = {key[1] for key in differences if key[0] == "organization"}
    user_ids = {key[1] for key in differences if key[0] == "user"}
    names = {
        ("organization", pk): name
        for pk, name in Organization.objects.filter(pk__in=org_ids).values_list("pk", "name")
    }
    names.update(
        {
            ("user", pk): email
            for pk, email in User._base_manager.filter(pk__in=user_ids).values_list("pk", "email")
        }
    )
    return names


def _reported(scope: str, resource: str) -> bool:
    return scope in quotas.USAGE_SOURCES.get(resource, {})


def quotas_unverified() -> list[dict[str, Any]]:
    """Stored usage no service reports (Pithos disk space, Cyclades CPUs … until a source
    is registered), per resource and holder kind: kept as imported, never zeroed."""
    found = []
    for scope in ("organization", "user"):
        rows = (
            Quota.objects.filter(**{f"{scope}__isnull": False})
            .order_by()
            .values("resource")
            .annotate(accounts=Count("pk"), usage=Sum("usage"))
            .values_list("resource", "accounts", "usage")
        )
        for resource, accounts, usage in rows:
            if not _reported(scope, resource):
                found.append(
                    {"scope": scope, "resource": resource, "accounts": accounts, "usage": usage}
                )
    return sorted(found, key=lambda item: (item["resource"], item["scope"]))


def _differences(real, stored, *, everything: bool = False) -> list[UsageDifference]:
    # Only what some service reports is compared: the rest is unverified, not zero.
    keys = sorted(key for key in set(real) | set(stored) if _reported(key[0], key[2]))
    listed = [
        key
        for key in keys
        if everything or real.get(key, 0) != (stored[key][2] if key in stored else 0)
    ]
    names = _names(listed)
    defaults = settings.FLEET_QUOTA_DEFAULTS
    result = []
    for scope, account_id, resource in listed:
        _, limit, usage = stored.get((scope, account_id, resource), (None, None, 0))
        result.append(
            UsageDifference(
                scope=scope,
                account_id=account_id,
                account=names.get((scope, account_id), "(gone)"),
                resource=resource,
                stored=usage,
                real=real.get((scope, account_id, resource), 0),
                limit=limit if limit is not None else defaults.get(resource, 0),
            )
        )
    return result


def quotas_verify() -> list[UsageDifference]:
    """Every account (organization or user) whose stored usage is not its real usage.

    An account with usage but no quota row has a stored usage of 0, so a freshly imported
    or never initialized account is listed too.
    """
    return _differences(_real_usage(), _stored_usage())


@dataclass
class QuotaSyncReport:
    differences: list[UsageDifference]
    updated: int = 0
    created: int = 0
    unverified: list[dict[str, Any]] = field(default_factory=list)


@transaction.atomic
def quotas_sync(*, actor: User | None = None, reset: bool = False) -> QuotaSyncReport:
    """Recompute stored usage from the real data: for the differing accounts, or for
    every account with ``reset`` (stored rows are rewritten even when equal).

    The quota rows are locked for the transaction, so a concurrent merge or import
    cannot interleave; accounts with usage and no row get a row with the default limit.
    """
    stored = _stored_usage(lock=True)
    real = _real_usage()
    listed = _differences(real, stored, everything=reset)
    report = QuotaSyncReport(differences=[d for d in listed if d.stored != d.real])
    now = timezone.now()
    updates, creates = [], []
    for item in listed:
        key = (item.scope, item.account_id, item.resource)
        if key in stored:
            updates.append(Quota(pk=stored[key][0], usage=item.real, updated_at=now))
        elif item.real:
            holder = {"organization_id" if item.scope == "organization" else "user_id": key[1]}
            creates.append(Quota(resource=item.resource, usage=item.real, updated_at=now, **holder))
    Quota.objects.bulk_update(updates, ["usage", "updated_at"], batch_size=1000)
    Quota.objects.bulk_create(creates, batch_size=1000)
    report.updated, report.created = len(updates), len(creates)
    report.unverified = quotas_unverified()
    if updates or creates:
        fleet.audit_record(
            actor=actor,
            action="quota.reset_usage" if reset else "quota.sync",
            before=None,
            after={
                "updated": report.updated,
                "created": report.created,
                # The first thousand changes; the run row or the command output has all.
                "changes": [d.as_dict() for d in report.differences[:1000]],
            },
        )
    return report


def quota_run_fail(*, run_id: int, error: str) -> None:
    run = QuotaRun.objects.filter(pk=run_id).first()
    if run is not None and not run.is_finished:
        run_finish(run, error=error)


@transaction.atomic
def quota_run_start(*, actor: User | None, mode: str, queue: str | None = None) -> QuotaRun:
    """Create a pending quota run (verify, sync or reset) and enqueue it after commit."""
    if mode not in QuotaRun.Mode.values:
        raise InvalidInput(f"Unknown quota mode {mode!r}; use {', '.join(QuotaRun.Mode.values)}.")
    run = QuotaRun.objects.create(
        mode=mode, phase="queued", created_by=actor if actor is not None and actor.pk else None
    )
    run_enqueue(run, queue=queue)
    return run


def quota_run_work(*, run: QuotaRun) -> str:
    """Verify, sync or reset quota usage for a claimed run and store the result in the row.

    Holds the lock of the ``quotas`` command. A finished run is never claimed again, so a
    redelivered message does nothing twice.
    """
    try:
        with named_lock("quotas"):
            _quota_run_compute(run)
    except LockHeld:
        error = "A quotas command holds the lock."
        if settings.CELERY_TASK_ALWAYS_EAGER:
            quota_run_fail(run_id=run.pk, error=error)
            return RunState.FAILED
        # The command ends on its own: retried with backoff like any transient error.
        raise TimeoutError(error) from None
    return run_finish(run)


def _quota_run_compute(run: QuotaRun) -> None:
    QuotaRun.objects.filter(pk=run.pk).update(phase="computing", updated_at=timezone.now())
    if run.mode == QuotaRun.Mode.VERIFY:
        differences, updated, created = quotas_verify(), 0, 0
        unverified = quotas_unverified()
    else:
        report = quotas_sync(actor=run.created_by, reset=run.mode == QuotaRun.Mode.RESET)
        differences, updated, created = report.differences, report.updated, report.created
        unverified = report.unverified
    QuotaRun.objects.filter(pk=run.pk).update(
        phase="done",
        total=len(differences),
        done=updated + created if run.mode != QuotaRun.Mode.VERIFY else len(differences),
        result={
            "differing": len(differences),
            "updated": updated,
            "created": created,
            "differences": [d.as_dict() for d in differences[:1000]],
            "unverified": unverified,
        },
    )
