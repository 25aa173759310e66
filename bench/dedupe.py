"""User dedupe benchmark: the duplicate finder against seed 001's, and merge throughput.

Creates a fresh PostgreSQL database and migrates it, then:

1. 20,000 users (1% duplicates in another case, plus 140 accounts in pairs of the Unicode
   cases: ς/σ, µ/μ, ı, İ, ẞ, the Kelvin sign, composed/decomposed é): times
   ``duplicates_find`` with both rules (canonical keys and ``UPPER()``) and, on the same
   rows, seed 001's finder (``filter(email__iexact=…).count()`` for every user) as the
   legacy platform ran it (no index on ``UPPER(email)``) and as it would run here (with
   ``fleet_user_email_upper_idx``); prints the ratios (target ≥ 1,000× against the
   seed's). The seed's scan is timed on ``--seed-sample`` users and scaled to all;
2. optionally (``--large N``) N users: times the finder, with and without the
   per-relation "what it owns" counts of the dry run;
3. merge throughput: gives the accounts of the first groups a few rows of every kind
   (audit entries, a token, colliding memberships, quota rows, group grants), merges
   them as ``dedupe_users --apply`` does (checkpoint first) and undoes the run; prints
   groups per second (target ≥ 500 groups/s).

It prints figures and never passes or fails. The load average is printed at the start
and the end: on a shared machine, re-run when it is above ~1.5.

    .venv/bin/python bench/dedupe.py             # --help for the options
"""

import argparse
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from common import database_drop, database_recreate, django_setup, run, scratch_parser, step

BIN = Path(sys.executable).parent
TARGET_RATIO = 1000
TARGET_LARGE_SECONDS = 10
TARGET_MERGE = 500
UNICODE_PAIRS = (
    ("σοφίας{n}@example.gr", "ΣΟΦΊΑΣ{n}@example.gr"),
    ("\u00b5lab{n}@example.com", "\u03bclab{n}@example.com"),
    ("yıldız{n}@example.tr", "yildiz{n}@example.tr"),
    ("İlker{n}@example.tr", "i\u0307lker{n}@example.tr"),
    ("straẞe{n}@example.de", "strasse{n}@example.de"),
    ("\u212aim{n}@example.com", "kim{n}@example.com"),
    ("caf\u00e9{n}@example.fr", "cafe\u0301{n}@example.fr"),
)


def main() -> None:
    options = parse_args()
    started = time.monotonic()
    print(
        f"dedupe benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"load average {load()}"
    )
    database_recreate(options.server, options.database)
    os.environ["DATABASE_URL"] = f"{options.server.rstrip('/')}/{options.database}"
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    figures: dict = {}
    try:
        step("migrate", lambda: run([BIN / "python", "manage.py", "migrate", "--noinput"]))
        django_setup()
        figures["small"] = small(options)
        if options.large:
            figures["large"] = large(options)
        figures["merge"] = merge(options)
    finally:
        if not options.keep:
            database_drop(options.server, options.database)
    report(figures, options)
    print(f"\nload average at the end {load()}; total run time {time.monotonic() - started:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = scratch_parser(__doc__, "cutover_bench_dedupe")
    parser.add_argument("--small", type=int, default=20_000, help="Users for the comparison.")
    parser.add_argument("--large", type=int, default=0, help="Users (0: skip).")
    parser.add_argument(
        "--seed-sample", type=int, default=2000, help="Users the seed's scan is timed on."
    )
    parser.add_argument("--every", type=int, default=100, help="One duplicate every N users.")
    parser.add_argument("--groups", type=int, default=1000, help="Groups to merge.")
    parser.add_argument("--repeat", type=int, default=3, help="Finder timings (best kept).")
    return parser.parse_args()


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def best(action, repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        value = action()
        times.append(time.perf_counter() - began)
    return min(times), value


# --- database -------------------------------------------------------------------------------


def users_generate(count: int, every: int) -> int:
    """``count`` users in one INSERT … SELECT generate_series: every ``every``-th one is an
    inactive duplicate of the one before it, in another case. Returns the groups made."""
    from django.db import connection

    from fleet_app.models import User, canonical_email_key

    table = connection.ops.quote_name(User._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} RESTART IDENTITY CASCADE")  # noqa: S608 - model name
        # ASCII addresses: the canonical key is lower(email) (casefold = lower, NFD = itself).
        cursor.execute(
            f"INSERT INTO {table} (password, last_login, is_superuser, email, email_key, "  # noqa: S608 - model name, values bound
            "email_key_duplicate_allowed, full_name, organization_id, is_staff, is_active, "
            "date_joined) "
            "SELECT '!', CASE WHEN i %% 7 = 0 THEN NULL "
            "  ELSE now() - (i %% 997) * interval '1 hour' END, false, e, lower(e), false, "
            "  '', NULL, false, i %% %s <> 0, now() - i * interval '1 minute' "
            "FROM (SELECT i, CASE WHEN i %% %s = 0 THEN 'User' || (i - 1) || '@Example.COM' "
            "  ELSE 'user' || i || '@example.com' END AS e "
            "  FROM generate_series(1, %s) AS i) AS s",
            [every, every, count - 140],
        )
    unicode_users = [
        User(email=email, email_key=canonical_email_key(email), is_active=k == 0, password="!")  # noqa: S106 - unusable
        for first, second in UNICODE_PAIRS
        for n in range(10)
        for k, email in enumerate((first.format(n=n), second.format(n=n)))
    ]
    User.objects.bulk_create(unicode_users)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")  # noqa: S608 - model name
    return (count - 140) // every + 70


# --- 1. the finder against the seed's ---------------------------------------------------------


def seed_finder(sample: int | None = None) -> list[str]:
    """Seed 001's find_astakos_users_with_conflicting_emails.py, on this model (on the
    first ``sample`` users only, when given)."""
    from fleet_app.models import User as A

    def user_filter(user):
        return A.objects.filter(email__iexact=user.email).count() > 1

    all_users = list(A.objects.order_by("pk"))[:sample]
    userlist = [
        str(u.pk) + ": " + str(u.email) + " (" + str(u.is_active) + ", " + str(u.date_joined) + ")"
        for u in filter(user_filter, all_users)
    ]
    return userlist


def seed_timed(sample: int, *, indexed: bool) -> float:
    """Seconds of the seed's scan on ``sample`` users; without ``indexed``, on the table
    as the legacy platform had it (no index on UPPER(email)), dropped inside a
    transaction that is rolled back."""
    from django.db import connection, transaction

    with transaction.atomic():
        if not indexed:
            with connection.cursor() as cursor:
                cursor.execute("DROP INDEX fleet_user_email_upper_idx")
        began = time.perf_counter()
        seed_finder(sample)
        elapsed = time.perf_counter() - began
        transaction.set_rollback(True)
    return elapsed


def small(options) -> dict:
    from fleet_app.models import User
    from migrations_app.accounts import selectors

    print(f"\n1. finder on {options.small:,} users, both rules, beside seed 001's")
    groups = step("generate users", lambda: users_generate(options.small, options.every))
    ours, found = best(lambda: selectors.duplicates_find(with_owned=False), options.repeat)
    rules = Counter(g.rule for g in found)
    print(
        f"  duplicates_find: {ours * 1000:.1f} ms, {len(found)} groups "
        f"({dict(sorted(rules.items()))}) (best of {options.repeat})"
    )
    total = User.objects.count()
    sample = min(options.seed_sample, total)
    scale = total / sample
    theirs = seed_timed(sample, indexed=False) * scale
    indexed = seed_timed(sample, indexed=True) * scale
    print(
        f"  seed 001's per-user iexact scan, timed on {sample:,} users and scaled to "
        f"{total:,}: {theirs:.1f} s as the legacy platform ran it (no UPPER index), "
        f"{indexed:.1f} s with fleet_user_email_upper_idx"
    )
    listed = len(seed_finder(None)) if sample == total else None
    assert len(found) == groups, (len(found), groups)
    if listed is not None:
        legacy = sum(len(g.accounts) for g in found if g.rule in ("both", "legacy"))
        assert listed == legacy, "the seed's finder and the legacy rule disagree"
    return {"users": total, "groups": groups, "ours": ours, "seed": theirs, "indexed": indexed}


# --- 2. the finder on a million ---------------------------------------------------------------


def large(options) -> dict:
    from migrations_app.accounts import selectors

    print(f"\n2. finder on {options.large:,} users")
    groups = step("generate users", lambda: users_generate(options.large, options.every))
    first, found = best(lambda: selectors.duplicates_find(with_owned=False), 1)
    warm, _ = best(lambda: selectors.duplicates_find(with_owned=False), options.repeat)
    owned, _ = best(lambda: selectors.duplicates_find(with_owned=True), 1)
    print(
        f"  duplicates_find: first {first:.2f} s, then {warm:.2f} s (best of {options.repeat}); "
        f"{len(found):,} groups; with the dry run's owned counts {owned:.2f} s"
    )
    assert len(found) == groups
    return {"users": options.large, "groups": groups, "first": first, "warm": warm, "owned": owned}


# --- 3. merge throughput ----------------------------------------------------------------------


def relations_give(groups) -> int:
    """A few rows of every kind for each account of ``groups``: 2 audit entries, a quota
    row, a membership and a group grant each (colliding with the survivor's), and a token
    for the others."""
    from django.contrib.auth.models import Group
    from knox.models import AuthToken, get_digest_token
    from knox.settings import CONSTANTS

    from fleet_app import services
    from fleet_app.models import AuditEntry, Membership, Quota, User

    owner = services.organization_create(actor=None, name="bench-owner", kind="owner")
    reader, _ = Group.objects.get_or_create(name="reader")
    through = User.groups.through
    rows = 0
    audit, quotas, memberships, grants, tokens = [], [], [], [], []
    for group in groups:
        for account in group.accounts:
            audit += [AuditEntry(actor_id=account.id, action="bench.touch") for _ in range(2)]
            quotas.append(Quota(user_id=account.id, resource="systems", usage=1))
            memberships.append(Membership(user_id=account.id, organization=owner))
            grants.append(through(user_id=account.id, group_id=reader.pk))
            if account.id != group.survivor_id:
                digest, token = get_digest_token()
                tokens.append(
                    AuthToken(
                        user_id=account.id,
                        digest=digest,
                        token_key=token[: CONSTANTS.TOKEN_KEY_LENGTH],
                    )
                )
    for model, objs in (
        (AuditEntry, audit),
        (Quota, quotas),
        (Membership, memberships),
        (through, grants),
        (AuthToken, tokens),
    ):
        model.objects.bulk_create(objs, batch_size=5000)
        rows += len(objs)
    return rows


def merge(options) -> dict:
    from migrations_app.accounts import selectors, services

    print(f"\n3. merge throughput, {options.groups:,} groups")
    if not options.large:
        users_generate(max(options.small, options.groups * options.every), options.every)
    found = selectors.dedupe_plan(selectors.duplicates_find(with_owned=False))
    groups = [g for g in found if not g.needs_review][: options.groups]
    rows = step("give the accounts related rows", lambda: relations_give(groups))
    checkpoint_time = []
    write = services.dedupe_checkpoint_write

    def timed_checkpoint(**kwargs):
        began = time.perf_counter()
        value = write(**kwargs)
        checkpoint_time.append(time.perf_counter() - began)
        return value

    services.dedupe_checkpoint_write = timed_checkpoint
    run = services.dedupe_run_create(actor=None, plan=selectors.plan_json(groups))
    began = time.perf_counter()
    run = services.dedupe_run_process(run=run)
    merged = time.perf_counter() - began
    assert (run.state, run.done) == ("succeeded", len(groups)), (run.state, run.error, run.log)
    undo = services.dedupe_undo_create(actor=None, run=run)
    began = time.perf_counter()
    undo = services.dedupe_run_process(run=undo)
    undone = time.perf_counter() - began
    assert (undo.state, undo.done) == ("succeeded", len(groups)), (undo.state, undo.error)
    services.dedupe_checkpoint_write = write
    checkpoint = checkpoint_time[0]
    print(
        f"  {rows:,} related rows; checkpoint {checkpoint:.2f} s; merge {merged:.2f} s in all "
        f"({len(groups) / merged:.0f} groups/s, {len(groups) / (merged - checkpoint):.0f} "
        f"groups/s without the checkpoint); undo {undone:.2f} s ({len(groups) / undone:.0f} "
        "groups/s)"
    )
    return {
        "groups": len(groups),
        "rows": rows,
        "checkpoint": checkpoint,
        "merged": merged,
        "undone": undone,
    }


def report(figures: dict, options) -> None:
    print("\nsummary")
    if small := figures.get("small"):
        ratio = small["seed"] / small["ours"]
        print(
            f"  finder, {small['users']:,} users, both rules: {small['ours'] * 1000:.1f} ms "
            f"against seed 001's {small['seed']:.1f} s: {ratio:,.0f}× faster "
            f"(target ≥ {TARGET_RATIO}×); against the seed's scan on an UPPER(email) index "
            f"({small['indexed']:.1f} s): {small['indexed'] / small['ours']:,.0f}×"
        )
    if large := figures.get("large"):
        print(
            f"  finder, {large['users']:,} users ({large['groups']:,} groups): "
            f"{large['first']:.2f} s cold, {large['warm']:.2f} s warm "
            f"(target ≤ {TARGET_LARGE_SECONDS} s); with owned counts {large['owned']:.2f} s"
        )
    if merged := figures.get("merge"):
        print(
            f"  merge (target ≥ {TARGET_MERGE} groups/s): "
            f"{merged['groups'] / merged['merged']:.0f} groups/s with the checkpoint "
            f"({merged['groups'] / (merged['merged'] - merged['checkpoint']):.0f} without), "
            f"undo {merged['groups'] / merged['undone']:.0f} groups/s"
        )


if __name__ == "__main__":
    main()
