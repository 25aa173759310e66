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
