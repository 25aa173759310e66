"""Find, and with ``--apply`` remove, stored objects no row points at and uploads left
unfinished: ``manage.py storage_sweep [--apply] [--grace-hours N]``.

Beat runs the same sweep every six hours; the command is for an operator who wants to
see what it would remove first, or to reclaim space now.
"""

import datetime as dt

from django.conf import settings
from django.core.management.base import CommandError

from fleet_app.management.base import CutoverCommand

from ...storage import StorageError
from ...sweep import storage_sweep


class Command(CutoverCommand):
    help = "List (or with --apply, delete) orphan backup objects and unfinished uploads."

    def add_arguments(self, parser):
        parser.add_argument("--apply", action="store_true", help="Delete what is found.")
        parser.add_argument(
            "--grace-hours",
            type=int,
            default=None,
            help=f"Only objects older than this (default {settings.BACKUP_SWEEP_GRACE_HOURS}).",
        )

    def handle(self, *args, **options):
        hours = options["grace_hours"]
        if hours is not None and hours < 1:
            raise CommandError(
                "--grace-hours must be at least 1: a younger object may be an "
                "upload whose row is being written."
            )
        grace = dt.timedelta(hours=hours) if hours is not None else None
        try:
            result = storage_sweep(apply=options["apply"], grace=grace)
        except StorageError as error:
            raise CommandError(f"The backup storage could not be listed: {error}") from None
        verb = "Deleted" if options["apply"] else "Would delete"
        for key in result.orphans:
            if key not in result.failed:
                self.stdout.write(f"{verb} orphan object {key}")
        for name in result.unfinished:
            self.stdout.write(
                f"{'Aborted' if options['apply'] else 'Would abort'} unfinished upload {name}"
            )
        for key in result.failed:
            self.stderr.write(f"Could not delete {key} (see the log); the next sweep retries.")
        self.stdout.write(
            f"{len(result.orphans)} orphan object(s), {len(result.unfinished)} unfinished "
            f"upload(s){'' if options['apply'] else '; nothing changed (use --apply)'}."
        )
        if result.failed:
            raise CommandError(f"{len(result.failed)} object(s) could not be deleted.")
