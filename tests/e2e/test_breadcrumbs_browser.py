"""Breadcrumbs in headless Chromium: every dashboard's look exactly like the admin's own
(background, colours, padding, links), in the light and the dark theme, and so does the
list form (<ol class="breadcrumbs">) some admin pages use. Screenshots are kept under
var/test-artifacts/ for a human to look at."""

import os
from pathlib import Path

import pytest

from fleet_app.models import User
from tests.e2e.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
PASSWORD = "a long demo passphrase"
DASHBOARDS = {
    "fleet": "/dashboard/fleet/",
    "cutover": "/dashboard/cutover/",
    "backups": "/dashboard/backups/",
    "zfs": "/dashboard/zfs/",
}
# What makes breadcrumbs look like the admin's: the bar, its text, its links.
LOOK = """crumbs => {
    const bar = getComputedStyle(crumbs);
    const link = getComputedStyle(crumbs.querySelector("a"));
    return {
        background: bar.backgroundColor, color: bar.color, padding: bar.padding,
        margin: bar.margin, list: bar.listStyleType, display: bar.display,
        font: bar.fontSize, link: link.color,
        top: Math.round(crumbs.getBoundingClientRect().top),
    };
}"""
AS_LIST = """() => {
    const div = document.querySelector("div.breadcrumbs");
    const list = document.createElement("ol");
    list.className = "breadcrumbs";
    list.innerHTML = '<li><a href="/admin/">Home</a></li>'
        + '<li><a href="/admin/fleet_app/">Fleet</a></li><li aria-current="page">Plan</li>';
    div.replaceWith(list);
}"""


def _look(page) -> dict:
    return page.locator(".breadcrumbs").first.evaluate(LOOK)


def test_dashboard_breadcrumbs_look_like_the_admins(live_server, transactional_db, monkeypatch):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    User.objects.create_superuser("staff@example.com", PASSWORD)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            for theme in ("light", "dark"):
                page = browser.new_page(viewport={"width": 1366, "height": 700}, color_scheme=theme)
                page.goto(f"{live_server.url}/admin/login/")
                page.fill("#id_username", "staff@example.com")
                page.fill("#id_password", PASSWORD)
                page.click("input[type=submit]")
                page.wait_for_url(f"{live_server.url}/admin/")
                page.goto(f"{live_server.url}/admin/fleet_app/system/")
                admin = _look(page)
                assert admin["background"] not in ("rgba(0, 0, 0, 0)", "transparent")

                for name, url in DASHBOARDS.items():
                    page.goto(f"{live_server.url}{url}")
                    assert page.locator("nav div.breadcrumbs a").first.inner_text() == "Home"
                    assert _look(page) == admin, name
                    page.screenshot(path=str(ARTIFACTS / f"breadcrumbs-{name}-{theme}.png"))

                # The list form: the same bar, items in a row with the admin's separator.
                page.evaluate(AS_LIST)
                listed = _look(page)
                assert {k: v for k, v in listed.items() if k not in ("list", "display")} == {
                    k: v for k, v in admin.items() if k not in ("list", "display")
                }
                assert listed["list"] == "none"
                items = page.locator("ol.breadcrumbs li")
                tops = {round(items.nth(n).bounding_box()["y"]) for n in range(items.count())}
                assert len(tops) == 1  # one line, not a numbered column
                separator = items.nth(1).evaluate("li => getComputedStyle(li, '::before').content")
                assert separator == '"\u203a"'
                page.screenshot(path=str(ARTIFACTS / f"breadcrumbs-list-{theme}.png"))
                page.close()
        finally:
            browser.close()
