"""The pages that ask before destroying, and the pages that replace the shell, in headless
Chromium: a secret shown once that a reload does not show again, a confirmation with the
count and the names (cancel, then confirm), the mappings upload with its plan, and the
restore with its plan. Screenshots are kept under var/test-artifacts/browser/."""

import os
from pathlib import Path

import pytest
from django.conf import settings

from fleet_app.models import System, User
from migrations_app.models import LegacyMapping
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS
from tests.factories import OrganizationFactory, make_system

pytestmark = [pytest.mark.browser]

ARTIFACTS = Path(settings.BASE_DIR) / "var" / "test-artifacts" / "browser"
PASSWORD = "a long demo passphrase"


@pytest.fixture
def browser_page(live_server, transactional_db, monkeypatch):
    """A signed-in superuser's page in headless Chromium, and what CSP blocked."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    User.objects.create_superuser("staff@example.com", PASSWORD)
    # Playwright's sync API runs an event loop in this thread.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            blocked: list[str] = []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(f"{live_server.url}/admin/login/?next=/admin/")
            page.fill("#id_username", "staff@example.com")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/admin/")
            yield page, blocked
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_a_secret_is_shown_once_and_a_delete_asks_first(browser_page, live_server):
    page, blocked = browser_page
    customer = OrganizationFactory(name="Acme")
    make_system(customer, name="acme-fw-01")

    page.goto(f"{live_server.url}/admin/fleet_app/system/add/")
    page.select_option("#id_organization", str(customer.pk))
    page.fill("#id_name", "acme-edge-02")
    page.click("input[name=_save]")
    page.wait_for_url("**/secret/**")
    secret = page.locator("code.system-secret").inner_text()
    assert len(secret) > 20
    _shot(page, "secret-shown-once")
    page.reload()
    assert page.locator("#already-shown").is_visible()
    assert secret not in page.content()
    assert System.objects.filter(name="acme-edge-02").count() == 1
    _shot(page, "secret-already-shown")

    page.goto(f"{live_server.url}/admin/fleet_app/system/")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "soft_delete")
    page.click("button[name=index]")
    assert page.locator("h1").inner_text() == "Delete 2 systems?"
    names = page.locator("#confirm-names > li").all_inner_texts()
    assert any("acme-fw-01" in n for n in names) and any("acme-edge-02" in n for n in names)
    _shot(page, "confirm-delete")
    page.click("#confirm-cancel")
    assert "/admin/fleet_app/system/" in page.url
    assert System.objects.filter(deleted_at__isnull=False).count() == 0

    page.check("#action-toggle")
    page.select_option("select[name=action]", "soft_delete")
    page.click("button[name=index]")
    page.click("#confirm-yes")
    assert "2 system(s) deleted." in page.locator("ul.messagelist").inner_text()
    assert System.objects.filter(deleted_at__isnull=False).count() == 2
    assert blocked == []


def test_a_mappings_upload_shows_its_plan_before_importing(
    browser_page, live_server, celery_eager, settings, tmp_path
):
    page, blocked = browser_page
    settings.MEDIA_ROOT = str(tmp_path / "media")
    customer = OrganizationFactory(name="Acme")
    wrong = tmp_path / "mappings.txt"
    wrong.write_text("not an export")
    export = tmp_path / "mappings.csv"
    export.write_text(
        "legacy_system_id,legacy_token,name\n"
        "LEG-1,token-one-0123456789,acme-one\n"
        "LEG-2,token-two-0123456789,acme-two\n"
        "LEG-1,token-again,repeated\n"
    )

    page.goto(f"{live_server.url}/dashboard/cutover/import/")
    page.set_input_files("#id_file", str(wrong))
    page.click("#upload-submit")
    assert "must end in" in page.locator("#error-file").inner_text()
    _shot(page, "mappings-upload-error")

    page.set_input_files("#id_file", str(export))
    page.select_option("#id_organization", str(customer.pk))
    page.click("#upload-submit")
    page.wait_for_url("**/dashboard/cutover/import/*/")
    assert page.locator("#count-created").inner_text() == "2"
    assert page.locator("#count-refused").inner_text() == "1"
    assert "LEG-1 → acme-one (Acme)" in page.locator("#import-examples").inner_text()
    assert "already given" in page.locator("#import-refusals").inner_text()
    assert LegacyMapping.objects.count() == 0
    _shot(page, "mappings-plan")

    plan_url = page.url
    with page.expect_navigation():
        page.click("#apply-submit")
    assert page.url != plan_url
    assert page.locator("#import-state").inner_text() == "Partially failed"
    assert page.locator("#count-created").inner_text() == "2"
    assert LegacyMapping.objects.count() == 2
    _shot(page, "mappings-imported")
    assert blocked == []


def test_a_restore_is_picked_planned_and_confirmed(
    browser_page, live_server, celery_eager, settings, tmp_path
):
    from backups_app.service_backups import services

    page, blocked = browser_page
    settings.BACKUP_STORAGE_URL = ""
    settings.BACKUP_LOCAL_ROOT = tmp_path / "store"
    settings.BACKUP_WORK_DIR = tmp_path / "work"
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "app.conf").write_text("good\n")
    service = services.service_create(
        actor=None, name="conf", adapter="directory", config={"path": str(folder)}
    )
    backup = services.backup_run_start(actor=None, service=service)
    backup.refresh_from_db()
    assert backup.state == "succeeded", backup.error
    (folder / "app.conf").write_text("broken\n")

    page.goto(f"{live_server.url}/dashboard/backups/restore/")
    page.fill("#id_target", "nonsense")
    page.click("#plan-submit")
    assert "key=value" in page.locator("#error-target").inner_text()
    page.fill("#id_target", "")
    page.select_option("#id_backup", str(backup.pk))
    page.click("#plan-submit")
    page.wait_for_url("**/dashboard/backups/restore/*/")
    assert "app.conf" in page.locator("#plan-table").inner_text()
    assert (folder / "app.conf").read_text() == "broken\n"
    _shot(page, "restore-plan")

    plan_url = page.url
    with page.expect_navigation():
        page.click("#apply-submit")
    assert page.url != plan_url, page.locator("#content").inner_text()
    assert page.locator("#restore-state").inner_text() == "Succeeded"
    assert page.locator("#restore-verified").inner_text() == "Verified: yes"
    assert (folder / "app.conf").read_text() == "good\n"
    _shot(page, "restore-done")
    assert blocked == []
