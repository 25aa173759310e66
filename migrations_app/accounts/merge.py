"""Accounts: merging a duplicate group into its survivor and undoing it, journaled."""

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.apps import apps
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.models import Membership, Quota, User

from .models import (
    DedupeCheckpoint,
    DedupeJournal,
    DedupeMerged,
    DedupeRun,
    LegacyAccount,
)
from .selectors import ROLE_RANK, UserRelation, email_key, user_relations

logger = logging.getLogger(__name__)


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
