"""Staff API tokens (django-rest-knox): created, revoked and purged here, and audited.

The database keeps a token's SHA-512 digest and its first 15 characters (knox's
``token_key``, the token's name in lists and audit entries); the token in clear exists
only in the return value of ``api_token_create``. Every token expires.

Who may act on whose tokens:

- a superuser, on anyone's;
- any other actor needs the model permission (``knox.add_authtoken`` to create,
  ``knox.delete_authtoken`` to revoke), and the token's user must be in the actor's
  organization subtree, not a superuser, and hold no permission the actor lacks — a
  token acts as its user, so giving one out must not give out more than the actor has.

Refusals are audited (in the caller's transaction; a caller that rolls back on the error
loses the entry, as the admin does not) and raise ``Forbidden`` with one sentence.
"""

import datetime as dt
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from knox.models import AuthToken

from . import selectors
from .errors import Forbidden, InvalidInput
from .models import User
from .services import audit_record

PERMISSION_CREATE = "knox.add_authtoken"
PERMISSION_REVOKE = "knox.delete_authtoken"
PURGE_BATCH = 1000


def api_token_ttl() -> dt.timedelta:
    return dt.timedelta(days=settings.API_TOKEN_TTL_DAYS)


def api_token_state(token: AuthToken) -> dict[str, Any]:
    """What an audit entry says of a token: never its digest, only its key prefix."""
    return {
        "user": token.user_id,
        "token_key": token.token_key,
        "created": token.created.isoformat() if token.created else None,
        "expiry": token.expiry.isoformat() if token.expiry else None,
    }


def api_token_refusal(*, actor: User, user: User, permission: str) -> str | None:
    """Why ``actor`` may not act on ``user``'s tokens, in one sentence; None if it may."""
    if actor.is_superuser and actor.is_active:
        return None
    if not actor.has_perm(permission):
        return "You do not have the permission to manage API tokens."
    if not selectors.users_visible_to(actor).filter(pk=user.pk).exists():
        return "This account is outside your organization."
    if user.is_superuser:
        return "Only a superuser may manage a superuser's API tokens."
    if not user.get_all_permissions() <= actor.get_all_permissions():
        return "This account holds permissions you do not have."
    return None


def _refuse(*, actor: User, action: str, user: User, reason: str, extra: dict | None = None):
    audit_record(
        actor=actor,
        action=action,
        # Filed under the actor's organization: the account may belong to another one,
        # whose staff should not learn of the attempt through their audit log.
        organization=getattr(actor, "organization", None),
        after={"user": user.pk, "reason": reason, **(extra or {})},
    )
    raise Forbidden(reason)


def api_tokens_creatable_for(actor: User) -> QuerySet[User]:
    """The accounts ``actor`` may give a token to (the admin's choices): the rules of
    ``api_token_refusal`` as one query, for a subtree of any size."""
    if actor.is_superuser and actor.is_active:
        return User.objects.filter(is_active=True)
    if not actor.has_perm(PERMISSION_CREATE):
        return User.objects.none()
    held = Permission.objects.filter(Q(user=actor) | Q(group__user=actor)).values("pk")
    foreign = Permission.objects.exclude(pk__in=held)
    return (
        selectors.users_visible_to(actor)
        .filter(is_active=True, is_superuser=False)
        # NOT EXISTS each: no grant of its own, and none through a group, beyond the actor's.
        .exclude(user_permissions__in=foreign)
        .exclude(groups__permissions__in=foreign)
    )


def api_token_create(
    *, actor: User, user: User, expires_in: dt.timedelta | None = None
) -> tuple[AuthToken, str]:
    """Create a token for ``user``; returns the row and the token in clear (shown once).

    ``expires_in`` defaults to, and may not exceed, ``API_TOKEN_TTL_DAYS``.
    """
    # Who first: an actor refused learns nothing more about the account.
    reason = api_token_refusal(actor=actor, user=user, permission=PERMISSION_CREATE)
    if reason is not None:
        _refuse(actor=actor, action="api_token.create_refused", user=user, reason=reason)
    ttl = api_token_ttl()
    expires_in = ttl if expires_in is None else expires_in
    if expires_in <= dt.timedelta(0):
        raise InvalidInput("An API token must expire in the future.")
    if expires_in > ttl:
        raise InvalidInput(
            f"An API token expires after {settings.API_TOKEN_TTL_DAYS} days at most."
        )
    if not user.is_active:
        raise InvalidInput("An inactive account cannot be given an API token.")
    with transaction.atomic():
        token, clear = AuthToken.objects.create(user=user, expiry=expires_in)
        audit_record(actor=actor, action="api_token.create", obj=user, after=api_token_state(token))
    return token, clear


def api_token_revoke(*, actor: User, token: AuthToken) -> None:
    """Delete ``token``: it stops authenticating at once."""
    user = token.user
    reason = api_token_refusal(actor=actor, user=user, permission=PERMISSION_REVOKE)
    if reason is not None:
        _refuse(
            actor=actor,
            action="api_token.revoke_refused",
            user=user,
            reason=reason,
            extra={"token_key": token.token_key},
        )
    with transaction.atomic():
        # Counted, not assumed: a concurrent revoke or purge may have taken it already.
        deleted, _ = AuthToken.objects.filter(digest=token.digest).delete()
        if deleted:
            audit_record(
                actor=actor,
                action="api_token.revoke",
                obj=user,
                before=api_token_state(token),
            )


def api_tokens_purge_expired(*, now: dt.datetime | None = None) -> int:
    """Delete the tokens past their expiry, each with an audit entry; returns how many.

    Run hourly by Celery beat. Authentication already refuses an expired token; this
    only removes the row, so nothing is deleted unaudited on the request path.
    """
    now = now or timezone.now()
    purged = 0
    while True:
        with transaction.atomic():
            batch = list(
                AuthToken.objects.filter(expiry__lte=now)
                .select_related("user")
                .order_by("expiry")
                .select_for_update(skip_locked=True, of=("self",))[:PURGE_BATCH]
            )
            if not batch:
                return purged
            for token in batch:
                audit_record(
                    actor=None,
                    action="api_token.expire",
                    obj=token.user,
                    before=api_token_state(token),
                )
            AuthToken.objects.filter(digest__in=[t.digest for t in batch]).delete()
        purged += len(batch)
