"""The permission matrix: generated from the admin registry, the URL resolver and the list
of commands, checked for the five personas across two tenants against the one table
(fleet_app/access.py and each app's access_table.py), which the README shows.

A model, action, route, dashboard or command that is not in the table fails here.
"""

import re
import uuid
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import get_commands, load_command_class
from django.core.management.base import CommandError
from django.test import RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from backups_app.models import ClusterBackup
from fleet_app import access, services
from fleet_app.access_http import TablePermission
from fleet_app.management.base import CutoverCommand
from fleet_app.models import AuditEntry, Inventory, InventoryChange, Organization
from migrations_app.models import FingerprintAnomaly, RotationRun
from tests.factories import OrganizationFactory, UserFactory, make_mapping, make_system

OUR_APPS = ("fleet_app", "migrations_app", "backups_app")
README = Path(__file__).resolve().parent.parent / "README.md"


# --- The surfaces, as the code declares them -----------------------------------------------


def admin_models() -> dict[str, admin.ModelAdmin]:
    return {access.model_key(model): ma for model, ma in admin.site._registry.items()}


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if str(pattern.pattern).startswith("admin/"):
                continue  # the admin's pages are its models' and actions' rows
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def url_patterns() -> list[tuple[str, URLPattern]]:
    return list(_walk(get_resolver().url_patterns))


def our_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app in OUR_APPS)


def superuser_request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


# --- Completeness: nothing reachable without a row -----------------------------------------


def _action_names(key: str) -> list[str]:
    return [name for _, name, _ in admin_models()[key]._get_base_actions()]


def test_every_registered_model_has_a_row():
    missing = [key for key in admin_models() if access.rule_for("model", key) is None]
    assert missing == [], f"admin models not in the permission table: {missing}"


def test_every_model_admin_is_enforced_by_the_table():
    loose = [
        key
        for key, model_admin in admin_models().items()
        if not isinstance(model_admin, __import__("fleet_app.admin").admin.TableAdminMixin)
    ]
    assert loose == [], f"model admins that bypass the permission table: {loose}"


@pytest.mark.django_db
def test_every_admin_action_has_a_row():
    superuser = UserFactory(is_superuser=True, organization=None)
    request = superuser_request(superuser)
    missing = []
    for key, model_admin in admin_models().items():
        # Actions as Django knows them, before the table filters them.
        names = [name for _, name, _ in (model_admin._get_base_actions())]
        for name in names:
            if name != "delete_selected" and access.rule_for("action", f"{key}.{name}") is None:
                missing.append(f"{key}.{name}")
    assert missing == [], f"admin actions not in the permission table: {missing}"
    assert request.user.is_superuser


def test_every_route_has_a_row():
    missing = []
    for route, pattern in url_patterns():
        name = pattern.name
        if name is None:
            missing.append(f"(unnamed) {route}")
        elif access.rule_for("route", name) is None and access.rule_for("dashboard", name) is None:
            missing.append(f"{name} {route}")
    assert missing == [], f"routes not in the permission table: {missing}"


def test_every_command_has_a_row_and_checks_it():
    missing = [name for name in our_commands() if access.rule_for("command", name) is None]
    assert missing == [], f"commands not in the permission table: {missing}"
    ungated = [
        name
        for name in our_commands()
        if not isinstance(load_command_class(get_commands()[name], name), CutoverCommand)
    ]
    assert ungated == [], f"commands that do not check the table: {ungated}"


def test_every_row_names_something_that_exists():
    models = set(admin_models())
    routes = {pattern.name for _, pattern in url_patterns()}
    commands = set(our_commands())
    names = {
        "model": models,
        "route": routes,
        "dashboard": routes,
        "command": commands,
        "action": {f"{key}.{name}" for key in models for name in _action_names(key)},
    }
    stale = [item.key for item in access.rules_all() if item.key not in names[item.kind]]
    assert stale == [], f"rows naming nothing: {stale}"


def test_the_table_refuses_infrastructure_to_tenants():
    for item in access.rules_all():
        if item.scope in (access.PLATFORM, access.SUPERUSER_ONLY):
            assert not any(item.rights(p) for p in access.TENANT_PERSONAS), item.key


def test_the_table_refuses_what_it_does_not_name():
    with pytest.raises(access.TableError):
        access.rule("model", "backups_app.storagehost", access.PLATFORM, admin="v")
    assert not access.allowed(None, "model", "nobody.nothing")


def test_the_readme_shows_the_table():
    text = README.read_text()
    block = re.search(r"<!-- permissions:start -->\n(.*?)<!-- permissions:end -->", text, re.DOTALL)
    assert block, "README.md has no permission table block"
    assert block.group(1) == access.table_markdown(), (
        "README.md's permission table differs from the code's: "
        "paste `manage.py permissions_table` between the markers"
    )


# --- Two tenants, five personas ------------------------------------------------------------


class World:
    """Root, tenant A (a distributor and its customer), tenant B (another customer); the
    five personas; one row of each tenant-scoped kind in each tenant."""

    def __init__(self):
        self.root = OrganizationFactory(name="Root", kind=Organization.Kind.OWNER)
        self.a = services.organization_create(
            actor=None, name="Tenant A", kind="distributor", parent=self.root
        )
        self.a_customer = services.organization_create(
            actor=None, name="Tenant A customer", kind="customer", parent=self.a
        )
        self.b = services.organization_create(
            actor=None, name="Tenant B", kind="customer", parent=self.root
        )
        self.users = {
            access.SUPERUSER: UserFactory(
                email="super@example.com", organization=None, is_superuser=True
            ),
            access.OPERATOR: UserFactory(
                email="operator@example.com", organization=None, roles=["operator"]
            ),
        }
        self.tenant_users = {}
        for tenant, org in (("a", self.a), ("b", self.b)):
            for role in access.TENANT_PERSONAS:
                user = UserFactory(
                    email=f"{role}-{tenant}@example.com", organization=org, roles=[role]
                )
                self.tenant_users[(tenant, role)] = user
        self.nobody = UserFactory(email="nobody@example.com", organization=self.a)
        self.rows = {"a": self._rows(self.a_customer, "a"), "b": self._rows(self.b, "b")}

    def _rows(self, org, tag):
        system = make_system(org, name=f"system-{tag}")
        inventory = Inventory.objects.create(system=system, data={"uuid": tag}, size=10)
        change = InventoryChange.objects.create(
            system=system, inventory=inventory, path="facts.x", severity="info", old=1, new=2
        )
        mapping = make_mapping(org, legacy_system_id=f"legacy-{tag}")
        anomaly = FingerprintAnomaly.objects.create(
            system=system, kind="unknown", claimed_legacy_system_id=f"other-{tag}"
        )
        admin_user = self.tenant_users[(tag, access.ADMIN)]
        run = RotationRun.objects.create(created_by=admin_user)
        backup = ClusterBackup.objects.create(
            system=system,
            organization=org,
            filename="dump.gpg",
            size=1,
            sha256="0" * 64,
            storage_key=f"cluster/{uuid.uuid4()}",
        )
        audit = services.audit_record(actor=admin_user, action="test.row", obj=system)
        return {
            "fleet_app.system": system,
            "fleet_app.inventory": inventory,
            "fleet_app.inventorychange": change,
            "fleet_app.auditentry": audit,
            "fleet_app.user": admin_user,
            "fleet_app.organization": org,
            "migrations_app.legacymapping": mapping,
            "migrations_app.fingerprintanomaly": anomaly,
            "migrations_app.rotationrun": run,
            "backups_app.clusterbackup": backup,
            "backups_app.systembackups": system,
        }

    def personas(self):
        """(label, persona, user, tenant or None)."""
        for persona, user in self.users.items():
            yield persona, persona, user, None
        for (tenant, role), user in self.tenant_users.items():
            yield f"{role}@{tenant}", role, user, tenant


@pytest.fixture
def world(db):
    return World()


def _request(user, path="/admin/"):
    request = RequestFactory().get(path)
    request.user = user
    return request


def _other(tenant):
    return "b" if tenant == "a" else "a"


@pytest.mark.django_db
def test_admin_rights_follow_the_table(world, client):
    """Every model: the changelist (and add page) answer as the table says."""
    for label, _persona, user, _tenant in world.personas():
        client.force_login(user)
        for key, model_admin in admin_models().items():
            app_label, model_name = key.split(".")

            def may(right, key=key, user=user):
                return access.allowed(user, "model", key, right)

            url = reverse(f"admin:{app_label}_{model_name}_changelist")
            status = client.get(url).status_code
            assert (status == 200) == may("v"), f"{label} {key}: {status}"
            if not may("v"):
                assert status == 403, f"{label} {key}: {status}"
            request = _request(user)
            assert model_admin.has_add_permission(request) <= may("a"), (label, key)
            assert model_admin.has_change_permission(request) <= may("c"), (label, key)
            assert model_admin.has_delete_permission(request) <= may("d"), (label, key)


@pytest.mark.django_db
def test_no_tenant_reads_another_tenants_rows_in_the_admin(world, client):
    for label, _persona, user, tenant in world.personas():
        if tenant is None:
            continue
        client.force_login(user)
        own_path = world.a.path if tenant == "a" else world.b.path
        for key, row in world.rows[_other(tenant)].items():
            item = access.rule_for("model", key)
            model_admin = admin_models()[key]
            visible = model_admin.get_queryset(_request(user))
            lookup = f"{item.org}__path__startswith" if item.org else "path__startswith"
            assert not visible.exclude(**{lookup: own_path}).exists(), f"{label} sees {key}"
            assert not visible.filter(pk=row.pk).exists(), f"{label} sees {key} {row.pk}"
            app_label, model_name = key.split(".")
            url = reverse(f"admin:{app_label}_{model_name}_change", args=[row.pk])
            response = client.get(url)
            # "does not exist" (a redirect to the index) or refused: never the page.
            assert response.status_code in (302, 403), f"{label} opens {key}: {response}"
            post = client.post(url, {})
            assert post.status_code in (302, 403), f"{label} posts {key}: {post}"
    # And the check is not vacuous: the platform sees both tenants' rows.
    superuser = world.users[access.SUPERUSER]
    for key in world.rows["a"]:
        visible = admin_models()[key].get_queryset(_request(superuser))
        for tenant in ("a", "b"):
            assert visible.filter(pk=world.rows[tenant][key].pk).exists(), key


@pytest.mark.django_db
def test_admin_actions_follow_the_table(world):
    for label, _persona, user, _tenant in world.personas():
        request = _request(user)
        for key, model_admin in admin_models().items():
            offered = set(model_admin.get_actions(request))
            for _, name, _ in model_admin._get_base_actions():
                if name == "delete_selected":
                    expected = access.allowed(user, "model", key, "d")
                else:
                    expected = access.allowed(user, "action", f"{key}.{name}", "r")
                assert (name in offered) <= expected, f"{label} is offered {key}.{name}"


@pytest.mark.django_db
def test_api_routes_follow_the_table(world):
    """Every staff API route: refused as the table says; another tenant's object is a 404."""
    api = APIClient()
    detail_rows = {
        "system-detail": "fleet_app.system",
        "system-inventories": "fleet_app.system",
        "system-changes": "fleet_app.system",
        "inventory-detail": "fleet_app.inventory",
        "change-detail": "fleet_app.inventorychange",
        "cluster-backup-detail": "backups_app.clusterbackup",
        "cutover-anomaly-detail": "migrations_app.fingerprintanomaly",
        "cutover-mapping-detail": "migrations_app.legacymapping",
    }
    for _route, pattern in url_patterns():
        name = pattern.name
        view_class = getattr(pattern.callback, "cls", None)
        if view_class is None or name in ("api-schema", "api-docs"):
            continue
        if TablePermission not in view_class.permission_classes:
            assert access.rule_for("route", name).scope == access.PUBLIC, name
            continue
        if "format" in pattern.pattern.regex.groupindex:
            continue
        for label, _persona, user, tenant in world.personas():
            api.force_authenticate(user)
            kwargs = {}
            if "pk" in pattern.pattern.regex.groupindex:
                key = detail_rows.get(name)
                if key is None:
                    kwargs = {"pk": 999999}
                else:
                    row = world.rows[_other(tenant) if tenant else "b"][key]
                    kwargs = {"pk": row.pk}
            elif "name" in pattern.pattern.regex.groupindex:
                kwargs = {"name": "nothing"}
            url = reverse(name, kwargs=kwargs)
            if name == "cutover-straggler-list":
                url += "?kind=not_rotated"
            status = api.get(url).status_code
            allowed = access.allowed(user, "route", name, "v")
            if not allowed:
                assert status == 403, f"{label} GET {name}: {status}"
            elif (
                tenant is not None
                and name in detail_rows
                and access.rule_for("route", name).scope == access.TENANT
            ):
                assert status == 404, f"{label} GET another tenant's {name}: {status}"
            else:
                assert status in (200, 404), f"{label} GET {name}: {status}"
    api.force_authenticate(None)


@pytest.mark.django_db
def test_api_lists_hold_only_the_callers_subtree(world):
    api = APIClient()
    for label, _persona, user, tenant in world.personas():
        if tenant is None:
            continue
        api.force_authenticate(user)
        other = world.rows[_other(tenant)]
        systems = api.get(reverse("system-list")).json()["results"]
        assert other["fleet_app.system"].pk not in {row["id"] for row in systems}, label
        backups = api.get(reverse("cluster-backup-list")).json()["results"]
        assert str(other["backups_app.clusterbackup"].pk) not in {row["id"] for row in backups}
        # Filtering by another tenant's id answers exactly as for an id that does not exist.
        foreign = api.get(
            reverse("system-list"), {"organization": world.b.pk if tenant == "a" else world.a.pk}
        )
        missing = api.get(reverse("system-list"), {"organization": 999999})
        assert foreign.status_code == missing.status_code == 400, label
        assert foreign.json() == missing.json()


@pytest.mark.django_db
def test_dashboards_follow_the_table(world, client):
    dashboards = [i.key for i in access.rules_all() if i.kind == "dashboard"]
    for label, _persona, user, _tenant in world.personas():
        client.force_login(user)
        for name in dashboards:
            status = client.get(reverse(name)).status_code
            expected = 200 if access.allowed(user, "dashboard", name, "v") else 403
            assert status == expected, f"{label} {name}: {status}"


@pytest.mark.django_db
def test_a_staff_user_with_no_role_reaches_nothing_but_a_page_that_says_so(world, client):
    client.force_login(world.nobody)
    for name in [i.key for i in access.rules_all() if i.kind == "dashboard"]:
        response = client.get(reverse(name))
        assert response.status_code == 403
        assert access.NO_ROLE_MESSAGE in response.content.decode()
    api = APIClient()
    api.force_authenticate(world.nobody)
    response = api.get(reverse("system-list"))
    assert response.status_code == 403
    assert response.json() == {"detail": access.NO_ROLE_MESSAGE}
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert index.context["app_list"] == []


@pytest.mark.django_db
def test_refusals_leave_an_audit_entry(world, client):
    reader = world.tenant_users[("a", access.READER)]
    client.force_login(reader)
    assert client.get(reverse("zfs-dashboard")).status_code == 403
    assert client.get(reverse("admin:backups_app_storagehost_changelist")).status_code == 403
    api = APIClient()
    api.force_authenticate(reader)
    assert api.get(reverse("service-list")).status_code == 403
    refused = AuditEntry.objects.filter(action="access.refused", actor=reader)
    assert refused.count() == 3
    assert {entry.after["what"] for entry in refused} == {"dashboard zfs-dashboard", "page", "api"}


@pytest.mark.django_db
def test_commands_follow_the_table(world):
    for name in our_commands():
        command = load_command_class(get_commands()[name], name)
        for _label, _persona, user, _tenant in world.personas():
            if access.allowed(user, "command", name, "r"):
                command.actor_check(user)
            else:
                with pytest.raises(CommandError, match=f"may not run {name}"):
                    command.actor_check(user)


@pytest.mark.django_db
def test_role_groups_hold_the_tables_permissions(world):
    """Django's own checks agree with the table (roles_sync derives them)."""
    for label, persona, user, _tenant in world.personas():
        for key in admin_models():
            app_label, model_name = key.split(".")
            rights = access.rule_for("model", key).rights(persona)
            for letter, verb in (("v", "view"), ("a", "add"), ("c", "change"), ("d", "delete")):
                granted = user.has_perm(f"{app_label}.{verb}_{model_name}")
                if persona != access.SUPERUSER:
                    assert granted == (letter in rights), f"{label} {verb} {key}"
    assert set(Group.objects.values_list("name", flat=True)) >= set(access.ROLE_GROUPS)
    assert timezone.now()
