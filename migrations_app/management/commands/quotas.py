"""Compare, re-sync or reset stored quota usage against the real usage (seed 001, steps 8-9).

``--verify`` lists every account (organization or user) whose stored usage differs from
the real usage; ``--sync`` rewrites the differing ones; ``--reset-usage`` recomputes every
stored usage. ``--background`` starts the same work as a Celery job (a quota run row).
"""

import csv
import json

from django.core.management.base import CommandError

from fleet_app.errors import FleetError
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand

from ...accounts import quotas as account_quotas
from ...models import QuotaRun

MODES = {
    "verify": QuotaRun.Mode.VERIFY,
    "sync": QuotaRun.Mode.SYNC,
    "reset_usage": QuotaRun.Mode.RESET,
}


class Command(CutoverCommand):
    help = "Verify, sync or reset stored quota usage against the real usage."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--verify", action="store_true", help="List differing accounts.")
        mode.add_argument("--sync", action="store_true", help="Fix the differing accounts.")
        mode.add_argument(
            "--reset-usage", action="store_true", help="Recompute every stored usage."
        )
        parser.add_argument("--json", action="store_true", help="Report as JSON on stdout.")
        parser.add_argument("--csv", action="store_true", help="Report as CSV on stdout.")
        parser.add_argument(
            "--background",
            action="store_true",
            help="Start a Celery job (a quota run) instead, and print its id.",
        )

    def handle(self, *args, **options):
        if options["json"] and options["csv"]:
            raise CommandError("Choose one report format: --json or --csv.")
        mode = next(MODES[name] for name in MODES if options[name])
        if options["background"]:
            try:
                run = account_quotas.quota_run_start(actor=None, mode=mode)
            except FleetError as error:
                raise CommandError(error.message) from None
            self.stdout.write(f"Quota run {run.pk} ({mode}) queued; the admin shows its result.")
            return
        try:
            with named_lock("quotas"):
                if mode == QuotaRun.Mode.VERIFY:
                    differences, updated, created = account_quotas.quotas_verify(), 0, 0
                    unverified = account_quotas.quotas_unverified()
                else:
                    report = account_quotas.quotas_sync(reset=mode == QuotaRun.Mode.RESET)
                    differences, updated, created = (
                        report.differences,
                        report.updated,
                        report.created,
                    )
                    unverified = report.unverified
        except LockHeld:
            raise CommandError("Another quotas command or job is running; try later.") from None
        rows = [d.as_dict() for d in differences]
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "mode": mode,
                        "differences": rows,
                        "updated": updated,
                        "created": created,
                        "unverified": unverified,
                    },
                    indent=2,
                    ensure_ascii=False,
                )
            )
            return
        if options["csv"]:
            fields = ["scope", "account_id", "account", "resource", "stored", "real", "limit"]
            writer = csv.DictWriter(self.stdout, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            return
        for d in differences:
            self.stdout.write(
                f"{d.scope} {d.account_id} ({d.account}): {d.resource} stored {d.stored}, "
                f"real {d.real} (limit {d.limit})"
            )
        for item in unverified:
            self.stdout.write(
                f"unverified: {item['resource']} of {item['accounts']} {item['scope']}(s), "
                f"{item['usage']} stored: no service reports it; kept as imported"
            )
        if mode == QuotaRun.Mode.VERIFY:
            if differences:
                self.stdout.write(
                    f"{len(differences)} usage(s) differ. Fix them with: manage.py quotas --sync"
                )
            else:
                self.stdout.write("Every stored usage matches the real usage.")
        else:
            self.stdout.write(
                f"{len(differences)} usage(s) differed; {updated} quota row(s) rewritten, "
                f"{created} created."
            )
