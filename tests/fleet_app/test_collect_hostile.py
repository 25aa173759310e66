"""Hostile input on the system-facing endpoints: never a 500, always the envelope, nothing
written.

The collect API (heartbeat, inventory, info, backups), register and the legacy proxy are
plain Django views reached by scripts and by anyone on the network. Whatever arrives —
malformed Basic credentials, undecodable bytes, bodies that are not objects or nest
without end, wrong methods and content types, a Content-Length that lies — the answer is
a 4xx in the collect envelope with one sentence, and the database is as it was.
"""

import base64

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups_app.models import ClusterBackup
from fleet_app.models import Inventory, System
from tests.conftest import basic_auth
from tests.factories import make_mapping

ENDPOINTS = [
    "/collect/api/systems/heartbeat",
    "/collect/api/systems/inventory",
    "/collect/api/systems/info",
    "/collect/api/systems/backups",
    "/collect/api/systems/backups/00000000-0000-0000-0000-000000000000",
    "/backend/api/systems/register",
    "/proxy/credentials",
    "/api/Utils/freekey",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
DEEP = 100_000


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(autouse=True)
def no_throttle_memory():
    """Failed legacy logins are counted in the cache: start and end without any."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def world(system, customer, settings, tmp_path):
    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"
    make_mapping(customer)  # legacy-1:legacy-token-1
    return system


def snapshot():
    return (
        Inventory.objects.count(),
        ClusterBackup.objects.count(),
        list(System.objects.order_by("pk").values_list("last_heartbeat_at", "secret_digest")),
    )


def assert_answered(response, before):
    """No 5xx; the collect envelope with a sentence; an error wrote nothing."""
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.request["REQUEST_METHOD"] != "HEAD":
        body = response.json()
        assert body["code"] == response.status_code
        assert isinstance(body["message"], str) and body["message"].strip()
    if response.status_code >= 400:
        assert snapshot() == before


def assert_refused(response, before):
    """A 4xx in the collect envelope, one sentence, and nothing written."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:300])
    assert_answered(response, before)


# --- Authorization headers that are not Basic credentials -----------------------------------

MALFORMED_AUTHORIZATION = [
    "Basic",
    "Basic ",
    "Basic !!!!",
    "Basic " + b64(b"no-colon-here"),
    "Basic " + b64(b":"),
    "Basic " + b64(b"key:"),
    "Basic " + b64(b":secret"),
    "Basic " + b64(b"\xff\xfe\xfd:\x80\x81"),  # not UTF-8
    "Basic " + b64(b"NETH-\x00:my_\x00.\x00"),  # NUL bytes
    "Basic " + b64(b"key\x00:secret"),
    "Basic \xe9\xe8\xff",  # not ASCII (WSGI headers arrive as latin-1)
    "Basic " + "A" * 100_000,  # huge
    "Basic " + b64(b"k" * 50_000 + b":" + b"s" * 50_000),
    "Bearer token",
    "basic " + b64(b"a:b"),
    "\x00",
    "Basic " + b64(b"a:b") + "=" * 10,
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("authorization", MALFORMED_AUTHORIZATION)
def test_malformed_basic_credentials_are_refused(client, world, path, authorization):
    before = snapshot()
    method = "GET" if path in ("/collect/api/systems/info", "/proxy/credentials") else "POST"

    response = client.generic(method, path, b"{}", HTTP_AUTHORIZATION=authorization)

    assert_refused(response, before)


# --- Methods, bodies and content types ------------------------------------------------------

BODIES = [
    b"",
    b"null",
    b"[]",
    b"42",
    b'"a string"',
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    b"\xff\xfe\x00\x01not utf-8",
    '{"system_secret": "caf\xe9"}'.encode("latin-1"),
    b'{"system_secret": "my_\\u0000.\\u0000"}',
    b'{"system_secret": "my_\\ud800.\\udfff"}',
    b'{"system_secret": ["my_a.b"]}',
    b'{"system_secret": {"$gt": ""}}',
    b'{"system_secret": "' + b"x" * 70_000 + b'"}',
    b"lk=\xff&secret=\x00",
    b'{"facts": {"x": "\\u0000"}}',
    b'{"facts": {"\\u0000": 1}}',
    b'{"facts": {"x": "\\ud800"}}',
    b'{"facts": {"nodes": {"1": {"fqdn": "\\udfff\\u0000"}}}}',
    b'{"facts": ' + b'{"a":' * 5_000 + b"{}" + b"}" * 5_000 + b"}",
    b'{"facts": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}",
    b"--x\r\nContent-Disposition: form-data\r\n\r\n",
]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "multipart/form-data",
    "application/octet-stream",
    "application/json; charset=latin-1",
    "\xff/\xfe",
]


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(ENDPOINTS),
    method=st.sampled_from(METHODS),
    body=st.one_of(st.sampled_from(BODIES), st.binary(max_size=200)),
    content_type=st.sampled_from(CONTENT_TYPES),
    authorization=st.one_of(
        st.sampled_from(["system", "legacy"]),
        st.sampled_from(MALFORMED_AUTHORIZATION),
        st.binary(max_size=60).map(lambda raw: "Basic " + b64(raw)),
        st.text(st.characters(max_codepoint=255), max_size=60),
    ),
)
def test_hostile_requests_never_get_a_5xx_and_errors_change_nothing(
    client, world, path, method, body, content_type, authorization
):
    """Real credentials too, so that bodies and methods are read past authentication."""
    authorization = {
        "system": basic_auth(world.system_key, world.issued_secret),
        "legacy": basic_auth("legacy-1", "legacy-token-1"),
    }.get(authorization, authorization)
    before = snapshot()

    response = client.generic(
        method, path, body, content_type=content_type, HTTP_AUTHORIZATION=authorization
    )

    assert_answered(response, before)


@pytest.mark.parametrize("body", BODIES)
def test_register_refuses_every_body_that_is_not_a_known_secret(client, world, body):
    before = snapshot()

    response = client.generic(
        "POST", "/backend/api/systems/register", body, content_type="application/json"
    )

    assert_refused(response, before)


@pytest.mark.parametrize("body", BODIES[1:])
def test_an_inventory_that_is_not_a_phonehome_document_is_400(client, world, body):
    auth = basic_auth(world.system_key, world.issued_secret)
    # A first authenticated call stamps the secret as used; take that as the baseline.
    client.get("/collect/api/systems/info", HTTP_AUTHORIZATION=auth)
    before = snapshot()

    response = client.generic(
        "POST",
        "/collect/api/systems/inventory",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
    )

    assert_refused(response, before)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "path",
    ["/collect/api/systems/inventory", "/collect/api/systems/backups", "/api/Utils/freekey"],
)
def test_a_content_length_far_beyond_the_body_is_refused(client, world, path):
    auth = basic_auth(world.system_key, world.issued_secret)
    client.get("/collect/api/systems/info", HTTP_AUTHORIZATION=auth)
    before = snapshot()

    response = client.generic(
        "POST",
        path,
        b"{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=auth,
        CONTENT_LENGTH=str(10**15),
    )

    assert_refused(response, before)


@pytest.mark.parametrize("content_length", ["-1", "abc", "1e9", " 5", "99999999999999999999999"])
def test_a_malformed_content_length_is_refused(client, world, content_length):
    auth = basic_auth(world.system_key, world.issued_secret)
    client.get("/collect/api/systems/info", HTTP_AUTHORIZATION=auth)
    before = snapshot()

    response = client.generic(
        "POST",
        "/collect/api/systems/backups",
        b"abc",
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=auth,
        HTTP_X_FILENAME="dump.json.gz.gpg",
        CONTENT_LENGTH=content_length,
    )

    assert_refused(response, before)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nContent-Disposition: form-data\r\n\r\n", "multipart/form-data; boundary=x"),
        (b"--x\r\n", "multipart/form-data"),
        (b"lk=\xff\xfe&secret=\x00", "application/x-www-form-urlencoded"),
        (b"lk=a&secret=b" + b"&x=1" * 2_000, "application/x-www-form-urlencoded"),
        (b"lk=legacy-1%00&secret=legacy-token-1", "application/x-www-form-urlencoded"),
    ],
)
def test_freekey_refuses_broken_forms(client, world, body, content_type):
    before = snapshot()

    response = client.generic("POST", "/api/Utils/freekey", body, content_type=content_type)

    assert_refused(response, before)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    filename=st.one_of(
        st.none(),
        st.sampled_from(["", "../../etc/passwd", "a" * 5_000, "\x00", "caf\xe9.gz", "..", "/"]),
        st.text(st.characters(max_codepoint=255), max_size=40),
    ),
    content_type=st.sampled_from([*CONTENT_TYPES, "", "application/gzip", "a" * 3_000]),
    body=st.sampled_from([b"", b"x", b"\xff" * 64]),
)
def test_a_backup_upload_with_hostile_headers_is_stored_or_refused(
    client, world, filename, content_type, body
):
    auth = basic_auth(world.system_key, world.issued_secret)
    extra = {} if filename is None else {"HTTP_X_FILENAME": filename}
    before = snapshot()

    response = client.generic(
        "POST",
        "/collect/api/systems/backups",
        body,
        content_type=content_type,
        HTTP_AUTHORIZATION=auth,
        **extra,
    )

    assert_answered(response, before)
