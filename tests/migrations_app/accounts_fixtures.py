"""Helpers for the account tests: accounts with duplicates, and a full snapshot of every
account and every row that points at one (found through the same model graph the merge
walks, so the snapshot grows with it)."""

import datetime as dt
from typing import Any

from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone
from knox.models import AuthToken

from fleet_app import services
from fleet_app.models import Membership, Quota, User
from migrations_app.accounts.selectors import user_relations
from migrations_app.models import LegacyAccount, RotationRun

NOW = timezone.now()


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def make_account(
    email: str,
    *,
    active: bool = True,
    joined: float = 100,
    login: float | None = None,
    organization=None,
    legacy: tuple[bool, bool] | None = None,
) -> User:
    """An account joined ``joined`` days ago, last logged in ``login`` days ago (or never);
    ``legacy`` = (was_active, flagged_duplicate) adds its LegacyAccount row."""
    user = User.objects.create(
        email=email,
        is_active=active,
        date_joined=days_ago(joined),
        last_login=days_ago(login) if login is not None else None,
        organization=organization,
    )
    if legacy is not None:
        LegacyAccount.objects.create(
            user=user,
            legacy_id=f"legacy-{user.pk}",
            was_active=legacy[0],
            flagged_duplicate=legacy[1],
        )
    return user


def give_everything(user: User, organization, *, role: str = "member", usage: int = 1) -> dict:
    """One row of every kind that points at an account; returns them by relation."""
    system = services.system_create(actor=user, organization=organization, name=f"s-{user.pk}")
    audit = services.audit_record(actor=user, action="test.touch", obj=organization)
    user.groups.add(Group.objects.get_or_create(name="reader")[0])
    return {
        "system": system.system,
        "audit": audit,
        "token": AuthToken.objects.create(user=user)[0],
        "membership": Membership.objects.create(user=user, organization=organization, role=role),
        "quota": Quota.objects.create(user=user, resource="systems", usage=usage),
        "rotation_run": RotationRun.objects.create(created_by=user),
        "log_entry": LogEntry.objects.create(
            user=user,
            content_type=ContentType.objects.get_for_model(User),
            object_id=str(user.pk),
            object_repr=str(user),
            action_flag=ADDITION,
        ),
    }


def snapshot(*, ignore: tuple[int, ...] = ()) -> dict[str, Any]:
    """Every account, and every row of every model that points at an account; accounts in
    ``ignore`` (a staff user acting through the admin) and their rows are left out."""
    users = User._base_manager.exclude(pk__in=ignore)
    data: dict[str, Any] = {"fleet_app.User": sorted(users.values(), key=lambda r: r["id"])}
    for relation in user_relations():
        attname = relation.field.attname
        rows = (
            relation.model._base_manager.filter(**{f"{attname}__isnull": False})
            .exclude(**{f"{attname}__in": ignore})
            .values()
        )
        data[relation.label] = sorted(rows, key=lambda r: str(r[relation.model._meta.pk.attname]))
    return data
