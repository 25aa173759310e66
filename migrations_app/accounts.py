"""Accounts: legacy import, case-insensitive user dedupe with reversible merges, quotas.

The legacy platform compared e-mails case-sensitively; Cutover does not (an active account's
``lower(email)`` is unique). Seed 001's procedure found duplicates with one query per user
and deleted them for good after a "yes/no"; here:

- ``duplicates_find`` groups accounts by ``lower(email)`` in the database (one query for
  the groups, one for their members), ``dedupe_plan`` picks each group's survivor;
- ``users_merge`` moves everything that points at the other accounts to the survivor, one
  transaction per group, found through the model graph (``user_relations``), and writes a
  journal of every change (``DedupeJournal``) from which ``users_merge_undo`` restores the
  accounts and their relations exactly;
- a dedupe job (``DedupeRun``) writes a checkpoint (``DedupeCheckpoint``: the affected rows
  in ``dumpdata`` format) before its first change, then merges the confirmed plan in
  chunks; a failing group is journaled as failed and the others go on;
- quotas: ``quotas_verify`` compares stored usage with the real usage (``fleet_app.quotas``,
  one grouped query per resource and holder kind), ``quotas_sync`` rewrites the differing
  ones, ``reset`` rewrites all of them.
"""

import datetime as dt
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import validate_email
from django.db import connection, models, transaction
from django.db.models import Count, Exists, OuterRef, Q, Value
from django.db.models.functions import Lower
from django.utils import timezone

from fleet_app import quotas
from fleet_app import services as fleet
from fleet_app.errors import Conflict, InvalidInput
from fleet_app.models import Membership, Organization, Quota, User
from fleet_app.runs import FINISHED_STATES, RunState, run_claim, run_finish, run_log

from .legacy_import import (
    ImportReport,
    LegacyImport,
    Record,
    row_flag,
    row_stamp,
    row_text,
    row_whole,
)
from .models import (
    DedupeCheckpoint,
    DedupeJournal,
    DedupeMerged,
    DedupeRun,
    LegacyAccount,
    LegacyOrganization,
    QuotaRun,
)

logger = logging.getLogger(__name__)


def email_key(value: Any) -> Lower:
    """``lower()`` as the database computes it: the key of the unique constraint."""
    return Lower(value)


def _accounts_with_email(email: str) -> models.QuerySet:
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


# --- Journal --------------------------------------------------------------------------------


class MergeError(Exception):
    """A group cannot be merged (or restored) as planned; nothing of it was written."""


class ExactJSONEncoder(DjangoJSONEncoder):
    """DjangoJSONEncoder keeps milliseconds only; a restored row needs every microsecond."""

    def default(self, o: Any) -> Any:
        if isinstance(o, dt.datetime | dt.time):
            return o.isoformat()
        return super().default(o)


class _RowSerializer(serializers.get_serializer("python")):
    """Django's python serializer without the many-to-many lists: their through rows are
    journaled (and backed up) as rows of their own, and listing them costs two queries
    per account."""

    def handle_m2m_field(self, obj: models.Model, field: models.Field) -> None:
        pass


def rows_serialize(objs: Sequence[models.Model]) -> list[dict]:
    """Rows in ``dumpdata`` format, to the microsecond."""
    return json.loads(json.dumps(_RowSerializer().serialize(objs), cls=ExactJSONEncoder))


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=ExactJSONEncoder))


class _Journal:
    """Applies changes and remembers them: ``set`` one field of some rows, ``delete`` rows."""

    def __init__(self) -> None:
        self.changes: list[dict[str, Any]] = []
        self.moved: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def set(
        self,
        model: type[models.Model],
        attname: str,
        pks: list,
        old: Any,
        new: Any,
        *,
        applied: bool = False,
    ) -> None:
        """Set ``attname`` of the rows ``pks`` to ``new`` (unless the caller ``applied`` it
        already) and journal it."""
        if not applied:
            updated = model._base_manager.filter(pk__in=pks).update(**{attname: new})
            if updated != len(pks):
                raise MergeError(f"{model._meta.label} rows changed while being merged.")
        if model._meta.pk.attname == attname:
            pks = [new] * len(pks)  # the row is now found by its new key
        self.changes.append(
            {
                "op": "set",
                "model": model._meta.label,
                "field": attname,
                "pks": _json_value(pks),
                "old": _json_value(old),
                "new": _json_value(new),
            }
        )

    def delete(self, model: type[models.Model], pks: list) -> None:
        queryset = model._base_manager.filter(pk__in=pks)
        rows = rows_serialize(list(queryset))
        _, per_model = queryset.delete()
        label = model._meta.label
        extra = {name: n for name, n in per_model.items() if name != label and n}
        if extra:
            # Something the merge did not move would go with the row: refuse the group.
            raise MergeError(f"deleting {label} {pks} would also delete {extra}.")
        self.changes.append({"op": "delete", "model": label, "rows": rows})


def _merge_membership(kept: Membership, dropped: Membership, journal: _Journal) -> None:
    if ROLE_RANK.get(dropped.role, 0) > ROLE_RANK.get(kept.role, 0):
        journal.set(Membership, "role", [kept.pk], kept.role, dropped.role)


def _merge_quota(kept: Quota, dropped: Quota, journal: _Journal) -> None:
    journal.set(Quota, "usage", [kept.pk], kept.usage, kept.usage + dropped.usage)
    # A stored limit is a non-default one; the larger of two is kept.
    if dropped.limit is not None and (kept.limit is None or dropped.limit > kept.limit):
        journal.set(Quota, "limit", [kept.pk], kept.limit, dropped.limit)


# When a moved row would collide with the survivor's own, the survivor's row stays (this
# merges what the other one carried into it) and the other is deleted, journaled.
MERGE_HOOKS: dict[str, Callable[[Any, Any, _Journal], None]] = {
    "fleet_app.Membership": _merge_membership,
    "fleet_app.Quota": _merge_quota,
}


def _move_returning(relation: UserRelation, other: int, survivor: int) -> list:
    """``UPDATE … SET fk = survivor WHERE fk = other RETURNING pk``: one statement where
    the ORM needs a SELECT and an UPDATE (PostgreSQL, and SQLite 3.35+)."""
    quote = connection.ops.quote_name
    model, column = relation.model, quote(relation.field.column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(model._meta.db_table)} SET {column} = %s WHERE {column} = %s "  # noqa: S608 - names from the models, values bound
            f"RETURNING {quote(model._meta.pk.column)}",
            [survivor, other],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _move(relation: UserRelation, other: int, survivor: int, journal: _Journal) -> None:
    model, attname = relation.model, relation.field.attname
    manager = model._base_manager
    if not relation.unique_sets and not relation.field.primary_key:
        # Nothing to collide with: move the rows and learn which they were at once.
        moved = _move_returning(relation, other, survivor)
        if moved:
            journal.set(model, attname, moved, other, survivor, applied=True)
            journal.moved[relation.short] += len(moved)
        return
    pks = list(manager.filter(**{attname: other}).order_by("pk").values_list("pk", flat=True))
    if not pks:
        return
    colliding: dict[Any, Any] = {}  # the other account's row → the survivor's row
    for others, condition in relation.unique_sets:
        mine = manager.filter(pk__in=pks)
        theirs = manager.filter(**{attname: survivor})
        if condition is not None:
            mine, theirs = mine.filter(condition), theirs.filter(condition)
        keys = {
            tuple(row[1:]): row[0]
            for row in mine.values_list("pk", *others)
            if None not in row[1:]  # NULLs never collide
        }
        if not keys:
            continue
        for row in theirs.values_list("pk", *others):
            if tuple(row[1:]) in keys:
                colliding.setdefault(keys[tuple(row[1:])], row[0])
    if colliding:
        hook = MERGE_HOOKS.get(model._meta.label)
        if hook is not None:
            kept = manager.in_bulk(set(colliding.values()))
            dropped = manager.in_bulk(list(colliding))
            for dropped_pk, kept_pk in colliding.items():
                hook(kept[kept_pk], dropped[dropped_pk], journal)
                kept[kept_pk].refresh_from_db()
        journal.delete(model, sorted(colliding))
        journal.dropped[relation.short] += len(colliding)
    moving = [pk for pk in pks if pk not in colliding]
    if moving:
        journal.set(model, attname, moving, other, survivor)
        journal.moved[relation.short] += len(moving)


def _relations_in_use(
    relations: list[UserRelation], other_ids: Sequence[int]
) -> list[UserRelation]:
    """The relations with a row pointing at any of ``other_ids``, in one statement of
    EXISTS subqueries (each on the foreign key's index): most accounts own rows of few
    kinds, and the merge skips the others. Written as SQL because compiling a dozen ORM
    subqueries cost ten times more than running them."""
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * len(other_ids))
    checks = [
        f"EXISTS (SELECT 1 FROM {quote(r.model._meta.db_table)} "  # noqa: S608 - names from the models
        f"WHERE {quote(r.field.column)} IN ({marks}))"
        for r in relations
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(checks), list(other_ids) * len(relations))  # noqa: S608 - names from the models, values bound
        found = cursor.fetchone()
    return [relation for relation, used in zip(relations, found, strict=True) if used]


def _legacy_flags(user_ids: Iterable[int]) -> dict[int, tuple[bool, bool]]:
    return {
        user_id: (was_active, flagged)
        for user_id, was_active, flagged in LegacyAccount.objects.filter(
            user_id__in=list(user_ids)
        ).values_list("user_id", "was_active", "flagged_duplicate")
    }


def users_merge(
    *,
    run: DedupeRun,
    position: int,
    email: str,
    survivor_id: int,
    other_ids: Sequence[int],
    delete: bool = False,
    actor: User | None = None,
) -> DedupeJournal:
    """Merge ``other_ids`` into ``survivor_id``, in one transaction, and journal it.

    Every row pointing at the others moves to the survivor (rows that would collide with
    the survivor's are merged into its row and deleted); the others are deactivated, or
    deleted with ``delete``. The survivor is active if any account of the group counted
    as active. Raises ``MergeError`` (nothing written) when the group is not what the
    plan said any more; any other error rolls the group back too.
    """
    if survivor_id in other_ids or not other_ids:
        raise MergeError("A group needs a survivor and at least one other account.")
    ids = sorted({survivor_id, *other_ids})
    with transaction.atomic():
        # Locked in id order, so two merges touching the same accounts cannot deadlock.
        users = {
            user.pk: user
            for user in User._base_manager.select_for_update()
            .filter(pk__in=ids)
            .annotate(key=email_key("email"))
            .order_by("pk")
        }
        missing = [pk for pk in ids if pk not in users]
        if missing:
            raise MergeError(f"account(s) {missing} no longer exist.")
        changed = [pk for pk in ids if users[pk].key != email]
        if changed:
            raise MergeError(f"the e-mail of account(s) {changed} changed since the plan.")
        merged = sorted(
            DedupeMerged.objects.filter(user_id__in=ids).values_list("user_id", flat=True)
        )
        if merged:
            raise MergeError(f"account(s) {merged} were already merged.")
        flags = _legacy_flags(ids)
        before = [{"id": u.pk, "email": u.email, "is_active": u.is_active} for u in users.values()]
        journal = _Journal()
        relations = _relations_in_use(user_relations(), other_ids)
        for other in other_ids:
            for relation in relations:
                if not relation.account_bound:
                    _move(relation, other, survivor_id, journal)
        # Deactivate first: two active accounts with one e-mail may never coexist.
        for other in other_ids:
            if users[other].is_active:
                journal.set(User, "is_active", [other], True, False)
        survivor = users[survivor_id]
        any_active = any(
            users[pk].is_active or (flags.get(pk, (False, False)) == (True, True)) for pk in ids
        )
        if any_active and not survivor.is_active:
            journal.set(User, "is_active", [survivor_id], False, True)
        if delete:
            for other in other_ids:
                for relation in relations:
                    if relation.account_bound:
                        _detach(relation, other, journal)
                journal.delete(User, [other])
        entry = DedupeJournal.objects.create(
            run=run,
            position=position,
            email_key=email,
            survivor_id=survivor_id,
            merged_ids=list(other_ids),
            state=DedupeJournal.State.MERGED,
            changes=journal.changes,
        )
        DedupeMerged.objects.bulk_create(
            DedupeMerged(user_id=other, survivor_id=survivor_id, journal=entry)
            for other in other_ids
        )
        if actor is not None and delete and actor.pk in other_ids:
            actor = survivor  # the acting account was merged away: it lives on as this one
        fleet.audit_record(
            actor=actor,
            action="user.merge",
            obj=survivor,
            organization=survivor.organization,
            before={"accounts": before},
            after={
                "survivor": survivor_id,
                "merged": list(other_ids),
                "deleted": delete,
                "moved": dict(journal.moved),
                "merged_into_survivor_rows": dict(journal.dropped),
                "dedupe_run": run.pk,
            },
        )
    return entry


def _detach(relation: UserRelation, user_id: int, journal: _Journal) -> None:
    """Before an account is deleted: its own rows lose the link (or go, if they need it)."""
    model, attname = relation.model, relation.field.attname
    pks = list(model._base_manager.filter(**{attname: user_id}).values_list("pk", flat=True))
    if not pks:
        return
    if relation.field.null:
        journal.set(model, attname, pks, user_id, None)
    else:
        journal.delete(model, pks)


# --- Undo -----------------------------------------------------------------------------------


def _revert(change: dict[str, Any], *, force: bool) -> None:
    model = apps.get_model(change["model"])
    manager = model._base_manager
    if change["op"] == "delete":
        for restored in serializers.deserialize("json", json.dumps(change["rows"])):
            if manager.filter(pk=restored.object.pk).exists():
                raise MergeError(
                    f"{change['model']} {restored.object.pk} exists again; it cannot be restored."
                )
            restored.save()
        return
    attname, pks = change["field"], change["pks"]
    model_field = model._meta.get_field(attname)
    old, new = model_field.to_python(change["old"]), model_field.to_python(change["new"])
    if not force:
        unchanged = manager.filter(pk__in=pks, **{attname: new}).count()
        if unchanged != len(pks):
            raise MergeError(
                f"{len(pks) - unchanged} {change['model']} row(s) changed their {attname} "
                "since the merge; undo with --force to restore them anyway."
            )
    manager.filter(pk__in=pks).update(**{attname: old})


def users_merge_undo(
    *, journal_id: int, actor: User | None = None, force: bool = False
) -> DedupeJournal:
    """Restore one merged group exactly as it was, in one transaction.

    The journal is replayed backwards: deleted rows are re-created with their primary
    keys, and every changed field gets its old value back. Without ``force``, a field
    that changed again since the merge stops the undo (``MergeError``, nothing written).
    """
    with transaction.atomic():
        entry = DedupeJournal.objects.select_for_update().get(pk=journal_id)
        if entry.state != DedupeJournal.State.MERGED:
            raise MergeError(f"group {entry.email_key} is {entry.state}, not merged.")
        for change in reversed(entry.changes):
            _revert(change, force=force)
        DedupeMerged.objects.filter(journal=entry).delete()
        entry.state = DedupeJournal.State.UNDONE
        entry.undone_at = timezone.now()
        entry.save(update_fields=["state", "undone_at"])
        survivor = User._base_manager.filter(pk=entry.survivor_id).first()
        fleet.audit_record(
            actor=actor,
            action="user.merge_undo",
            obj=survivor,
            organization=survivor.organization if survivor else None,
            before={"survivor": entry.survivor_id, "merged": entry.merged_ids},
            after={"restored": entry.merged_ids, "dedupe_run": entry.run_id},
        )
    return entry


# --- Checkpoint -----------------------------------------------------------------------------


def dedupe_checkpoint_write(*, run: DedupeRun, chunk: int = 500) -> int:
    """Back up every group's accounts and every row pointing at them, in one transaction.

    Written before the run's first change (and rewritten whole if a redelivered task
    comes back before it committed). Returns the number of rows backed up.
    """
    relations = user_relations()
    count = 0
    with transaction.atomic():
        DedupeCheckpoint.objects.filter(run=run).delete()
        plan = run.plan
        for start in range(0, len(plan), chunk):
            groups = plan[start : start + chunk]
            owner: dict[int, int] = {}
            for offset, group in enumerate(groups):
                for user_id in [group["survivor"], *group["others"]]:
                    owner[user_id] = start + offset
            per_group: dict[int, list[models.Model]] = defaultdict(list)
            for user in User._base_manager.filter(pk__in=list(owner)).order_by("pk"):
                per_group[owner[user.pk]].append(user)
            for relation in relations:
                attname = relation.field.attname
                rows = relation.model._base_manager.filter(**{f"{attname}__in": list(owner)})
                for row in rows.order_by("pk"):
                    per_group[owner[getattr(row, attname)]].append(row)
            checkpoints = []
            for position, objs in sorted(per_group.items()):
                count += len(objs)
                checkpoints.append(
                    DedupeCheckpoint(run=run, position=position, rows=rows_serialize(objs))
                )
            DedupeCheckpoint.objects.bulk_create(checkpoints)
    return count


def dedupe_checkpoint_rows(*, run: DedupeRun) -> list[dict[str, Any]]:
    """The run's checkpoint as one ``loaddata``-ready list (accounts before their rows)."""
    rows: list[dict[str, Any]] = []
    for checkpoint in run.checkpoints.order_by("position"):
        rows.extend(checkpoint.rows)
    user_label = User._meta.label_lower
    return [r for r in rows if r["model"] == user_label] + [
        r for r in rows if r["model"] != user_label
    ]


# --- Runs -----------------------------------------------------------------------------------


def _refuse_if_active() -> None:
    active = DedupeRun.objects.filter(state__in=(RunState.PENDING, RunState.RUNNING)).first()
    if active is not None:
        raise Conflict(f"Dedupe run {active.pk} is still {active.state}; wait until it ends.")


def dedupe_run_create(
    *,
    actor: User | None,
    plan: list[dict[str, Any]],
    delete: bool = False,
    prefer: Iterable[int] = (),
    chunk_size: int = 200,
) -> DedupeRun:
    """Write a pending merge run for a confirmed plan (``plan_json`` of ``dedupe_plan``)."""
    _refuse_if_active()
    run = DedupeRun.objects.create(
        kind=DedupeRun.Kind.MERGE,
        plan=plan,
        prefer=sorted(prefer),
        delete_duplicates=delete,
        total=len(plan),
        chunk_size=chunk_size,
        phase="queued",
        created_by=actor if actor is not None and actor.pk else None,
    )
    fleet.audit_record(
        actor=actor,
        action="dedupe.start",
        obj=run,
        after={"groups": len(plan), "delete": delete, "prefer": sorted(prefer)},
    )
    return run


def dedupe_undo_create(
    *, actor: User | None, run: DedupeRun, force: bool = False, chunk_size: int = 200
) -> DedupeRun:
    """Write a pending undo run over the merged groups of ``run``, newest group first."""
    if run.kind != DedupeRun.Kind.MERGE:
        raise InvalidInput(f"Run {run.pk} is an undo run; only a merge run can be undone.")
    if run.state not in FINISHED_STATES:
        raise Conflict(f"Run {run.pk} is still {run.state}; undo it once it has finished.")
    if run.undone_at is not None:
        raise Conflict(f"Run {run.pk} was already undone on {run.undone_at:%Y-%m-%d %H:%M}.")
    _refuse_if_active()
    journal_ids = list(
        run.journal.filter(state=DedupeJournal.State.MERGED)
        .order_by("-position")
        .values_list("pk", flat=True)
    )
    undo = DedupeRun.objects.create(
        kind=DedupeRun.Kind.UNDO,
        undo_of=run,
        plan=journal_ids,
        total=len(journal_ids),
        chunk_size=chunk_size,
        force=force,
        phase="queued",
        created_by=actor if actor is not None and actor.pk else None,
    )
    fleet.audit_record(
        actor=actor,
        action="dedupe.undo",
        obj=undo,
        after={"undo_of": run.pk, "groups": len(journal_ids), "force": force},
    )
    return undo


def _enqueue(run_id: int, queue: str | None) -> None:
    from .tasks_accounts import dedupe_run_execute

    options = {"queue": queue} if queue else {}
    dedupe_run_execute.apply_async(args=(run_id,), kwargs={"queue": queue}, **options)


@transaction.atomic
def dedupe_run_start(
    *,
    actor: User | None,
    plan: list[dict[str, Any]] | None = None,
    delete: bool = False,
    prefer: Iterable[int] = (),
    queue: str | None = None,
) -> DedupeRun:
    """Create a merge run (the current plan unless one is given) and enqueue it after
    commit; ``queue`` sends it to a named Celery queue."""
    prefer = list(prefer)
    if plan is None:
        plan = plan_json(dedupe_plan(duplicates_find(with_owned=False), prefer=prefer))
    run = dedupe_run_create(actor=actor, plan=plan, delete=delete, prefer=prefer)
    transaction.on_commit(lambda: _enqueue(run.pk, queue))
    return run


@transaction.atomic
def dedupe_undo_start(
    *, actor: User | None, run: DedupeRun, force: bool = False, queue: str | None = None
) -> DedupeRun:
    """Create an undo run for ``run`` and enqueue it after commit."""
    undo = dedupe_undo_create(actor=actor, run=run, force=force)
    transaction.on_commit(lambda: _enqueue(undo.pk, queue))
    return undo


def _step_done(run: DedupeRun, position: int, *, ok: bool) -> None:
    DedupeRun.objects.filter(pk=run.pk).update(
        cursor=position + 1,
        done=models.F("done") + int(ok),
        failed=models.F("failed") + int(not ok),
        updated_at=timezone.now(),
    )


def _error_text(error: Exception) -> str:
    return str(error) if isinstance(error, MergeError) else f"{type(error).__name__}: {error}"


def _merge_position(run: DedupeRun, position: int) -> tuple[bool, str]:
    group = run.plan[position]
    if DedupeJournal.objects.filter(run=run, position=position).exists():
        return True, ""  # a redelivered chunk: this group is done already
    try:
        with transaction.atomic():
            users_merge(
                run=run,
                position=position,
                email=group["email"],
                survivor_id=group["survivor"],
                other_ids=group["others"],
                delete=run.delete_duplicates,
                actor=run.created_by,
            )
            _step_done(run, position, ok=True)
        return True, ""
    except Exception as error:  # any failure fails this group alone
        message = _error_text(error)
        logger.warning("dedupe run %s: group %s failed: %s", run.pk, group["email"], message)
        with transaction.atomic():
            DedupeJournal.objects.create(
                run=run,
                position=position,
                email_key=group["email"],
                survivor_id=group["survivor"],
                merged_ids=group["others"],
                state=DedupeJournal.State.FAILED,
                error=message[:10000],
            )
            _step_done(run, position, ok=False)
        run_log(run, f"group {group['email']} failed: {message}")
        return False, message


def _undo_position(run: DedupeRun, position: int) -> tuple[bool, str]:
    journal_id = run.plan[position]
    entry = DedupeJournal.objects.filter(pk=journal_id).first()
    if entry is None or entry.state == DedupeJournal.State.UNDONE:
        with transaction.atomic():
            _step_done(run, position, ok=True)
        return True, ""
    try:
        with transaction.atomic():
            users_merge_undo(journal_id=journal_id, actor=run.created_by, force=run.force)
            _step_done(run, position, ok=True)
        return True, ""
    except Exception as error:  # any failure fails this group alone
        message = _error_text(error)
        with transaction.atomic():
            _step_done(run, position, ok=False)
        run_log(run, f"undo of group {entry.email_key} failed: {message}")
        return False, message


def dedupe_run_step(
    *, run_id: int, progress: Callable[[int, bool, str], None] | None = None
) -> bool:
    """Work through one chunk of the run; True if more remains.

    A merge run writes its checkpoint first. Each group is its own transaction, which
    also advances the cursor, so a redelivered chunk starts after the last group done.
    """
    run = DedupeRun.objects.select_related("created_by").get(pk=run_id)
    if run.kind == DedupeRun.Kind.MERGE and run.phase in ("", "queued"):
        rows = dedupe_checkpoint_write(run=run)
        DedupeRun.objects.filter(pk=run.pk).update(phase="merging", updated_at=timezone.now())
        run_log(run, f"checkpoint written: {rows} row(s) of {len(run.plan)} group(s)")
    elif run.kind == DedupeRun.Kind.UNDO and run.phase in ("", "queued"):
        DedupeRun.objects.filter(pk=run.pk).update(phase="restoring", updated_at=timezone.now())
    end = min(len(run.plan), run.cursor + max(1, run.chunk_size))
    step = _merge_position if run.kind == DedupeRun.Kind.MERGE else _undo_position
    for position in range(run.cursor, end):
        ok, message = step(run, position)
        if progress is not None:
            progress(position, ok, message)
    return end < len(run.plan)


def dedupe_run_finish(*, run_id: int) -> DedupeRun:
    run = DedupeRun.objects.get(pk=run_id)
    state = run_finish(run)
    if run.kind == DedupeRun.Kind.UNDO and state == RunState.SUCCEEDED:
        DedupeRun.objects.filter(pk=run.undo_of_id).update(undone_at=timezone.now())
    run_log(run, f"finished {state}: {run.done} group(s) done, {run.failed} failed")
    run.refresh_from_db()
    return run


def dedupe_run_fail(*, run_id: int, error: str) -> None:
    run = DedupeRun.objects.filter(pk=run_id).first()
    if run is not None and not run.is_finished:
        run_finish(run, error=error)


def dedupe_run_process(
    *, run: DedupeRun, progress: Callable[[int, bool, str], None] | None = None
) -> DedupeRun:
    """Run a whole run in this process (the command); the worker does it chunk by chunk."""
    if not run_claim(run):
        return run
    try:
        while dedupe_run_step(run_id=run.pk, progress=progress):
            pass
    except BaseException as error:
        dedupe_run_fail(run_id=run.pk, error=f"{type(error).__name__}: {error}")
        raise
    return dedupe_run_finish(run_id=run.pk)


def dedupe_failures(run: DedupeRun) -> list[tuple[str, str]]:
    """(e-mail, error) of the groups a merge run could not merge."""
    return list(
        run.journal.filter(state=DedupeJournal.State.FAILED)
        .order_by("position")
        .values_list("email_key", "error")
    )


# --- Legacy import --------------------------------------------------------------------------


IMPORT_SECTIONS = ("organizations", "users", "quotas", "usage")
# The column a section's rows may not repeat within an import.
IMPORT_KEYS = {"organizations": "legacy_id", "users": "legacy_id"}


def _memberships(row: dict[str, Any]) -> list[tuple[str, str]]:
    """``[{"organization": id, "role": r}]`` (JSON) or ``"id:role;id"`` (CSV)."""
    value = row.get("memberships") or []
    pairs: list[tuple[str, str]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.split(";"))):
            org, _, role = part.partition(":")
            pairs.append((org.strip(), role.strip()))
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise InvalidInput("memberships must be a list of {organization, role}.")
            pairs.append((str(item.get("organization") or "").strip(), str(item.get("role") or "")))
    else:
        raise InvalidInput("memberships must be a list or 'org:role;org:role' text.")
    for org, role in pairs:
        if not org:
            raise InvalidInput("a membership has no organization.")
        if len(role) > 32:
            raise InvalidInput(f"role {role[:40]!r} is longer than 32 characters.")
    return [(org, role.strip() or "member") for org, role in pairs]


class _ImportContext:
    def __init__(self, *, under: Organization | None, actor: User | None, report: ImportReport):
        self.under, self.actor, self.report = under, actor, report

    def organization(self, legacy_id: str) -> Organization:
        found = (
            LegacyOrganization.objects.select_related("organization")
            .filter(legacy_id=legacy_id)
            .first()
        )
        if found is None:
            raise InvalidInput(f"organization {legacy_id!r} is not in the import or the database.")
        return found.organization

    def user(self, legacy_id: str) -> User:
        found = LegacyAccount.objects.select_related("user").filter(legacy_id=legacy_id).first()
        if found is None or found.user is None:
            raise InvalidInput(f"user {legacy_id!r} is not in the import or the database.")
        return found.user


def _import_organization(row: dict[str, Any], ctx: _ImportContext) -> bool:
    legacy_id = row_text(row, "legacy_id", 128, required=True)
    name = row_text(row, "name", 255, required=True)
    kind = row_text(row, "kind", 16) or Organization.Kind.CUSTOMER
    parent_ref = row_text(row, "parent", 128)
    if LegacyOrganization.objects.filter(legacy_id=legacy_id).exists():
        return False
    parent = ctx.organization(parent_ref) if parent_ref else ctx.under
    if parent is None:
        raise InvalidInput("no parent: give a parent column or --under.")
    organization = fleet.organization_create(actor=ctx.actor, name=name, kind=kind, parent=parent)
    LegacyOrganization.objects.create(organization=organization, legacy_id=legacy_id)
    return True


def _looks_like_email(email: str) -> bool:
    """One @ between a local part and a dotted domain, no spaces. Django's validator would
    refuse the internationalized local parts (émile@…) the legacy platform accepted."""
    local, at, domain = email.rpartition("@")
    if not (local and at and "." in domain.strip(".")) or any(c.isspace() for c in email):
        return False
    try:
        validate_email(f"user@{domain}")
    except ValidationError:
        return False
    return True


def _import_user(row: dict[str, Any], ctx: _ImportContext) -> bool:
    legacy_id = row_text(row, "legacy_id", 128, required=True)
    email = row_text(row, "email", 254, required=True)
    if not _looks_like_email(email):
        raise InvalidInput(f"email {email!r} is not an e-mail address.")
    active = row_flag(row, "is_active", True)
    joined = row_stamp(row, "date_joined") or timezone.now()
    last_login = row_stamp(row, "last_login")
    full_name = row_text(row, "full_name", 255)
    memberships = [(ctx.organization(org), role) for org, role in _memberships(row)]
    if LegacyAccount.objects.filter(legacy_id=legacy_id).exists():
        return False
    email = User.objects.normalize_email(email)
    colliding = _accounts_with_email(email)
    flagged = colliding.exists()
    # The legacy platform had both; here only one active account may hold the e-mail.
    imported_active = active and not colliding.filter(is_active=True).exists()
    user = User(
        email=email,
        full_name=full_name,
        is_active=imported_active,
        date_joined=joined,
        last_login=last_login,
        organization=memberships[0][0] if memberships else None,
    )
    user.set_unusable_password()
    user.save()
    Membership.objects.bulk_create(
        Membership(user=user, organization=org, role=role) for org, role in memberships
    )
    LegacyAccount.objects.create(
        user=user, legacy_id=legacy_id, was_active=active, flagged_duplicate=flagged
    )
    if flagged:
        ctx.report.notes["flagged"] += 1
    fleet.audit_record(
        actor=ctx.actor,
        action="user.import",
        obj=user,
        organization=user.organization,
        after={
            "legacy_id": legacy_id,
            "email": email,
            "legacy_active": active,
            "is_active": imported_active,
            "flagged_duplicate": flagged,
        },
    )
    return True


def _holder(row: dict[str, Any], ctx: _ImportContext) -> dict[str, Any]:
    org_ref, user_ref = row_text(row, "organization", 128), row_text(row, "user", 128)
    if bool(org_ref) == bool(user_ref):
        raise InvalidInput("give exactly one of organization and user.")
    return {"organization": ctx.organization(org_ref)} if org_ref else {"user": ctx.user(user_ref)}


def _resource(row: dict[str, Any]) -> str:
    resource = row_text(row, "resource", 32, required=True)
    if resource not in Quota.Resource.values:
        raise InvalidInput(
            f"resource {resource!r} is unknown; use {', '.join(Quota.Resource.values)}."
        )
    return resource


def _import_quota(row: dict[str, Any], ctx: _ImportContext) -> bool | None:
    holder, resource = _holder(row, ctx), _resource(row)
    limit = row_whole(row, "limit", required=False)
    if limit == settings.FLEET_QUOTA_DEFAULTS[resource]:
        limit = None  # the default: not stored, so a new default reaches this account
    existing = Quota.objects.select_for_update().filter(resource=resource, **holder).first()
    if limit is None and (existing is None or existing.limit is None):
        ctx.report.notes["defaults_skipped"] += 1
        return None
    if existing is not None and existing.limit == limit:
        return False
    if existing is None:
        Quota.objects.create(resource=resource, limit=limit, **holder)
    else:
        existing.limit, existing.updated_at = limit, timezone.now()
        existing.save(update_fields=["limit", "updated_at"])
    return True


def _import_usage(row: dict[str, Any], ctx: _ImportContext) -> bool:
    holder, resource = _holder(row, ctx), _resource(row)
    usage = row_whole(row, "usage", required=True)
    existing = Quota.objects.select_for_update().filter(resource=resource, **holder).first()
    if existing is not None and existing.usage == usage:
        return False
    if existing is None:
        Quota.objects.create(resource=resource, usage=usage, **holder)
    else:
        existing.usage, existing.updated_at = usage, timezone.now()
        existing.save(update_fields=["usage", "updated_at"])
    return True


# An importer returns True (created or changed), False (already there) or None (a default
# limit, which is not kept).
IMPORTERS: dict[str, Callable[[dict[str, Any], _ImportContext], bool | None]] = {
    "organizations": _import_organization,
    "users": _import_user,
    "quotas": _import_quota,
    "usage": _import_usage,
}


def accounts_import_feed(
    run: LegacyImport,
    section: str,
    records: Iterable[Record],
    *,
    under: Organization | None = None,
    actor: User | None = None,
) -> None:
    """Import the rows of one ``section`` in ``run``. Feed sections in ``IMPORT_SECTIONS``
    order (organizations, users, quotas, usage): later ones refer to earlier ones. Each
    row is its own savepoint, so a refused row leaves nothing behind."""
    importer = IMPORTERS[section]
    ctx = _ImportContext(under=under, actor=actor, report=run.report)

    def handle(rows: list[Record], report: ImportReport) -> None:
        for row in rows:
            try:
                with transaction.atomic():
                    created = importer(row.fields, ctx)
            except InvalidInput as error:
                report.refuse(row, error.message)
            else:
                if created is not None:
                    (report.created if created else report.unchanged)[section] += 1

    run.feed(iter(records), section=section, handle=handle, key=IMPORT_KEYS.get(section))


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


def _differences(real, stored, *, everything: bool = False) -> list[UsageDifference]:
    keys = sorted(set(real) | set(stored))
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


def _quota_enqueue(run_id: int, queue: str | None) -> None:
    from .tasks_accounts import quota_run_execute

    options = {"queue": queue} if queue else {}
    quota_run_execute.apply_async(args=(run_id,), kwargs={"queue": queue}, **options)


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
    transaction.on_commit(lambda: _quota_enqueue(run.pk, queue))
    return run


def quota_run_execute(*, run_id: int) -> QuotaRun | None:
    """Do a quota run's work and store its result in the row; a finished run is a no-op."""
    run = QuotaRun.objects.select_related("created_by").filter(pk=run_id).first()
    if run is None or run.is_finished or not run_claim(run):
        return run
    try:
        QuotaRun.objects.filter(pk=run.pk).update(phase="computing", updated_at=timezone.now())
        if run.mode == QuotaRun.Mode.VERIFY:
            differences, updated, created = quotas_verify(), 0, 0
        else:
            report = quotas_sync(actor=run.created_by, reset=run.mode == QuotaRun.Mode.RESET)
            differences, updated, created = report.differences, report.updated, report.created
        QuotaRun.objects.filter(pk=run.pk).update(
            phase="done",
            total=len(differences),
            done=updated + created if run.mode != QuotaRun.Mode.VERIFY else len(differences),
            result={
                "differing": len(differences),
                "updated": updated,
                "created": created,
                "differences": [d.as_dict() for d in differences[:1000]],
            },
        )
    except Exception as error:
        run_finish(run, error=f"{type(error).__name__}: {error}")
        raise
    run_finish(run)
    return run
