"""Property-based fuzzing of the staff API against its own OpenAPI schema.

Every operation that the schema documents (generated in-process, exactly what staff read
at /api/schema/, which anonymous callers may not) is called in-process (WSGI) with inputs
generated from the schema, valid and invalid, as two real accounts: a superuser, who can
reach everything, and a reader scoped to one customer organization. The product's rule
is checked on every answer: bad input gets a clear 4xx, never a 5xx, and every answer is
one the schema documents (status code, content type, body).

Bounded for CI: a fixed number of examples per operation, no deadline, derandomized so a
run is the same run everywhere.
"""

import json
import re

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from knox.models import AuthToken
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from backups_app.models import BackupRun
from backups_app.service_backups.services import service_create
from fleet_app import services
from fleet_app.demo import ns8_inventory
from tests.factories import UserFactory, make_mapping, make_system

# The tests' settings are DEBUG off with the embedded key, which controlplane.wsgi refuses:
# the same application, without the entry point's start-up check.
application = get_wsgi_application()
schema = schemathesis.openapi.from_dict(
    json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(public=True)))
)
schema.app = application
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    deterministic=True,
    # Credentials are the personas' real tokens, not generated ones.
    with_security_parameters=False,
)

# What DRF and django-filter answer for an id or a name that is well formed but names no row.
UNKNOWN_ROW = re.compile(
    r"Select a valid choice\. That choice is not one of the available choices\."
    r'|Invalid pk ".*" - object does not exist\.'
    r"|Object with [a-z_]+=.* does not exist\.",
    re.DOTALL,
)


def positive_data_acceptance_of_existing_rows(ctx, response, case):
    """``positive_data_acceptance``, except for a reference naming no row.

    The schema types a reference (a filter such as ``?service=``, a body field such as
    ``backup``) as an integer or a name and cannot say which ones exist; one naming no row
    is refused with a 400 that says so, as it should be. Every other refusal of
    schema-valid input still fails.
    """
    if response.status_code == 400:
        try:
            errors = response.json()
        except ValueError:
            errors = None
        if (
            isinstance(errors, dict)
            and errors
            and all(
                isinstance(value, list) and len(value) == 1 and UNKNOWN_ROW.fullmatch(str(value[0]))
                for value in errors.values()
            )
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS_EXCLUDED = [positive_data_acceptance]
CHECKS_ADDED = [positive_data_acceptance_of_existing_rows]


@pytest.fixture
def world(customer, other_customer, tmp_path, settings):
    """A small fleet with something behind most routes: systems in two customers, an
    inventory and its changes, a legacy mapping, a backed-up service with a backup."""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"
    # Schemathesis's WSGI client calls http://localhost/…
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]
    settings.BACKUP_WORK_DIR = tmp_path / "work"
    a1 = make_system(customer, name="a1")
    make_system(customer, name="a2")
    make_system(other_customer, name="b1")
    for seed in (7, 8):
        services.inventory_ingest(system=a1, payload=ns8_inventory(seed=seed), size=50_000)
    make_mapping(customer)
    (tmp_path / "files").mkdir()
    service = service_create(
        actor=None, name="files", adapter="directory", config={"path": str(tmp_path / "files")}
    )
    BackupRun.objects.create(service=service, state="succeeded")


@pytest.fixture
def in_test_transaction():
    """Keep the test's database connection open across requests, as Django's test client
    does: called straight through WSGI, Django closes it when a request ends, and on
    PostgreSQL that would end the test's transaction."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def personas(db, customer, bob, world, in_test_transaction):
    """A superuser, and bob: the reader of one customer (tests/conftest.py)."""
    root = UserFactory(email="root@example.com", organization=customer, is_superuser=True)
    return {
        name: {"Authorization": f"Token {AuthToken.objects.create(user=user)[1]}"}
        for name, user in (("superuser", root), ("reader", bob))
    }


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    # The database fixtures are function-scoped on purpose: every example of an operation
    # runs in that operation's test transaction, rolled back at its end.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_staff_api_answers_every_input_without_a_server_error(case, personas):
    for headers in personas.values():
        case.call_and_validate(
            headers=headers, excluded_checks=CHECKS_EXCLUDED, additional_checks=CHECKS_ADDED
        )
