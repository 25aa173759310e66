"""Accounts: legacy import, case-insensitive user dedupe with reversible merges, quotas.

The legacy platform compared e-mails case-sensitively; Cutover does not (an active account's
``lower(email)`` is unique). Seed 001's procedure found duplicates with one query per user
and deleted them for good after a "yes/no"; here:

- ``selectors.duplicates_find`` groups accounts by ``lower(email)`` in the database (one
  query for the groups, one for their members), ``selectors.dedupe_plan`` picks each
  group's survivor;
- ``merge.users_merge`` moves everything that points at the other accounts to the
  survivor, one transaction per group, found through the model graph
  (``selectors.user_relations``), and writes a journal of every change (``DedupeJournal``)
  from which ``merge.users_merge_undo`` restores the accounts and their relations exactly;
- a dedupe job (``DedupeRun``, ``services``) writes a checkpoint (``DedupeCheckpoint``: the
  affected rows in ``dumpdata`` format) before its first change, then merges the confirmed
  plan in chunks; a failing group is journaled as failed and the others go on;
- ``quotas``: ``quotas_verify`` compares stored usage with the real usage
  (``fleet_app.quotas``, one grouped query per resource and holder kind), ``quotas_sync``
  rewrites the differing ones, ``reset`` rewrites all of them;
- ``legacy_import``: the legacy platform's organizations, users, quotas and usage.

Imports run one way: models ← selectors ← merge ← services; quotas and legacy_import
build on models and selectors; tasks, admin and commands call them.
"""
