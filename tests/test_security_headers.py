"""Security headers with DEBUG off: a Content Security Policy without 'unsafe-inline' for
scripts or styles, HSTS on HTTPS, no framing, no sniffing, a same-origin referrer, and
secure cookies."""

import re

import pytest
from django.conf import settings as django_settings


def directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


@pytest.mark.parametrize(
    "path", ["/admin/login/", "/healthz", "/api/", "/collect/api/systems/heartbeat"]
)
def test_every_answer_carries_the_policy(client, db, path):
    policy = directives(client.get(path))

    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    for directive in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in policy[directive]
        assert "'unsafe-eval'" not in policy[directive]


def test_the_docs_page_nonce_matches_its_inline_style(client, bob):
    client.force_login(bob)

    response = client.get("/api/docs/")

    (nonce,) = re.findall(rb'<style nonce="([^"]+)">', response.content)
    assert f"'nonce-{nonce.decode()}'" in directives(response)["style-src"]
    assert b"<script>" not in response.content


def test_pages_have_no_inline_script_or_style_attribute(client, bob):
    client.force_login(bob)
    for path in ("/admin/", "/dashboard/", "/api/docs/"):
        body = client.get(path, follow=True).content
        assert not re.search(rb"<script(?![^>]*\bsrc=)[^>]*>", body), path
        assert b" style=" not in body, path


def test_it_sends_hsts_and_the_other_headers_over_https(client, db):
    response = client.get("/healthz", secure=True)

    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def test_cookies_are_secure_by_default_with_debug_off():
    assert django_settings.DEBUG is False
    assert django_settings.SESSION_COOKIE_SECURE is True
    assert django_settings.CSRF_COOKIE_SECURE is True


def test_the_login_sets_secure_cookies(client, db):
    response = client.get("/admin/login/")

    assert response.cookies["csrftoken"]["secure"] is True
