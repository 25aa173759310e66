"""A bundle moved by hand between two live instances, in headless Chromium: staff start an
export in A's admin, wait for A's worker, download the one file, upload it in B's admin,
read the plan on the page, approve it, and B's worker applies it. Screenshots are kept
under var/test-artifacts/browser/."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from django.conf import settings

from fleet_app import services
from fleet_app.models import System
from tests.conftest import needs_postgresql
from tests.e2e.instances import Instance
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS
from tests.factories import ClusterBackupFactory, make_mapping, make_system

pytestmark = [needs_postgresql, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(settings.BASE_DIR) / "var" / "test-artifacts" / "browser"
PASSWORD = "a long test passphrase"
ACTION = "select[name='CHANGE_FORM-action']"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"bundle-{name}.png"), full_page=True)


def _sign_in(page, instance: Instance, email: str) -> None:
    page.goto(f"{instance.url}/admin/login/?next=/admin/")
    page.fill("#id_username", email)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{instance.url}/admin/", timeout=60_000)


def _shown(page, selector: str) -> str:
    """The text of ``selector``, or what the page says instead (an error page, say)."""
    found = page.locator(selector)
    return found.inner_text() if found.count() else page.locator("body").inner_text()[:2000]


def _reload_until(page, selector: str, pattern: str, timeout: float = 60) -> str:
    """Reload the page until the text of ``selector`` matches (the worker has moved on)."""
    deadline = time.monotonic() + timeout
    while True:
        text = page.locator(selector).inner_text() if page.locator(selector).count() else ""
        if re.search(pattern, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)
        page.reload()


def test_export_download_upload_plan_and_approve_in_two_admins(instances, monkeypatch, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is not installed")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    a, b = instances
    owner = services.organization_create(actor=None, name="A Owner", kind="owner", parent=None)
    reseller = services.organization_create(
        actor=None, name="Northwind", kind="reseller", parent=owner
    )
    shop = services.organization_create(
        actor=None, name="Alpha Shop", kind="customer", parent=reseller
    )
    systems = [make_system(shop, name=f"alpha-{n}") for n in range(3)]
    make_mapping(shop, legacy_system_id="NW-1", legacy_token="nw-token-1-xxxxxxxxxx")
    ClusterBackupFactory(system=systems[0], content=b"alpha backup " * 800)
    b.trust(a)
    a.superuser("staff@a.example", PASSWORD)
    b.superuser("staff@b.example", PASSWORD)
    # Playwright's sync API runs an event loop in this thread.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 860}, accept_downloads=True
            )
            page = context.new_page()
            blocked: list[str] = []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
            )

            # A: start the export of the reseller's subtree.
            _sign_in(page, a, "staff@a.example")
            page.goto(f"{a.url}/admin/migrations_app/bundleexport/add/")
            page.fill("#id_organizations", reseller.slug)
            page.select_option("#id_format", "tar")
            _shot(page, "export-form")
            page.click("input[name=_start]")
            page.wait_for_url("**/bundleexport/*/change/")
            assert "Export 1 started." in page.locator("ul.messagelist").inner_text()
            state = _reload_until(page, ".field-state .readonly", r"Succeeded|Failed")
            assert state == "Succeeded", _shown(page, ".field-error")
            assert page.locator(".field-rows .readonly").inner_text() != "0"
            _shot(page, "export-done")

            # A: download it as one file.
            page.select_option(ACTION, "download")
            with page.expect_download() as download_info:
                page.click("button[name=index]")
            download = download_info.value
            assert download.suggested_filename == "bundle-1.tar"
            bundle = tmp_path / download.suggested_filename
            download.save_as(str(bundle))
            assert bundle.stat().st_size > 12_000

            # B: upload it, mapping A's owner onto B's, and read the plan.
            _sign_in(page, b, "staff@b.example")
            page.goto(f"{b.url}/admin/migrations_app/bundleimport/add/")
            page.set_input_files("#id_bundle", str(bundle))
            page.fill("#id_map_org", "a-owner=b-owner")
            _shot(page, "upload-form")
            page.click("input[name=_start]")
            page.wait_for_url("**/bundleimport/*/change/")
            state = _reload_until(page, ".field-state .readonly", r"Succeeded|Failed")
            assert state == "Succeeded", _shown(page, ".field-error")
            plan = page.locator("#bundle-plan")
            creates = {
                row.get_attribute("data-kind"): row.locator("td.create").inner_text()
                for row in plan.locator("tbody tr").all()
            }
            assert creates["organizations"] == "2"
            assert creates["systems"] == "4"
            assert creates["mappings"] == "1"
            assert creates["cluster_backups"] == "1"
            assert "1 to place" in page.locator("#bundle-plan-blobs").inner_text()
            assert b.count("fleet_app_system") == 0  # a plan writes nothing
            assert _shown(page, ".field-stage .readonly").startswith("Planned, nothing written")
            _shot(page, "plan")

            # B: approve; B's worker applies it.
            page.select_option(ACTION, "approve")
            page.click("button[name=index]")
            assert "approved" in page.locator("ul.messagelist").inner_text()
            applied = _reload_until(page, ".field-applied_at .readonly", r"\d")
            assert re.search(r"\d", applied), _shown(page, ".field-error")
            assert _shown(page, ".field-stage .readonly") == "Applied."
            _shot(page, "applied")
            assert blocked == []
        finally:
            browser.close()

    keys = sorted(System.objects.filter(organization=shop).values_list("system_key", flat=True))
    assert sorted(k for (k,) in b.sql("SELECT system_key FROM fleet_app_system")) == keys
    assert b.count("proxy_mappings", "legacy_system_id = 'NW-1'") == 1
    assert b.count("backups_app_clusterbackup") == 1
    assert set(b.blobs().values()) == set(a.blobs().values())
    a.assert_no_server_errors()
    b.assert_no_server_errors()
