"""Backup gauges on /metrics."""

import pytest

from backups_app import service_backups
from tests.backups_app.helpers import post_backup
from tests.factories import make_system

pytestmark = pytest.mark.django_db


def test_metrics_show_freshness_bytes_and_overdue_drills(client, system, customer, tmp_path):
    post_backup(client, system, b"x" * 100)
    make_system(customer, name="never")
    (tmp_path / "d").mkdir()
    service_backups.service_create(
        actor=None, name="share", adapter="directory", config={"path": str(tmp_path / "d")}
    )
    text = client.get("/metrics").content.decode()
    assert 'cutover_backup_systems{freshness="fresh"} 1.0' in text
    assert 'cutover_backup_systems{freshness="never"} 1.0' in text
    assert "cutover_backup_stored_bytes 100.0" in text
    assert 'cutover_backup_drill_overdue{service="share"} 1.0' in text
