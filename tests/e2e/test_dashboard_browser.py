"""The fleet dashboard in headless Chromium: log in through the admin, read the tiles,
count the chart's bars, keep a full-page screenshot for a human to look at."""

import datetime as dt
import os
from pathlib import Path

import pytest
from django.utils import timezone

from fleet_app.models import Organization, System, SystemActivityDay, User
from tests.factories import OrganizationFactory, make_system

pytestmark = [pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
]
SCREENSHOTS = Path(__file__).parent / "screenshots"
PASSWORD = "a long demo passphrase"


def _fleet() -> tuple[int, dict[str, int]]:
    """Twelve systems of two customers with a month of activity: (seen today, tiles)."""
    from fleet_app import services

    owner = OrganizationFactory(name="Owner", kind=Organization.Kind.OWNER)
    reseller = services.organization_create(
        actor=None, name="Reseller", kind="reseller", parent=owner
    )
    customers = [
        services.organization_create(actor=None, name=name, kind="customer", parent=reseller)
        for name in ("Acme", "Bellini")
    ]
    now = timezone.now()
    heartbeats = (
        [now - dt.timedelta(minutes=m) for m in (1, 2, 3, 5, 8, 13, 15)]  # active
        + [now - dt.timedelta(hours=3), now - dt.timedelta(days=4)]  # inactive
        + [None, None]  # unknown (registered, never heard from)
    )
    today = now.date()
    activity = []
    for index, heartbeat in enumerate(heartbeats):
        system = make_system(
            customers[index % 2],
            name=f"{'acme' if index % 2 == 0 else 'bellini'}-ns8-{index + 1:02d}",
            type="nethsecurity" if index % 4 == 3 else "nethserver",
            last_heartbeat_at=heartbeat,
            last_inventory_at=now if index % 3 else None,
        )
        if heartbeat is not None:
            joined = (index * 3) % 30
            last = (today - heartbeat.date()).days
            activity += [
                SystemActivityDay(system=system, day=today - dt.timedelta(days=d))
                for d in range(last, joined + 1)
            ]
    make_system(customers[0], name="acme-unregistered", registered=False)
    SystemActivityDay.objects.bulk_create(activity)
    # Today's bar: the silent-for-hours system counts too when it fell silent today.
    seen_today = sum(1 for h in heartbeats if h is not None and h.date() == today)
    return seen_today, {
        "total": 12,
        "active": 7,
        "inactive": 2,
        "unknown": 3,
        "suspended": 0,
        "unregistered": 1,
        "never-inventoried": 1 + sum(1 for i in range(11) if i % 3 == 0),
    }


def test_a_staff_member_sees_the_fleet_dashboard(live_server, transactional_db, monkeypatch):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    seen_today, expected = _fleet()
    assert System.objects.count() == expected["total"]
    User.objects.create_superuser("staff@example.com", PASSWORD)
    # Playwright's sync API runs an event loop in this thread; the ORM is done with by now.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            # Chromium reports what the Content Security Policy blocked on the console.
            blocked = []
            page.on(
                "console",
                lambda message: (
                    blocked.append(message.text)
                    if "Content Security Policy" in message.text
                    else None
                ),
            )
            page.goto(f"{live_server.url}/dashboard/fleet/")
            # Not logged in: the admin login page, which sends us back afterwards.
            assert "/admin/login/" in page.url
            page.fill("#id_username", "staff@example.com")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{live_server.url}/dashboard/fleet/")

            assert page.locator("h1").inner_text() == "Fleet dashboard"
            for key, value in expected.items():
                tile = page.locator(f"#count-{key}")
                assert tile.is_visible(), key
                assert tile.inner_text().strip() == str(value), key
            bars = page.locator("#activity-chart rect.bar")
            assert bars.count() == 30
            assert bars.last.get_attribute("data-count") == str(seen_today)
            assert float(bars.last.get_attribute("height")) > 0
            assert page.locator("#activity-chart text.day-label").count() == 6
            silent = page.locator("#silent-systems tbody tr")
            assert silent.count() == expected["inactive"]
            assert (
                silent.first.locator("a")
                .get_attribute("href")
                .startswith("/admin/fleet_app/system/")
            )
            # The type bars get their length from a script file, not a style attribute.
            widths = page.eval_on_selector_all(
                ".fleet .fill", "bars => bars.map(b => b.style.width)"
            )
            assert widths and all(width.endswith("%") for width in widths)
            assert blocked == []
            page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
            # The admin's dark theme: the page uses the admin's colour variables only.
            page.emulate_media(color_scheme="dark")
            page.screenshot(path=str(SCREENSHOTS / "dashboard-dark.png"), full_page=True)
        finally:
            browser.close()
