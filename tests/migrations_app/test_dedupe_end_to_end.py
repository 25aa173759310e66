"""End to end on 20,000 legacy accounts with real-world duplicates mixed in: import the
legacy export, show the plan, apply it, decide the review queue, apply again; then the
seed's post-check finds no group under either rule, no usage was lost, no survivor's
limit is lower than the highest its group had and every role is still there."""

import csv
import io
import time
import uuid
from collections import defaultdict

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from fleet_app.models import Membership, Quota, User
from migrations_app.accounts import selectors, services
from migrations_app.models import DedupeJournal, DedupeReview, LegacyAccount, LegacyRole

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="the legacy rule is PostgreSQL's UPPER()"
    ),
]

USERS = 20_000
ORGS = 40
ROLES = ("member", "admin", "reader", "billing-contact", "support")
RESOURCES = (
    "cyclades.vm",
    "cyclades.cpu",
    "cyclades.ram",
    "cyclades.disk",
    "cyclades.network.private",
    "pithos+.diskspace",
)
# Pairs only one rule (or both, for σ/ς and µ) sees as one address, ten of each.
UNICODE_PAIRS = (
    ("σοφίας{n}@example.gr", "ΣΟΦΊΑΣ{n}@example.gr"),
    ("\u00b5lab{n}@example.com", "\u03bclab{n}@example.com"),
    ("yıldız{n}@example.tr", "yildiz{n}@example.tr"),
    ("İlker{n}@example.tr", "i\u0307lker{n}@example.tr"),
    ("straẞe{n}@example.de", "strasse{n}@example.de"),
    ("\u212aim{n}@example.com", "kim{n}@example.com"),
    ("caf\u00e9{n}@example.fr", "cafe\u0301{n}@example.fr"),
)


def legacy_export(folder):
    """organizations, users, quotas and usage CSV files as the legacy platform exports them:
    every 20th account has a copy in another case (every 100th, two), and ten of each
    Unicode pair; limits above and below the defaults on the duplicates."""
    orgs = [("legacy_id", "name", "kind", "parent")] + [
        (f"o{n}", f"Org {n}", "customer", "") for n in range(ORGS)
    ]
    users = [
        ("legacy_id", "uuid", "email", "is_active", "email_verified", "date_joined",
         "last_login", "memberships", "vms", "networks", "files")
    ]  # fmt: skip
    emails: list[str] = []
    n = 0
    while len(emails) < USERS - 7 * 10 * 2:
        emails.append(f"user{n}@example.com")
        if n % 20 == 0:
            emails.append(f"User{n}@Example.com")
        if n % 100 == 0:
            emails.append(f"USER{n}@EXAMPLE.COM")
        n += 1
    case_groups = (n + 19) // 20
    for first, second in UNICODE_PAIRS:
        for n in range(10):
            emails += [first.format(n=n), second.format(n=n)]
    quotas = [("user", "resource", "limit")]
    usage = [("user", "resource", "usage")]
    for i, email in enumerate(emails):
        legacy_id = f"u{i}"
        orgs_of = f"o{i % ORGS}:{ROLES[i % len(ROLES)]};o{(i * 7) % ORGS}:{ROLES[(i + 2) % 5]}"
        users.append(
            (legacy_id, str(uuid.UUID(int=i + 1)), email, "true", str(i % 2 == 0).lower(),
             f"2012-01-{1 + i % 28:02d}", f"2013-0{1 + i % 9}-01" if i % 3 else "",
             orgs_of, i % 4, i % 2, i * 3)
        )  # fmt: skip
        for k, resource in enumerate(RESOURCES):
            default = settings.FLEET_QUOTA_DEFAULTS[resource]
            if (i + k) % 5 == 0:
                quotas.append((legacy_id, resource, default * (1 + i % 3)))
            elif (i + k) % 7 == 0:
                quotas.append((legacy_id, resource, max(0, default // 10)))
            if (i + k) % 3 == 0:
                usage.append((legacy_id, resource, (i * 13 + k) % 1000))
    files = []
    for name, rows in (("orgs", orgs), ("users", users), ("quotas", quotas), ("usage", usage)):
        path = folder / f"{name}.csv"
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        files.append(path)
    return files, len(emails), case_groups + 7 * 10


def call(command, *args) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def effective(resource, limit):
    return limit if limit is not None else settings.FLEET_QUOTA_DEFAULTS[resource]


def test_twenty_thousand_accounts_import_merge_and_pass_the_post_check(tmp_path, owner):
    began = time.monotonic()
    files, count, expected_groups = legacy_export(tmp_path)
    assert USERS <= count <= USERS + 2

    call("import_legacy_accounts", *files, "--apply", "--under", owner.slug)
    imported = time.monotonic()
    assert User.objects.count() == count
    assert LegacyAccount.objects.filter(vms=3).count() == count // 4
    assert LegacyAccount.objects.exclude(uuid=None).count() == count

    dry = call("dedupe_users")
    groups = selectors.duplicates_find(with_owned=False)
    assert "Dry run: nothing was changed." in dry and "change: quota " in dry
    # What each group had, under the groups both rules (or staff) will merge.
    usage_before = defaultdict(int)
    for resource, value in Quota.objects.values_list("resource", "usage"):
        usage_before[resource] += value
    members = {a.id: g.ids for g in groups for a in g.accounts}
    stored = {
        (user_id, resource): limit
        for user_id, resource, limit in Quota.objects.filter(user_id__in=list(members)).values_list(
            "user_id", "resource", "limit"
        )
    }
    # An account with no row for a resource has the default: that counts too.
    highest = {
        (min(g.ids), resource): max(effective(resource, stored.get((u, resource))) for u in g.ids)
        for g in groups
        for resource in RESOURCES
    }
    roles_before = defaultdict(set)
    for user_id, org, role in LegacyRole.objects.filter(user_id__in=list(members)).values_list(
        "user_id", "organization_id", "role"
    ):
        roles_before[min(members[user_id])].add((org, role))
    orgs_before = defaultdict(set)
    for user_id, org in Membership.objects.filter(user_id__in=list(members)).values_list(
        "user_id", "organization_id"
    ):
        orgs_before[min(members[user_id])].add(org)

    planned = time.monotonic()
    first = call("dedupe_users", "--apply")
    print(f"\nimport {imported - began:.1f} s, plan {planned - imported:.1f} s")
    assert "Post-check: 40 duplicate group(s) under the Unicode rule, 10 under the legacy" in first
    for review in DedupeReview.objects.filter(state="pending"):
        services.dedupe_review_decide(review=review, actor=None, approve=True)
    second = call("dedupe_users", "--apply")
    applied = time.monotonic()
    print(f"apply and apply again {applied - planned:.1f} s")

    assert (
        "Post-check: 0 duplicate group(s) under the Unicode rule, 0 under the legacy rule "
        "(UPPER); 0 wait for review, 0 kept apart by staff." in second
    )
    assert selectors.postcheck()["unicode"] == selectors.postcheck()["legacy"] == 0
    merged = list(DedupeJournal.objects.filter(state="merged"))
    assert len(merged) == len(groups) == expected_groups
    assert not DedupeJournal.objects.filter(state="failed").exists()
    usage_after = defaultdict(int)
    for resource, value in Quota.objects.values_list("resource", "usage"):
        usage_after[resource] += value
    assert usage_after == usage_before
    survivors = {min([e.survivor_id, *e.merged_ids]): e.survivor_id for e in merged}
    limits = {
        (user_id, resource): effective(resource, limit)
        for user_id, resource, limit in Quota.objects.filter(
            user_id__in=list(survivors.values())
        ).values_list("user_id", "resource", "limit")
    }
    for (group, resource), limit in highest.items():
        survivor = survivors[group]
        assert limits.get((survivor, resource), effective(resource, None)) >= limit
    roles_after = defaultdict(set)
    for user_id, org, role in LegacyRole.objects.filter(
        user_id__in=list(survivors.values())
    ).values_list("user_id", "organization_id", "role"):
        roles_after[user_id].add((org, role))
    orgs_after = defaultdict(set)
    for user_id, org in Membership.objects.filter(user_id__in=list(survivors.values())).values_list(
        "user_id", "organization_id"
    ):
        orgs_after[user_id].add(org)
    for group, survivor in survivors.items():
        assert roles_after[survivor] == roles_before[group]
        assert orgs_after[survivor] == orgs_before[group]
    print(
        f"\n20k end to end: import {imported - began:.1f} s, plan and merge "
        f"{applied - imported:.1f} s, {len(merged)} groups"
    )
