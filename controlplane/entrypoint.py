"""The production entry point (docker/entrypoint.sh runs ``python -m controlplane.entrypoint``).

``web``          gunicorn on ``0.0.0.0:$WEB_PORT`` (8000), ``$WEB_WORKERS`` × ``$WEB_THREADS``
``worker``       a Celery worker (``$WORKER_CONCURRENCY`` processes)
``beat``         Celery beat on the database scheduler (run one)
``migrate``      ``manage.py migrate --noinput``
``manage ARGS``  any other ``manage.py`` command
``healthcheck``  exit 0 when web answers ``/healthz`` on loopback (``healthcheck worker``:
                 when this host's worker answers a ping)

Before web, worker, beat and migrate, the settings a production process cannot do
without are checked: a missing one stops the start with one sentence naming it (exit 78,
``EX_CONFIG``), before Django or any server is loaded. Bind address and ports come from
``WEB_BIND`` (``0.0.0.0:$WEB_PORT``).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

EX_CONFIG = 78

# The settings a production process needs, each with the sentence that names it. The
# embedded defaults (SQLite, tasks in-process, a published key) are for `make run` only.
REQUIRED = {
    "SECRET_KEY": "a long random value (docker/env.example)",
    "ALLOWED_HOSTS": "the comma-separated host names this server answers to",
    "PUBLIC_BASE_URL": "the https:// URL systems reach this service at",
    "DATABASE_URL": "the PostgreSQL URL, postgres://user:password@host:5432/name",
    "REDIS_URL": "the Redis URL of the Celery broker, redis://host:6379/0",
}
CHECKED = {"web", "worker", "beat", "migrate"}


def missing_settings(environ: Mapping[str, str]) -> list[str]:
    """One sentence for each production setting ``environ`` lacks or gets wrong."""
    problems = [
        f"{name} is not set: set it to {what}."
        for name, what in REQUIRED.items()
        if not environ.get(name, "").strip()
    ]
    if environ.get("DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}:
        problems.append("DEBUG is on: unset DEBUG (or set it to false) in production.")
    database = environ.get("DATABASE_URL", "")
    if database and not database.startswith(("postgres://", "postgresql://", "pgsql://")):
        problems.append(
            "DATABASE_URL is not a PostgreSQL URL: set it to "
            "postgres://user:password@host:5432/name."
        )
    return problems


def unsafe_settings() -> list[str]:
    """What Django's own production checks refuse (controlplane/production.py)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    django.setup(set_prefix=False)
    from controlplane.production import unsafe_settings as refused

    return [sentence for _, sentence in refused()]


def preflight() -> None:
    problems = missing_settings(os.environ)
    if not problems:
        problems = unsafe_settings()
    if problems:
        for sentence in problems:
            print(f"Cutover will not start: {sentence}", file=sys.stderr)
        sys.exit(EX_CONFIG)


def command_line(subcommand: str, args: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The process a subcommand runs (in the interpreter running this module)."""
    python = sys.executable
    if subcommand == "web":
        bind = environ.get("WEB_BIND") or f"0.0.0.0:{environ.get('WEB_PORT', '8000')}"
        return [
            python, "-m", "gunicorn", "controlplane.wsgi",
            "--bind", bind,
            "--workers", environ.get("WEB_WORKERS", "4"),
            "--worker-class", "gthread",
            "--threads", environ.get("WEB_THREADS", "4"),
            # Heartbeat files in memory, not on the container's overlay disk.
            "--worker-tmp-dir", environ.get("WEB_WORKER_TMP_DIR", "/dev/shm"),  # noqa: S108
            # No control socket: it sits in $HOME, which two servers on one host share.
            "--no-control-socket",
            "--access-logfile", "-",
            "--error-logfile", "-",
            *args,
        ]  # fmt: skip
    if subcommand == "worker":
        return [
            python, "-m", "celery", "-A", "controlplane", "worker",
            "--loglevel", environ.get("LOG_LEVEL", "INFO"),
            "--concurrency", environ.get("WORKER_CONCURRENCY", "4"),
            *args,
        ]  # fmt: skip
    if subcommand == "beat":
        return [
            python, "-m", "celery", "-A", "controlplane", "beat",
            "--loglevel", environ.get("LOG_LEVEL", "INFO"),
            "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
            *args,
        ]  # fmt: skip
    if subcommand == "migrate":
        return [python, "manage.py", "migrate", "--noinput", *args]
    if subcommand == "manage":
        return [python, "manage.py", *args]
    raise ValueError(subcommand)


def healthcheck(args: Sequence[str], environ: Mapping[str, str]) -> int:
    if list(args) == ["worker"]:
        return _worker_ping()
    port = environ.get("WEB_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"
    # Django answers 400 to a host it does not serve: ask as the first one it does.
    request = urllib.request.Request(url, headers={"Host": health_host(environ)})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - fixed URL
            if answer.status == 200:
                return 0
            print(f"{url} answered {answer.status}.", file=sys.stderr)
    except (OSError, urllib.error.URLError) as error:
        print(f"{url} did not answer: {error}.", file=sys.stderr)
    return 1


def health_host(environ: Mapping[str, str]) -> str:
    """A name ``ALLOWED_HOSTS`` accepts: its first entry (``.example.org`` → ``example.org``,
    ``*`` → ``localhost``)."""
    first = next((h.strip() for h in environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()), "")
    first = first.lstrip(".")
    return "localhost" if first in {"", "*"} else first


def _worker_ping() -> int:
    """Ask this host's worker (node ``celery@<hostname>``) for a pong over the broker."""
    from celery import Celery

    app = Celery(
        "cutover-healthcheck", broker=os.environ.get("REDIS_URL", ""), set_as_current=False
    )
    node = f"celery@{socket.gethostname()}"
    try:
        replies = app.control.ping(destination=[node], timeout=5)
    except Exception as error:  # the broker down: unhealthy, said in one line
        print(f"The broker did not answer: {error}.", file=sys.stderr)
        return 1
    if any(node in reply for reply in replies):
        return 0
    print(f"The worker {node} did not answer a ping.", file=sys.stderr)
    return 1


USAGE = "Usage: entrypoint.sh web|worker|beat|migrate|healthcheck [worker]|manage ARGS…"


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 64
    subcommand, args = argv[0], list(argv[1:])
    if subcommand == "healthcheck":
        return healthcheck(args, os.environ)
    if subcommand not in CHECKED | {"manage"}:
        print(f"Unknown subcommand {subcommand!r}. {USAGE}", file=sys.stderr)
        return 64
    if subcommand in CHECKED:
        preflight()
    line = command_line(subcommand, args, os.environ)
    sys.stdout.flush()
    os.execv(line[0], line)  # noqa: S606 - the fixed process of the subcommand
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
