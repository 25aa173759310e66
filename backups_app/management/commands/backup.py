"""Back up a service now: ``manage.py backup SERVICE``.

Creates a backup run that a Celery worker carries out (in-process when no broker is
configured) and follows it to the end unless ``--no-wait``.
"""

from django.core.management.base import CommandError

from fleet_app.errors import FleetError
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.runs import run_wait

from ...service_backups.services import backup_run_start, service_by_name


class Command(CutoverCommand):
    help = "Back up one service (a run row worked by a Celery worker)."

    def add_arguments(self, parser):
        parser.add_argument("service", help="The service's name (see the admin's Services).")
        parser.add_argument(
            "--no-wait", action="store_true", help="Start the run and return at once."
        )

    def handle(self, *args, **options):
        try:
            service = service_by_name(options["service"])
            # Two commands backing up the same service at once would only waste a dump.
            with named_lock(f"backup-command:{service.name}"):
                run = backup_run_start(actor=None, service=service)
                self.stdout.write(f"Backup run {run.pk} of {service.name} started.")
                if not options["no_wait"]:
                    run = run_wait(run, on_phase=self._phase)
        except LockHeld:
            raise CommandError(
                f"Another backup of {options['service']} is being started; try again."
            ) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        if options["no_wait"]:
            return
        if run.state != "succeeded":
            raise CommandError(f"Backup run {run.pk} {run.state}: {run.error}")
        self.stdout.write(f"Backup run {run.pk} succeeded: {run.size} bytes, sha256 {run.sha256}.")

    def _phase(self, run) -> None:
        self.stderr.write(f"  {run.state}: {run.phase}")
