"""With DEBUG off the server refuses the embedded SECRET_KEY and an empty ALLOWED_HOSTS:
the entry points raise before serving, and ``check --deploy`` reports both."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from controlplane.production import EMBEDDED_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
A_KEY = "k3y-for-tests-only-" + "x7Qp2" * 10


def start(module: str, **env: str) -> subprocess.CompletedProcess:
    """Import an entry point in a fresh interpreter, as gunicorn or uvicorn would."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DEBUG", "SECRET_KEY", "CREDENTIAL_DIGEST_KEY", "ALLOWED_HOSTS"}
    }
    return subprocess.run(
        [sys.executable, "-c", f"import {module}; print('loaded')"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "controlplane.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["controlplane.wsgi", "controlplane.asgi"])
def test_it_refuses_to_start_on_the_embedded_secret_key(module):
    result = start(module, DEBUG="0", ALLOWED_HOSTS="cutover.example.org")

    assert result.returncode != 0
    assert "loaded" not in result.stdout
    assert (
        "ImproperlyConfigured: SECRET_KEY is the embedded default: set the SECRET_KEY "
        "environment variable" in result.stderr
    )


@pytest.mark.parametrize("module", ["controlplane.wsgi", "controlplane.asgi"])
def test_it_refuses_to_start_without_allowed_hosts(module):
    result = start(module, DEBUG="0", SECRET_KEY=A_KEY)

    assert result.returncode != 0
    assert "ImproperlyConfigured: ALLOWED_HOSTS is empty: set the ALLOWED_HOSTS" in result.stderr


def test_it_refuses_a_credential_key_left_on_the_embedded_default():
    result = start(
        "controlplane.wsgi",
        DEBUG="0",
        SECRET_KEY=A_KEY,
        CREDENTIAL_DIGEST_KEY=EMBEDDED_SECRET_KEY,
        ALLOWED_HOSTS="cutover.example.org",
    )

    assert result.returncode != 0
    assert "CREDENTIAL_DIGEST_KEY is the embedded default" in result.stderr


@pytest.mark.parametrize("module", ["controlplane.wsgi", "controlplane.asgi"])
def test_it_starts_with_a_key_and_hosts(module):
    result = start(module, DEBUG="0", SECRET_KEY=A_KEY, ALLOWED_HOSTS="cutover.example.org")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded"


def test_the_embedded_default_still_starts_with_debug_on():
    """`make run`: DEBUG=1, nothing else configured."""
    result = start("controlplane.wsgi", DEBUG="1")

    assert result.returncode == 0, result.stderr


def test_the_deploy_check_reports_both(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = EMBEDDED_SECRET_KEY
    settings.CREDENTIAL_DIGEST_KEY = EMBEDDED_SECRET_KEY
    settings.ALLOWED_HOSTS = []

    with pytest.raises(SystemCheckError) as raised:
        call_command("check", deploy=True)

    message = str(raised.value)
    assert "(controlplane.E001) SECRET_KEY is the embedded default" in message
    assert "(controlplane.E003) ALLOWED_HOSTS is empty" in message


def test_the_plain_check_stays_quiet_without_configuration(settings):
    """CI runs `manage.py check --fail-level WARNING` with nothing configured."""
    settings.DEBUG = False
    settings.SECRET_KEY = EMBEDDED_SECRET_KEY
    settings.ALLOWED_HOSTS = []

    call_command("check", fail_level="WARNING")


def test_the_deploy_check_passes_a_configured_server(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = A_KEY
    settings.CREDENTIAL_DIGEST_KEY = A_KEY + "-credentials"
    settings.ALLOWED_HOSTS = ["cutover.example.org"]

    from controlplane.production import check_production_settings

    assert check_production_settings() == []
