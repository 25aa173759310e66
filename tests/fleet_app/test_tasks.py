"""Fleet housekeeping: history pruning, as a service and through a real Celery worker."""

import datetime as dt

from django.utils import timezone

from fleet_app import services, tasks
from fleet_app.demo import ns8_inventory
from fleet_app.models import Inventory, SystemActivityDay
from tests.conftest import wait_for


def _age(inventory, days):
    Inventory.objects.filter(pk=inventory.pk).update(
        received_at=timezone.now() - dt.timedelta(days=days)
    )


def _history(system):
    old = services.inventory_ingest(system=system, payload=ns8_inventory(seed=1, modules=2), size=1)
    older = services.inventory_ingest(
        system=system, payload=ns8_inventory(seed=2, modules=2), size=1
    )
    _age(old, 200)
    _age(older, 100)
    SystemActivityDay.objects.create(system=system, day=timezone.now().date() - dt.timedelta(300))
    SystemActivityDay.objects.create(system=system, day=timezone.now().date())
    return old, older


def test_pruning_keeps_the_newest_inventory_of_each_system(system):
    old, newest = _history(system)

    removed = services.fleet_prune_history(days=90, batch=1)

    assert removed == {"inventories": 1, "activity_days": 1}
    assert list(Inventory.objects.values_list("pk", flat=True)) == [newest.pk]
    assert SystemActivityDay.objects.count() == 1


def test_the_prune_task_runs_in_a_real_worker(celery_worker_process, customer):
    from tests.factories import make_system

    system = make_system(customer)
    _history(system)

    tasks.fleet_prune_history.apply_async(queue=celery_worker_process)

    assert wait_for(lambda: Inventory.objects.count() == 1)
    assert wait_for(lambda: SystemActivityDay.objects.count() == 1)
