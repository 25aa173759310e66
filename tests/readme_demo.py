"""The demo as ``make run`` sets it up, driven by tests/test_readme.py in its own interpreter.

Environment: a scratch SQLite file (``DATABASE_URL``), no broker (tasks in-process) and
``DEBUG`` on, as ``make run``. Reads a plan (JSON on stdin): ``commands``, each an argv
after ``manage.py`` whose ``{placeholders}`` are filled from what the demo holds by then,
and ``requests`` (method, path, JSON body or null, who: ``staff``, ``system`` or
``anonymous``). Migrates, seeds the demo, runs each command as ``manage.py`` would (its
exit code, and any traceback it ends with), requests each path, and prints the results
as JSON on stdout's last line.
"""

import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path


def run_command(argv: list[str]) -> dict:
    from django.core.management import ManagementUtility

    out, err = io.StringIO(), io.StringIO()
    code, trace = 0, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            ManagementUtility(["manage.py", *argv]).execute()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            code, trace = 1, traceback.format_exc()
    stderr = err.getvalue()
    if "Traceback (most recent call last)" in stderr and not trace:
        trace = stderr
    return {
        "argv": argv,
        "code": code,
        "stdout": out.getvalue()[-2000:],
        "stderr": stderr[-2000:],
        "traceback": trace,
    }


def main() -> None:
    plan = json.loads(sys.stdin.read())
    scratch = Path(plan["scratch"])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    setup = [run_command(argv) for argv in (["migrate", "--noinput"], ["seed_demo"],
                                             ["seed_demo_cutover"])]  # fmt: skip
    from fleet_app import services
    from fleet_app.models import Organization, User

    customer = Organization.objects.filter(kind="customer").order_by("name").first()
    staff = User.objects.get(email="admin@cutover.local")
    # The files the README's import commands read: a small export of each kind.
    mappings = scratch / "mappings.csv"
    mappings.write_text(
        "legacy_system_id,legacy_token,name\n"
        "readme-legacy-1,token-one-0123456789,readme-one\n"
        "readme-legacy-2,token-two-0123456789,readme-two\n"
    )
    # Another instance's public bundle key, as its ``bundle_keys --public`` prints it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    peer_key = scratch / "peer.pub"
    peer_key.write_text(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    )
    accounts = scratch / "accounts.json"
    accounts.write_text(
        json.dumps(
            {
                "organizations": [{"legacy_id": "L-ORG-1", "name": "Readme Legacy Org"}],
                "users": [
                    {
                        "legacy_id": "L-U-1",
                        "email": "readme.user@example.org",
                        "memberships": "L-ORG-1:reader",
                    },
                ],
            }  # fmt: skip
        )
    )

    def values() -> dict[str, str]:
        from backups_app.models import BackupRun, ClusterBackup
        from fleet_app.models import System

        latest = BackupRun.objects.order_by("-pk").first()
        uploaded = ClusterBackup.objects.filter(system__name="readme-system").first()
        return {
            "mappings_csv": str(mappings),
            "accounts_json": str(accounts),
            "org": customer.slug,
            "reseller": Organization.objects.filter(kind="reseller").order_by("name")[0].slug,
            "email": staff.email,
            "backup_run": str(latest.pk if latest else 0),
            "closed_url": "http://127.0.0.1:9",
            "peer_key": str(peer_key),
            "bundle_dir": str(scratch / "bundle"),
            "cluster_backup": str(uploaded.pk if uploaded else 0),
            "system_key": next(
                iter(
                    System.objects.filter(name="readme-system").values_list("system_key", flat=True)
                ),
                "",
            ),
        }

    commands = []
    for argv in plan["commands"]:
        filled = [part.format(**values()) for part in argv]
        commands.append(run_command(filled))

    from django.test import Client

    issued = services.system_create(actor=None, organization=customer, name="readme-system")
    services.system_register(system_secret=issued.system_secret)
    system = issued.system
    system.refresh_from_db()
    clients = {"anonymous": Client(raise_request_exception=False)}
    clients["staff"] = Client(raise_request_exception=False)
    clients["staff"].force_login(staff)
    import base64

    basic = base64.b64encode(f"{system.system_key}:{issued.system_secret}".encode()).decode()
    clients["system"] = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Basic {basic}")
    requests = []
    for method, path, body, who in plan["requests"]:
        client = clients[who]
        path = path.format(**values())
        if method == "GET":
            response = client.get(path)
        elif method == "DELETE":
            response = client.delete(path)
        elif isinstance(body, str):
            response = client.post(
                path, data=body.encode(), content_type="application/octet-stream",
                HTTP_X_FILENAME="readme.tar.gz",
            )  # fmt: skip
        elif body is None:
            response = client.post(path)
        else:
            response = client.post(path, data=body, content_type="application/json")
        location = response.get("Location", "")
        streamed = response.streaming
        content = b"".join(response.streaming_content) if streamed else response.content
        requests.append({"method": method, "path": path, "status": response.status_code,
                         "location": location,
                         "body": content[:300].decode(errors="replace")})  # fmt: skip
    print(json.dumps({"setup": setup, "commands": commands, "requests": requests}))


if __name__ == "__main__":
    main()
