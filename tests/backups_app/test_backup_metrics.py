"""/metrics: cluster backup freshness, stored bytes and overdue drills."""

from backups_app.metrics import backup_metrics
from tests.backups_app.helpers import payload, post_backup
from tests.factories import make_system


def test_it_counts_fresh_and_never_backed_up_systems(
    client, system, customer, local_store, metrics_auth
):
    make_system(customer, name="never")
    assert post_backup(client, system, payload(2048)).status_code == 201

    body = client.get("/metrics", headers=metrics_auth).content.decode()

    assert 'cutover_cluster_backup_systems{freshness="fresh"} 1.0' in body
    assert 'cutover_cluster_backup_systems{freshness="never"} 1.0' in body
    assert "cutover_cluster_backup_bytes 2048.0" in body


def test_the_backup_gauges_cost_a_fixed_number_of_queries(
    client, system, local_store, django_assert_num_queries
):
    post_backup(client, system, payload(10))
    # 1. freshness counts  2. stored bytes and corrupt count  3. services with their
    # latest good drill (no services here, so no per-service query)
    with django_assert_num_queries(3):
        assert len(list(backup_metrics())) == 4
