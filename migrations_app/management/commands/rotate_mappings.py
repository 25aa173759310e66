"""Re-key the native credentials of many legacy mappings at once (a bulk rotation run).

Only mappings whose credentials are not in use are touched: not confirmed, not released,
on a system neither suspended nor deleted. Dry run by default: it prints how many
mappings match and the first few. ``--apply`` creates the run, which a Celery worker
carries out chunk by chunk (in-process when no broker is configured); ``--wait`` follows
it to the end.
"""

import datetime as dt
import time

from django.core.management.base import CommandError
from django.utils import timezone

from fleet_app.errors import InvalidInput
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.progress import ProgressBar
from fleet_app.runs import RunState

from ...cutover.rotation import (
    CHUNK_SIZE_MAX,
    rotation_candidates,
    rotation_filters_clean,
    rotation_run_start,
)
from ...models import RotationRun

SAMPLE = 10
POLL_SECONDS = 0.5
# An unfinished run that has written progress this recently is still being worked on; an
# older one is presumed stuck (its worker gone) and no longer blocks a new run.
BUSY_MINUTES = 10


def _chunk_size(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= CHUNK_SIZE_MAX:
        raise CommandError(f"--chunk-size must be a whole number from 1 to {CHUNK_SIZE_MAX}.")
    return int(value)


class Command(CutoverCommand):
    help = "Bulk-rotate the credentials of legacy mappings not yet in use. Dry run unless --apply."

    def add_arguments(self, parser):
        parser.add_argument(
            "--organization", metavar="ID", help="Only systems of this organization and below."
        )
        parser.add_argument(
            "--legacy-prefix", metavar="P", help="Only legacy_system_ids starting with P."
        )
        parser.add_argument(
            "--only-never-rotated",
            action="store_true",
            help="Skip mappings that were already rotated once.",
        )
        parser.add_argument(
            "--created-before",
            metavar="DATE",
            help="Only mappings imported before this day (YYYY-MM-DD, UTC).",
        )
        parser.add_argument("--chunk-size", default="1000", metavar="N")
        parser.add_argument("--apply", action="store_true", help="Start the rotation run.")
        parser.add_argument(
            "--wait", action="store_true", help="With --apply: follow the run until it ends."
        )

    def handle(self, *args, **options):
        chunk_size = _chunk_size(str(options["chunk_size"]))
        if options["wait"] and not options["apply"]:
            raise CommandError("--wait only makes sense with --apply.")
        filters = {
            "organization": options["organization"],
            "legacy_prefix": options["legacy_prefix"],
            "only_never_rotated": options["only_never_rotated"],
            "created_before": options["created_before"],
        }
        try:
            filters = rotation_filters_clean(filters)
        except InvalidInput as error:
            raise CommandError(error.message) from None
        if not options["apply"]:
            self._dry_run(filters)
            return
        try:
            with named_lock("rotate_mappings"):
                self._refuse_if_busy()
                try:
                    run = rotation_run_start(actor=None, filters=filters, chunk_size=chunk_size)
                except InvalidInput as error:
                    raise CommandError(error.message) from None
                self.stdout.write(
                    f"Started rotation run {run.pk} over {run.total} mapping(s), "
                    f"chunks of {chunk_size}."
                )
                if options["wait"]:
                    self._wait(run)
        except LockHeld:
            raise CommandError("Another rotate_mappings --apply is running; try later.") from None

    def _dry_run(self, filters: dict) -> None:
        candidates = rotation_candidates(filters)
        count = candidates.count()
        sample = list(candidates.order_by("pk").values_list("legacy_system_id", flat=True)[:SAMPLE])
        self.stdout.write(f"{count} mapping(s) would be rotated.")
        if sample:
            more = " …" if count > len(sample) else ""
            self.stdout.write(f"First: {', '.join(sample)}{more}")
        self.stdout.write("Dry run: nothing was written. Re-run with --apply to start the run.")

    def _refuse_if_busy(self) -> None:
        recent = timezone.now() - dt.timedelta(minutes=BUSY_MINUTES)
        busy = (
            RotationRun.objects.filter(
                state__in=(RunState.PENDING, RunState.RUNNING), updated_at__gte=recent
            )
            .order_by("pk")
            .first()
        )
        if busy is not None:
            raise CommandError(
                f"Rotation run {busy.pk} is still {busy.state} ({busy.done}/{busy.total}); "
                "wait for it to finish before starting another."
            )

    def _wait(self, run: RotationRun) -> None:
        bar = ProgressBar(self.stderr, 0, "mappings rotated")
        try:
            while True:
                run.refresh_from_db()
                bar.show(run.done, run.total)
                if run.is_finished:
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            bar.close()
            self.stdout.write(f"Stopped watching; run {run.pk} goes on in the background.")
            return
        bar.close()
        self.stdout.write(f"Run {run.pk} {run.state}: rotated {run.done} of {run.total}.")
        if run.error:
            raise CommandError(f"Run {run.pk} failed: {run.error}")
