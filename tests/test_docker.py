"""docker/ read as shipped (no Docker daemon needed): the image's PostgreSQL client tools
are the compose server's major version, every app service runs a subcommand of the one
entry point, TLS is terminated in front, volumes and the build context are right, and the
example environment names every setting the entry point requires."""

import re
from pathlib import Path

import yaml

from controlplane.entrypoint import CHECKED, REQUIRED, command_line, health_host

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ROOT = DOCKER.parent


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_the_image_client_tools_match_the_compose_server_major_version():
    text = dockerfile()
    (client,) = re.findall(r"^ARG PG_MAJOR=(\d+)$", text, re.MULTILINE)
    assert '"postgresql-client-${PG_MAJOR}"' in text
    assert "BACKUP_PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin" in text
    services = compose()["services"]
    server = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", services["db"]["image"])
    assert server is not None, services["db"]["image"]
    assert server.group(1) == client
    built = {services[name]["build"]["args"]["PG_MAJOR"] for name in ("web", "worker", "beat")}
    assert built == {client}


def test_every_app_service_runs_a_subcommand_of_the_entrypoint():
    services = compose()["services"]
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in dockerfile()
    commands = {name: services[name]["command"] for name in ("migrate", "web", "worker", "beat")}
    assert commands == {name: [name] for name in commands}
    assert set(commands) == CHECKED
    gunicorn = command_line("web", [], {})
    assert gunicorn[1:4] == ["-m", "gunicorn", "controlplane.wsgi"]
    beat = command_line("beat", [], {})
    assert "django_celery_beat.schedulers:DatabaseScheduler" in beat


def test_healthchecks_go_through_the_entrypoint_with_an_allowed_host():
    services = compose()["services"]
    assert services["web"]["healthcheck"]["test"] == [
        "CMD", "/app/docker/entrypoint.sh", "healthcheck",
    ]  # fmt: skip
    assert services["worker"]["healthcheck"]["test"][-2:] == ["healthcheck", "worker"]
    assert health_host({"ALLOWED_HOSTS": "cutover.example.org,other"}) == "cutover.example.org"
    assert health_host({"ALLOWED_HOSTS": ".example.org"}) == "example.org"
    assert health_host({"ALLOWED_HOSTS": "*"}) == "localhost"
    for name in ("db", "redis", "proxy"):
        assert services[name]["healthcheck"]["test"], name


def test_a_tls_proxy_is_the_only_published_port():
    services = compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    assert services["proxy"]["image"].startswith("caddy:")
    assert services["web"]["environment"]["TRUSTED_PROXY_COUNT"] == "1"
    caddyfile = (DOCKER / "Caddyfile").read_text()
    assert "{$CUTOVER_HOST} {" in caddyfile
    assert "reverse_proxy web:8000" in caddyfile
    # The stamp a collect request's queueing is measured from (fleet_app/api/busy.py).
    assert 'header_up X-Request-Start "t={time.now.unix_ms}"' in caddyfile


def test_data_volumes_are_prepared_for_the_app_user():
    text = dockerfile()
    assert "MEDIA_ROOT=/data/media" in text and "BACKUP_WORK_DIR=/data/work" in text
    assert "chown -R cutover:cutover /app /data" in text
    web = compose()["services"]["web"]
    assert {"media:/data/media", "work:/data/work"} <= set(web["volumes"])
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    assert 'chown "$APP_USER:$APP_USER"' in entrypoint
    assert "exec setpriv --reuid=" in entrypoint


def test_the_build_context_leaves_local_state_and_secrets_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "db.sqlite3", "var/", ".env", "docker/.env"} <= ignored


def test_the_example_environment_names_every_required_setting():
    example = (DOCKER / "env.example").read_text()
    named = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    # DATABASE_URL and REDIS_URL come from compose.yaml itself.
    environment = compose()["services"]["web"]["environment"]
    assert set(REQUIRED) <= named | set(environment)
    assert {"SECRET_KEY", "CREDENTIAL_DIGEST_KEY", "ALLOWED_HOSTS", "CUTOVER_HOST"} <= named
    assert re.search(r"^SECRET_KEY=$", example, re.MULTILINE), "no sample key to copy"
