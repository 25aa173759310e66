"""Accounts: reads. The duplicate finder and its plan, the model graph a merge walks,
a run's checkpoint and failures."""

import datetime as dt
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.db.models import Count, Exists, OuterRef, Q, Value
from django.db.models.functions import Lower

from fleet_app.errors import InvalidInput
from fleet_app.models import User

from .models import (
    DedupeJournal,
    DedupeMerged,
    DedupeRun,
)

logger = logging.getLogger(__name__)


def email_key(value: Any) -> Lower:
    """``lower()`` as the database computes it: the key of the unique constraint."""
    return Lower(value)


def accounts_with_email(email: str) -> models.QuerySet:
    # lower(email) = lower(%s) matches fleet_user_email_lower_idx.
    return User._base_manager.alias(key=email_key("email")).filter(
        key=email_key(Value(email, output_field=models.CharField()))
    )


# --- The model graph ------------------------------------------------------------------------

# Relations that describe the account itself and stay with it when it is merged. With
# --delete, a nullable one is set to NULL (journaled), another is deleted (journaled).
ACCOUNT_BOUND = {"migrations_app.LegacyAccount.user"}

# Legacy membership roles, weakest first: a merged membership keeps the stronger role.
ROLE_RANK = {"reader": 1, "member": 1, "support": 2, "admin": 3, "owner": 4}


@dataclass(frozen=True)
class UserRelation:
    """A concrete foreign key (or one-to-one) from some model to ``User``.

    ``unique_sets`` are the uniqueness rules that include the key, as (the other fields,
    the constraint's condition or None): a row moved to the survivor must not collide
    with one the survivor already has under any of them.
    """

    model: type[models.Model]
    field: models.ForeignKey
    unique_sets: tuple[tuple[tuple[str, ...], Q | None], ...]

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.field.name}"

    @property
    def short(self) -> str:
        return f"{self.model._meta.object_name}.{self.field.name}"

    @property
    def account_bound(self) -> bool:
        return self.label in ACCOUNT_BOUND


def _unique_sets(model: type[models.Model], fk: models.Field) -> tuple:
    sets: list[tuple[tuple[str, ...], Q | None]] = []
    if fk.unique:
        sets.append(((), None))
    for together in model._meta.unique_together:
        if fk.name in together:
            sets.append((tuple(name for name in together if name != fk.name), None))
    for constraint in model._meta.constraints:
        # Expression constraints are left to the database: a collision fails the group.
        if isinstance(constraint, models.UniqueConstraint) and fk.name in constraint.fields:
            others = tuple(name for name in constraint.fields if name != fk.name)
            sets.append((others, constraint.condition))
    return tuple(sets)


def user_relations() -> list[UserRelation]:
    """Every foreign key to ``User`` in every installed app, hidden ones included.

    ``User._meta.related_objects`` leaves out relations declared with ``related_name="+"``
    (``System.created_by``, every run's ``created_by``) and the auto-created many-to-many
    tables (group and permission grants); ``get_fields(include_hidden=True)`` lists them
    all, so a model added later is merged without anyone listing it here.
    """
    relations = []
    for rel in User._meta.get_fields(include_hidden=True):
        if not (rel.is_relation and rel.auto_created and not rel.concrete):
            continue
        if rel.many_to_many:
            continue  # its through table's foreign key is listed on its own
        model = rel.related_model
        if model._meta.proxy or not model._meta.managed:
            continue
        relations.append(UserRelation(model, rel.field, _unique_sets(model, rel.field)))
    return sorted(relations, key=lambda r: r.label)


# --- Duplicate finder and plan --------------------------------------------------------------


@dataclass
class Account:
    """One member of a duplicate group, as the plan shows it."""

    id: int
    email: str
    is_active: bool
    date_joined: dt.datetime
    last_login: dt.datetime | None
    legacy_was_active: bool | None = None
    flagged_duplicate: bool = False
    owns: dict[str, int] = field(default_factory=dict)

    @property
    def counts_as_active(self) -> bool:
        """Active here, or active on the legacy side and imported inactive only because
        its e-mail collided with another active account."""
        return self.is_active or bool(self.flagged_duplicate and self.legacy_was_active)


def survivor_key(account: Account) -> tuple:
    """Active before inactive, then the most recent login, then the oldest account."""
    login = account.last_login.timestamp() if account.last_login else float("-inf")
    return (not account.counts_as_active, -login, account.date_joined, account.id)


@dataclass
class DuplicateGroup:
    """Accounts whose e-mails are equal once lower-cased, and which one survives."""

    key: str
    accounts: list[Account]
    survivor_id: int | None = None
    reason: str = ""

    @property
    def survivor(self) -> Account:
        return next(a for a in self.accounts if a.id == self.survivor_id)

    @property
    def others(self) -> list[Account]:
        return [a for a in self.accounts if a.id != self.survivor_id]

    def moves(self) -> dict[str, int]:
        """Rows pointing at the other accounts, per relation: what moves to the survivor."""
        total: Counter[str] = Counter()
        for account in self.others:
            total.update(account.owns)
        return dict(sorted(total.items()))

    def as_plan(self) -> dict[str, Any]:
        return {
            "email": self.key,
            "survivor": self.survivor_id,
            "others": [a.id for a in self.others],
        }


def _not_merged() -> Exists:
    return Exists(DedupeMerged.objects.filter(user_id=OuterRef("pk")))


def duplicates_find(*, with_owned: bool = True) -> list[DuplicateGroup]:
    """Every group of accounts sharing ``lower(email)``, accounts already merged left out.

    Two queries whatever the number of users: the groups (``GROUP BY lower(email) HAVING
    count(*) > 1``), then their members (the lower(email) index finds them); plus, with
    ``with_owned``, one grouped count per relation for "what it owns".
    """
    candidates = User._base_manager.filter(~_not_merged()).annotate(key=email_key("email"))
    keys = list(
        candidates.order_by()
        .values("key")
        .annotate(n=Count("pk"))
        .filter(n__gt=1)
        .values_list("key", flat=True)
    )
    if not keys:
        return []
    rows = (
        candidates.filter(key__in=keys)
        .order_by("key", "pk")
        .values_list(
            "key",
            "pk",
            "email",
            "is_active",
            "date_joined",
            "last_login",
            "legacy_account__was_active",
            "legacy_account__flagged_duplicate",
        )
    )
    groups: dict[str, DuplicateGroup] = {}
    for key, pk, email, active, joined, login, was_active, flagged in rows:
        groups.setdefault(key, DuplicateGroup(key=key, accounts=[])).accounts.append(
            Account(pk, email, active, joined, login, was_active, bool(flagged))
        )
    found = [g for g in groups.values() if len(g.accounts) > 1]
    if with_owned:
        accounts = {a.id: a for g in found for a in g.accounts}
        for user_id, owns in relations_count(list(accounts)).items():
            accounts[user_id].owns = owns
    return found


def relations_count(user_ids: Sequence[int], *, chunk: int = 5000) -> dict[int, dict[str, int]]:
    """Rows pointing at each of ``user_ids``, per relation: one grouped query per relation."""
    owned: dict[int, dict[str, int]] = defaultdict(dict)
    for relation in user_relations():
        attname = relation.field.attname
        for start in range(0, len(user_ids), chunk):
            part = user_ids[start : start + chunk]
            counts = (
                relation.model._base_manager.filter(**{f"{attname}__in": part})
                .order_by()
                .values_list(attname)
                .annotate(n=Count("pk"))
            )
            for user_id, n in counts:
                owned[user_id][relation.short] = n
    return owned


def dedupe_plan(
    groups: list[DuplicateGroup], *, prefer: Iterable[int] = ()
) -> list[DuplicateGroup]:
    """Pick each group's survivor: ``prefer`` first, then ``survivor_key``.

    ``InvalidInput`` when a preferred id is in no group, or two are in the same group.
    """
    preferred = set(prefer)
    placed: set[int] = set()
    for group in groups:
        chosen = [a.id for a in group.accounts if a.id in preferred]
        if len(chosen) > 1:
            raise InvalidInput(
                f"Accounts {chosen[0]} and {chosen[1]} are in the same group ({group.key}): "
                "prefer one account per group."
            )
        if chosen:
            group.survivor_id, group.reason = chosen[0], "preferred"
            placed.add(chosen[0])
            continue
        best = min(group.accounts, key=survivor_key)
        group.survivor_id = best.id
        runner_up = sorted(group.accounts, key=survivor_key)[1]
        if best.counts_as_active != runner_up.counts_as_active:
            group.reason = "active"
        elif best.last_login != runner_up.last_login:
            group.reason = "most recent login"
        else:
            group.reason = "oldest"
    unknown = sorted(preferred - placed)
    if unknown:
        raise InvalidInput(
            f"Account {unknown[0]} is not in any duplicate group; --prefer takes the id of "
            "one of the accounts listed by the dry run."
        )
    return groups


def plan_json(groups: list[DuplicateGroup]) -> list[dict[str, Any]]:
    return [group.as_plan() for group in groups]


def plan_digest(plan: list[dict[str, Any]]) -> str:
    """A fingerprint of a plan: the admin confirms exactly the plan it showed."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def dedupe_checkpoint_rows(*, run: DedupeRun) -> list[dict[str, Any]]:
    """The run's checkpoint as one ``loaddata``-ready list (accounts before their rows)."""
    rows: list[dict[str, Any]] = []
    for checkpoint in run.checkpoints.order_by("position"):
        rows.extend(checkpoint.rows)
    user_label = User._meta.label_lower
    return [r for r in rows if r["model"] == user_label] + [
        r for r in rows if r["model"] != user_label
    ]


def dedupe_failures(run: DedupeRun) -> list[tuple[str, str]]:
    """(e-mail, error) of the groups a merge run could not merge."""
    return list(
        run.journal.filter(state=DedupeJournal.State.FAILED)
        .order_by("position")
        .values_list("email_key", "error")
    )
