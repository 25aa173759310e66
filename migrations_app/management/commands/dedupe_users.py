"""Find accounts that are one address under Unicode caseless matching or under the
legacy platform's ``UPPER()``, and merge each group into one account.

Dry run by default: prints every group (its rule, what sets its e-mails apart, each
account's id, active flag, join date, last login and what it owns) and the plan (which
account survives, what moves to it, each quota, membership and role change). Groups both
rules find are merged by ``--apply`` (after a checkpoint of the affected rows), then the
post-check runs; a group one rule only finds goes to the review queue (admin → Dedupe
reviews) and is merged only once staff approve it. ``--undo RUN_ID`` replays the journal
backwards, ``--restore RUN_ID`` writes the checkpoint back, ``--resume RUN_ID`` carries
on a run whose worker died.
"""

import json
from typing import Any

from django.core.management.base import CommandError

from fleet_app import csv_safe
from fleet_app.errors import FleetError
from fleet_app.locks import LockHeld, named_lock
from fleet_app.management.base import CutoverCommand
from fleet_app.progress import ProgressBar

from ...accounts import selectors, services
from ...models import DedupeJournal, DedupeRun

LOCKED = (
    "Another dedupe is running (a dedupe_users command or a dedupe job started from the "
    "admin); try again when it has finished."
)


def _stamp(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "never"


def _owns(owns: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(owns.items())) or "nothing"


class Command(CutoverCommand):
    help = (
        "Merge accounts whose e-mails differ only in case. Dry run unless --apply; "
        "--undo RUN_ID restores a merge run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--apply", action="store_true", help="Merge the groups.")
        parser.add_argument(
            "--delete",
            action="store_true",
            help="Delete the merged accounts instead of deactivating them (undo re-creates them).",
        )
        parser.add_argument(
            "--prefer",
            action="append",
            type=int,
            default=[],
            metavar="ID",
            help="Keep this account in its group, whatever the rule says (repeatable).",
        )
        parser.add_argument("--json", action="store_true", help="Report as JSON on stdout.")
        parser.add_argument("--csv", action="store_true", help="Report as CSV on stdout.")
        parser.add_argument(
            "--undo", type=int, metavar="RUN_ID", help="Restore what merge run RUN_ID changed."
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="With --undo: restore fields even where they changed again since the merge.",
        )
        parser.add_argument(
            "--restore",
            type=int,
            metavar="RUN_ID",
            help="Write the checkpoint of merge run RUN_ID back (even where e-mails collide).",
        )
        parser.add_argument(
            "--resume",
            type=int,
            metavar="RUN_ID",
            help="Carry on merge run RUN_ID, whose worker died, from where it stopped.",
        )
        parser.add_argument(
            "--checkpoint",
            type=int,
            metavar="RUN_ID",
            help="Print the checkpoint of run RUN_ID (loaddata format) and stop.",
        )

    def handle(self, *args, **options):
        self._check_arguments(options)
        if options["checkpoint"] is not None:
            run = self._run(options["checkpoint"])
            self.stdout.write(json.dumps(selectors.dedupe_checkpoint_rows(run=run), indent=1))
            return
        if options["undo"] is not None:
            self._undo(self._run(options["undo"]), force=options["force"])
            return
        if options["restore"] is not None:
            self._restore(self._run(options["restore"]))
            return
        if options["resume"] is not None:
            self._resume(self._run(options["resume"]))
            return
        try:
            groups = selectors.dedupe_plan(selectors.duplicates_find(), prefer=options["prefer"])
        except FleetError as error:
            raise CommandError(error.message) from None
        changes = selectors.plan_changes([g for g in groups if not g.needs_review])
        run, queued, check = None, 0, None
        if options["apply"] and groups:
            queued = services.dedupe_reviews_queue(groups=groups, actor=None)
            if selectors.plan_json(groups):
                run = self._apply(groups, delete=options["delete"], prefer=options["prefer"])
        if options["apply"]:
            check = selectors.postcheck()
        if options["json"]:
            self._json(groups, run, changes, check)
        elif options["csv"]:
            self._csv(groups, run)
        else:
            self._text(groups, run, changes, queued)
            if check is not None:
                self._postcheck(check)

    def _check_arguments(self, options: dict[str, Any]) -> None:
        if options["json"] and options["csv"]:
            raise CommandError("Choose one report format: --json or --csv.")
        if options["undo"] is not None and (
            options["apply"] or options["delete"] or options["prefer"]
        ):
            raise CommandError("--undo restores a run: it takes no --apply, --delete or --prefer.")
        if options["force"] and options["undo"] is None:
            raise CommandError("--force only applies to --undo.")
        if options["delete"] and not options["apply"]:
            raise CommandError(
                "--delete deletes the merged accounts and needs --apply; a dry run changes nothing."
            )
        if options["checkpoint"] is not None and any(
            options[name] for name in ("apply", "delete", "prefer", "undo")
        ):
            raise CommandError("--checkpoint only prints a run's checkpoint; give it alone.")
        recovery = [name for name in ("undo", "restore", "resume") if options[name] is not None]
        if len(recovery) > 1:
            raise CommandError("Give one of --undo, --restore and --resume.")
        if (
            recovery
            and recovery != ["undo"]
            and (options["apply"] or options["delete"] or options["prefer"] or options["force"])
        ):
            raise CommandError(f"--{recovery[0]} takes no --apply, --delete, --prefer or --force.")

    def _run(self, run_id: int) -> DedupeRun:
        run = DedupeRun.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"Dedupe run {run_id} does not exist.")
        return run

    def _apply(self, groups, *, delete: bool, prefer: list[int]) -> DedupeRun:
        progress = ProgressBar(self.stderr, len(groups), "groups")
        try:
            with named_lock("dedupe_users"):
                run = services.dedupe_run_create(
                    actor=None,
                    plan=selectors.plan_json(groups),
                    delete=delete,
                    prefer=prefer,
                )
                run = services.dedupe_run_process(run=run, progress=progress.step)
        except LockHeld:
            raise CommandError(LOCKED) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        finally:
            progress.close()
        return run

    def _restore(self, run: DedupeRun) -> None:
        try:
            with named_lock("dedupe_users"):
                result = services.dedupe_restore(run=run, actor=None)
        except LockHeld:
            raise CommandError(LOCKED) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        rows = sum(result["rows"].values())
        self.stdout.write(f"Run {run.pk}'s checkpoint restored: {rows} row(s) written back.")
        for item in result["kept_inactive"]:
            self.stdout.write(
                f"  account {item['id']} <{item['email']}> kept inactive: active account "
                f"{item['held_by']} holds that e-mail now"
            )

    def _resume(self, run: DedupeRun) -> None:
        progress = ProgressBar(self.stderr, max(0, run.total - run.cursor), "groups")
        try:
            with named_lock("dedupe_users"):
                run = services.dedupe_run_resume(run=run, actor=None)
                run = services.dedupe_run_process(run=run, progress=progress.step)
        except LockHeld:
            raise CommandError(LOCKED) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        finally:
            progress.close()
        self.stdout.write(
            f"Run {run.pk} resumed: {run.done} group(s) merged, {run.failed} failed "
            f"({run.state}). Undo with: manage.py dedupe_users --undo {run.pk}"
        )

    def _postcheck(self, check: dict[str, int]) -> None:
        self.stdout.write(
            f"Post-check: {check['unicode']} duplicate group(s) under the Unicode rule, "
            f"{check['legacy']} under the legacy rule (UPPER); {check['awaiting_review']} "
            f"wait for review, {check['kept_apart']} kept apart by staff."
        )

    def _undo(self, run: DedupeRun, *, force: bool) -> None:
        try:
            with named_lock("dedupe_users"):
                undo = services.dedupe_undo_create(actor=None, run=run, force=force)
                progress = ProgressBar(self.stderr, undo.total, "groups")
                undo = services.dedupe_run_process(run=undo, progress=progress.step)
                progress.close()
        except LockHeld:
            raise CommandError(LOCKED) from None
        except FleetError as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            f"Run {undo.pk} undid run {run.pk}: {undo.done} group(s) restored, "
            f"{undo.failed} failed ({undo.state})."
        )
        if undo.failed:
            for line in undo.log.splitlines():
                if "failed:" in line:
                    self.stderr.write(self.style.ERROR(line))
            self.stderr.write(
                f"Fix what stops them and run --undo {run.pk} again (the restored groups "
                "stay restored), or add --force."
            )

    # --- Reports --------------------------------------------------------------------------

    def _statuses(self, run: DedupeRun | None) -> dict[int, tuple[str, str]]:
        if run is None:
            return {}
        return {
            survivor: (state, error)
            for survivor, state, error in run.journal.values_list("survivor_id", "state", "error")
        }

    def _text(self, groups, run: DedupeRun | None, changes, queued: int) -> None:
        if not groups:
            self.stdout.write("No duplicate accounts: every e-mail is used once, in any case.")
            return
        accounts_n = sum(len(g.accounts) for g in groups)
        self.stdout.write(f"{len(groups)} duplicate group(s) of {accounts_n} account(s).")
        statuses = self._statuses(run)
        for _position, group in enumerate(groups):
            self.stdout.write("")
            self.stdout.write(
                self.style.MIGRATE_HEADING(
                    f"{group.key} — keep {group.survivor_id} ({group.reason}); "
                    f"found by {selectors.RULE_WORDS[group.rule]}; {group.differs_by}"
                )
            )
            if group.needs_review:
                self.stdout.write(
                    self.style.WARNING(
                        f"  review: {group.review_reason}; not merged without a staff decision "
                        "(admin → Dedupe reviews)"
                    )
                )
            for account in [group.survivor, *group.others]:
                action = "keep " if account.id == group.survivor_id else "merge"
                state = "active" if account.is_active else "inactive"
                if account.legacy_was_active is not None and account.flagged_duplicate:
                    legacy = "active" if account.legacy_was_active else "inactive"
                    state += f" (legacy {legacy}, flagged)"
                self.stdout.write(
                    f"  {action} {account.id:>8}  {account.email}  {state}  "
                    f"joined {_stamp(account.date_joined)}  last login "
                    f"{_stamp(account.last_login)}  owns {_owns(account.owns)}"
                )
            self.stdout.write(f"  moves to {group.survivor_id}: {_owns(group.moves())}")
            for line in changes.get(group.survivor_id, []) if not group.needs_review else []:
                self.stdout.write(f"  change: {line}")
            if group.survivor_id in statuses:
                state, error = statuses[group.survivor_id]
                line = f"  {state}" + (f": {error}" if error else "")
                style = self.style.ERROR if state == DedupeJournal.State.FAILED else str
                self.stdout.write(style(line))
        self.stdout.write("")
        review = sum(1 for g in groups if g.needs_review)
        if review:
            verb = "queued for review" if queued or run is not None else "need a staff decision"
            self.stdout.write(f"{review} group(s) found by one rule only {verb}.")
        if run is None:
            if not queued:
                self.stdout.write(
                    "Dry run: nothing was changed. Re-run with --apply to merge (the others "
                    "are deactivated and their e-mails tombstoned; --delete deletes them), "
                    "--prefer ID to keep another account."
                )
            return
        fate = "deleted" if run.delete_duplicates else "deactivated"
        self.stdout.write(
            f"Run {run.pk}: {run.done} group(s) merged, {run.failed} failed ({run.state}); "
            f"the merged accounts were {fate}. Undo with: manage.py dedupe_users --undo {run.pk}"
        )
        for email, error in selectors.dedupe_failures(run):
            self.stderr.write(self.style.ERROR(f"group {email} failed: {error}"))

    def _json(self, groups, run: DedupeRun | None, changes, check) -> None:
        statuses = self._statuses(run)
        report = {
            "groups": [
                {
                    "email": g.key,
                    "survivor": g.survivor_id,
                    "reason": g.reason,
                    "rule": g.rule,
                    "differs_by": g.differs_by,
                    "review": g.needs_review,
                    "changes": [] if g.needs_review else changes.get(g.survivor_id, []),
                    "others": [a.id for a in g.others],
                    "moves": g.moves(),
                    "status": statuses.get(g.survivor_id, (None, ""))[0],
                    "error": statuses.get(g.survivor_id, (None, ""))[1],
                    "accounts": [
                        {
                            "id": a.id,
                            "email": a.email,
                            "is_active": a.is_active,
                            "legacy_active": a.legacy_was_active,
                            "flagged_duplicate": a.flagged_duplicate,
                            "date_joined": a.date_joined.isoformat(),
                            "last_login": a.last_login.isoformat() if a.last_login else None,
                            "owns": a.owns,
                        }
                        for a in g.accounts
                    ],
                }
                for position, g in enumerate(groups)
            ],
            "run": None
            if run is None
            else {
                "id": run.pk,
                "state": run.state,
                "groups_found": run.groups_found,
                "merged": run.groups_merged,
                "failed": run.failed,
                "deleted": run.delete_duplicates,
            },
            "postcheck": check,
        }
        self.stdout.write(json.dumps(report, indent=2, ensure_ascii=False))

    def _csv(self, groups, run: DedupeRun | None) -> None:
        statuses = self._statuses(run)
        # Staff open this in a spreadsheet: e-mails and names are whatever users typed.
        writer = csv_safe.writer(self.stdout, lineterminator="\n")
        writer.writerow(
            [
                "email_key",
                "account_id",
                "email",
                "action",
                "reason",
                "is_active",
                "legacy_active",
                "flagged_duplicate",
                "date_joined",
                "last_login",
                "owns",
                "status",
            ]
        )
        for _position, group in enumerate(groups):
            status = statuses.get(group.survivor_id, ("", ""))[0]
            for a in group.accounts:
                keep = a.id == group.survivor_id
                writer.writerow(
                    [
                        group.key,
                        a.id,
                        a.email,
                        "keep" if keep else "merge",
                        group.reason if keep else "",
                        a.is_active,
                        "" if a.legacy_was_active is None else a.legacy_was_active,
                        a.flagged_duplicate,
                        a.date_joined.isoformat(),
                        a.last_login.isoformat() if a.last_login else "",
                        ";".join(f"{k}={v}" for k, v in sorted(a.owns.items())),
                        status,
                    ]
                )
