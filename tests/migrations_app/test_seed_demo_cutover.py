"""manage.py seed_demo_cutover: a cutover in progress on top of the demo fleet."""

import io

import pytest
from django.core.management import CommandError, call_command

from migrations_app.cutover import selectors, services
from migrations_app.models import CutoverDay, FingerprintAnomaly, LegacyMapping


def run(name: str) -> str:
    out = io.StringIO()
    call_command(name, stdout=out)
    return out.getvalue()


def test_it_needs_the_demo_fleet(db):
    with pytest.raises(CommandError, match="seed_demo first"):
        run("seed_demo_cutover")


def test_it_loads_every_state_once_and_counts_them(db):
    run("seed_demo")

    first = run("seed_demo_cutover")
    second = run("seed_demo_cutover")

    assert "240 legacy mappings" in first and "already loaded" in second
    assert LegacyMapping.objects.count() == 240
    assert FingerprintAnomaly.objects.count() == 2
    states = {m.state for m in LegacyMapping.objects.all()}
    assert states == {"legacy", "rotated", "confirmed", "fingerprinted"}
    # A few confirmed clusters knock after their cutover; every call is counted.
    assert selectors.knocking_list()
    rotated = LegacyMapping.objects.filter(rotated_at__isnull=False).count()
    assert sum(selectors.attempts_by_outcome().values()) == rotated
    # The day counters agree with the stamps, and the cutover is not done yet.
    before = list(CutoverDay.objects.values_list("day", "fingerprinted", "rotated"))
    services.cutover_counters_rebuild()
    assert list(CutoverDay.objects.values_list("day", "fingerprinted", "rotated")) == before
    summary = selectors.cutover_summary()
    assert summary.decommission_ready is False
    assert 0 < summary.percent_done < 100
