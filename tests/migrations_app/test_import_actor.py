"""import_legacy_mappings --actor: run as a staff account, within what it reaches."""

import pytest
from django.core.management import CommandError, call_command

from fleet_app.models import AuditEntry
from migrations_app.models import LegacyMapping


@pytest.fixture
def mappings_csv(tmp_path):
    path = tmp_path / "mappings.csv"
    path.write_text("legacy_system_id,legacy_token,name\nlx-1,token-1,legacy one\n")
    return path


def test_a_tenant_admin_imports_into_its_own_subtree(mappings_csv, alice, customer):
    call_command(
        "import_legacy_mappings",
        str(mappings_csv),
        "--apply",
        "--organization",
        customer.slug,
        "--actor",
        alice.email,
    )
    mapping = LegacyMapping.objects.select_related("system").get()
    assert mapping.system.organization == customer
    assert AuditEntry.objects.filter(actor=alice, action="system.create").exists()


def test_another_tenants_organization_is_out_of_reach(mappings_csv, alice, other_customer):
    with pytest.raises(CommandError, match="No organization"):
        call_command(
            "import_legacy_mappings",
            str(mappings_csv),
            "--apply",
            "--organization",
            str(other_customer.pk),
            "--actor",
            alice.email,
        )
    assert not LegacyMapping.objects.exists()


def test_a_reader_may_not_run_it_and_the_refusal_is_audited(mappings_csv, bob):
    with pytest.raises(CommandError, match="bob@example.com may not run import_legacy_mappings"):
        call_command("import_legacy_mappings", str(mappings_csv), "--actor", bob.email)
    assert AuditEntry.objects.get(action="access.refused").actor == bob


def test_an_unknown_actor_is_refused(mappings_csv, db):
    with pytest.raises(CommandError, match="No active account has the e-mail"):
        call_command("import_legacy_mappings", str(mappings_csv), "--actor", "x@example.com")
