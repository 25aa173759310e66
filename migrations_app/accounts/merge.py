"""Accounts: merging a duplicate group into its survivor and undoing it, journaled."""

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.models import AuditEntry, Membership, Quota, User, canonical_email_key

from .models import (
    DedupeJournal,
    DedupeMerged,
    DedupeReview,
    DedupeRun,
    LegacyAccount,
)
from .selectors import ROLE_RANK, UserRelation, user_relations

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


def _merge_membership(kept: Membership, dropped: Membership, journal: "_Journal") -> list[str]:
    if ROLE_RANK.get(dropped.role, 0) > ROLE_RANK.get(kept.role, 0):
        journal.set(Membership, "role", [kept.pk], kept.role, dropped.role, applied=True)
        kept.role = dropped.role
        return ["role"]
    return []


def quota_effective(quota: Quota) -> int:
    """A quota's limit as the account lives it: a default (NULL) is the default's value."""
    if quota.limit is not None:
        return quota.limit
    return settings.FLEET_QUOTA_DEFAULTS.get(quota.resource, 0)


def _merge_quota(kept: Quota, dropped: Quota, journal: "_Journal") -> list[str]:
    """Usage is summed; the survivor keeps the higher effective limit (stored NULL when that
    is the default, so a later change of the default still reaches it)."""
    changed = ["usage"]
    journal.set(Quota, "usage", [kept.pk], kept.usage, kept.usage + dropped.usage, applied=True)
    kept.usage += dropped.usage
    best = max(quota_effective(kept), quota_effective(dropped))
    default = settings.FLEET_QUOTA_DEFAULTS.get(kept.resource)
    limit = None if best == default else best
    if limit != kept.limit and best > quota_effective(kept):
        journal.set(Quota, "limit", [kept.pk], kept.limit, limit, applied=True)
        kept.limit = limit
        changed.append("limit")
    return changed


# When a moved row would collide with the survivor's own, the survivor's row stays (this
# merges what the other one carried into it: the instance is changed in memory and saved
# with the others of its batch) and the other is deleted, journaled.
MERGE_HOOKS: dict[str, Callable[[Any, Any, _Journal], list[str]]] = {
    "fleet_app.Membership": _merge_membership,
    "fleet_app.Quota": _merge_quota,
}


def _case_update(model: type[models.Model], column: str, pks: list, new_of: dict) -> None:
    """``UPDATE t SET column = CASE column WHEN old THEN new … END WHERE pk IN (…)``: the
    rows found (and journaled) move in one statement; rows added since are left alone."""
    quote = connection.ops.quote_name
    table, pk_column = quote(model._meta.db_table), quote(model._meta.pk.column)
    for start in range(0, len(pks), 2000):
        part = pks[start : start + 2000]
        cases = " ".join(["WHEN %s THEN %s"] * len(new_of))
        marks = ", ".join(["%s"] * len(part))
        params = [value for pair in new_of.items() for value in pair] + part
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {quote(column)} = CASE {quote(column)} {cases} END "  # noqa: S608 - names from the models, values bound
                f"WHERE {pk_column} IN ({marks})",
                params,
            )


class _Batch:
    """The groups of one transaction: who merges into whom, and one journal per group."""

    def __init__(self, positions: Sequence[int], plan: list[dict[str, Any]]):
        self.owner: dict[int, int] = {}  # account id → plan position
        self.survivor_of: dict[int, int] = {}  # merged account id → its survivor
        self.groups = {position: plan[position] for position in positions}
        self.journals = {position: _Journal() for position in positions}
        for position, group in self.groups.items():
            survivor, others = group["survivor"], list(group["others"])
            if survivor in others or not others:
                raise MergeError("A group needs a survivor and at least one other account.")
            for user_id in [survivor, *others]:
                if user_id in self.owner:
                    raise MergeError(f"account {user_id} is in two groups of the plan.")
                self.owner[user_id] = position
            for other in others:
                self.survivor_of[other] = survivor

    def journal_of(self, user_id: int) -> _Journal:
        return self.journals[self.owner[user_id]]


def _move_batch(relation: UserRelation, batch: _Batch) -> None:
    model, attname = relation.model, relation.field.attname
    manager = model._base_manager
    others = list(batch.survivor_of)
    if not relation.unique_sets and not relation.field.primary_key:
        rows = list(
            manager.filter(**{f"{attname}__in": others}).order_by("pk").values_list("pk", attname)
        )
        if not rows:
            return
        per_account: dict[int, list] = defaultdict(list)
        for pk, user_id in rows:
            per_account[user_id].append(pk)
        _case_update(model, relation.field.column, [pk for pk, _ in rows], batch.survivor_of)
        for user_id, pks in per_account.items():
            journal = batch.journal_of(user_id)
            journal.set(model, attname, pks, user_id, batch.survivor_of[user_id], applied=True)
            journal.moved[relation.short] += len(pks)
        if model is Quota:
            _quota_moved([pk for pk, _ in rows], batch)
        return
    survivors = sorted(set(batch.survivor_of.values()))
    rows = {
        obj.pk: obj
        for obj in manager.filter(**{f"{attname}__in": others + survivors}).order_by("pk")
    }
    if not any(getattr(obj, attname) in batch.survivor_of for obj in rows.values()):
        return
    colliding: dict[Any, Any] = {}  # the other account's row → the row it merges into
    for fields, condition in relation.unique_sets:
        candidates = rows
        if condition is not None:
            matching = set(
                manager.filter(pk__in=list(rows)).filter(condition).values_list("pk", flat=True)
            )
            candidates = {pk: obj for pk, obj in rows.items() if pk in matching}
        held: dict[tuple, Any] = {}  # (survivor, *fields) → the row that holds it
        for pk, obj in candidates.items():
            user_id = getattr(obj, attname)
            if user_id not in batch.survivor_of:
                values = tuple(getattr(obj, model._meta.get_field(n).attname) for n in fields)
                if None not in values:
                    held[(user_id, *values)] = pk
        for pk in sorted(candidates):
            obj = candidates[pk]
            user_id = getattr(obj, attname)
            if user_id not in batch.survivor_of or pk in colliding:
                continue
            values = tuple(getattr(obj, model._meta.get_field(n).attname) for n in fields)
            if None in values:
                continue
            key = (batch.survivor_of[user_id], *values)
            if key in held:
                colliding[pk] = held[key]
            else:
                held[key] = pk  # it moves: a later row of the group collides with it
    changed: dict[Any, set[str]] = defaultdict(set)
    hook = MERGE_HOOKS.get(model._meta.label)
    for dropped_pk, kept_pk in colliding.items():
        journal = batch.journal_of(getattr(rows[dropped_pk], attname))
        if hook is not None:
            changed[kept_pk].update(hook(rows[kept_pk], rows[dropped_pk], journal))
    for name in {name for names in changed.values() for name in names}:
        objs = [rows[pk] for pk, names in changed.items() if name in names]
        manager.bulk_update(objs, [name], batch_size=1000)
    if colliding:
        per_account: dict[int, list] = defaultdict(list)
        for pk in sorted(colliding):
            per_account[getattr(rows[pk], attname)].append(pk)
        order = sorted(colliding)
        serialized = dict(zip(order, rows_serialize([rows[pk] for pk in order]), strict=True))
        _, per_model = manager.filter(pk__in=list(colliding)).delete()
        label = model._meta.label
        extra = {name: n for name, n in per_model.items() if name != label and n}
        if extra:
            raise MergeError(f"deleting {label} rows would also delete {extra}.")
        for user_id, pks in per_account.items():
            journal = batch.journal_of(user_id)
            journal.changes.append(
                {"op": "delete", "model": label, "rows": [serialized[pk] for pk in pks]}
            )
            journal.dropped[relation.short] += len(pks)
    moving = [
        pk
        for pk, obj in rows.items()
        if getattr(obj, attname) in batch.survivor_of and pk not in colliding
    ]
    if not moving:
        return
    if relation.field.primary_key:
        raise MergeError(f"{model._meta.label} rows are keyed by the account; they cannot move.")
    _case_update(model, relation.field.column, moving, batch.survivor_of)
    per_account = defaultdict(list)
    for pk in moving:
        per_account[getattr(rows[pk], attname)].append(pk)
    for user_id, pks in per_account.items():
        journal = batch.journal_of(user_id)
        journal.set(model, attname, pks, user_id, batch.survivor_of[user_id], applied=True)
        journal.moved[relation.short] += len(pks)
    if model is Quota:
        _quota_moved(moving, batch)


def _quota_moved(pks: list, batch: _Batch) -> None:
    """A quota row that moved to a survivor with no row of its own for the resource: the
    survivor had the default, so a lower stored limit is raised back to it."""
    lowered = [
        quota
        for quota in Quota.objects.filter(pk__in=pks, limit__isnull=False)
        if quota.limit < settings.FLEET_QUOTA_DEFAULTS.get(quota.resource, 0)
    ]
    for quota in lowered:
        batch.journal_of(quota.user_id).set(
            Quota, "limit", [quota.pk], quota.limit, None, applied=True
        )
        quota.limit = None
    Quota.objects.bulk_update(lowered, ["limit"], batch_size=1000)


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


def _quota_defaults_kept(batch: _Batch, others_held: set[tuple[int, str]]) -> None:
    """A survivor's stored limit below the default, where another account of its group had
    no row for the resource (so the default): the default is the higher, and is kept."""
    raised = []
    for quota in Quota.objects.filter(
        user_id__in=sorted(set(batch.survivor_of.values())), limit__isnull=False
    ):
        if quota.limit >= settings.FLEET_QUOTA_DEFAULTS.get(quota.resource, 0):
            continue
        group = batch.groups[batch.owner[quota.user_id]]
        if any((other, quota.resource) not in others_held for other in group["others"]):
            batch.journal_of(quota.user_id).set(
                Quota, "limit", [quota.pk], quota.limit, None, applied=True
            )
            quota.limit = None
            raised.append(quota)
    Quota.objects.bulk_update(raised, ["limit"], batch_size=1000)


def _legacy_flags(user_ids: Iterable[int]) -> dict[int, tuple[bool, bool]]:
    return {
        user_id: (was_active, flagged)
        for user_id, was_active, flagged in LegacyAccount.objects.filter(
            user_id__in=list(user_ids)
        ).values_list("user_id", "was_active", "flagged_duplicate")
    }


def tombstone_email(user_id: int) -> str:
    """The e-mail a merged (deactivated) account keeps: unique, never deliverable (.invalid
    is reserved), so no rule ever pairs it with another account again."""
    return f"merged-{user_id}@dedupe.invalid"


def groups_merge(
    *,
    run: DedupeRun,
    positions: Sequence[int],
    delete: bool = False,
    actor: User | None = None,
) -> list[DedupeJournal]:
    """Merge the plan's groups at ``positions`` into their survivors, in one transaction,
    journaled group by group.

    Every row pointing at a merged account moves to its survivor (a row that would collide
    with the survivor's is merged into it by the model's hook and deleted); each relation
    costs a few statements for the whole batch, not per group. The merged accounts are
    deactivated and their e-mails tombstoned, or deleted with ``delete``; the survivor is
    active if any account of its group counted as active. ``MergeError`` (nothing
    written) when a group is not what the plan said any more.
    """
    batch = _Batch(positions, run.plan)
    with transaction.atomic():
        # Locked in id order, so two merges touching the same accounts cannot deadlock.
        locked = User._base_manager.select_for_update()
        if connection.features.has_select_for_update_of:
            locked = User._base_manager.select_for_update(of=("self",))
        users = {
            user.pk: user
            for user in locked.filter(pk__in=list(batch.owner))
            .select_related("organization")
            .order_by("pk")
        }
        missing = sorted(pk for pk in batch.owner if pk not in users)
        if missing:
            raise MergeError(f"account(s) {missing} no longer exist.")
        changed = sorted(
            pk
            for pk in batch.owner
            if batch.groups[batch.owner[pk]].get("emails", {}).get(str(pk), users[pk].email)
            != users[pk].email
        )
        if changed:
            raise MergeError(f"the e-mail of account(s) {changed} changed since the plan.")
        merged = sorted(
            DedupeMerged.objects.filter(user_id__in=list(batch.owner)).values_list(
                "user_id", flat=True
            )
        )
        if merged:
            raise MergeError(f"account(s) {merged} were already merged.")
        flags = _legacy_flags(batch.owner)
        was_active = {pk: user.is_active for pk, user in users.items()}
        relations = _relations_in_use(user_relations(), list(batch.survivor_of))
        others_held = set(
            Quota.objects.filter(user_id__in=list(batch.survivor_of)).values_list(
                "user_id", "resource"
            )
        )
        for relation in relations:
            if not relation.account_bound:
                _move_batch(relation, batch)
        _quota_defaults_kept(batch, others_held)
        # Deactivate (and tombstone) first: two active accounts with one key never coexist.
        leaving = []
        for other in batch.survivor_of:
            user, journal = users[other], batch.journal_of(other)
            if user.is_active:
                journal.set(User, "is_active", [other], True, False, applied=True)
                user.is_active = False
            if not delete:
                tomb = tombstone_email(other)
                journal.set(User, "email", [other], user.email, tomb, applied=True)
                journal.set(
                    User,
                    "email_key",
                    [other],
                    user.email_key,
                    canonical_email_key(tomb),
                    applied=True,
                )
                user.email, user.email_key = tomb, canonical_email_key(tomb)
            leaving.append(user)
        User._base_manager.bulk_update(
            leaving, ["is_active", "email", "email_key"], batch_size=1000
        )
        arriving = []
        for position, group in batch.groups.items():
            ids = [group["survivor"], *group["others"]]
            # Active here, or active on the legacy side and imported inactive only because
            # its e-mail collided with an active account.
            any_active = any(
                was_active[pk] or flags.get(pk, (False, False)) == (True, True) for pk in ids
            )
            survivor = users[group["survivor"]]
            if any_active and not survivor.is_active:
                batch.journals[position].set(
                    User, "is_active", [survivor.pk], False, True, applied=True
                )
                survivor.is_active = True
                arriving.append(survivor)
        User._base_manager.bulk_update(arriving, ["is_active"], batch_size=1000)
        if delete:
            for other in batch.survivor_of:
                journal = batch.journal_of(other)
                for relation in relations:
                    if relation.account_bound:
                        _detach(relation, other, journal)
                journal.delete(User, [other])
        entries = DedupeJournal.objects.bulk_create(
            DedupeJournal(
                run=run,
                position=position,
                email_key=group["email"],
                survivor_id=group["survivor"],
                merged_ids=list(group["others"]),
                state=DedupeJournal.State.MERGED,
                changes=batch.journals[position].changes,
            )
            for position, group in batch.groups.items()
        )
        if not all(entry.pk for entry in entries):  # SQLite before 3.35 returns no ids
            entries = list(DedupeJournal.objects.filter(run=run, position__in=list(batch.groups)))
        by_position = {entry.position: entry for entry in entries}
        DedupeMerged.objects.bulk_create(
            DedupeMerged(
                user_id=other, survivor_id=survivor, journal=by_position[batch.owner[other]]
            )
            for other, survivor in batch.survivor_of.items()
        )
        reviews = [group["review"] for group in batch.groups.values() if group.get("review")]
        if reviews:
            DedupeReview.objects.filter(pk__in=reviews).update(state=DedupeReview.State.MERGED)
        audit = []
        for position, group in batch.groups.items():
            survivor = users[group["survivor"]]
            journal = batch.journals[position]
            who = actor
            if who is not None and delete and who.pk in group["others"]:
                who = survivor  # the acting account was merged away: it lives on as this one
            audit.append(
                fleet.audit_entry_build(
                    actor=who,
                    action="user.merge",
                    obj=survivor,
                    organization=survivor.organization,
                    before={
                        "accounts": [
                            {"id": pk, "email": group.get("emails", {}).get(str(pk), "")}
                            for pk in [group["survivor"], *group["others"]]
                        ]
                    },
                    after={
                        "survivor": group["survivor"],
                        "merged": list(group["others"]),
                        "deleted": delete,
                        "rule": group.get("rule", "both"),
                        "moved": dict(journal.moved),
                        "merged_into_survivor_rows": dict(journal.dropped),
                        "dedupe_run": run.pk,
                    },
                )
            )
        AuditEntry.objects.bulk_create(audit, batch_size=1000)
    return [by_position[position] for position in batch.groups]


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
