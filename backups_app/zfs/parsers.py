"""Parsers of ZFS's machine-readable output (``-H``: tab-separated, no header; ``-p``:
exact numbers). Each takes the text a command printed and returns plain data.

Recorded samples of every format are in ``tests/backups_app/zfs/test_parsers.py``.
"""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .names import sanoid_parse, split_snapshot


class ParseError(ValueError):
    """Output that does not have the shape the command documents."""


@dataclass(frozen=True)
class Snapshot:
    """One snapshot as listed: full name, GUID, creation time, hold count, listing order.

    ``index`` is the position ZFS listed it at: both ``zfs list -t snapshot`` and
    ``zfs get -r`` list a dataset's snapshots in creation-txg order, which is the order
    that matters (two snapshots taken in the same second share a creation time).
    """

    name: str
    guid: int
    creation: int
    userrefs: int = 0
    index: int = 0
    createtxg: int | None = None

    @property
    def dataset(self) -> str:
        return split_snapshot(self.name)[0]

    @property
    def short(self) -> str:
        return split_snapshot(self.name)[1]

    @property
    def period(self) -> str | None:
        parsed = sanoid_parse(self.short)
        return parsed.period if parsed else None

    @property
    def key(self) -> tuple[str, int]:
        """What makes two snapshots on two pools "the same": name and GUID."""
        return (self.short, self.guid)


def _lines(text: str) -> Iterable[str]:
    for line in text.splitlines():
        if line.strip():
            yield line


def _int(value: str, what: str) -> int:
    if value in ("-", ""):
        return 0
    try:
        return int(value)
    except ValueError:
        raise ParseError(f"{what} {value!r} is not a number (was -p given?)") from None


def _order(snapshots: list[Snapshot]) -> list[Snapshot]:
    # createtxg when the listing has it, else the listing order (already creation order).
    if all(s.createtxg is not None for s in snapshots):
        snapshots = sorted(snapshots, key=lambda s: (s.createtxg, s.index))
    return [
        Snapshot(s.name, s.guid, s.creation, s.userrefs, i, s.createtxg)
        for i, s in enumerate(snapshots)
    ]


def parse_snapshot_list(
    text: str, columns: Sequence[str] = ("name", "guid", "creation", "userrefs")
) -> list[Snapshot]:
    """Parse ``zfs list -H -p -o <columns> -t snapshot`` (OpenZFS; zfs-fuse lacks ``-p``)."""
    snapshots = []
    for index, line in enumerate(_lines(text)):
        cells = line.split("\t")
        if len(cells) != len(columns):
            raise ParseError(f"expected {len(columns)} tab-separated columns: {line!r}")
        row = dict(zip(columns, cells, strict=True))
        if "@" not in row["name"]:
            raise ParseError(f"{row['name']!r} is not a snapshot")
        snapshots.append(
            Snapshot(
                name=row["name"],
                guid=_int(row["guid"], "guid"),
                creation=_int(row.get("creation", "0"), "creation"),
                userrefs=_int(row.get("userrefs", "0"), "userrefs"),
                index=index,
                createtxg=_int(row["createtxg"], "createtxg") if "createtxg" in row else None,
            )
        )
    return _order(snapshots)


def parse_get(text: str) -> dict[str, dict[str, str]]:
    """Parse ``zfs get -H -p [-o name,property,value[,source]]`` into name → {prop: value}.

    Insertion order follows the listing (datasets then their snapshots, in txg order).
    """
    result: dict[str, dict[str, str]] = {}
    for line in _lines(text):
        cells = line.split("\t")
        if len(cells) not in (3, 4):
            raise ParseError(f"expected name, property, value[, source]: {line!r}")
        result.setdefault(cells[0], {})[cells[1]] = cells[2]
    return result


def snapshots_from_get(text: str, dataset: str) -> list[Snapshot]:
    """Snapshots of ``dataset`` from ``zfs get -H -p -r -d 1 … guid,creation,userrefs``.

    The form works on every ZFS we meet (zfs-fuse has no ``list -p``); children and the
    dataset itself are in the output too and are skipped.
    """
    snapshots = []
    prefix = dataset + "@"
    for name, props in parse_get(text).items():
        if not name.startswith(prefix):
            continue
        snapshots.append(
            Snapshot(
                name=name,
                guid=_int(props.get("guid", "0"), "guid"),
                creation=_int(props.get("creation", "0"), "creation"),
                userrefs=_int(props.get("userrefs", "0"), "userrefs"),
                index=len(snapshots),
                createtxg=(_int(props["createtxg"], "createtxg") if "createtxg" in props else None),
            )
        )
    return _order(snapshots)


def parse_holds(text: str) -> dict[str, list[str]]:
    """Parse ``zfs holds -H [-p] [-r]``: snapshot → hold tags.

    Lines are ``name<TAB>tag<TAB>timestamp``; a tag may contain spaces, never a tab.
    """
    holds: dict[str, list[str]] = {}
    for line in _lines(text):
        cells = line.split("\t")
        if len(cells) < 2:
            raise ParseError(f"expected name, tag, timestamp: {line!r}")
        holds.setdefault(cells[0], []).append(cells[1])
    return holds


def parse_zpool_get(text: str) -> dict[str, dict[str, str]]:
    """Parse ``zpool get`` output, with ``-H`` (tabs) or without (a header, spaces).

    zfs-fuse's ``zpool get`` has neither ``-H`` nor ``-p``; OpenZFS has both.
    """
    result: dict[str, dict[str, str]] = {}
    for line in _lines(text):
        cells = line.split("\t") if "\t" in line else line.split()
        if cells[:3] == ["NAME", "PROPERTY", "VALUE"]:
            continue
        if len(cells) < 3:
            raise ParseError(f"expected name, property, value: {line!r}")
        result.setdefault(cells[0], {})[cells[1]] = cells[2]
    return result


# --- zfs allow --------------------------------------------------------------------------


@dataclass
class AllowBlock:
    """The delegations ``zfs allow`` printed for one dataset."""

    dataset: str
    local: dict[str, set[str]] = field(default_factory=dict)
    descendent: dict[str, set[str]] = field(default_factory=dict)
    local_descendent: dict[str, set[str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    create_time: set[str] = field(default_factory=set)


_HEADER_RE = re.compile(r"^-+ Permissions on (\S+) -*$")
_SECTIONS = {
    "Local permissions:": "local",
    "Descendent permissions:": "descendent",
    "Local+Descendent permissions:": "local_descendent",
    "Permission sets:": "sets",
    "Create time permissions:": "create_time",
}


def parse_zfs_allow(text: str) -> list[AllowBlock]:
    """Parse modern OpenZFS ``zfs allow <dataset>``: one block per dataset that has
    delegations (the dataset and its ancestors), nearest first.

    Who is ``user NAME``, ``group NAME`` or ``everyone``; keys are ``user:NAME``,
    ``group:NAME`` and ``everyone``.
    """
    blocks: list[AllowBlock] = []
    section: str | None = None
    for raw in _lines(text):
        line = raw.strip()
        header = _HEADER_RE.match(line)
        if header:
            blocks.append(AllowBlock(dataset=header[1]))
            section = None
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        if not blocks or section is None:
            raise ParseError(f"unexpected line in zfs allow output: {raw!r}")
        block = blocks[-1]
        if section == "create_time":
            block.create_time |= set(line.split(","))
            continue
        if section == "sets":
            name, _, perms = line.partition(" ")
            block.sets[name] = set(perms.strip().split(","))
            continue
        parts = line.split(None, 2)
        if parts[0] == "everyone" and len(parts) == 2:
            who, perms = "everyone", parts[1]
        elif parts[0] in ("user", "group") and len(parts) == 3:
            who, perms = f"{parts[0]}:{parts[1]}", parts[2]
        else:
            raise ParseError(f"unexpected delegation line: {raw!r}")
        getattr(block, section).setdefault(who, set()).update(perms.split(","))
    return blocks


def allowed_permissions(
    blocks: Sequence[AllowBlock], *, dataset: str, user: str, groups: Iterable[str] = ()
) -> set[str]:
    """What ``user`` (member of ``groups``) may do on ``dataset`` from ``zfs allow``.

    Local permissions count on the dataset itself, descendent ones on its descendants,
    local+descendent on both; ``@set`` names expand to the set defined on that dataset
    or an ancestor.
    """
    whos = {f"user:{user}", "everyone", *(f"group:{g}" for g in groups)}
    sets: dict[str, set[str]] = {}
    # Sets defined nearer the dataset win; the blocks come nearest first.
    for block in reversed(blocks):
        sets.update(block.sets)
    granted: set[str] = set()
    for block in blocks:
        if block.dataset == dataset:
            sections = (block.local, block.local_descendent)
        elif dataset.startswith(block.dataset + "/"):
            sections = (block.descendent, block.local_descendent)
        else:
            continue
        for section in sections:
            for who, perms in section.items():
                if who in whos:
                    granted |= perms
    expanded: set[str] = set()
    pending = list(granted)
    while pending:
        perm = pending.pop()
        if perm in expanded:
            continue
        expanded.add(perm)
        if perm.startswith("@"):
            pending.extend(sets.get(perm, ()))
    return {p for p in expanded if not p.startswith("@")}
