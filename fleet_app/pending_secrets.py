"""Pending secrets (what a rotation handed out and the system has not used yet), and the
confirmation of a system's first call with a secret.

A legacy client may ask for its native credentials several times at once (ns8 starts
migrate-to-my from several scripts together) and keep any of the answers. While a
system has not used a secret, each one issued to it since it last confirmed one
authenticates: the newest ``ROTATION_PENDING_SECRETS``, each for
``ROTATION_GRACE_MINUTES`` after it was issued. The first one used becomes the system's
secret and the others are deleted in the same transaction. Only digests are kept; a
confirmed system has no rows, so its calls never read the table.
"""

import datetime as dt

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from . import credentials
from .errors import NotAuthenticated
from .models import PendingSecret, System
from .signals import secret_confirmed


def _limit() -> int:
    return max(settings.ROTATION_PENDING_SECRETS, 1)


def _valid_since() -> dt.datetime:
    return timezone.now() - dt.timedelta(minutes=settings.ROTATION_GRACE_MINUTES)


def issued(*, system: System, digest: str, replacing_confirmed: bool) -> None:
    """Record a secret a rotation just issued (the system's current one). Issued over a
    confirmed secret, it starts afresh; otherwise it joins the pending ones, and the one
    issued ``ROTATION_PENDING_SECRETS`` times before it is revoked."""
    if replacing_confirmed:
        revoke(system_ids=[system.pk])
    PendingSecret.objects.create(system_id=system.pk, digest=digest)
    oldest_kept = (
        PendingSecret.objects.filter(system_id=system.pk)
        .order_by("-pk")
        .values_list("pk", flat=True)[_limit() - 1 : _limit()]
    )
    PendingSecret.objects.filter(system_id=system.pk, pk__lt=models.Subquery(oldest_kept)).delete()


def revoke(*, system_ids: list[int]) -> None:
    PendingSecret.objects.filter(system_id__in=system_ids).delete()


def renew(*, system: System) -> int:
    """Make the pending secrets of a system that has used none of them valid for another
    ``ROTATION_GRACE_MINUTES`` (staff re-open a stranded mapping); how many there are."""
    return PendingSecret.objects.filter(
        system_id=system.pk, system__secret_confirmed_at__isnull=True
    ).update(issued_at=timezone.now())


def match(system: System, system_secret: str) -> str | None:
    """The digest of the pending secret ``system_secret`` is, if it is one still valid."""
    digests = (
        PendingSecret.objects.filter(system_id=system.pk, issued_at__gte=_valid_since())
        .order_by("-pk")
        .values_list("digest", flat=True)[: _limit()]
    )
    matched = None
    for stored in digests:
        # Every one compared: the time does not tell which of them matched.
        if credentials.verify(system_secret, stored):
            matched = stored
    return matched


def promote(system: System, digest: str, system_secret: str) -> None:
    """The first pending secret used becomes the system's; the others die with it."""
    now = timezone.now()
    public = credentials.system_secret_public_part(system_secret) or ""
    with transaction.atomic():
        promoted = System.objects.filter(pk=system.pk, secret_confirmed_at__isnull=True).update(
            secret_public=public, secret_digest=digest, secret_confirmed_at=now
        )
        if not promoted:
            # Another call confirmed a secret first: this one was revoked at that moment,
            # unless it was the same one.
            current = (
                System.objects.filter(pk=system.pk)
                .values_list("secret_digest", "secret_confirmed_at")
                .first()
            )
            if current is None or current[0] != digest:
                raise NotAuthenticated("Invalid system credentials.")
            system.secret_digest, system.secret_confirmed_at = current
            return
        revoke(system_ids=[system.pk])
        system.secret_digest, system.secret_confirmed_at = digest, now
        secret_confirmed.send(sender=System, system=system)


def confirm(system: System) -> None:
    """Stamp the first use of the system's current secret (one extra UPDATE, once per
    secret); the secrets pending beside it, if any, are revoked with it."""
    now = timezone.now()
    with transaction.atomic():
        confirmed = System.objects.filter(
            pk=system.pk, secret_digest=system.secret_digest, secret_confirmed_at__isnull=True
        ).update(secret_confirmed_at=now)
        if (
            not confirmed
            and not System.objects.filter(pk=system.pk, secret_digest=system.secret_digest).exists()
        ):
            # A pending secret of this system was used first: this one died then.
            raise NotAuthenticated("Invalid system credentials.")
        system.secret_confirmed_at = now
        if confirmed:
            revoke(system_ids=[system.pk])
            secret_confirmed.send(sender=System, system=system)


def count(system: System) -> int:
    """Secrets issued to ``system`` that authenticate until it uses one (none once it
    has)."""
    if system.secret_confirmed_at is not None:
        return 0
    return PendingSecret.objects.filter(system_id=system.pk, issued_at__gte=_valid_since()).count()
