"""A replication run over one dataset or a whole tree: one SSH connection per host (the
runners multiplex every command over one master), one ``zfs get -r`` per side for the
whole tree, and the sends of datasets at one depth pipelined side by side.

Each dataset's outcome — state, lag, bytes, error, divergence — is written to its own
``ReplicatedDataset`` row; the run row carries the totals and every error in full. A run
started for one child (after a fix) touches that child only.
"""

import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from fleet_app.runs import run_finish, run_log, run_progress
from fleet_app.services import audit_record, audit_snapshot

from . import pipeline
from .divergence import Known, Listed
from .hosts import assessment_save, endpoints_open, host_user
from .models import Dataset, DivergenceReport, ReplicatedDataset, ReplicationJob, ReplicationRun
from .parsers import Snapshot, parse_get
from .pipeline import Endpoint
from .planning import Divergence
from .runner import ZfsCommandError

HEARTBEAT_SECONDS = 10.0


@dataclass
class Tree:
    """Datasets (parents first) and their snapshots, from one listing."""

    datasets: list[str]
    snapshots: dict[str, list[Snapshot]]
    written: dict[str, int]

    def children(self, dataset: str) -> list[str]:
        depth = dataset.count("/") + 1
        return [d for d in self.datasets if d.startswith(dataset + "/") and d.count("/") == depth]


def tree_list(endpoint: Endpoint, *, recursive: bool, written: bool = False) -> Tree:
    """One ``zfs get`` for the dataset and (``recursive``) everything below it; an empty
    tree when the dataset does not exist."""
    props = ["guid", "creation", "userrefs", *(["written"] if written else [])]
    depth = [] if recursive else ["-d", "1"]
    args = ["get", "-H", "-p", "-r", *depth, "-o", "name,property,value", ",".join(props)]
    result = endpoint.runner.zfs([*args, endpoint.dataset], check=False)
    if not result.ok:
        if "does not exist" in result.stderr:
            return Tree([], {}, {})
        raise ZfsCommandError(
            endpoint.runner.label, ["zfs", *args], result.returncode, result.stderr
        )
    rows = parse_get(result.stdout)
    datasets = [n for n in rows if "@" not in n]
    snapshots: dict[str, list[Snapshot]] = {d: [] for d in datasets}
    for name, values in rows.items():
        if "@" in name:
            owner = name.split("@", 1)[0]
            listed = snapshots.setdefault(owner, [])
            listed.append(
                Snapshot(
                    name,
                    int(values.get("guid", "0") or 0),
                    int(values.get("creation", "0") or 0),
                    int(values["userrefs"]) if values.get("userrefs", "-").isdigit() else 0,
                    len(listed),
                )
            )
    written_bytes = {
        d: int(rows[d]["written"]) for d in datasets if rows[d].get("written", "-").isdigit()
    }
    return Tree(datasets, snapshots, written_bytes)


@dataclass
class DatasetResult:
    state: ReplicatedDataset
    outcome: pipeline.Outcome | None = None
    error: str = ""
    source_newest: Snapshot | None = None  # as listed, kept when the send fails


def _target_of(job: ReplicationJob, source_dataset: str) -> str:
    return job.target.name + source_dataset[len(job.source.name) :]


def _inherited(job: ReplicationJob, name: str, tree: Tree | None) -> dict:
    """For a job that ran before datasets had rows: what the job recorded on its own
    dataset (the snapshot last received and held, its GUID from the source's listing)."""
    if tree is None or name != job.source.name or not job.last_snapshot:
        return {}
    short = job.last_snapshot
    guid = next((s.guid for s in tree.snapshots.get(name, []) if s.short == short), None)
    return {
        "last_snapshot": short,
        "held_snapshot": short,
        "last_snapshot_guid": str(guid) if guid else "",
        "last_snapshot_at": job.last_snapshot_at,
    }


def dataset_states(
    job: ReplicationJob, names: list[str], tree: Tree | None = None
) -> dict[str, ReplicatedDataset]:
    """The job's rows for ``names``, created when missing (one query each way)."""
    rows = {r.source_dataset: r for r in job.datasets.filter(source_dataset__in=names)}
    missing = [
        ReplicatedDataset(
            job=job,
            source_dataset=n,
            target_dataset=_target_of(job, n),
            source_name=n,
            **_inherited(job, n, tree),
        )
        for n in names
        if n not in rows
    ]
    ReplicatedDataset.objects.bulk_create(missing, ignore_conflicts=True)
    if missing:
        rows = {r.source_dataset: r for r in job.datasets.filter(source_dataset__in=names)}
    return rows


def _heartbeat(run: ReplicationRun) -> Callable[[], None]:
    """Touch the run row every few seconds from a thread, so a dead worker shows."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(HEARTBEAT_SECONDS):
                ReplicationRun.objects.filter(pk=run.pk).update(updated_at=timezone.now())
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"zfs-run-{run.pk}-heartbeat", daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(timeout=HEARTBEAT_SECONDS + 5)

    return end


def run_execute(run: ReplicationRun) -> str:
    """Work one claimed run (see the module's docstring); returns its final state."""
    job = ReplicationJob.objects.select_related("source__host", "target__host").get(pk=run.job_id)
    tree_run = job.recursive and run.source_dataset == job.source.name
    end_heartbeat = _heartbeat(run)
    try:
        with endpoints_open(
            (job.source.host, run.source_dataset), (job.target.host, run.target_dataset)
        ) as (src, tgt):
            run_progress(run, phase="preflight")
            assessment = pipeline.preflight(src, tgt, user=host_user(job.source.host))
            assessment_save(job, assessment, src)
            ReplicationRun.objects.filter(pk=run.pk).update(guarantee=assessment.guarantee)
            if assessment.refused:
                run_progress(run, phase="refused")
                return run_finish(run, error="Refused: " + "; ".join(assessment.refusals))
            run_progress(run, phase="listing")
            src_tree = tree_list(src, recursive=tree_run)
            tgt_tree = tree_list(
                tgt, recursive=tree_run, written=bool(tgt.pool and tgt.pool.list_parsable)
            )
            names = _names(job, run, src_tree, tree_run)
            states = dataset_states(job, names, src_tree)
            run_progress(run, phase="sending", total=len(names))
            results = _replicate_all(job, src, tgt, src_tree, tgt_tree, names, states, assessment)
    except (ZfsCommandError, pipeline.ReplicationError, pipeline.PermissionRefused) as exc:
        return run_finish(run, error=str(exc))
    finally:
        end_heartbeat()
    return _record(run, job, results, single=not tree_run)


def _names(job: ReplicationJob, run: ReplicationRun, tree: Tree, tree_run: bool) -> list[str]:
    """The datasets this run replicates: the run's own, or (a tree run) every dataset of
    the tree plus those the job knows that left it (reported, not forgotten). A dataset
    new in the tree that carries a known dataset's last snapshot is that one, moved: it is
    reported with the known one, not sent as new."""
    if not tree_run:
        return [run.source_dataset]
    rows = list(job.datasets.all())
    known = {r.source_dataset for r in rows}
    present = set(tree.datasets)
    followed = {r.source_name for r in rows if r.source_name != r.source_dataset}
    left = {r.last_snapshot_guid for r in rows if r.source_dataset not in present}
    names = [run.source_dataset] if run.source_dataset not in present else []
    for name in tree.datasets:
        if name in followed and name not in known:
            continue
        if name not in known and any(str(s.guid) in left for s in tree.snapshots.get(name, [])):
            continue
        names.append(name)
    return names + sorted(known - present - set(names))


def _replicate_all(job, src, tgt, src_tree, tgt_tree, names, states, assessment):
    """Depth by depth (a child's full receive needs its parent), each depth's datasets side
    by side over the shared connections."""
    now = dt.datetime.now(dt.UTC)

    def one(name: str) -> DatasetResult:
        state = states[name]
        source = Endpoint(src.runner, state.source_name, src.pool)
        target = Endpoint(tgt.runner, state.target_dataset, tgt.pool)
        listed = None
        if state.source_name == name:
            tname = state.target_dataset
            listed = Listed(
                source=src_tree.snapshots.get(name) if name in src_tree.snapshots else None,
                target=tgt_tree.snapshots.get(tname) if tname in tgt_tree.snapshots else None,
                target_children=tgt_tree.children(tname),
                target_written=tgt_tree.written.get(tname),
            )
        known = Known(
            guid=int(state.last_snapshot_guid) if state.last_snapshot_guid else None,
            snapshot=state.last_snapshot,
            held=state.held_snapshot,
        )
        try:
            outcome = pipeline.replicate(
                source,
                target,
                hold_tag=job.hold_tag,
                now=now,
                assessment=assessment,
                listed=listed,
                known=known,
            )
            return DatasetResult(state, outcome)
        except (ZfsCommandError, pipeline.ReplicationError) as exc:
            newest = listed.source[-1] if listed is not None and listed.source else None
            return DatasetResult(state, error=str(exc), source_newest=newest)
        finally:
            close_old_connections()

    results: list[DatasetResult] = []
    levels: dict[int, list[str]] = {}
    for name in names:
        levels.setdefault(name.count("/"), []).append(name)
    workers = max(1, int(getattr(settings, "ZFS_PARALLEL_SENDS", 4)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zfs-send") as pool:
        for depth in sorted(levels):
            results += list(pool.map(one, levels[depth]))
    return results


def _snapshot_time(snapshot: Snapshot | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(snapshot.creation, dt.UTC) if snapshot else None


def _record_dataset(run, job, result: DatasetResult) -> tuple[str, str]:
    """Write one dataset's outcome; (its state, the line for the run's log)."""
    state, outcome, now = result.state, result.outcome, timezone.now()
    fields: dict = {"last_run_id": run.pk, "updated_at": now}
    S = ReplicatedDataset.State
    if outcome is None:
        fields.update(state=S.FAILED, message=result.error, last_bytes=0)
        if result.source_newest is not None:
            fields.update(
                source_newest=result.source_newest.short,
                source_newest_at=_snapshot_time(result.source_newest),
            )
        line = f"{state.source_dataset}: failed:\n{result.error}"
    else:
        plan = outcome.plan
        newest = plan.source_newest
        if newest is not None:
            fields.update(source_newest=newest.short, source_newest_at=_snapshot_time(newest))
        fields["last_bytes"] = outcome.bytes
        if plan.kind == "diverged" and plan.divergence is not None:
            found = plan.divergence
            report = divergence_record(run, job, state, found)
            fields.update(
                state=S.STOPPED if found.kind == "target_moved" else S.DIVERGED,
                message=f"{found.reason} (report {report.pk})",
            )
            line = f"{state.source_dataset}: diverged ({found.kind}), report {report.pk}"
        elif plan.kind == "nothing_to_send":
            fields.update(state=S.FAILED, message="the source has no snapshot yet")
            line = f"{state.source_dataset}: the source has no snapshot yet"
        else:
            fields.update(
                state=S.OK,
                message="",
                last_success_at=now,
                total_bytes=state.total_bytes + outcome.bytes,
            )
            if newest is not None:
                fields.update(
                    last_snapshot=newest.short,
                    last_snapshot_guid=str(newest.guid),
                    last_snapshot_at=_snapshot_time(newest),
                )
            if outcome.held:
                fields["held_snapshot"] = outcome.held
            steps = "; ".join(
                f"{s.step.kind} {s.step.base or ''} → {s.step.snapshot}: {s.bytes} bytes"
                for s in outcome.steps
            )
            line = f"{state.source_dataset}: {plan.kind}" + (f" ({steps})" if steps else "")
    ReplicatedDataset.objects.filter(pk=state.pk).update(**fields)
    return fields["state"], line


def _record(run: ReplicationRun, job: ReplicationJob, results: list[DatasetResult], *, single):
    S = ReplicatedDataset.State
    states = []
    for result in results:
        state, line = _record_dataset(run, job, result)
        states.append(state)
        run_log(run, line)
    root = next((r for r in results if r.state.source_dataset == run.source_dataset), None)
    plan = root.outcome.plan if root is not None and root.outcome is not None else None
    total = sum(r.outcome.bytes for r in results if r.outcome is not None)
    seconds = sum(r.outcome.seconds for r in results if r.outcome is not None)
    ReplicationRun.objects.filter(pk=run.pk).update(
        plan_kind=plan.kind if plan else "",
        from_snapshot=plan.common.short if plan and plan.common else "",
        to_snapshot=plan.to_snapshot.split("@", 1)[1] if plan and plan.to_snapshot else "",
        bytes=total,
        duration_seconds=seconds,
    )
    if plan is not None and run.source_dataset == job.source.name and plan.source_newest:
        Dataset.objects.filter(pk=job.source_id).update(
            newest_snapshot=plan.source_newest.short,
            newest_snapshot_at=_snapshot_time(plan.source_newest),
            listed_at=timezone.now(),
        )
    ok = sum(1 for s in states if s == S.OK)
    bad = [r for r, s in zip(results, states, strict=True) if s != S.OK]
    run_progress(run, done=ok, failed=len(bad), phase="done" if not bad else None)
    if all(s == S.OK for s in job.datasets.values_list("state", flat=True)):
        newest = root.outcome.plan.source_newest if root and root.outcome else None
        ReplicationJob.objects.filter(pk=job.pk).update(
            last_success_at=timezone.now(),
            last_snapshot=newest.short if newest else "",
            last_snapshot_at=_snapshot_time(newest),
        )
    if not bad:
        return run_finish(run)
    errors = "\n".join(_error_text(r) for r in bad)
    if single or not ok:
        if single and plan is not None and plan.kind == "diverged":
            run_progress(run, phase="diverged")
        elif single and plan is not None and plan.kind == "nothing_to_send":
            run_progress(run, phase="nothing to send")
        return run_finish(run, error=errors)
    state = run_finish(run)
    ReplicationRun.objects.filter(pk=run.pk).update(error=errors[:10000])
    return state


def _error_text(result: DatasetResult) -> str:
    name = result.state.source_dataset
    if result.outcome is None:
        return f"{name}: {result.error}"
    plan = result.outcome.plan
    if plan.kind == "nothing_to_send":
        return f"The source {name} has no snapshot yet."
    report = DivergenceReport.objects.filter(
        job_id=result.state.job_id, source_dataset=name, status=DivergenceReport.Status.OPEN
    ).first()
    number = report.pk if report else "?"
    reason = plan.divergence.reason if plan.divergence else plan.kind
    return (
        f"Diverged: {reason}. Report {number} awaits a staff decision; "
        f"nothing on the target was changed ({name})."
    )


def divergence_record(run, job, state: ReplicatedDataset, divergence: Divergence):
    """Open (or update) the one undecided report of (job, dataset)."""
    fields = {
        "run": run,
        "target_dataset": state.target_dataset,
        "kind": divergence.kind,
        "reason": divergence.reason,
        "last_common": divergence.last_common or "",
        "source_only": divergence.source_only,
        "target_only": divergence.target_only,
        "name_clashes": divergence.name_clashes,
        "source_moved_to": divergence.source_moved_to or "",
        "fixes": [
            {
                **asdict(f),
                "describe": f.describe(),
                "commands": [" ".join(["zfs", *c]) for c in pipeline.fix_commands(f)],
            }
            for f in divergence.fixes
        ],
    }
    with transaction.atomic():
        existing = (
            DivergenceReport.objects.select_for_update()
            .filter(
                job=job,
                source_dataset=state.source_dataset,
                status=DivergenceReport.Status.OPEN,
            )
            .first()
        )
        if existing is not None:
            for name, value in fields.items():
                setattr(existing, name, value)
            existing.save(update_fields=list(fields))
            return existing
        report = DivergenceReport.objects.create(
            job=job, source_dataset=state.source_dataset, **fields
        )
        audit_record(
            actor=None, action="zfs.divergence.report", obj=report, after=audit_snapshot(report)
        )
        return report
