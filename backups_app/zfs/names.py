"""Dataset and snapshot names: validation, and sanoid's ``autosnap_…`` convention.

Names reach a command line (locally as argv elements, remotely through the SSH server's
shell), so every name is checked before it is used. The accepted set is ZFS's own
(alphanumerics, ``_ - . :``), minus the space ZFS also allows: a space would have to be
quoted for the remote shell and no fleet we know uses one.
"""

import datetime as dt
import re
from dataclasses import dataclass

# One path component of a dataset, or a snapshot/bookmark name after ``@``/``#``.
_COMPONENT = r"[A-Za-z0-9_.:-]+"
_DATASET_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:-]*(?:/{_COMPONENT})*$")
_SHORT_RE = re.compile(rf"^{_COMPONENT}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
# ZFS's limit on a full name (ZFS_MAX_DATASET_NAME_LEN is 256 including the NUL).
MAX_NAME_LENGTH = 255

PERIODS = ("frequently", "hourly", "daily", "weekly", "monthly", "yearly")
_SANOID_RE = re.compile(
    r"^autosnap_(\d{4}-\d{2}-\d{2})_(\d{2}:\d{2}:\d{2})_(" + "|".join(PERIODS) + r")$"
)


class InvalidName(ValueError):
    """A dataset, snapshot or hold tag name ZFS (or this code) would not accept."""


def _check_component(component: str, what: str, full: str) -> None:
    if component in (".", "..") or not _SHORT_RE.match(component):
        raise InvalidName(f"{what} {full!r} has a character ZFS does not allow.")


def dataset_validate(name: str) -> str:
    """Return ``name`` if it is a valid dataset name (``pool/a/b``), else raise."""
    if not isinstance(name, str) or not name:
        raise InvalidName("A dataset name is required.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"Dataset name {name[:40]!r}… is longer than ZFS allows.")
    if not _DATASET_RE.match(name):
        raise InvalidName(f"Dataset name {name!r} has a character ZFS does not allow.")
    for component in name.split("/"):
        _check_component(component, "Dataset name", name)
    return name


def snapshot_short_validate(short: str) -> str:
    """Return the part after ``@`` (or ``#`` for a bookmark) if valid, else raise."""
    if not isinstance(short, str) or not short:
        raise InvalidName("A snapshot name is required.")
    _check_component(short, "Snapshot name", short)
    return short


def snapshot_validate(full: str) -> str:
    """Return ``pool/ds@snap`` if valid, else raise."""
    dataset, sep, short = (full or "").partition("@")
    if not sep:
        raise InvalidName(f"{full!r} is not a snapshot name (dataset@snapshot).")
    dataset_validate(dataset)
    snapshot_short_validate(short)
    if len(full) > MAX_NAME_LENGTH:
        raise InvalidName(f"Snapshot name {full[:40]!r}… is longer than ZFS allows.")
    return full


def bookmark_validate(full: str) -> str:
    """Return ``pool/ds#mark`` if valid, else raise."""
    dataset, sep, short = (full or "").partition("#")
    if not sep:
        raise InvalidName(f"{full!r} is not a bookmark name (dataset#bookmark).")
    dataset_validate(dataset)
    snapshot_short_validate(short)
    return full


def tag_validate(tag: str) -> str:
    """Return a hold tag if valid, else raise."""
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise InvalidName(f"Hold tag {tag!r} has a character this code does not allow.")
    return tag


def pool_of(dataset: str) -> str:
    return dataset.split("/", 1)[0].split("@", 1)[0]


def split_snapshot(full: str) -> tuple[str, str]:
    """``pool/ds@snap`` → ``("pool/ds", "snap")``."""
    dataset, _, short = full.partition("@")
    return dataset, short


# --- sanoid ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SanoidName:
    """A parsed ``autosnap_YYYY-MM-DD_HH:MM:SS_<period>`` snapshot name."""

    taken_at: dt.datetime
    period: str


def sanoid_parse(short: str) -> SanoidName | None:
    """Parse a sanoid snapshot name (the part after ``@``); None if it is not one.

    sanoid writes the local time of the host that took the snapshot; Cutover writes UTC
    and reads these times as UTC, which is what matters for ordering and for freshness
    when hosts run in UTC (ours do). Ordering never depends on the name alone: the
    creation time and the listing order ZFS gives (creation txg) come first.
    """
    match = _SANOID_RE.match(short)
    if not match:
        return None
    try:
        taken = dt.datetime.strptime(f"{match[1]} {match[2]}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return SanoidName(taken_at=taken.replace(tzinfo=dt.UTC), period=match[3])


def sanoid_format(taken_at: dt.datetime, period: str) -> str:
    """The sanoid name for a snapshot of ``period`` taken at ``taken_at`` (read as UTC)."""
    if period not in PERIODS:
        raise InvalidName(f"Unknown snapshot period {period!r}.")
    if taken_at.tzinfo is not None:
        taken_at = taken_at.astimezone(dt.UTC)
    return f"autosnap_{taken_at:%Y-%m-%d_%H:%M:%S}_{period}"
