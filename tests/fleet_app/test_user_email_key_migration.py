"""Migration 0009: every account gets its canonical e-mail key before the constraint
exists; active accounts that already share a key are let be (flagged), so the migration
never fails on existing duplicates, never deactivates anyone and never loses a row."""

import unicodedata

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("fleet_app", "0008_organization_slug_unique")]
AFTER = [("fleet_app", "0009_user_email_key")]


@pytest.mark.django_db(transaction=True)
def test_it_backfills_keys_and_survives_existing_duplicates():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("fleet_app", "User")
    # Both active: lower() differs (ẞ stays ß, the ﬁ ligature stays one letter), the
    # canonical key does not.
    first = old.objects.create(email="STRAẞE@example.de", is_active=True, password="!")
    second = old.objects.create(email="strasse@example.de", is_active=True, password="!")
    old.objects.create(email="\ufb01nn@example.com", is_active=True, password="!")
    finn = old.objects.create(email="finn@example.com", is_active=True, password="!")
    lone = old.objects.create(email="Caf\u00e9@example.fr", is_active=False, password="!")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("fleet_app", "User")

    rows = {u.pk: u for u in new.objects.all()}
    assert len(rows) == 5 and all(u.is_active for pk, u in rows.items() if pk != lone.pk)
    assert rows[first.pk].email_key == rows[second.pk].email_key == "strasse@example.de"
    assert rows[lone.pk].email_key == unicodedata.normalize("NFD", "café@example.fr")
    allowed = {pk for pk, u in rows.items() if u.email_key_duplicate_allowed}
    assert allowed == {second.pk, finn.pk}  # the later of each pair
    # New duplicates are kept out.
    with pytest.raises(IntegrityError), transaction.atomic():
        new.objects.create(email="x", email_key="strasse@example.de", password="!")
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
