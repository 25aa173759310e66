"""Helpers shared by the tests on real ZFS."""

import datetime as dt
import uuid

from backups_app.zfs.pipeline import Endpoint, preflight

TAG = "cutover_test"


def pair(lab, *, key: str = "full", source: str | None = None):
    """A fresh source dataset (over SSH as the operator) and a target name (local, root),
    with pools detected as a run detects them."""
    source = source or lab.dataset(lab.source_pool)
    src = Endpoint(lab.source_runner(key), source)
    tgt = Endpoint(lab.target_runner(), f"{lab.target_pool}/{source.rsplit('/', 1)[1]}")
    assessment = preflight(src, tgt, user=lab.user)
    return src, tgt, assessment


def sanoid(at: dt.datetime, period: str = "hourly") -> str:
    return f"autosnap_{at:%Y-%m-%d_%H:%M:%S}_{period}"


def unique() -> str:
    return uuid.uuid4().hex[:6]
