"""The argv of every ZFS command Cutover runs, built from validated names.

Builders return the arguments after the binary (``["send", "-I", a, b]``); a runner puts
the host's ``zfs``/``zpool`` path in front and, for a remote host, the SSH command. Nothing
here runs anything, so the OpenZFS-only paths (bookmarks, resume tokens) are checked by
tests of the argv they build.
"""

from collections.abc import Sequence

from .names import (
    bookmark_validate,
    dataset_validate,
    pool_of,
    snapshot_validate,
    tag_validate,
)

# Properties read per snapshot. ``createtxg`` only where ZFS has it (not zfs-fuse).
SNAPSHOT_PROPERTIES = ("guid", "creation", "userrefs")
POOL_FEATURES = ("bookmarks", "extensible_dataset", "large_blocks", "embedded_data")


def snapshots_get(dataset: str, *, createtxg: bool = False) -> list[str]:
    """List a dataset's snapshots with ``zfs get`` (works on every ZFS, zfs-fuse too)."""
    props = (*SNAPSHOT_PROPERTIES, "createtxg") if createtxg else SNAPSHOT_PROPERTIES
    return [
        "get",
        "-H",
        "-p",
        "-r",
        "-d",
        "1",
        "-o",
        "name,property,value",
        ",".join(props),
        dataset_validate(dataset),
    ]


LIST_COLUMNS = ("name", "guid", "createtxg", "creation", "userrefs")


def snapshots_list(dataset: str) -> list[str]:
    """List a dataset's snapshots with ``zfs list -p`` (OpenZFS), oldest first."""
    return [
        "list",
        "-H",
        "-p",
        "-o",
        ",".join(LIST_COLUMNS),
        "-t",
        "snapshot",
        "-s",
        "createtxg",
        "-d",
        "1",
        dataset_validate(dataset),
    ]


def bookmarks_list(dataset: str) -> list[str]:
    return [
        "list",
        "-H",
        "-p",
        "-o",
        "name,guid,createtxg,creation",
        "-t",
        "bookmark",
        "-s",
        "createtxg",
        "-d",
        "1",
        dataset_validate(dataset),
    ]


def dataset_names(dataset: str, *, recursive: bool = False) -> list[str]:
    args = ["list", "-H", "-o", "name"]
    if recursive:
        args.append("-r")
    return [*args, dataset_validate(dataset)]


def guids_under(root: str) -> list[str]:
    """Every snapshot GUID below ``root`` (finding where a source dataset moved)."""
    return ["get", "-H", "-p", "-r", "-o", "name,property,value", "guid", dataset_validate(root)]


def get(properties: Sequence[str], name: str) -> list[str]:
    target = snapshot_validate(name) if "@" in name else dataset_validate(name)
    return ["get", "-H", "-p", "-o", "name,property,value", ",".join(properties), target]


def resume_token(dataset: str) -> list[str]:
    return ["get", "-H", "-p", "-o", "value", "receive_resume_token", dataset_validate(dataset)]


def send(
    snapshot: str,
    *,
    base: str | None = None,
    intermediates: bool = True,
    flags: Sequence[str] = (),
) -> list[str]:
    """``zfs send [flags] [-I|-i base] snapshot``; ``base`` may be a snapshot or a bookmark.

    ``-I`` carries every snapshot between base and snapshot; a bookmark base takes ``-i``
    (ZFS cannot send intermediates from a bookmark).
    """
    args = ["send", *flags]
    snapshot_validate(snapshot)
    if base is not None:
        if "#" in base:
            bookmark_validate(base)
            args += ["-i", base]
        else:
            snapshot_validate(base)
            args += ["-I" if intermediates else "-i", base]
    return [*args, snapshot]


def send_resume(token: str) -> list[str]:
    """``zfs send -t <token>``: continue an interrupted resumable receive."""
    if not token or not token.replace("-", "").isalnum():
        raise ValueError("A receive_resume_token is made of letters, digits and dashes.")
    return ["send", "-t", token]


def receive(
    target: str, *, force: bool = False, resumable: bool = False, unmounted: bool = False
) -> list[str]:
    """``zfs receive [-s] [-u] [-F] target``. ``-F`` only when a plan asks for it: it rolls
    the target back, and that is a destructive act staff approve."""
    args = ["receive"]
    if resumable:
        args.append("-s")
    if unmounted:
        args.append("-u")
    if force:
        args.append("-F")
    return [*args, dataset_validate(target)]


def receive_abort(target: str) -> list[str]:
    """``zfs receive -A``: drop the partial state of an interrupted resumable receive."""
    return ["receive", "-A", dataset_validate(target)]


def snapshot(name: str) -> list[str]:
    return ["snapshot", snapshot_validate(name)]


def destroy_snapshot(name: str) -> list[str]:
    return ["destroy", snapshot_validate(name)]


def hold(tag: str, snapshot: str) -> list[str]:
    return ["hold", tag_validate(tag), snapshot_validate(snapshot)]


def release(tag: str, snapshot: str) -> list[str]:
    return ["release", tag_validate(tag), snapshot_validate(snapshot)]


def holds(snapshots: Sequence[str]) -> list[str]:
    return ["holds", "-H", "-p", *(snapshot_validate(s) for s in snapshots)]


def bookmark(snapshot: str, mark: str) -> list[str]:
    return ["bookmark", snapshot_validate(snapshot), bookmark_validate(mark)]


def rollback(snapshot: str, *, later: bool = True) -> list[str]:
    """Roll back to ``snapshot``, with ``later`` destroying later snapshots (``-r``):
    approval only."""
    return ["rollback", *(["-r"] if later else []), snapshot_validate(snapshot)]


def rename(old: str, new: str) -> list[str]:
    return ["rename", dataset_validate(old), dataset_validate(new)]


def unmount(dataset: str) -> list[str]:
    return ["unmount", dataset_validate(dataset)]


def allow(dataset: str) -> list[str]:
    return ["allow", dataset_validate(dataset)]


def zpool_version(pool: str) -> list[str]:
    # Plain ``zpool get`` (zfs-fuse has no -H/-p/-o); the parser reads both shapes.
    return ["get", "version", dataset_validate(pool_of(pool))]


def zpool_features(pool: str, features: Sequence[str] = POOL_FEATURES) -> list[str]:
    names = ",".join(f"feature@{f}" for f in features)
    return ["get", "-H", "-p", "-o", "name,property,value", names, dataset_validate(pool_of(pool))]
