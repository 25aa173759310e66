"""Time filters refuse a UTC offset no clock has, instead of failing in the database."""

from rest_framework.test import APIClient


def test_an_impossible_utc_offset_is_a_400(alice, system):
    api = APIClient()
    api.force_authenticate(alice)
    for url in (
        "/api/systems/",
        f"/api/systems/{system.pk}/changes/",
        "/api/changes/",
    ):
        name = "since" if url == "/api/changes/" else "seen_after"
        response = api.get(url, {name: "0191-10-24T14:41:22.4-16:02"})
        assert response.status_code == 400, url
        assert response.json() == {name: ["Give a UTC offset between -14:00 and +14:00."]}
    assert api.get("/api/systems/", {"seen_after": "2026-01-01T00:00:00+14:00"}).status_code == 200
