"""Ask before destroying: every destructive admin action shows a page with the count and
the names first, changes nothing until the second POST, and a secret page shown once
survives a refresh without creating or showing anything."""

import pytest
from django.contrib import admin
from django.urls import reverse

from fleet_app import sealing
from fleet_app.admin import confirm
from fleet_app.models import AuditEntry, System
from tests.factories import UserFactory, make_system

SYSTEMS = reverse("admin:fleet_app_system_changelist")

# Every action that deletes, re-issues, revokes, rotates, undoes or repairs.
DESTRUCTIVE = [
    "fleet_app.system.soft_delete",
    "fleet_app.system.reissue_secret",
    "knox.authtoken.revoke",
    "migrations_app.legacymapping.reopen",
    "migrations_app.legacymapping.start_rotation",
    "migrations_app.deduperun.undo",
    "backups_app.divergencereport.approve_rollback",
    "backups_app.divergencereport.approve_rename_aside",
    "backups_app.divergencereport.approve_retarget",
    "backups_app.divergencereport.approve_rename_back",
    "backups_app.divergencereport.approve_resend_full",
    "backups_app.divergencereport.approve_resume_from_common",
    "backups_app.divergencereport.approve_children_then_parent",
]


def _actions() -> dict[str, object]:
    found = {}
    for model, model_admin in admin.site._registry.items():
        for func, name, _ in model_admin._get_base_actions():
            found[f"{model._meta.label_lower}.{name}"] = func
    return found


@pytest.mark.parametrize("key", DESTRUCTIVE)
def test_every_destructive_action_asks_first(key):
    assert getattr(_actions()[key], confirm.MARK, False), key


def _post(client, name, systems, **extra):
    return client.post(
        SYSTEMS,
        {"action": name, "_selected_action": [s.pk for s in systems], "index": 0, **extra},
    )


def test_the_first_post_shows_counts_and_names_and_changes_nothing(client, alice, customer):
    systems = [make_system(customer, name=f"edge-{n:02d}") for n in range(3)]
    deleted = make_system(customer, name="gone")
    System.objects.filter(pk=deleted.pk).update(deleted_at="2026-01-01T00:00:00Z")
    client.force_login(alice)

    page = _post(client, "soft_delete", [*systems, deleted])

    assert page.status_code == 200
    text = page.content.decode()
    assert page.context["confirmation"].count == 3
    assert page.context["confirmation"].skipped == 1
    assert "Delete 3 systems?" in text
    assert all(s.name in text and s.system_key in text for s in systems)
    assert "gone" not in [n.split(" ")[0] for n in page.context["confirmation"].names]
    assert "already deleted" in text
    # The form posts the same selection again, confirmed; cancel goes back to the list.
    assert 'name="confirmed" value="yes"' in text
    assert f'href="{SYSTEMS}"' in text
    assert not System.objects.filter(pk__in=[s.pk for s in systems], deleted_at__isnull=False)
    assert not AuditEntry.objects.filter(action="system.delete").exists()

    done = _post(client, "soft_delete", [*systems, deleted], confirmed="yes")

    assert done.status_code == 302
    assert System.objects.filter(deleted_at__isnull=False).count() == 4
    assert AuditEntry.objects.filter(action="system.delete").count() == 3


def test_the_list_of_names_is_capped_but_the_count_covers_everything(
    client, alice, customer, django_assert_max_num_queries
):
    systems = [make_system(customer, name=f"node-{n:03d}") for n in range(confirm.NAMES_SHOWN + 7)]
    client.force_login(alice)

    # Session, user, persona, the scoped selection, two counts, one page of names.
    with django_assert_max_num_queries(14):
        page = _post(client, "reissue_secret", systems)

    shown = page.context["confirmation"]
    assert shown.count == len(systems) and len(shown.names) == confirm.NAMES_SHOWN
    assert "… and 7 more" in page.content.decode()


def test_a_selection_reaching_into_another_tenant_names_only_the_callers_own(
    client, alice, system, other_system
):
    client.force_login(alice)

    page = _post(client, "soft_delete", [system, other_system])

    shown = page.context["confirmation"]
    assert shown.count == 1 and shown.skipped == 0
    assert other_system.name not in page.content.decode()
    _post(client, "soft_delete", [system, other_system], confirmed="yes")
    other_system.refresh_from_db()
    assert other_system.deleted_at is None


def test_the_object_page_asks_first_and_posts_back_to_itself(client, alice, system):
    client.force_login(alice)
    url = reverse("admin:fleet_app_system_change", args=[system.pk])
    form = {"CHANGE_FORM-action": "soft_delete", "_selected_action": system.pk}

    page = client.post(url, form)

    assert page.status_code == 200
    assert f'action="{url}"' in page.content.decode()
    system.refresh_from_db()
    assert system.deleted_at is None
    assert client.post(url, {**form, "confirmed": "yes"}).status_code == 302
    system.refresh_from_db()
    assert system.deleted_at is not None


def test_a_reissued_secret_survives_a_refresh_without_side_effects(client, alice, system):
    client.force_login(alice)

    done = _post(client, "reissue_secret", [system], confirmed="yes")

    assert done.status_code == 302
    page = client.get(done["Location"])
    secret = page.context["issued"][0].system_secret
    assert secret in page.content.decode()
    reissues = AuditEntry.objects.filter(action="system.secret_reissue").count()
    again = client.get(done["Location"])
    assert again.status_code == 410
    assert secret not in again.content.decode()
    assert AuditEntry.objects.filter(action="system.secret_reissue").count() == reissues == 1


def test_another_account_cannot_open_the_page_of_someone_elses_secret(
    client, alice, customer, system
):
    client.force_login(alice)
    done = _post(client, "reissue_secret", [system], confirmed="yes")
    other = UserFactory(organization=customer, roles=["admin"])
    client.force_login(other)

    page = client.get(done["Location"])

    assert page.status_code == 410
    assert not page.context["issued"]


def test_a_sealed_value_opens_only_for_its_purpose_and_untampered():
    token = sealing.seal(b"s3cret", purpose="a")

    assert b"s3cret" not in token.encode()
    assert sealing.unseal(token, purpose="a") == b"s3cret"
    assert sealing.unseal(token, purpose="b") is None
    assert sealing.unseal(token[:-4] + "AAAA", purpose="a") is None
    assert sealing.unseal("not a token", purpose="a") is None
