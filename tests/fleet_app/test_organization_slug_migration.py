"""Migration 0007: existing organizations get unique slugs from their names, in id order."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("fleet_app", "0006_api_tokens_hashed")]
AFTER = [("fleet_app", "0008_organization_slug_unique")]


@pytest.mark.django_db(transaction=True)
def test_it_backfills_unique_slugs_for_organizations_with_the_same_name():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("fleet_app", "Organization")
    root = old.objects.create(name="Owner", kind="owner")
    first = old.objects.create(name="Acme", kind="customer", parent=root)
    second = old.objects.create(name="Acme", kind="customer", parent=root)
    odd = old.objects.create(name="Ünïcode & Co.", kind="customer", parent=root)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("fleet_app", "Organization")

    slugs = dict(new.objects.values_list("pk", "slug"))
    assert slugs == {root.pk: "owner", first.pk: "acme", second.pk: "acme-2", odd.pk: "unicode-co"}
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
