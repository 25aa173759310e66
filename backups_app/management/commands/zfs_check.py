"""Nagios-style ZFS check, like ``sanoid --monitor-snapshots``: snapshot freshness per
dataset and replication health per job, from what the runs recorded.

Prints a summary line first, then one line per problem (``--verbose``: per check), and
exits 0 (OK), 1 (WARN) or 2 (CRIT). The same states are the Prometheus metrics
``cutover_zfs_dataset_state`` and ``cutover_zfs_job_state``.
"""

import sys

from fleet_app.management.base import CutoverCommand

from ...zfs import selectors


class Command(CutoverCommand):
    help = "Check snapshot freshness and replication health; exit 0/1/2 (OK/WARN/CRIT)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--verbose-checks",
            "--all",
            action="store_true",
            help="Print every check, not only the problems.",
        )

    def handle(self, *args, **options):
        checks = selectors.all_checks()
        state = selectors.worst(checks)
        problems = [c for c in checks if c.state != selectors.OK]
        if not checks:
            summary = "no dataset with a snapshot policy and no replication job"
        elif not problems:
            summary = f"all {len(checks)} checks fine"
        else:
            summary = ", ".join(
                f"{sum(c.state == s for c in checks)} {selectors.LABELS[s]}"
                for s in (selectors.CRIT, selectors.WARN, selectors.OK)
            )
        self.stdout.write(f"{selectors.LABELS[state]}: ZFS {summary}")
        shown = checks if options["verbose_checks"] else problems
        for check in sorted(shown, key=lambda c: (-c.state, c.kind, c.name)):
            self.stdout.write(check.line())
        self.stdout.flush()
        sys.exit(state)
