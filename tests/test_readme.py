"""The README is true: every ``manage.py`` command it shows runs in the demo (a scratch
SQLite database, tasks in-process, DEBUG on: what ``make run`` serves) without a
traceback, and every path it names answers without a 5xx.

Each command and path the README shows must be listed below, either as what is run (its
placeholders filled in) or as excluded with the reason, so a new one in the README fails
this test until it is classified here.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# README text after "manage.py " → the argv lists run for it ({…}: filled by the driver).
COMMANDS: dict[str, list[list[str]]] = {
    "check": [["check"]],
    "check --deploy": [["check", "--deploy"]],
    # No server in the scratch setup: the run is refused in one sentence (it also has a
    # test of its own against a live server, tests/fleet_app/test_simulate_fleet.py).
    "simulate_fleet --systems 200": [["simulate_fleet", "--systems", "2", "--url", "{closed_url}"]],
    "simulate_fleet --systems N --url http://127.0.0.1:8000": [
        ["simulate_fleet", "--systems", "2", "--url", "{closed_url}"]
    ],
    "axes_reset": [["axes_reset"]],
    "permissions_table": [["permissions_table"]],
    "import_legacy_mappings FILE.csv|FILE.json|FILE.jsonl [--apply] [--organization ORG] "
    "[--born-registered] [--actor EMAIL]": [
        ["import_legacy_mappings", "{mappings_csv}", "--organization", "{org}"],
        [
            "import_legacy_mappings",
            "{mappings_csv}",
            "--apply",
            "--organization",
            "{org}",
            "--actor",
            "{email}",
        ],
    ],  # fmt: skip
    "rotate_mappings [filters] [--apply] [--wait]": [
        ["rotate_mappings"],
        ["rotate_mappings", "--apply", "--wait"],
    ],
    "import_legacy_accounts FILE… [--apply] [--skip-bad-rows] [--under ORG]": [
        ["import_legacy_accounts", "{accounts_json}"],
        ["import_legacy_accounts", "{accounts_json}", "--apply", "--under", "{reseller}"],
    ],
    "dedupe_users [--apply] [--prefer ID] [--delete] [--json|--csv]": [
        ["dedupe_users"],
        ["dedupe_users", "--json"],
        ["dedupe_users", "--csv"],
        ["dedupe_users", "--apply"],
    ],
    "quotas --verify|--sync|--reset-usage": [
        ["quotas", "--verify"],
        ["quotas", "--sync"],
        ["quotas", "--reset-usage"],
    ],
    "quotas --verify": [["quotas", "--verify"]],
    "zfs_plan [--dataset ID] [--job NAME]": [["zfs_plan"]],
    "zfs_check [--all]": [["zfs_check"], ["zfs_check", "--all"]],
    "backup cutover-db": [["backup", "cutover-db"]],
    "restore 42": [["restore", "{backup_run}"]],
    # On SQLite cutover-db is the portable data adapter, whose target is an alias, not a
    # database: refused in one sentence here (the PostgreSQL case has its own tests).
    "restore 42 --target database=cutover_copy --apply": [
        ["restore", "{backup_run}", "--target", "database=cutover_copy", "--apply"]
    ],
    "bundle_keys --public": [["bundle_keys", "--public"]],
    "bundle_keys --trust FILE": [["bundle_keys", "--trust", "{peer_key}", "--name", "peer"]],
    "export_bundle --output PATH [--organization SLUG …] [--selection NAME]": [
        ["export_bundle", "--output", "{bundle_dir}", "--organization", "{org}"]
    ],
    "import_bundle PATH [--apply] [--map-org SRC=DST …] [--map-file FILE]": [
        ["import_bundle", "{bundle_dir}"]
    ],
    # Nothing serves at the URL in the scratch setup: refused in one sentence (the pull
    # between two live servers is tests/migrations_app/bundles/test_streaming.py).
    "import_bundle --from URL --token-file FILE [--organization SLUG …]": [
        [
            "import_bundle",
            "--from",
            "{closed_url}",
            "--token-file",
            "{peer_key}",
            "--organization",
            "{org}",
        ]
    ],  # fmt: skip
    "storage_sweep": [["storage_sweep"]],
    "storage_sweep --apply": [["storage_sweep", "--apply"]],
    "createsuperuser": [["createsuperuser", "--noinput", "--email", "readme.admin@example.org"]],
}
# Commands named in the README without the "manage.py " in front.
ALSO_SHOWN = {
    "axes_reset_username EMAIL": [["axes_reset_username", "{email}"]],
    "axes_reset_ip ADDRESS": [["axes_reset_ip", "203.0.113.9"]],
}
# Run here but allowed to exit non-zero, in one sentence: (argv[0], why).
REFUSALS_EXPECTED = {
    "simulate_fleet": "nothing listens at the URL",
    "restore": "the SQLite demo's adapter restores into an alias, not a database",
    "zfs_check": "exit 1/2 is WARN/CRIT by design",
    "import_bundle": "the demo's own bundle is signed by a key it does not list as trusted",
}
EXCLUDED_COMMANDS: dict[str, str] = {
    # Named in prose by its bare name; its full form above is run.
    "import_legacy_mappings": "the full form (FILE.csv|FILE.json|FILE.jsonl …) is run above",
    # Serves until stopped: make run starts it; tests/test_production_stack.py serves gunicorn.
    "runserver": "it serves until stopped",
}

# Paths the README names → (method, path, body, who). Bodies: dict (JSON), str (raw bytes).
PATHS: dict[str, list[tuple[str, str, object, str]]] = {
    "/": [("GET", "/", None, "staff")],
    "/admin/": [("GET", "/admin/", None, "staff")],
    "/admin/login/": [("GET", "/admin/login/", None, "anonymous")],
    "/api/": [("GET", "/api/", None, "staff")],
    "/api/cutover/": [("GET", "/api/cutover/", None, "staff")],
    "/api/docs/": [("GET", "/api/docs/", None, "staff")],
    "/api/schema/": [("GET", "/api/schema/", None, "staff")],
    "/api/backups/cluster-backups/": [("GET", "/api/backups/cluster-backups/", None, "staff")],
    "/api/backups/services/overview/": [("GET", "/api/backups/services/overview/", None, "staff")],
    "/api/bundles/streams/": [("GET", "/api/bundles/streams/", None, "staff")],
    "/dashboard/fleet/": [("GET", "/dashboard/fleet/", None, "staff")],
    "/dashboard/cutover/": [("GET", "/dashboard/cutover/", None, "staff")],
    "/dashboard/backups/": [("GET", "/dashboard/backups/", None, "staff")],
    "/dashboard/zfs/": [("GET", "/dashboard/zfs/", None, "staff")],
    "/metrics": [("GET", "/metrics", None, "anonymous")],
    "/healthz": [("GET", "/healthz", None, "anonymous")],
    "POST /backend/api/systems/register": [
        ("POST", "/backend/api/systems/register", {"system_secret": "my_nope.nope"}, "anonymous")
    ],
    "POST {collect_url}/heartbeat": [("POST", "/collect/api/systems/heartbeat", None, "system")],
    "POST {collect_url}/inventory": [
        ("POST", "/collect/api/systems/inventory", {"facts": {}}, "system")
    ],
    "GET {collect_url}/info": [("GET", "/collect/api/systems/info", None, "system")],
    "POST {collect_url}/backups": [
        ("POST", "/collect/api/systems/backups", "encrypted-bytes", "system")
    ],
    "GET {collect_url}/backups": [("GET", "/collect/api/systems/backups", None, "system")],
    "GET {collect_url}/backups/{id}": [
        ("GET", "/collect/api/systems/backups/{cluster_backup}", None, "system")
    ],
    "DELETE {collect_url}/backups/{id}": [
        ("DELETE", "/collect/api/systems/backups/{cluster_backup}", None, "system")
    ],
    "/proxy/credentials": [("GET", "/proxy/credentials", None, "anonymous")],
    "/info": [("GET", "/collect/api/systems/info", None, "system")],
    "/systems/<system_key>": [("GET", "/systems/{system_key}", None, "staff")],
    "/dashboard/backups/restore/": [("GET", "/dashboard/backups/restore/", None, "staff")],
    "/dashboard/cutover/import/": [("GET", "/dashboard/cutover/import/", None, "staff")],
    "/api/cutover/mappings/": [("GET", "/api/cutover/mappings/", None, "staff")],
    "GET /proxy/credentials": [("GET", "/proxy/credentials", None, "anonymous")],
    "POST /api/Utils/freekey": [("POST", "/api/Utils/freekey", {}, "anonymous")],
    'POST /api/backups/backup-runs/ {"service"}': [
        ("POST", "/api/backups/backup-runs/", {"service": "cutover-db"}, "staff")
    ],
}
# Backticked things that start with "/" but are files on a host, not addresses.
NOT_PATHS = {
    "/tmp",  # noqa: S108 - named in the README, never opened
    "/usr/sbin/zfs",
    "/usr/sbin/zpool",
    "/usr/bin/ssh",
    "/data/media",
    "/data/work",
}


def readme_commands() -> set[str]:
    text = README.read_text()
    found = set()
    for match in re.finditer(r"manage\.py ([^`\n]+)", text):
        command = match.group(1).split("  #")[0].strip().rstrip("`").strip()
        found.add(re.sub(r"\s+", " ", command))
    for match in re.finditer(r"`(axes_reset_\w+ [A-Z]+)`", text):
        found.add(match.group(1))
    return found


def readme_paths() -> set[str]:
    text = README.read_text()
    spans = re.findall(r"`((?:(?:GET|POST|DELETE) )?(?:/|\{collect_url\}/)[^`]*)`", text)
    found = set()
    for span in spans:
        span = span.strip()
        if span.startswith("/") and " " in span:
            continue  # prose, not an address
        # Table cells name a call with its body: keep the method and address.
        method_path = re.match(r"((?:GET|POST|DELETE) \S+)(?: (\{\"service\"\}))?", span)
        if method_path:
            span = method_path.group(1) + (
                f" {method_path.group(2)}" if method_path.group(2) else ""
            )
        found.add(span)
    return found


def test_every_readme_command_and_path_is_listed_here():
    shown = readme_commands()
    listed = set(COMMANDS) | set(ALSO_SHOWN) | set(EXCLUDED_COMMANDS)
    assert shown - listed == set(), "README commands this test does not run or exclude"
    assert listed - shown == set(), "commands listed here that the README no longer shows"
    named = readme_paths()
    assert named - set(PATHS) - NOT_PATHS == set(), "README paths this test does not request"


def test_the_readme_commands_and_paths_work_in_the_demo(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REDIS", "CELERY", "DATABASE_URL", "ALLOWED_HOSTS"))
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DEBUG="1",
        METRICS_PUBLIC="1",
        MEDIA_ROOT=str(tmp_path / "media"),
        BACKUP_WORK_DIR=str(tmp_path / "work"),
        RUN_DIR=str(tmp_path / "run"),
        BUNDLE_EXPORT_ROOT=str(tmp_path / "bundles"),
        BUNDLE_UPLOAD_ROOT=str(tmp_path / "bundle-uploads"),
        BUNDLE_SIGNING_KEY_FILE=str(tmp_path / "bundle-signing.key"),
        DJANGO_SUPERUSER_PASSWORD="readme-Password-4821",
        DJANGO_SETTINGS_MODULE="controlplane.settings",
    )
    plan = {
        "scratch": str(tmp_path),
        "commands": [argv for runs in (*COMMANDS.values(), *ALSO_SHOWN.values()) for argv in runs],
        "requests": [request for calls in PATHS.values() for request in calls],
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "readme_demo.py")], input=json.dumps(plan),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])

    for step in results["setup"]:
        assert step["code"] == 0 and not step["traceback"], step
    failures = []
    for result in results["commands"]:
        name = result["argv"][0]
        if result["traceback"]:
            failures.append(
                f"manage.py {' '.join(result['argv'])}: traceback\n{result['traceback']}"
            )
        elif result["code"] != 0 and name not in REFUSALS_EXPECTED:
            failures.append(f"manage.py {' '.join(result['argv'])}: exit {result['code']}\n"
                            f"{result['stderr']}")  # fmt: skip
        elif result["code"] != 0:
            # A refusal is one sentence, as every command's bad input is.
            lines = [line for line in result["stderr"].splitlines() if line.strip()]
            assert lines, result
    for request in results["requests"]:
        if request["status"] >= 500:
            failures.append(f"{request['method']} {request['path']}: {request['status']}\n"
                            f"{request['body']}")  # fmt: skip
    assert failures == [], "\n\n".join(failures)

    answers = {(r["method"], r["path"]): r["status"] for r in results["requests"]}
    assert answers[("GET", "/api/cutover/")] == 200
    assert answers[("GET", "/dashboard/fleet/")] == 200
    assert answers[("POST", "/api/backups/backup-runs/")] == 202
    backed_up = next(r for r in results["commands"] if r["argv"] == ["backup", "cutover-db"])
    assert backed_up["code"] == 0 and "succeeded" in backed_up["stdout"], backed_up
