"""Preview what the ZFS jobs would do now: snapshots to create and destroy per dataset
(on which host), and each replication's plan with the commands it would run.

Reads only; nothing is created, destroyed or sent.

    manage.py zfs_plan                      # every dataset with a policy, every job
    manage.py zfs_plan --dataset 3 --job nightly-offsite
"""

from django.core.management.base import CommandError

from fleet_app.errors import FleetError
from fleet_app.management.base import CutoverCommand

from ...zfs import hosts
from ...zfs.models import Dataset, ReplicationJob
from ...zfs.runner import ZfsCommandError


class Command(CutoverCommand):
    help = "Preview snapshots to create/destroy and replication plans (reads only)."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", action="append", default=[], help="Dataset id.")
        parser.add_argument("--job", action="append", default=[], help="Job name or id.")

    def handle(self, *args, **options):
        datasets = Dataset.objects.filter(policy__isnull=False).select_related("host", "policy")
        jobs = ReplicationJob.objects.select_related("source__host", "target__host")
        if options["dataset"] or options["job"]:
            datasets = datasets.filter(pk__in=options["dataset"]) if options["dataset"] else []
            wanted = options["job"]
            jobs = [j for j in jobs if j.name in wanted or str(j.pk) in wanted] if wanted else []
            if not datasets and not jobs:
                raise CommandError("No dataset with a policy or job matches what was asked.")
        for dataset in datasets:
            self._dataset(dataset)
        for job in jobs:
            self._job(job)

    def _dataset(self, dataset):
        self.stdout.write(
            f"snapshots of {dataset.name} on host {dataset.host.name} (policy {dataset.policy}):"
        )
        try:
            plan = hosts.snapshot_plan_preview(dataset=dataset)
        except (ZfsCommandError, FleetError) as exc:
            self.stdout.write(f"  cannot plan: {exc}")
            return
        for name in plan.create:
            self.stdout.write(f"  create   {name}")
        for snap in plan.destroy:
            self.stdout.write(f"  destroy  {snap.name}")
        for name, why in plan.spared.items():
            self.stdout.write(f"  keep     {name} ({why})")
        if plan.empty:
            self.stdout.write("  nothing to do")

    def _job(self, job):
        self.stdout.write(f"replication {job.name}: {job.source} → {job.target}")
        try:
            preview = hosts.replication_plan_preview(job=job)
        except ZfsCommandError as exc:
            self.stdout.write(f"  cannot plan: {exc}")
            return
        plan = preview.plan
        self.stdout.write(
            f"  plan: {plan.kind}" + (f" from {plan.common.short}" if plan.common else "")
        )
        for _step, send, receive in preview.steps:
            self.stdout.write(f"  on {job.source.host.name}: zfs {' '.join(send)}")
            self.stdout.write(f"  on {job.target.host.name}: zfs {' '.join(receive)}")
        if plan.divergence is not None:
            report = plan.divergence
            self.stdout.write(f"  diverged: {report.reason}")
            self.stdout.write(
                f"  last common: {report.last_common or 'none'}; "
                f"source only: {', '.join(report.source_only) or '-'}; "
                f"target only: {', '.join(report.target_only) or '-'}"
            )
            for fix in report.fixes:
                self.stdout.write(f"  fix (needs approval): {fix.describe()}")
