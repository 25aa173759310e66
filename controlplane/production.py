"""What a server with DEBUG off refuses to run on: the embedded secret key, no host names.

The embedded default (no configuration at all) is for a laptop with DEBUG on. With DEBUG
off, anyone who has read the source could forge sessions and signed links with the
embedded key, and an empty ALLOWED_HOSTS answers every request with 400. Both are caught
twice: by the WSGI and ASGI entry points, so gunicorn, uvicorn and runserver stop before
serving anything, and by a ``deploy`` system check, so ``manage.py check --deploy``
reports them in CI before the server is ever started.
"""

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

EMBEDDED_SECRET_KEY = "cutover-embedded-default-not-for-production"  # noqa: S105

_PROBLEMS = {
    "controlplane.E001": (
        "SECRET_KEY is the embedded default: set the SECRET_KEY environment variable to a "
        "long random value before running with DEBUG off."
    ),
    "controlplane.E002": (
        "CREDENTIAL_DIGEST_KEY is the embedded default: set the CREDENTIAL_DIGEST_KEY (or "
        "SECRET_KEY) environment variable to a long random value before running with "
        "DEBUG off."
    ),
    "controlplane.E003": (
        "ALLOWED_HOSTS is empty: set the ALLOWED_HOSTS environment variable to the "
        "comma-separated host names this server answers to before running with DEBUG off."
    ),
}


def unsafe_settings() -> list[tuple[str, str]]:
    """``(check id, sentence)`` for each setting a server with DEBUG off must not run on."""
    if settings.DEBUG:
        return []
    found = []
    if settings.SECRET_KEY == EMBEDDED_SECRET_KEY:
        found.append("controlplane.E001")
    # Only worth saying on its own when SECRET_KEY is set: it defaults to SECRET_KEY.
    elif settings.CREDENTIAL_DIGEST_KEY == EMBEDDED_SECRET_KEY:
        found.append("controlplane.E002")
    if not settings.ALLOWED_HOSTS:
        found.append("controlplane.E003")
    return [(check_id, _PROBLEMS[check_id]) for check_id in found]


def refuse_unsafe_settings() -> None:
    """Called by the entry points: raise before the first request is served."""
    problems = unsafe_settings()
    if problems:
        raise ImproperlyConfigured(" ".join(sentence for _, sentence in problems))


@register(Tags.security, deploy=True)
def check_production_settings(app_configs=None, **kwargs) -> list[Error]:
    return [Error(sentence, id=check_id) for check_id, sentence in unsafe_settings()]
