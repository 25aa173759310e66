"""Real ZFS for the replication tests: one lab per test session (two pools, an operator,
a forced-command key, sshd on loopback), removed at the end of the session.

Outside CI a machine without zfs-fuse or root skips these tests; in CI (``CI`` set, as
``.ci/run`` is run) that is a failure, since ``.ci/run`` installs and starts what they need.
"""

import os

import pytest

from .lab import Lab, LabUnavailable


@pytest.fixture(scope="session")
def zfs_lab():
    try:
        lab = Lab.create()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the ZFS lab is required in CI: {exc}")
        pytest.skip(str(exc))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def zfs_rows(db, zfs_lab, settings):
    """Rows for a pull job on the lab: the source host reached over SSH as the operator
    (pinned host key, the forced-command key as the workers' key), the target host local
    (named in ZFS_LOCAL_HOSTS), a fresh dataset each."""
    from backups_app.zfs.models import Dataset, ReplicationJob, StorageHost

    lab = zfs_lab
    lab.configure(settings, local_hosts=["ovh3"])
    source_host = StorageHost.objects.create(
        name="off2",
        address="127.0.0.1",
        port=lab.port,
        user=lab.user,
        host_key=lab.host_key,
    )
    target_host = StorageHost.objects.create(name="ovh3")
    source = Dataset.objects.create(host=source_host, name=lab.dataset(lab.source_pool))
    target = Dataset.objects.create(
        host=target_host, name=f"{lab.target_pool}/{source.name.rsplit('/', 1)[1]}"
    )
    job = ReplicationJob.objects.create(name=f"pull-{source.pk}", source=source, target=target)
    return type(
        "Rows",
        (),
        {
            "lab": lab,
            "source_host": source_host,
            "target_host": target_host,
            "source": source,
            "target": target,
            "job": job,
        },
    )
