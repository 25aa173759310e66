"""What a host's ZFS can do and what the remote user may do there, and the guarantee a
replication gets from that.

Pool capabilities come from ``zpool get version`` and, on feature-flag pools, the
``feature@…`` properties. A forced-command key often allows only ``zfs``; then the same
answers come from ``zfs`` itself (does it know ``receive_resume_token``? can it list
bookmarks? does it know ``userrefs``?).

Permissions come from ``zfs allow`` (OpenZFS delegation) where it answers. zfs-fuse's
``zfs allow`` fails (its helper is missing) and it enforces no delegation at all, and a
forced command may refuse ``allow`` itself: then each command replication needs is probed
with an argument-less call — one that reaches ``zfs`` prints zfs's usage text, one the
host refuses prints something else, and that message is kept to name the refusal.
"""

from dataclasses import dataclass, field

from . import commands
from .names import pool_of
from .parsers import ParseError, allowed_permissions, parse_zfs_allow, parse_zpool_get
from .runner import Runner, ZfsCommandError

# What the pull replication asks of the source's operator, and why.
SOURCE_NEEDS = {
    "list": "list the source's snapshots",
    "get": "read snapshot GUIDs and hold counts",
    "send": "send snapshots",
    "hold": "hold the common snapshot until the next success",
    "release": "release the previous common snapshot's hold",
}
# A snapshot operator (Cutover takes and prunes the dataset's snapshots) also needs these.
SNAPSHOT_NEEDS = {
    "snapshot": "take the policy's snapshots",
    "destroy": "prune expired snapshots",
    "mount": "snapshot and destroy (ZFS requires mount beside them when delegated)",
}
# The roles an operator's key plays, and the delegations each needs (README: delegation).
ROLES = {
    "pull operator": ("send", "hold", "release"),
    "snapshot operator": ("send", "hold", "release", "snapshot", "destroy", "mount"),
}
# Only where the pool has bookmarks (OpenZFS).
BOOKMARK_NEED = ("bookmark", "bookmark the common snapshot")
# Delegation names (``zfs allow``) of the commands above; list/get need none.
DELEGATED = {
    "send",
    "hold",
    "release",
    "bookmark",
    "receive",
    "rollback",
    "rename",
    "snapshot",
    "destroy",
    "mount",
}

GUARANTEE_RESUMABLE = "resumable"
GUARANTEE_HOLDS = "incremental-with-holds"
GUARANTEE_NONE = "none"

# ZFS reached (usage printed for the missing argument) rather than the host refusing.
_REACHED_MARKERS = ("usage:", "missing ", "internal error")


@dataclass
class PoolCapabilities:
    pool: str
    version: int | None = None  # 5000 for feature-flag pools
    features: dict[str, str] = field(default_factory=dict)
    holds: bool = False
    bookmarks: bool = False
    resume_tokens: bool = False
    # zfs list -p (exact numbers from list): OpenZFS yes, zfs-fuse no.
    list_parsable: bool = False
    detected_by: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Permissions:
    user: str
    allowed: set[str] = field(default_factory=set)
    denied: dict[str, str] = field(default_factory=dict)  # command → the host's message
    detected_by: str = ""  # "zfs allow", "probe", "root"
    note: str = ""

    def as_dict(self) -> dict:
        return {
            "user": self.user,
            "allowed": sorted(self.allowed),
            "denied": self.denied,
            "detected_by": self.detected_by,
            "note": self.note,
        }


def _feature_on(features: dict[str, str], name: str) -> bool:
    return features.get(f"feature@{name}") in ("enabled", "active")


def detect_pool(runner: Runner, dataset: str) -> PoolCapabilities:
    """Pool version and features through ``zpool``, else through ``zfs`` alone."""
    caps = PoolCapabilities(pool=pool_of(dataset))
    try:
        rows = parse_zpool_get(runner.zpool(commands.zpool_version(caps.pool)).stdout)
        raw = rows.get(caps.pool, {}).get("version", "-")
        caps.version = 5000 if raw in ("-", "5000") else int(raw)
        caps.detected_by = "zpool"
    except (ZfsCommandError, ParseError, ValueError):
        return _detect_pool_through_zfs(runner, dataset, caps)
    if caps.version >= 5000:
        try:
            out = runner.zpool(commands.zpool_features(caps.pool)).stdout
            caps.features = parse_zpool_get(out).get(caps.pool, {})
        except (ZfsCommandError, ParseError):
            caps.features = {}
        caps.bookmarks = _feature_on(caps.features, "bookmarks")
        caps.resume_tokens = _feature_on(caps.features, "extensible_dataset")
        caps.holds = caps.list_parsable = True
    else:
        caps.holds = caps.version >= 18  # user holds arrived in pool version 18
    return caps


def _detect_pool_through_zfs(runner: Runner, dataset: str, caps: PoolCapabilities):
    caps.detected_by = "zfs properties"
    token = runner.zfs(commands.resume_token(dataset), check=False)
    caps.resume_tokens = token.ok
    refs = runner.zfs(["get", "-H", "-o", "value", "userrefs", dataset], check=False)
    caps.holds = refs.ok
    marks = runner.zfs(commands.bookmarks_list(dataset), check=False)
    caps.bookmarks = marks.ok
    caps.list_parsable = caps.resume_tokens
    return caps


def detect_permissions(
    runner: Runner, dataset: str, *, user: str, needed: dict[str, str] = SOURCE_NEEDS
) -> Permissions:
    """What ``user`` may do on ``dataset`` through ``runner`` (which connects as ``user``)."""
    perms = Permissions(user=user)
    if user == "root" or runner.label == "local":
        perms.allowed, perms.detected_by = set(needed), "root"
        return perms
    delegated: set[str] | None = None
    allow = runner.zfs(commands.allow(dataset), check=False)
    if allow.ok and allow.stdout.strip():
        try:
            delegated = allowed_permissions(
                parse_zfs_allow(allow.stdout), dataset=dataset, user=user
            )
            perms.detected_by = "zfs allow"
        except ParseError as exc:
            perms.note = f"zfs allow output not understood ({exc}); probed instead"
    else:
        first = (allow.stderr.strip().splitlines() or ["no delegations printed"])[0]
        perms.note = f"zfs allow unavailable ({first}); probed which commands the key permits"
    for command in needed:
        reason = _probe(runner, dataset, command)
        if reason is not None:
            perms.denied[command] = reason
        elif delegated is not None and command in DELEGATED and command not in delegated:
            shown = ",".join(sorted(delegated)) or "nothing"
            perms.denied[command] = f"not delegated by zfs allow (user {user} has {shown})"
        else:
            perms.allowed.add(command)
    if not perms.detected_by:
        perms.detected_by = "probe"
    return perms


def _probe(runner: Runner, dataset: str, command: str) -> str | None:
    """None if ``zfs <command>`` reaches zfs, else the host's refusal (first line)."""
    if command == "list":
        result = runner.zfs(commands.dataset_names(dataset), check=False)
        reached = result.ok or "does not exist" in result.stderr
    elif command == "get":
        result = runner.zfs(["get", "-H", "-o", "value", "guid", dataset], check=False)
        reached = result.ok or "does not exist" in result.stderr
    else:
        result = runner.zfs([command], check=False)
        # ``zfs mount`` without arguments lists the mounts: reaching zfs, successfully.
        reached = (command == "mount" and result.ok) or any(
            marker in result.stderr.lower() for marker in _REACHED_MARKERS
        )
    if reached:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[0] if lines else f"refused (exit status {result.returncode})"


@dataclass
class Assessment:
    """The guarantee a (source, target) pair gets, or why a job cannot run."""

    guarantee: str
    missing: dict[str, str] = field(default_factory=dict)  # permission → why it is needed
    refusals: list[str] = field(default_factory=list)
    permissions: Permissions | None = None

    @property
    def refused(self) -> bool:
        return bool(self.refusals)


def assess(
    *,
    source_pool: PoolCapabilities,
    target_pool: PoolCapabilities,
    source_perms: Permissions,
    source_label: str,
) -> Assessment:
    """resumable / incremental-with-holds / none, and every missing permission named."""
    needs = dict(SOURCE_NEEDS)
    if not source_pool.holds:
        needs.pop("hold"), needs.pop("release")
    if source_pool.bookmarks:
        needs[BOOKMARK_NEED[0]] = BOOKMARK_NEED[1]
    if source_pool.holds and target_pool.holds:
        if source_pool.resume_tokens and target_pool.resume_tokens:
            guarantee = GUARANTEE_RESUMABLE
        else:
            guarantee = GUARANTEE_HOLDS
    else:
        guarantee = GUARANTEE_NONE
    result = Assessment(guarantee=guarantee)
    for command, why in needs.items():
        if command in source_perms.allowed:
            continue
        refusal = source_perms.denied.get(command, "not granted")
        if command == "bookmark":
            # Bookmarks only make the next incremental survive pruning; without them the
            # hold does that job, so the guarantee drops but the job can run.
            result.guarantee = GUARANTEE_HOLDS if guarantee != GUARANTEE_NONE else guarantee
            continue
        result.missing[command] = why
        result.refusals.append(
            f"user {source_perms.user} on {source_label} lacks the '{command}' permission "
            f"(needed to {why}; a pull operator needs {','.join(ROLES['pull operator'])}): "
            f"{refusal}"
        )
    return result


def snapshot_refusals(perms: Permissions, *, host: str, prune: bool) -> list[str]:
    """What a snapshot operator's key lacks on ``host``, each in words (empty: nothing)."""
    needs = {k: v for k, v in SNAPSHOT_NEEDS.items() if prune or k != "destroy"}
    return [
        f"user {perms.user} on {host} lacks the '{command}' permission (needed to {why}; a "
        f"snapshot operator needs {','.join(ROLES['snapshot operator'])}): "
        f"{perms.denied.get(command, 'not granted')}"
        for command, why in needs.items()
        if command not in perms.allowed
    ]
