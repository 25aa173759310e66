"""The service overview (dashboard, API, /metrics): latest backup and drill of each."""

from backups_app.service_backups import selectors, services
from backups_app.service_backups.models import BackupRun, RestoreRun


def test_it_costs_three_queries_however_many_services(db, tmp_path, django_assert_num_queries):
    for n in range(4):
        folder = tmp_path / f"s{n}"
        folder.mkdir()
        service = services.service_create(
            actor=None, name=f"s{n}", adapter="directory", config={"path": str(folder)}
        )
        backup = BackupRun.objects.create(service=service, state="succeeded")
        BackupRun.objects.create(service=service, state="failed")
        RestoreRun.objects.create(
            service=service, backup=backup, purpose=RestoreRun.Purpose.DRILL, state="failed"
        )
    # 1. services with their latest good drill, latest backup id, latest drill id
    # 2. those backups  3. those drills
    with django_assert_num_queries(3):
        overview = selectors.services_overview()

    assert [row["service"].name for row in overview] == ["s0", "s1", "s2", "s3"]
    assert all(row["last_backup"].state == "failed" for row in overview)
    assert all(row["last_drill"].state == "failed" for row in overview)
    assert all(row["drill_overdue"] for row in overview)
