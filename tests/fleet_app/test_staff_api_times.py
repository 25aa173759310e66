"""Time filters take any valid ISO 8601 time: it reaches the database in UTC, whatever
offset it was written with (PostgreSQL refuses offsets beyond 15:59)."""

import datetime as dt

from django.utils import timezone
from rest_framework.test import APIClient


def test_any_utc_offset_is_read_in_utc(alice, system):
    system.last_heartbeat_at = timezone.now()
    system.save(update_fields=["last_heartbeat_at"])
    api = APIClient()
    api.force_authenticate(alice)
    # 2000-01-01T00:00-16:02 is 2000-01-01T16:02Z: the system was seen after it.
    for url, name in (
        ("/api/systems/", "seen_after"),
        (f"/api/systems/{system.pk}/changes/", "seen_after"),
        ("/api/changes/", "since"),
    ):
        response = api.get(url, {name: "2000-01-01T00:00:00-16:02"})
        assert response.status_code == 200, (url, response.content)
    listed = api.get("/api/systems/", {"seen_after": "2000-01-01T00:00:00-16:02"}).json()
    assert [row["id"] for row in listed["results"]] == [system.pk]
    future = (timezone.now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    later = api.get("/api/systems/", {"seen_after": future + "+23:59"}).json()
    assert later["results"] == []


def test_a_time_beyond_the_calendar_is_its_first_or_last_moment(alice, system):
    api = APIClient()
    api.force_authenticate(alice)
    first = api.get("/api/systems/", {"seen_before": "0001-01-01T00:00:00+16:00"})
    last = api.get("/api/systems/", {"seen_after": "9999-12-31T23:59:59-16:00"})
    assert first.status_code == last.status_code == 200
    assert first.json()["results"] == last.json()["results"] == []
