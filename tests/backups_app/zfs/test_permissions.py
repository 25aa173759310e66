"""A job whose operator lacks a permission is refused with the permission named.

On zfs-fuse ``zfs allow`` neither answers nor is enforced, so the lack comes from the
forced command of the operator's key (here: a key without ``hold``); OpenZFS's delegation
(``zfs allow``) is covered with a recorded answer."""

import pytest

from backups_app.zfs.capabilities import (
    GUARANTEE_HOLDS,
    GUARANTEE_NONE,
    GUARANTEE_RESUMABLE,
    PoolCapabilities,
    assess,
    detect_permissions,
)
from backups_app.zfs.pipeline import PermissionRefused, replicate
from backups_app.zfs.runner import Result, Runner

from .realzfs import TAG, pair
from .test_parsers import ALLOW


def test_a_key_without_hold_is_refused_naming_hold(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab, key="nohold")
    lab.snapshot(src.dataset, "s1")

    assert assessment.refused
    assert set(assessment.missing) == {"hold"}
    (refusal,) = assessment.refusals
    assert f"user {lab.user}" in refusal
    assert "lacks the 'hold' permission" in refusal
    assert "zfs-gate: 'zfs hold' is not permitted for this key" in refusal

    with pytest.raises(PermissionRefused, match="'hold'"):
        replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    # Nothing was sent.
    assert lab.zfs("list", "-H", "-o", "name", "-r", lab.target_pool).count(tgt.dataset) == 0
    src.runner.close()


class AllowRunner(Runner):
    """An OpenZFS host answering ``zfs allow`` with the recorded off2 delegations."""

    label = "ovh3operator@off2:22"

    def zfs(self, args, *, check=True, timeout=0):
        if args[0] == "allow":
            return Result(["zfs", *args], 0, ALLOW, "")
        if args[0] in ("list", "get"):
            return Result(["zfs", *args], 0, "zfs-hdd/off\n", "")
        return Result(["zfs", *args], 2, "", f"missing argument\nusage:\n\t{args[0]} ...\n")


def modern(**kw):
    return PoolCapabilities(pool="zfs-hdd", version=5000, holds=True, list_parsable=True, **kw)


def test_zfs_allow_delegations_decide_on_openzfs():
    runner = AllowRunner()
    off1 = detect_permissions(runner, "zfs-hdd/off", user="off1operator")
    assert off1.detected_by == "zfs allow"
    # Seed 004's "hold,send" is not enough once holds are released after each success.
    assert "release" in off1.denied and "not delegated" in off1.denied["release"]
    refused = assess(
        source_pool=modern(), target_pool=modern(), source_perms=off1, source_label="off2"
    )
    assert list(refused.missing) == ["release"]
    assert "user off1operator on off2 lacks the 'release' permission" in refused.refusals[0]

    ovh3 = detect_permissions(runner, "zfs-hdd/off", user="ovh3operator")
    ok = assess(
        source_pool=modern(resume_tokens=True),
        target_pool=modern(resume_tokens=True),
        source_perms=ovh3,
        source_label="off2",
    )
    assert not ok.refused
    assert ok.guarantee == GUARANTEE_RESUMABLE


def test_guarantee_levels_follow_the_pools():
    perms = detect_permissions(AllowRunner(), "zfs-hdd/off", user="ovh3operator")
    fuse = PoolCapabilities(pool="t", version=23, holds=True)
    old = PoolCapabilities(pool="t", version=15, holds=False)
    assert (
        assess(source_pool=fuse, target_pool=fuse, source_perms=perms, source_label="h").guarantee
        == GUARANTEE_HOLDS
    )
    assert (
        assess(source_pool=old, target_pool=fuse, source_perms=perms, source_label="h").guarantee
        == GUARANTEE_NONE
    )
    # Bookmarks undelegated: the job runs, with holds as its guarantee.
    marks = modern(bookmarks=True, resume_tokens=True)
    result = assess(source_pool=marks, target_pool=marks, source_perms=perms, source_label="h")
    assert not result.refused and result.guarantee == GUARANTEE_HOLDS
