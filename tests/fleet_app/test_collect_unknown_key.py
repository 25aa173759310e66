"""The collect API's credential checks do the same digest work for a system key (or a
secret's public part) that exists and for one that does not, so how long a 401 takes
does not tell an attacker which keys exist.

The real endpoints and the real database; only the digest function is wrapped, to count
the HMACs and the constant-time comparisons each request makes.
"""

import json

import pytest

from fleet_app import credentials, hot
from tests.conftest import basic_auth

UNKNOWN_KEY = "NETH-0000-0000-0000-0000-0000-0000-0000-0000"
WRONG_SECRET = "my_0123456789abcdef0123.not-the-secret-of-any-system"


@pytest.fixture
def work(monkeypatch):
    """Counts of HMAC digests and constant-time comparisons made by credentials.verify."""
    counts = {"digest": 0, "compare": 0}
    real_digest, real_compare = credentials.digest, credentials.hmac.compare_digest

    def digest(value):
        counts["digest"] += 1
        return real_digest(value)

    def compare(a, b):
        counts["compare"] += 1
        return real_compare(a, b)

    monkeypatch.setattr(credentials, "digest", digest)
    monkeypatch.setattr(credentials.hmac, "compare_digest", compare)

    def measured(call) -> dict[str, int]:
        counts.update(digest=0, compare=0)
        response = call()
        assert response.status_code == 401, response.content
        return dict(counts)

    return measured


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/collect/api/systems/heartbeat"),
        ("post", "/collect/api/systems/inventory"),
        ("get", "/collect/api/systems/info"),
    ],
)
def test_an_unknown_key_costs_the_digest_work_of_a_known_one(client, system, work, method, path):
    def call(key):
        return getattr(client, method)(path, HTTP_AUTHORIZATION=basic_auth(key, WRONG_SECRET))

    known = work(lambda: call(system.system_key))
    unknown = work(lambda: call(UNKNOWN_KEY))

    assert known["digest"] >= 1
    assert unknown == known


def test_the_heartbeat_of_a_remembered_key_costs_what_an_unknown_key_costs(
    client, system, auth_header, work
):
    """A key on the fast path with a wrong secret: one digest there, one on the full path."""
    url = "/collect/api/systems/heartbeat"
    assert client.post(url, **auth_header).status_code == 200
    assert system.system_key in hot._known

    remembered = work(
        lambda: client.post(url, HTTP_AUTHORIZATION=basic_auth(system.system_key, WRONG_SECRET))
    )
    unknown = work(
        lambda: client.post(url, HTTP_AUTHORIZATION=basic_auth(UNKNOWN_KEY, WRONG_SECRET))
    )

    assert remembered == unknown == {"digest": 2, "compare": 2}


def test_register_digests_an_unknown_public_part_too(client, system, work):
    def call(secret):
        return client.post(
            "/backend/api/systems/register",
            data=json.dumps({"system_secret": secret}),
            content_type="application/json",
        )

    known = work(lambda: call(f"my_{system.secret_public}.not-the-secret"))
    unknown = work(lambda: call(WRONG_SECRET))
    malformed = work(lambda: call("not-even-the-format"))

    assert known == unknown == malformed == {"digest": 1, "compare": 1}


def test_verify_never_accepts_a_missing_digest():
    for value in ("", WRONG_SECRET, credentials.DUMMY_DIGEST):
        assert credentials.verify(value, None) is False
