"""Duplicates as Unicode and the legacy platform both see them: canonical caseless keys
(NFD, casefold, NFD) beside the legacy rule (PostgreSQL's ``UPPER()``, what Django's
``iexact`` compares); a group both rules find is merged, a group one rule only finds waits
in the review queue with its reason in words until staff decide."""

import io
import unicodedata

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from fleet_app.models import AuditEntry, User, canonical_email_key
from migrations_app.accounts import selectors
from migrations_app.models import DedupeReview
from tests.factories import UserFactory
from tests.migrations_app.accounts_fixtures import make_account

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="the legacy rule is PostgreSQL's UPPER(); SQLite's folds ASCII only",
    ),
]

# (first e-mail, second e-mail, rule, what sets them apart): each pair is one group.
CASES = {
    "final sigma": ("σοφίας@example.gr", "ΣΟΦΊΑΣ@example.gr", "both", "differs by final sigma"),
    "micro sign": (
        "\u00b5lab@example.com",
        "\u03bclab@example.com",
        "both",
        "differs by micro sign",
    ),
    "dotless i": ("yıldız@example.tr", "yildiz@example.tr", "legacy", "differs by dotless i"),
    "dotted capital I": (
        "İlker@example.tr",
        "i\u0307lker@example.tr",
        "unicode",
        "differs by dotted capital I",
    ),
    "sharp s": ("STRAẞE@example.de", "strasse@example.de", "unicode", "differs by sharp s"),
    "Kelvin sign": ("\u212aim@example.com", "kim@example.com", "unicode", "differs by Kelvin sign"),
    "composed é": (
        "caf\u00e9@example.fr",
        "cafe\u0301@example.fr",
        "unicode",
        "differs by Unicode normalization",
    ),
    "case": ("ann@example.com", "ANN@example.com", "both", "differs only in case"),
}


@pytest.fixture
def accounts():
    """One active and one inactive account for each case, and a loner."""
    made = {}
    for name, (first, second, _, _) in CASES.items():
        made[name] = (make_account(first, login=1), make_account(second, active=False))
    make_account("loner@example.com")
    return made


def test_the_canonical_key_is_nfd_casefold_nfd():
    assert canonical_email_key("\u212aim@X.com") == "kim@x.com"
    assert canonical_email_key("STRAẞE@x.de") == canonical_email_key("strasse@x.de")
    assert canonical_email_key("caf\u00e9@x") == canonical_email_key("cafe\u0301@x")
    assert canonical_email_key("caf\u00e9@x") == unicodedata.normalize("NFD", "café@x")
    assert canonical_email_key("yıldız@x") != canonical_email_key("yildiz@x")


def test_each_case_is_one_group_with_its_rule_and_reason(accounts):
    groups = selectors.duplicates_find()

    found = {frozenset(a.id for a in g.accounts): g for g in groups}
    assert len(groups) == len(CASES)
    for name, (first, second, rule, reason) in CASES.items():
        group = found[frozenset(u.pk for u in accounts[name])]
        assert {a.email for a in group.accounts} == {first, second}, name
        assert (group.rule, group.differs_by) == (rule, reason), name
        # Only a group both rules find is merged without a decision.
        assert group.needs_review is (rule != "both"), name
        if group.needs_review:
            assert group.review_reason.startswith(reason + "; found by "), name


def test_the_legacy_rule_is_what_iexact_compares(accounts):
    # The seed's own finder (email__iexact, i.e. UPPER() on both sides) agrees with the
    # legacy rule on every case.
    for name, (first, _second, rule, _) in CASES.items():
        same = User.objects.filter(email__iexact=first).filter(pk=accounts[name][1].pk).exists()
        assert same is (rule in ("both", "legacy")), name


def run(*args) -> str:
    out = io.StringIO()
    call_command("dedupe_users", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_apply_merges_what_both_rules_find_and_queues_the_rest(accounts):
    dry = run()
    assert "review: differs by dotless i; found by the legacy platform's UPPER() only" in dry
    assert not DedupeReview.objects.exists()  # a dry run writes nothing

    out = run("--apply")

    merged = {name for name, case in CASES.items() if case[2] == "both"}
    for name, (_survivor, other) in accounts.items():
        other.refresh_from_db()
        if name in merged:
            assert other.email == f"merged-{other.pk}@dedupe.invalid", name
            assert not other.is_active
        else:
            assert other.email == CASES[name][1], name  # untouched until staff decide
    queued = {review.reason: review for review in DedupeReview.objects.all()}
    assert set(queued) == {case[3] for case in CASES.values() if case[2] != "both"}
    assert queued["differs by dotless i"].rule == "legacy"
    assert queued["differs by sharp s"].state == "pending"
    assert "5 group(s) found by one rule only queued for review." in out
    assert (
        "Post-check: 4 duplicate group(s) under the Unicode rule, 1 under the legacy rule "
        "(UPPER); 5 wait for review, 0 kept apart by staff." in out
    )
    # Queued once: a second run adds nothing.
    run("--apply")
    assert DedupeReview.objects.count() == 5


def test_staff_decide_in_the_admin_and_the_next_run_follows(accounts, client, owner):
    root = UserFactory(email="root@example.com", organization=owner, is_superuser=True)
    run("--apply")
    reviews = {r.reason: r for r in DedupeReview.objects.all()}
    approve = [reviews[r].pk for r in ("differs by dotless i", "differs by sharp s")]
    apart = [r.pk for reason, r in reviews.items() if r.pk not in approve]
    client.force_login(root)
    url = reverse("admin:migrations_app_dedupereview_changelist")

    client.post(url, {"action": "approve_merge", "_selected_action": approve})
    client.post(url, {"action": "keep_apart", "_selected_action": apart})
    out = run("--apply")

    yildiz = accounts["dotless i"][1]
    yildiz.refresh_from_db()
    assert yildiz.email == f"merged-{yildiz.pk}@dedupe.invalid" and not yildiz.is_active
    kelvin = accounts["Kelvin sign"][1]
    kelvin.refresh_from_db()
    assert kelvin.email == CASES["Kelvin sign"][1]  # kept apart: as it was
    assert DedupeReview.objects.get(pk=approve[0]).state == "merged"
    assert DedupeReview.objects.get(pk=apart[0]).decided_by == "root@example.com"
    assert AuditEntry.objects.filter(action="dedupe.review_kept_apart").count() == 3
    assert "wait for review, 3 kept apart by staff" in out
    assert "0 wait for review" in out
    # Kept apart groups are not listed again.
    assert len(selectors.duplicates_find()) == 0


def test_no_two_active_accounts_share_a_canonical_key():
    make_account("\u212aim@example.com")

    with pytest.raises(IntegrityError), transaction.atomic():
        make_account("kim@example.com")
    make_account("kim@example.com", active=False)
