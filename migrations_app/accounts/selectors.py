"""Accounts: reads. The duplicate finder and its plan, the model graph a merge walks,
a run's checkpoint and failures."""

import datetime as dt
import hashlib
import json
import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Count, Q, Subquery
from django.db.models.functions import Lower, Upper

from fleet_app.errors import InvalidInput
from fleet_app.models import Membership, Quota, User, canonical_email_key

from .models import (
    DedupeJournal,
    DedupeReview,
    DedupeRun,
    LegacyRole,
)

logger = logging.getLogger(__name__)


def email_key(value: Any) -> Lower:
    """``lower()`` as the database computes it: the key of the login look-ups."""
    return Lower(value)


def accounts_with_email(email: str) -> models.QuerySet:
    """Accounts whose e-mail is this one under either rule: the same canonical key, or
    the same ``UPPER()`` (the legacy platform's ``iexact``)."""
    manager = User._base_manager
    key = canonical_email_key(email)
    if connection.vendor == "postgresql":
        return manager.filter(
            Q(email_key=key) | Q(email__iexact=email)  # iexact: UPPER(email) = UPPER(%s)
        )
    same = [pk for pk, other in _all_emails() if legacy_email_key(other) == email.upper()]
    return manager.filter(Q(email_key=key) | Q(pk__in=same))


def _all_emails() -> list[tuple[int, str]]:
    return list(User._base_manager.order_by().values_list("pk", "email"))


# --- The model graph ------------------------------------------------------------------------

# Relations that describe the account itself and stay with it when it is merged. With
# --delete, a nullable one is set to NULL (journaled), another is deleted (journaled).
ACCOUNT_BOUND = {"migrations_app.LegacyAccount.user"}

# Legacy membership roles, weakest first: a merged membership keeps the stronger role.
ROLE_RANK = {"reader": 1, "member": 1, "support": 2, "admin": 3, "owner": 4}


@dataclass(frozen=True)
class UserRelation:
    """A concrete foreign key (or one-to-one) from some model to ``User``.

    ``unique_sets`` are the uniqueness rules that include the key, as (the other fields,
    the constraint's condition or None): a row moved to the survivor must not collide
    with one the survivor already has under any of them.
    """

    model: type[models.Model]
    field: models.ForeignKey
    unique_sets: tuple[tuple[tuple[str, ...], Q | None], ...]

    @property
    def label(self) -> str:
        return f"{self.model._meta.label}.{self.field.name}"

    @property
    def short(self) -> str:
        return f"{self.model._meta.object_name}.{self.field.name}"

    @property
    def account_bound(self) -> bool:
        return self.label in ACCOUNT_BOUND


def _unique_sets(model: type[models.Model], fk: models.Field) -> tuple:
    sets: list[tuple[tuple[str, ...], Q | None]] = []
    if fk.unique:
        sets.append(((), None))
    for together in model._meta.unique_together:
        if fk.name in together:
            sets.append((tuple(name for name in together if name != fk.name), None))
    for constraint in model._meta.constraints:
        # Expression constraints are left to the database: a collision fails the group.
        if isinstance(constraint, models.UniqueConstraint) and fk.name in constraint.fields:
            others = tuple(name for name in constraint.fields if name != fk.name)
            sets.append((others, constraint.condition))
    return tuple(sets)


def user_relations() -> list[UserRelation]:
    """Every foreign key to ``User`` in every installed app, hidden ones included.

    ``User._meta.related_objects`` leaves out relations declared with ``related_name="+"``
    (``System.created_by``, every run's ``created_by``) and the auto-created many-to-many
    tables (group and permission grants); ``get_fields(include_hidden=True)`` lists them
    all, so a model added later is merged without anyone listing it here.
    """
    relations = []
    for rel in User._meta.get_fields(include_hidden=True):
        if not (rel.is_relation and rel.auto_created and not rel.concrete):
            continue
        if rel.many_to_many:
            continue  # its through table's foreign key is listed on its own
        model = rel.related_model
        if model._meta.proxy or not model._meta.managed:
            continue
        relations.append(UserRelation(model, rel.field, _unique_sets(model, rel.field)))
    return sorted(relations, key=lambda r: r.label)


# --- Duplicate finder and plan --------------------------------------------------------------


@dataclass
class Account:
    """One member of a duplicate group, as the plan shows it."""

    id: int
    email: str
    is_active: bool
    date_joined: dt.datetime
    last_login: dt.datetime | None
    legacy_was_active: bool | None = None
    flagged_duplicate: bool = False
    owns: dict[str, int] = field(default_factory=dict)

    @property
    def counts_as_active(self) -> bool:
        """Active here, or active on the legacy side and imported inactive only because
        its e-mail collided with another active account."""
        return self.is_active or bool(self.flagged_duplicate and self.legacy_was_active)


def survivor_key(account: Account) -> tuple:
    """Active before inactive, then the most recent login, then the oldest account."""
    login = account.last_login.timestamp() if account.last_login else float("-inf")
    return (not account.counts_as_active, -login, account.date_joined, account.id)


UNICODE_RULE = "unicode"
LEGACY_RULE = "legacy"
BOTH_RULES = "both"
PARTLY = "partly"
RULE_WORDS = {
    BOTH_RULES: "both rules",
    UNICODE_RULE: "Unicode caseless matching only",
    LEGACY_RULE: "the legacy platform's UPPER() only",
    PARTLY: "neither rule as a whole (each sees part of it)",
}

# What makes two e-mails one under one rule and not the other, in words, and how to see it.
_DIFFERENCES: tuple[tuple[str, Any], ...] = (
    ("final sigma", lambda text: "ς" in text and ("σ" in text or "Σ" in text)),
    ("dotless i", lambda text: "ı" in text),
    ("micro sign", lambda text: "\u00b5" in text),
    ("Kelvin sign", lambda text: "\u212a" in text),
    ("sharp s", lambda text: "ß" in text or "ẞ" in text),
    ("dotted capital I", lambda text: "İ" in text or "i\u0307" in text or "I\u0307" in text),
)


def differs_by(emails: Iterable[str]) -> str:
    """Why these e-mails are (or may be) one address, in words: "differs by final sigma"."""
    emails = list(emails)
    text = "".join(emails)
    found = [name for name, test in _DIFFERENCES if test(text)]
    # The Kelvin sign is K under NFC too: named as itself, not as a normalization.
    plain = {e.replace("\u212a", "K") for e in emails}
    if any(not unicodedata.is_normalized("NFC", e) for e in plain):
        found.append("Unicode normalization")
    if not found:
        return "differs only in case"
    return "differs by " + " and ".join(found)


def legacy_email_key(email: str) -> str:
    """The legacy rule in Python (``str.upper()``), where the database has no Unicode
    ``UPPER()`` (SQLite folds ASCII only). PostgreSQL computes it itself."""
    return email.upper()


@dataclass
class DuplicateGroup:
    """Accounts one or both rules call one address, and which one survives.

    ``rule`` is ``both`` (the Unicode rule and the legacy platform's agree: merged by a
    run), ``unicode`` or ``legacy`` (only that rule sees the whole group) or ``partly``;
    any but ``both`` waits in the review queue (``DedupeReview``) until staff approve it.
    ``differs_by`` says in words what sets the e-mails apart.
    """

    key: str
    accounts: list[Account]
    survivor_id: int | None = None
    reason: str = ""
    rule: str = BOTH_RULES
    differs_by: str = ""
    review_id: int | None = None
    approved: bool = False

    @property
    def survivor(self) -> Account:
        return next(a for a in self.accounts if a.id == self.survivor_id)

    @property
    def others(self) -> list[Account]:
        return [a for a in self.accounts if a.id != self.survivor_id]

    @property
    def ids(self) -> list[int]:
        return sorted(a.id for a in self.accounts)

    @property
    def needs_review(self) -> bool:
        """Found by one rule only and not approved yet: never merged without a decision."""
        return self.rule != BOTH_RULES and not self.approved

    @property
    def review_reason(self) -> str:
        return f"{self.differs_by}; found by {RULE_WORDS[self.rule]}"

    def moves(self) -> dict[str, int]:
        """Rows pointing at the other accounts, per relation: what moves to the survivor."""
        total: Counter[str] = Counter()
        for account in self.others:
            total.update(account.owns)
        return dict(sorted(total.items()))

    def as_plan(self) -> dict[str, Any]:
        return {
            "email": self.key,
            "survivor": self.survivor_id,
            "others": [a.id for a in self.others],
            # The e-mails the plan saw: a group whose e-mails changed since is refused.
            "emails": {str(a.id): a.email for a in self.accounts},
            "rule": self.rule,
            "review": self.review_id,
        }


def members_digest(ids: Iterable[int]) -> str:
    """The review queue's key for a group: its sorted account ids."""
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def _components(rows: list[tuple]) -> list[list[tuple]]:
    """Accounts joined when they share a canonical key or a legacy key (union-find)."""
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for position in (0, 1):  # the canonical key, then the legacy key
        first: dict[str, int] = {}
        for i, row in enumerate(rows):
            j = first.setdefault(row[position], i)
            if j != i:
                parent[root(i)] = root(j)
    members: dict[int, list[tuple]] = defaultdict(list)
    for i, row in enumerate(rows):
        members[root(i)].append(row)
    return [group for group in members.values() if len(group) > 1]


_MEMBER_FIELDS = (
    "pk",
    "email",
    "is_active",
    "date_joined",
    "last_login",
    "legacy_account__was_active",
    "legacy_account__flagged_duplicate",
)


def _member_rows() -> list[tuple]:
    """(canonical key, legacy key, *_MEMBER_FIELDS) of every account some rule pairs with
    another. PostgreSQL: one statement, each rule a hash aggregate (``GROUP BY email_key``,
    ``GROUP BY UPPER(email)``) feeding an IN; elsewhere the legacy key is computed here."""
    users = User._base_manager.order_by()
    canonical = users.values("email_key").annotate(n=Count("pk")).filter(n__gt=1)
    if connection.vendor == "postgresql":
        legacy = (
            users.annotate(legacy=Upper("email"))
            .values("legacy")
            .annotate(n=Count("pk"))
            .filter(n__gt=1)
            .values("legacy")
        )
        rows = (
            users.annotate(legacy=Upper("email"))
            .filter(Q(email_key__in=canonical.values("email_key")) | Q(legacy__in=Subquery(legacy)))
            .values_list("email_key", "legacy", *_MEMBER_FIELDS)
        )
        return list(rows)
    legacy_count = Counter(legacy_email_key(email) for _, email in _all_emails())
    keys = set(canonical.values_list("email_key", flat=True))
    return [
        (key, legacy_email_key(email), pk, email, *rest)
        for key, pk, email, *rest in users.values_list("email_key", *_MEMBER_FIELDS)
        if key in keys or legacy_count[legacy_email_key(email)] > 1
    ]


def duplicates_find(
    *, with_owned: bool = True, include_kept_apart: bool = False
) -> list[DuplicateGroup]:
    """Every group of accounts that the Unicode rule (canonical caseless keys) or the
    legacy platform's rule (``UPPER()``) calls one address, each with its rule and what
    sets its e-mails apart; groups staff kept apart are left out (unless asked for).

    Three queries whatever the number of users: the members (both rules' aggregates in
    one statement), the review queue's decisions, and with ``with_owned`` one grouped
    count per relation for "what it owns". Merged accounts carry a tombstone e-mail (or
    are deleted), so they are in no group: a re-run after ``--apply`` finds nothing.
    """
    rows = _member_rows()
    if not rows:
        return []
    found: list[DuplicateGroup] = []
    for members in _components(sorted(rows, key=lambda r: r[2])):
        canonical = {row[0] for row in members}
        legacy = {row[1] for row in members}
        rule = (
            BOTH_RULES
            if len(canonical) == 1 and len(legacy) == 1
            else UNICODE_RULE
            if len(canonical) == 1
            else LEGACY_RULE
            if len(legacy) == 1
            else PARTLY
        )
        accounts = [
            Account(pk, email, active, joined, login, was_active, bool(flagged))
            for _, _, pk, email, active, joined, login, was_active, flagged in members
        ]
        key = min(canonical) if len(canonical) == 1 or len(legacy) > 1 else min(legacy)
        found.append(
            DuplicateGroup(
                key=key,
                accounts=accounts,
                rule=rule,
                differs_by=differs_by(a.email for a in accounts),
            )
        )
    decisions = {
        members: (pk, state, survivor)
        for members, pk, state, survivor in DedupeReview.objects.filter(
            members__in=[members_digest(g.ids) for g in found]
        ).values_list("members", "pk", "state", "survivor_id")
    }
    kept = []
    for group in found:
        decision = decisions.get(members_digest(group.ids))
        if decision is not None:
            group.review_id = decision[0]
            if decision[1] == DedupeReview.State.KEPT_APART and not include_kept_apart:
                continue
            group.approved = decision[1] == DedupeReview.State.APPROVED
            if group.approved and decision[2] is not None:
                group.survivor_id = decision[2]
        kept.append(group)
    kept.sort(key=lambda g: (g.key, g.ids))
    if with_owned:
        accounts = {a.id: a for g in kept for a in g.accounts}
        for user_id, owns in relations_count(list(accounts)).items():
            accounts[user_id].owns = owns
    return kept


def relations_count(user_ids: Sequence[int], *, chunk: int = 5000) -> dict[int, dict[str, int]]:
    """Rows pointing at each of ``user_ids``, per relation: one grouped query per relation."""
    owned: dict[int, dict[str, int]] = defaultdict(dict)
    for relation in user_relations():
        attname = relation.field.attname
        for start in range(0, len(user_ids), chunk):
            part = user_ids[start : start + chunk]
            counts = (
                relation.model._base_manager.filter(**{f"{attname}__in": part})
                .order_by()
                .values_list(attname)
                .annotate(n=Count("pk"))
            )
            for user_id, n in counts:
                owned[user_id][relation.short] = n
    return owned


def dedupe_plan(
    groups: list[DuplicateGroup], *, prefer: Iterable[int] = ()
) -> list[DuplicateGroup]:
    """Pick each group's survivor: ``prefer`` first, then ``survivor_key``.

    ``InvalidInput`` when a preferred id is in no group, or two are in the same group.
    """
    preferred = set(prefer)
    placed: set[int] = set()
    for group in groups:
        chosen = [a.id for a in group.accounts if a.id in preferred]
        if len(chosen) > 1:
            raise InvalidInput(
                f"Accounts {chosen[0]} and {chosen[1]} are in the same group ({group.key}): "
                "prefer one account per group."
            )
        if chosen:
            group.survivor_id, group.reason = chosen[0], "preferred"
            placed.add(chosen[0])
            continue
        if group.approved and group.survivor_id in group.ids:
            group.reason = "chosen by staff"
            continue
        best = min(group.accounts, key=survivor_key)
        group.survivor_id = best.id
        runner_up = sorted(group.accounts, key=survivor_key)[1]
        if best.counts_as_active != runner_up.counts_as_active:
            group.reason = "active"
        elif best.last_login != runner_up.last_login:
            group.reason = "most recent login"
        else:
            group.reason = "oldest"
    unknown = sorted(preferred - placed)
    if unknown:
        raise InvalidInput(
            f"Account {unknown[0]} is not in any duplicate group; --prefer takes the id of "
            "one of the accounts listed by the dry run."
        )
    return groups


def plan_json(groups: list[DuplicateGroup]) -> list[dict[str, Any]]:
    """The groups a run merges: those both rules found, and those staff approved."""
    return [group.as_plan() for group in groups if not group.needs_review]


def plan_digest(plan: list[dict[str, Any]]) -> str:
    """A fingerprint of a plan: the admin confirms exactly the plan it showed."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def dedupe_checkpoint_rows(*, run: DedupeRun) -> list[dict[str, Any]]:
    """The run's checkpoint as one ``loaddata``-ready list (accounts before their rows)."""
    rows: list[dict[str, Any]] = []
    for checkpoint in run.checkpoints.order_by("position"):
        rows.extend(checkpoint.rows)
    user_label = User._meta.label_lower
    return [r for r in rows if r["model"] == user_label] + [
        r for r in rows if r["model"] != user_label
    ]


def dedupe_failures(run: DedupeRun) -> list[tuple[str, str]]:
    """(e-mail, error) of the groups a merge run could not merge."""
    return list(
        run.journal.filter(state=DedupeJournal.State.FAILED)
        .order_by("position")
        .values_list("email_key", "error")
    )


# --- What a merge will change, shown before --apply ----------------------------------------


def _effective(resource: str, limit: int | None) -> int:
    return limit if limit is not None else settings.FLEET_QUOTA_DEFAULTS.get(resource, 0)


def plan_changes(groups: list[DuplicateGroup]) -> dict[int, list[str]]:
    """Each group's changes in words, keyed by survivor: quota limits and usage, the
    memberships and legacy roles that join the survivor, the e-mails that are tombstoned.
    Three queries for every group together (quotas, memberships, legacy roles)."""
    owner = {a.id: g.survivor_id for g in groups for a in g.accounts}
    quotas: dict[int, dict[str, tuple[int | None, int]]] = defaultdict(dict)
    for user_id, resource, limit, usage in Quota.objects.filter(
        user_id__in=list(owner)
    ).values_list("user_id", "resource", "limit", "usage"):
        quotas[user_id][resource] = (limit, usage)
    memberships: dict[int, dict[int, str]] = defaultdict(dict)
    for user_id, org_id, role in Membership.objects.filter(user_id__in=list(owner)).values_list(
        "user_id", "organization_id", "role"
    ):
        memberships[user_id][org_id] = role
    roles: dict[int, list[str]] = defaultdict(list)
    for user_id, org_id, role in LegacyRole.objects.filter(user_id__in=list(owner)).values_list(
        "user_id", "organization_id", "role"
    ):
        roles[user_id].append(f"{role!r} in organization {org_id}")
    changes: dict[int, list[str]] = {}
    for group in groups:
        if group.survivor_id is None:
            continue
        survivor, lines = group.survivor_id, []
        others = [a.id for a in group.others]
        resources = sorted({r for pk in [survivor, *others] for r in quotas[pk]})
        for resource in resources:
            mine = quotas[survivor].get(resource, (None, 0))
            best = max(
                _effective(resource, quotas[pk].get(resource, (None, 0))[0])
                for pk in [survivor, *others]
            )
            usage = [quotas[pk].get(resource, (None, 0))[1] for pk in [survivor, *others]]
            before = _effective(resource, mine[0])
            limit = f"limit {before} → {best}" if best != before else f"limit {before} kept"
            lines.append(
                f"quota {resource}: {limit}; usage {' + '.join(map(str, usage))} = {sum(usage)}"
            )
        for other in others:
            for org_id, role in sorted(memberships[other].items()):
                have = memberships[survivor].get(org_id)
                if have is None:
                    lines.append(f"membership of organization {org_id} ({role}) joins")
                elif ROLE_RANK.get(role, 0) > ROLE_RANK.get(have, 0):
                    lines.append(f"membership of organization {org_id}: role {have} → {role}")
            if roles[other]:
                lines.append(f"legacy roles kept from {other}: {', '.join(roles[other])}")
        for account in group.others:
            lines.append(f"account {account.id} <{account.email}> deactivated, e-mail tombstoned")
        changes[survivor] = lines
    return changes


def postcheck() -> dict[str, int]:
    """Seed 001's "check again that no duplicate email conflicts remain", under both rules,
    over every account: groups of one canonical key, groups of one ``UPPER(email)``, and
    how many of all the groups still found wait for review or were kept apart by staff."""
    users = User._base_manager.order_by()
    unicode_groups = users.values("email_key").annotate(n=Count("pk")).filter(n__gt=1).count()
    if connection.vendor == "postgresql":
        legacy_groups = (
            users.annotate(legacy=Upper("email"))
            .values("legacy")
            .annotate(n=Count("pk"))
            .filter(n__gt=1)
            .count()
        )
    else:
        legacy_groups = sum(
            1 for n in Counter(legacy_email_key(e) for _, e in _all_emails()).values() if n > 1
        )
    found = (
        duplicates_find(with_owned=False, include_kept_apart=True)
        if unicode_groups or legacy_groups
        else []
    )
    kept = {
        members
        for members in DedupeReview.objects.filter(state=DedupeReview.State.KEPT_APART).values_list(
            "members", flat=True
        )
    }
    return {
        "unicode": unicode_groups,
        "legacy": legacy_groups,
        "awaiting_review": sum(
            1 for g in found if g.needs_review and members_digest(g.ids) not in kept
        ),
        "kept_apart": sum(1 for g in found if members_digest(g.ids) in kept),
    }
