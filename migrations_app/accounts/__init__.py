"""Accounts: legacy import, user dedupe under two rules with recoverable merges, quotas.

Cutover compares e-mails by Unicode canonical caseless matching (``User.email_key`` =
NFD(casefold(NFD(email))), stored, indexed, unique among active accounts); the legacy
platform compared ``UPPER()`` (Django's ``iexact``). Seed 001's procedure found duplicates
with one query per user and deleted them for good after a "yes/no"; here:

- ``selectors.duplicates_find`` groups accounts by both rules in one statement (each a
  hash aggregate) and joins them; a group both rules find is merged, a group one rule only
  finds waits in the review queue (``DedupeReview``) with its reason in words;
  ``selectors.dedupe_plan`` picks survivors, ``selectors.plan_changes`` says what each
  merge changes, ``selectors.postcheck`` is the seed's "check again";
- ``merge.groups_merge`` moves everything that points at the other accounts to the
  survivor, a chunk of groups per transaction with set-based statements, found through
  the model graph (``selectors.user_relations``), keeps the highest effective quota limit,
  sums usage, unions memberships (legacy role texts move with ``LegacyRole``), tombstones
  the merged e-mails, and journals every change per group (``DedupeJournal``), from which
  ``merge.users_merge_undo`` restores the accounts and their relations exactly;
- ``checkpoint``: the affected rows backed up before the first change, and written back by
  ``dedupe_checkpoint_restore`` even where the e-mail constraints would refuse ``loaddata``;
- a dedupe job (``DedupeRun``, ``services``) writes a heartbeat; one whose worker died is
  seen dead within a minute and can be resumed, undone or restored;
- ``quotas``: ``quotas_verify`` compares stored usage with the real usage
  (``fleet_app.quotas``), ``quotas_sync`` rewrites the differing ones; a resource no
  service reports is left as imported and listed as unverified;
- ``legacy_import`` and ``import_rows``: the legacy platform's organizations, users
  (uuids, verified flags, VMs, networks and files), quotas and usage, a batch at a time.

Imports run one way: models ← selectors ← merge ← checkpoint, import_rows ← services,
quotas, legacy_import; tasks, admin and commands call them.
"""
