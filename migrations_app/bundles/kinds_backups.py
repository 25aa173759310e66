"""Bundle rows of the platform's own infrastructure: service backups (services, their
schedules, their finished backups with the archives) and ZFS replication job definitions
(with the storage hosts, snapshot policies and datasets the jobs need).

None of these rows belongs to an organization: they travel only in a platform export
(``Scope.platform``), never in a tenant's subtree. They hold no secret: a service's database
password is read from the environment variable its config names, a storage host's row has
only its public host key (the workers' private key is a setting), and a config key that
looks like a secret is dropped all the same.

What would start work by itself arrives switched off: an imported backup schedule or
replication job is disabled and an imported dataset gets no snapshot policy, so two
instances never back up, snapshot or pull the same thing. Those fields are the target's
own from then on (``volatile``): never compared, never overwritten.

Backups' models are reached by label, and the schedules' beat entries are written by the
backups' own code, named by a setting: bundles never import the backups.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Model, ProtectedError
from django.utils.module_loading import import_string

from .rows import Kind, Target, _values, stamp, unstamp

SECRET_WORDS = ("password", "secret", "token", "private")


def _model(label: str) -> type[Model]:
    return apps.get_model(label)


def _manager(label: str):
    return _model(label)._default_manager


def _no_secrets(config: dict[str, Any]) -> dict[str, Any]:
    # ``password_env`` names a variable, it holds no password: it stays.
    return {
        k: v
        for k, v in (config or {}).items()
        if k == "password_env" or not any(word in k.lower() for word in SECRET_WORDS)
    }


def _split(keys: list[str]) -> dict[str, list[str]]:
    """Keys by row type (``service:…``, ``job:…``), their prefix removed."""
    found: dict[str, list[str]] = {}
    for key in keys:
        kind, _sep, rest = key.partition(":")
        found.setdefault(kind, []).append(rest)
    return found


def _delete_each(queryset) -> int:
    """Delete rows one by one; a row still needed here (a restore of a backup, a run of a
    job) stays."""
    gone = 0
    for row in queryset:
        try:
            with transaction.atomic():
                row.delete()
            gone += 1
        except (ProtectedError, IntegrityError):
            continue
    return gone


# --- Service backups -------------------------------------------------------------------------


def _timing(task) -> tuple[str, dict[str, Any]] | None:
    """A schedule's beat timing, as a name (part of the schedule's key) and its fields."""
    if task.interval_id:
        every, period = task.interval.every, task.interval.period
        return f"every {every} {period}", {"interval": {"every": every, "period": period}}
    if task.crontab_id:
        c = task.crontab
        fields = {
            "minute": c.minute,
            "hour": c.hour,
            "day_of_month": c.day_of_month,
            "month_of_year": c.month_of_year,
            "day_of_week": c.day_of_week,
            "timezone": str(c.timezone),
        }
        cron = " ".join(str(fields[f]) for f in list(fields)[:5])
        return f"cron {cron} {fields['timezone']}", {"crontab": fields}
    return None


class ServiceBackups(Kind):
    name = "service_backups"
    platform = True
    # The schedule's ``enabled`` is the target's; a run's storage key is where each instance
    # keeps the archive (the content is the sha256).
    volatile = ("enabled_here", "storage_key")

    # -- reading, in the bundle's shape

    def _services(self, queryset) -> Iterator[dict[str, Any]]:
        for r in _values(queryset, "name", "adapter", "config", "enabled", "created_at"):
            yield {
                "key": f"service:{r['name']}",
                "type": "service",
                "name": r["name"],
                "adapter": r["adapter"],
                "config": _no_secrets(r["config"]),
                "enabled": r["enabled"],
                "created_at": stamp(r["created_at"]),
            }

    def _schedule_rows(self, queryset) -> Iterator[tuple[int, dict[str, Any]]]:
        queryset = queryset.select_related(
            "service", "periodic_task__interval", "periodic_task__crontab"
        ).order_by("id")
        seen: set[str] = set()
        for schedule in queryset:
            timing = _timing(schedule.periodic_task)
            if timing is None:
                continue
            key = f"schedule:{schedule.service.name}|{timing[0]}"
            if key in seen:  # a second schedule of the same timing adds nothing
                continue
            seen.add(key)
            yield (
                schedule.pk,
                {
                    "key": key,
                    "type": "schedule",
                    "service": schedule.service.name,
                    "timing": timing[1],
                    "keep_count": schedule.keep_count,
                    "keep_days": schedule.keep_days,
                    "enabled_here": schedule.enabled,
                },
            )

    def _schedules(self, queryset) -> Iterator[dict[str, Any]]:
        for _pk, row in self._schedule_rows(queryset):
            yield row

    def _runs(self, queryset, schedule_keys: dict[int, str]) -> Iterator[dict[str, Any]]:
        fields = (
            "service__name",
            "schedule_id",
            "state",
            "created_at",
            "started_at",
            "finished_at",
            "storage_key",
            "size",
            "sha256",
            "manifest",
        )
        # Only finished backups whose archive is kept: a failed or pruned run has nothing
        # to restore from.
        queryset = queryset.filter(state="succeeded", pruned_at__isnull=True).exclude(sha256="")
        for r in _values(queryset.order_by("created_at", "id"), *fields):
            yield {
                "key": f"run:{r['service__name']}|{stamp(r['created_at'])}",
                "type": "run",
                "service": r["service__name"],
                "schedule": schedule_keys.get(r["schedule_id"]),
                "state": r["state"],
                "created_at": stamp(r["created_at"]),
                "started_at": stamp(r["started_at"]),
                "finished_at": stamp(r["finished_at"]),
                "size": r["size"],
                "sha256": r["sha256"],
                "manifest": r["manifest"],
                "extension": "".join(PurePosixPath(r["storage_key"]).suffixes),
                "storage_key": r["storage_key"],
            }

    def _schedule_keys(self, queryset) -> dict[int, str]:
        return {pk: row["key"] for pk, row in self._schedule_rows(queryset)}

    def source(self, scope):
        if not scope.platform:
            return
        yield from self._services(_manager("backups_app.Service").order_by("name"))
        schedules = _manager("backups_app.BackupSchedule").all()
        yield from self._schedules(schedules)
        yield from self._runs(
            _manager("backups_app.BackupRun").all(), self._schedule_keys(schedules)
        )

    def existing(self, keys, target, rows):
        wanted = _split(keys)
        found: dict[str, dict[str, Any]] = {}
        services = _manager("backups_app.Service").filter(name__in=wanted.get("service", []))
        found.update({row["key"]: row for row in self._services(services)})
        names = {key.split("|", 1)[0] for key in wanted.get("schedule", []) + wanted.get("run", [])}
        schedules = _manager("backups_app.BackupSchedule").filter(service__name__in=names)
        schedule_keys = {}
        for pk, row in self._schedule_rows(schedules):
            schedule_keys[pk] = row["key"]
            found[row["key"]] = row
        stamps = {unstamp(key.split("|", 1)[1]) for key in wanted.get("run", [])}
        runs = _manager("backups_app.BackupRun").filter(
            service__name__in=names, created_at__in=stamps
        )
        found.update({row["key"]: row for row in self._runs(runs, schedule_keys)})
        return {key: row for key, row in found.items() if key in set(keys)}

    # -- the objects

    def blob(self, row):
        if row["type"] != "run":
            return None
        return row["sha256"], row["size"], row["storage_key"]

    def blob_target(self, row):
        if row["type"] != "run":
            return None
        return self._key_here(row), row["sha256"], row["size"]

    def _key_here(self, row: dict[str, Any]) -> str:
        # Under the services' prefix (the storage sweep's owner), named by the run's natural
        # key: never one of this instance's own archives, which are named by run id.
        when = re.sub(r"[^0-9T]", "", row["created_at"])
        return f"services/{row['service']}/imported/{when}-{row['sha256'][:16]}{row['extension']}"

    def blob_local(self, sha256):
        found = (
            _manager("backups_app.BackupRun")
            .filter(sha256=sha256, pruned_at__isnull=True)
            .exclude(storage_key="")
            .first()
        )
        return found.storage_key if found is not None else None

    # -- writing

    def write(self, creates, updates, target):
        by_type: dict[str, list[dict]] = {}
        for row in creates:
            by_type.setdefault(row["type"], []).append(row)
        service_model = _model("backups_app.Service")
        _manager("backups_app.Service").bulk_create(
            [
                service_model(
                    name=row["name"],
                    adapter=row["adapter"],
                    config=row["config"],
                    enabled=row["enabled"],
                    created_at=unstamp(row["created_at"]),
                )
                for row in by_type.get("service", [])
            ]
        )
        for row in by_type.get("schedule", []):
            self._schedule_create(row)
        self._runs_create(by_type.get("run", []), target)
        for row in updates:
            self._update(row, target)

    def _service_id(self, name: str) -> int:
        found = _manager("backups_app.Service").filter(name=name).values_list("id", flat=True)
        if not found:
            raise LookupError(f"service {name} is not on the target.")
        return found[0]

    def _schedule_id(self, key: str | None) -> int | None:
        if not key:
            return None
        service = key.split(":", 1)[1].split("|", 1)[0]
        schedules = _manager("backups_app.BackupSchedule").filter(service__name=service)
        return next((pk for pk, row in self._schedule_rows(schedules) if row["key"] == key), None)

    def _schedule_create(self, row: dict[str, Any]) -> None:
        timing = row["timing"]
        if "interval" in timing:
            made, _ = _manager("django_celery_beat.IntervalSchedule").get_or_create(
                **timing["interval"]
            )
        else:
            made, _ = _manager("django_celery_beat.CrontabSchedule").get_or_create(
                **timing["crontab"]
            )
        schedule = _model("backups_app.BackupSchedule")(
            service_id=self._service_id(row["service"]),
            keep_count=row["keep_count"],
            keep_days=row["keep_days"],
            enabled=False,
        )
        # The backups' own code writes the beat entry (the only code that does).
        import_string(settings.BUNDLE_SCHEDULE_SYNC)(schedule=schedule, timing=made)

    def _runs_create(self, rows: list[dict[str, Any]], target: Target) -> None:
        model = _model("backups_app.BackupRun")
        _manager("backups_app.BackupRun").bulk_create(
            [
                model(
                    service_id=self._service_id(row["service"]),
                    schedule_id=self._schedule_id(row["schedule"]),
                    state=row["state"],
                    phase="done",
                    created_at=unstamp(row["created_at"]),
                    started_at=unstamp(row["started_at"]),
                    finished_at=unstamp(row["finished_at"]),
                    updated_at=unstamp(row["finished_at"]) or unstamp(row["created_at"]),
                    storage_key=self._key_here(row),
                    size=row["size"],
                    sha256=row["sha256"],
                    manifest=row["manifest"],
                )
                for row in rows
            ]
        )

    def _update(self, row: dict[str, Any], target: Target) -> None:
        if row["type"] == "service":
            _manager("backups_app.Service").filter(name=row["name"]).update(
                adapter=row["adapter"], config=row["config"], enabled=row["enabled"]
            )
        elif row["type"] == "schedule":
            pk = self._schedule_id(row["key"])
            _manager("backups_app.BackupSchedule").filter(pk=pk).update(
                keep_count=row["keep_count"], keep_days=row["keep_days"]
            )
        else:
            # A run's archive is what it is (its sha256); only what names it may change.
            _manager("backups_app.BackupRun").filter(
                service__name=row["service"], created_at=unstamp(row["created_at"])
            ).update(schedule_id=self._schedule_id(row["schedule"]), manifest=row["manifest"])

    def delete(self, keys, target):
        wanted = _split(keys)
        gone = 0
        for key in wanted.get("run", []):
            service, when = key.split("|", 1)
            # The row goes; its archive becomes an orphan the storage sweep removes.
            gone += _delete_each(
                _manager("backups_app.BackupRun").filter(
                    service__name=service, created_at=unstamp(when)
                )
            )
        for key in wanted.get("schedule", []):
            pk = self._schedule_id(f"schedule:{key}")
            schedule = _manager("backups_app.BackupSchedule").filter(pk=pk).first()
            if schedule is not None:
                with transaction.atomic():
                    schedule.delete()
                    import_string(settings.BUNDLE_SCHEDULE_SYNC)(schedule=schedule, deleted=True)
                gone += 1
        gone += _delete_each(
            _manager("backups_app.Service").filter(name__in=wanted.get("service", []))
        )
        return gone


# --- ZFS replication job definitions ----------------------------------------------------------

HOST_FIELDS = ("name", "address", "port", "user", "host_key")
POLICY_FIELDS = (
    "name",
    "frequently",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "autosnap",
    "autoprune",
    "frequent_period",
    "monitor_only",
    "warn_minutes",
    "crit_minutes",
)
JOB_FIELDS = ("recursive", "every_minutes")


class ReplicationJobs(Kind):
    name = "replication_jobs"
    platform = True
    # The target's own: whether a job runs and which policy snapshots a dataset there.
    volatile = ("enabled_here", "policy_here")

    def _hosts(self, queryset):
        for r in _values(queryset.order_by("name"), *HOST_FIELDS):
            yield {"key": f"host:{r['name']}", "type": "host", **r}

    def _policies(self, queryset):
        for r in _values(queryset.order_by("name"), *POLICY_FIELDS):
            yield {"key": f"policy:{r['name']}", "type": "policy", **r}

    def _datasets(self, queryset):
        rows = queryset.order_by("host__name", "name")
        for r in _values(rows, "host__name", "name", "policy__name"):
            yield {
                "key": f"dataset:{r['host__name']}|{r['name']}",
                "type": "dataset",
                "host": r["host__name"],
                "name": r["name"],
                "policy_here": r["policy__name"],
            }

    def _jobs(self, queryset):
        fields = (
            "name",
            "source__host__name",
            "source__name",
            "target__host__name",
            "target__name",
            "enabled",
            *JOB_FIELDS,
        )
        for r in _values(queryset.order_by("name"), *fields):
            yield {
                "key": f"job:{r['name']}",
                "type": "job",
                "name": r["name"],
                "source": f"{r['source__host__name']}|{r['source__name']}",
                "target": f"{r['target__host__name']}|{r['target__name']}",
                "enabled_here": r["enabled"],
                **{f: r[f] for f in JOB_FIELDS},
            }

    def source(self, scope):
        if not scope.platform:
            return
        jobs = _manager("backups_app.ReplicationJob").all()
        ends = {pk for pair in jobs.values_list("source_id", "target_id") for pk in pair}
        datasets = _manager("backups_app.Dataset").filter(id__in=ends)
        hosts = _manager("backups_app.StorageHost").filter(id__in=datasets.values("host_id"))
        policies = _manager("backups_app.SnapshotPolicy").filter(
            id__in=datasets.exclude(policy_id=None).values("policy_id")
        )
        yield from self._hosts(hosts)
        yield from self._policies(policies)
        yield from self._datasets(datasets)
        yield from self._jobs(jobs)

    def existing(self, keys, target, rows):
        wanted = _split(keys)
        found: dict[str, dict[str, Any]] = {}
        found.update(
            {
                row["key"]: row
                for row in self._hosts(
                    _manager("backups_app.StorageHost").filter(name__in=wanted.get("host", []))
                )
            }
        )
        found.update(
            {
                row["key"]: row
                for row in self._policies(
                    _manager("backups_app.SnapshotPolicy").filter(name__in=wanted.get("policy", []))
                )
            }
        )
        pairs = [key.split("|", 1) for key in wanted.get("dataset", [])]
        hosts = {host for host, _name in pairs}
        names = {name for _host, name in pairs}
        datasets = _manager("backups_app.Dataset").filter(host__name__in=hosts, name__in=names)
        found.update({row["key"]: row for row in self._datasets(datasets)})
        job_names = wanted.get("job", [])
        jobs = _manager("backups_app.ReplicationJob").filter(name__in=job_names)
        found.update({row["key"]: row for row in self._jobs(jobs)})
        # A job here under another name pulls the same pair (one job per pair): the bundle's
        # job is in conflict with it, shown so, never a second job.
        bundled = {r["key"]: (r["source"], r["target"]) for r in rows if r.get("type") == "job"}
        for key, (source, target_) in bundled.items():
            if key in found:
                continue
            (s_host, s_name), (t_host, t_name) = source.split("|", 1), target_.split("|", 1)
            clash = _manager("backups_app.ReplicationJob").filter(
                source__host__name=s_host,
                source__name=s_name,
                target__host__name=t_host,
                target__name=t_name,
            )
            for row in self._jobs(clash):
                found[key] = {**row, "key": key}
        return {key: row for key, row in found.items() if key in set(keys)}

    def _dataset_id(self, key: str) -> int:
        host, name = key.split("|", 1)
        found = _manager("backups_app.Dataset").filter(host__name=host, name=name)
        pk = found.values_list("id", flat=True).first()
        if pk is None:
            raise LookupError(f"dataset {host}:{name} is not on the target.")
        return pk

    def write(self, creates, updates, target):
        by_type: dict[str, list[dict]] = {}
        for row in creates:
            by_type.setdefault(row["type"], []).append(row)
        host, policy = _model("backups_app.StorageHost"), _model("backups_app.SnapshotPolicy")
        dataset, job = _model("backups_app.Dataset"), _model("backups_app.ReplicationJob")
        host._default_manager.bulk_create(
            [host(**{f: row[f] for f in HOST_FIELDS}) for row in by_type.get("host", [])]
        )
        policy._default_manager.bulk_create(
            [policy(**{f: row[f] for f in POLICY_FIELDS}) for row in by_type.get("policy", [])]
        )
        host_ids = dict(
            host._default_manager.filter(
                name__in={row["host"] for row in by_type.get("dataset", [])}
            ).values_list("name", "id")
        )
        dataset._default_manager.bulk_create(
            [
                dataset(host_id=host_ids[row["host"]], name=row["name"], policy=None)
                for row in by_type.get("dataset", [])
            ]
        )
        job._default_manager.bulk_create(
            [
                job(
                    name=row["name"],
                    source_id=self._dataset_id(row["source"]),
                    target_id=self._dataset_id(row["target"]),
                    enabled=False,
                    **{f: row[f] for f in JOB_FIELDS},
                )
                for row in by_type.get("job", [])
            ]
        )
        for row in updates:
            if row["type"] == "host":
                host._default_manager.filter(name=row["name"]).update(
                    **{f: row[f] for f in HOST_FIELDS if f != "name"}
                )
            elif row["type"] == "policy":
                policy._default_manager.filter(name=row["name"]).update(
                    **{f: row[f] for f in POLICY_FIELDS if f != "name"}
                )
            elif row["type"] == "job":
                job._default_manager.filter(name=row["name"]).update(
                    source_id=self._dataset_id(row["source"]),
                    target_id=self._dataset_id(row["target"]),
                    **{f: row[f] for f in JOB_FIELDS},
                )
            # A dataset's row is its key: nothing else of it travels to update.

    def delete(self, keys, target):
        wanted = _split(keys)
        gone = _delete_each(
            _manager("backups_app.ReplicationJob").filter(name__in=wanted.get("job", []))
        )
        for key in wanted.get("dataset", []):
            host, name = key.split("|", 1)
            gone += _delete_each(_manager("backups_app.Dataset").filter(host__name=host, name=name))
        gone += _delete_each(
            _manager("backups_app.SnapshotPolicy").filter(name__in=wanted.get("policy", []))
        )
        gone += _delete_each(
            _manager("backups_app.StorageHost").filter(name__in=wanted.get("host", []))
        )
        return gone
