"""Demo cluster backups: the live demo fleet's nightly backup (a hook of
fleet_app/demo_live.py) and seed_demo_backups run again."""

import datetime as dt
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups_app.demo import demo_backup_upload, demo_backups_due
from backups_app.models import ClusterBackup
from fleet_app import demo_live
from tests.factories import make_system

pytestmark = pytest.mark.django_db


def test_the_live_fleet_sends_the_nightly_backup_of_those_that_back_up(customer):
    now = timezone.now()
    late = make_system(customer, name="late", last_heartbeat_at=now)
    recent = make_system(customer, name="recent", last_heartbeat_at=now)
    never = make_system(customer, name="never", last_heartbeat_at=now)
    demo_backup_upload(late, 0)
    demo_backup_upload(recent, 0)
    ClusterBackup.objects.filter(system=late).update(uploaded_at=now - dt.timedelta(hours=30))

    # The simulator's tick runs the hook backups_app registered.
    assert demo_backups_due in demo_live._hooks
    demo_live.DemoFleet().tick()

    assert ClusterBackup.objects.filter(system=late).count() == 2
    assert ClusterBackup.objects.filter(system=late).latest("uploaded_at").uploaded_at > now
    assert ClusterBackup.objects.filter(system=recent).count() == 1
    assert not ClusterBackup.objects.filter(system=never).exists()
    assert demo_backups_due(system_ids=[late.pk, recent.pk, never.pk], now=timezone.now()) == 0


def test_seed_demo_backups_needs_the_demo_fleet():
    with pytest.raises(CommandError, match="seed_demo first"):
        call_command("seed_demo_backups", stdout=StringIO())
