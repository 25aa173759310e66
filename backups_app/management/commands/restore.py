"""Restore a backup run: ``manage.py restore RUN_ID [--target key=value …] [--apply]``.

Dry run by default: prints the plan (what would be written where). ``--apply`` starts
the restore run and follows it to the end. Without ``--target`` the backup goes back to
where it came from. Targets: ``database=NAME`` (PostgreSQL), ``path=/folder``
(directory), ``alias=NAME`` (Cutover data, a database alias).
"""

import json

from django.core.management.base import CommandError

from fleet_app.errors import FleetError
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.runs import run_wait

from ...service_backups.models import BackupRun
from ...service_backups.restore import restore_run_start


def _target(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    target = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise CommandError(f"--target takes key=value (e.g. database=restored), not {pair!r}.")
        target[key] = value
    return target


class Command(CutoverCommand):
    help = "Restore a backup run to its original target or another one. Dry run unless --apply."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int, help="The backup run to restore.")
        parser.add_argument(
            "--target",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Where to restore (database=NAME, path=/folder, alias=NAME); repeatable.",
        )
        parser.add_argument("--apply", action="store_true", help="Carry out the restore.")

    def handle(self, *args, **options):
        backup = BackupRun.objects.select_related("service").filter(pk=options["run_id"]).first()
        if backup is None:
            raise CommandError(f"There is no backup run {options['run_id']}.")
        target = _target(options["target"])
        try:
            with named_lock(f"restore-command:{backup.service.name}"):
                run = restore_run_start(
                    actor=None, backup=backup, target=target, dry_run=not options["apply"]
                )
                self.stdout.write(json.dumps(run.plan, indent=2, sort_keys=True, default=str))
                if not options["apply"]:
                    self.stdout.write("Dry run: nothing was written. Re-run with --apply.")
                    return
                self.stdout.write(f"Restore run {run.pk} started.")
                run = run_wait(run, on_phase=self._phase)
        except LockHeld:
            raise CommandError(
                f"Another restore of {backup.service.name} is being started; try again."
            ) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        if run.state != "succeeded":
            raise CommandError(f"Restore run {run.pk} {run.state}: {run.error or 'verify failed'}")
        self.stdout.write(f"Restore run {run.pk} succeeded and verified.")

    def _phase(self, run) -> None:
        self.stderr.write(f"  {run.state}: {run.phase}")
