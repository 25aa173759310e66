"""Pull replication on real ZFS (zfs-fuse) over a real sshd, as a non-root operator whose
key only allows send, list, get, hold, release and holds."""

import subprocess

import pytest

from backups_app.zfs.capabilities import GUARANTEE_HOLDS
from backups_app.zfs.pipeline import replicate
from backups_app.zfs.runner import ZfsCommandError

from .realzfs import TAG, pair


def stream_size(*argv) -> int:
    out = subprocess.run(["/usr/sbin/zfs", *argv], capture_output=True, check=True).stdout
    return len(out)


def test_full_then_incremental_pull_over_ssh(zfs_lab):
    lab = zfs_lab
    src, tgt, assessment = pair(lab)
    assert not assessment.refused
    assert assessment.guarantee == GUARANTEE_HOLDS
    lab.snapshot(src.dataset, "s1", data=200_000)
    lab.snapshot(src.dataset, "s2", data=50_000)

    first = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    assert first.plan.kind == "full"
    assert [s.step.kind for s in first.steps] == ["full", "incremental"]
    assert lab.snapshots(tgt.dataset) == ["s1", "s2"]
    for short in ("s1", "s2"):
        assert lab.guid(f"{tgt.dataset}@{short}") == lab.guid(f"{src.dataset}@{short}")
    # Bytes counted through the pipe: exactly what zfs send writes.
    assert first.steps[0].bytes == stream_size("send", f"{src.dataset}@s1")
    assert first.bytes > 250_000 and first.seconds > 0
    # The common snapshot is held on both sides.
    assert first.held == "s2"
    assert lab.userrefs(f"{src.dataset}@s2") == 1 == lab.userrefs(f"{tgt.dataset}@s2")

    lab.snapshot(src.dataset, "s3", data=30_000)
    lab.snapshot(src.dataset, "s4", data=30_000)
    second = replicate(src, tgt, hold_tag=TAG, assessment=assessment)

    assert second.plan.kind == "incremental"
    assert second.plan.common.short == "s2"
    assert [(s.step.base, s.step.snapshot) for s in second.steps] == [
        (f"{src.dataset}@s2", f"{src.dataset}@s4")
    ]
    assert second.bytes == stream_size("send", "-I", f"{src.dataset}@s2", f"{src.dataset}@s4")
    assert lab.snapshots(tgt.dataset) == ["s1", "s2", "s3", "s4"]
    # The hold moved to the new common snapshot on both sides, and only there.
    assert lab.userrefs(f"{src.dataset}@s2") == 0 == lab.userrefs(f"{tgt.dataset}@s2")
    assert lab.userrefs(f"{src.dataset}@s4") == 1 == lab.userrefs(f"{tgt.dataset}@s4")

    third = replicate(src, tgt, hold_tag=TAG, assessment=assessment)
    assert third.plan.kind == "up_to_date" and third.steps == []
    src.runner.close()


def test_the_pool_capabilities_of_zfs_fuse_are_detected(zfs_lab):
    src, tgt, assessment = pair(zfs_lab)
    # The operator's key allows no zpool: the source is read through zfs itself.
    assert src.pool.detected_by == "zfs properties"
    assert src.pool.holds and not src.pool.bookmarks and not src.pool.resume_tokens
    assert tgt.pool.detected_by == "zpool" and tgt.pool.version == 23
    assert tgt.pool.holds and not tgt.pool.bookmarks and not tgt.pool.resume_tokens
    perms = assessment.permissions
    assert perms.detected_by == "probe"
    assert "zfs allow unavailable" in perms.note
    assert {"send", "hold", "release", "list", "get"} <= perms.allowed
    src.runner.close()


def test_a_host_presenting_another_key_is_refused(zfs_lab, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    impostor_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    runner = zfs_lab.source_runner(host_key=impostor_key)
    with pytest.raises(ZfsCommandError, match="Host key verification failed"):
        runner.zfs(["list", "-H", "-o", "name", zfs_lab.source_pool])
    runner.close()
