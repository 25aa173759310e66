"""Accounts: a dedupe run's checkpoint: every affected row backed up before the first
change, and written back whole by ``dedupe_users --restore RUN_ID``."""

from collections import Counter, defaultdict
from typing import Any

from django.apps import apps
from django.core import serializers
from django.db import models, transaction
from django.utils import timezone

from fleet_app import services as fleet
from fleet_app.models import User

from .merge import rows_serialize
from .models import DedupeCheckpoint, DedupeJournal, DedupeMerged, DedupeReview, DedupeRun
from .selectors import user_relations

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


def dedupe_checkpoint_restore(*, run: DedupeRun, actor: User | None = None) -> dict[str, Any]:
    """Put every row of the run's checkpoint back as it was, in one transaction.

    Rows are written by primary key (updated where they exist, re-created where a merge
    with ``--delete`` removed them), accounts first. Every account of the checkpoint is
    made inactive before any row is written, so the one-active-account-per-e-mail rules
    never see two at once; then the accounts the checkpoint had active are activated,
    except one whose e-mail an active account outside the checkpoint holds now: that one
    stays inactive and is listed in ``kept_inactive``. Rows that point at these accounts
    and were written after the checkpoint (new audit entries, new logins) are kept: a
    restore never deletes a row.
    """
    rows = [row for checkpoint in run.checkpoints.order_by("position") for row in checkpoint.rows]
    user_label = User._meta.label_lower
    per_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_model[row["model"]].append(row)
    restored: Counter[str] = Counter()
    kept_inactive: list[dict[str, Any]] = []
    with transaction.atomic():
        user_rows = per_model.pop(user_label, [])
        user_ids = [row["pk"] for row in user_rows]
        User._base_manager.filter(pk__in=user_ids).update(is_active=False)
        wanted_active = {row["pk"] for row in user_rows if row["fields"].get("is_active")}
        for label, model_rows in [(user_label, user_rows), *sorted(per_model.items())]:
            model = apps.get_model(label)
            objs = [item.object for item in serializers.deserialize("python", model_rows)]
            if model is User:
                for obj in objs:
                    obj.is_active = False
            manager = model._base_manager
            existing = set(
                manager.filter(pk__in=[obj.pk for obj in objs]).values_list("pk", flat=True)
            )
            fields = [f.attname for f in model._meta.concrete_fields if not f.primary_key]
            manager.bulk_update([o for o in objs if o.pk in existing], fields, batch_size=500)
            manager.bulk_create([o for o in objs if o.pk not in existing], batch_size=500)
            restored[label] += len(objs)
        if wanted_active:
            accounts = list(User._base_manager.filter(pk__in=list(wanted_active)))
            holders = {
                key: pk
                for key, pk in User._base_manager.filter(
                    is_active=True, email_key__in=[u.email_key for u in accounts]
                )
                .exclude(pk__in=user_ids)
                .values_list("email_key", "pk")
            }
            lower_holders = {
                email.lower(): pk
                for email, pk in User._base_manager.filter(is_active=True)
                .exclude(pk__in=user_ids)
                .filter(email__in=[u.email for u in accounts])
                .values_list("email", "pk")
            }
            activate = []
            for user in accounts:
                holder = holders.get(user.email_key) or lower_holders.get(user.email.lower())
                if holder is not None:
                    kept_inactive.append({"id": user.pk, "email": user.email, "held_by": holder})
                else:
                    activate.append(user.pk)
            User._base_manager.filter(pk__in=activate).update(is_active=True)
        now = timezone.now()
        journal = run.journal.filter(state=DedupeJournal.State.MERGED)
        DedupeMerged.objects.filter(journal__in=journal).delete()
        journal.update(state=DedupeJournal.State.UNDONE, undone_at=now)
        reviews = [group.get("review") for group in run.plan if group.get("review")]
        DedupeReview.objects.filter(pk__in=reviews, state=DedupeReview.State.MERGED).update(
            state=DedupeReview.State.APPROVED
        )
        DedupeRun.objects.filter(pk=run.pk).update(restored_at=now, updated_at=now)
        result = {"rows": dict(restored), "kept_inactive": kept_inactive}
        fleet.audit_record(actor=actor, action="dedupe.restore", obj=run, after=result)
    return result
