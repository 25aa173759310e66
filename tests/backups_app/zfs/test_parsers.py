"""Parsers, on text recorded from the commands (OpenZFS 2.1/2.2 and zfs-fuse 0.7)."""

import pytest

from backups_app.zfs.commands import LIST_COLUMNS
from backups_app.zfs.parsers import (
    ParseError,
    allowed_permissions,
    parse_get,
    parse_holds,
    parse_snapshot_list,
    parse_zfs_allow,
    parse_zpool_get,
    snapshots_from_get,
)

# zfs list -H -p -o name,guid,creation,userrefs -t snapshot (OpenZFS 2.1)
LIST_P = (
    "zfs-hdd/off@autosnap_2024-03-01_00:00:01_daily\t9043727208432931127\t1709251201\t0\n"
    "zfs-hdd/off@autosnap_2024-03-01_01:00:01_hourly\t12745160238530937563\t1709254801\t1\n"
    "zfs-hdd/off@syncoid_ovh3_2024-03-01:01:02:11\t3321788712000471542\t1709254931\t0\n"
)

# zfs get -H -p -r -d 1 -o name,property,value guid,creation,userrefs (zfs-fuse)
GET_R = """\
tank1/data\tguid\t13999141404899493543
tank1/data\tcreation\t1795398385
tank1/data\tuserrefs\t-
tank1/data@autosnap_2024-01-01_00:00:00_hourly\tguid\t16194186351735321005
tank1/data@autosnap_2024-01-01_00:00:00_hourly\tcreation\t1795398385
tank1/data@autosnap_2024-01-01_00:00:00_hourly\tuserrefs\t0
tank1/data@s2\tguid\t3247122490274274343
tank1/data@s2\tcreation\t1795398385
tank1/data@s2\tuserrefs\t1
tank1/data/child\tguid\t1111
tank1/data/child@x\tguid\t2222
"""

# zfs holds -H -p -r (OpenZFS 2.2)
HOLDS = (
    "rpool/off@autosnap_2024-03-01_00:00:01_daily\tcutover_job3\t1709251300\n"
    "rpool/off@autosnap_2024-03-01_00:00:01_daily\tkeep for audit\t1709251400\n"
    "rpool/off@s9\tsyncoid\t1709251500\n"
)

# zpool get version tank1 (zfs-fuse: no -H, a header, spaces)
ZPOOL_FUSE = """\
NAME   PROPERTY  VALUE    SOURCE
tank1  version   23       default
"""

# zpool get -H -p -o name,property,value version,feature@… (OpenZFS 2.2)
ZPOOL_MODERN = (
    "rpool\tversion\t-\n"
    "rpool\tfeature@bookmarks\tenabled\n"
    "rpool\tfeature@extensible_dataset\tactive\n"
    "rpool\tfeature@large_blocks\tdisabled\n"
)

# zfs allow zfs-hdd/off (OpenZFS 2.1, off2): delegations on the dataset and its pool.
ALLOW = """\
---- Permissions on zfs-hdd/off --------------------------------------
Local permissions:
\tuser auditor send
Descendent permissions:
\tgroup backup snapshot
---- Permissions on zfs-hdd ------------------------------------------
Permission sets:
\t@replicate hold,release,send
Local+Descendent permissions:
\tuser off1operator hold,send
\tuser ovh3operator @replicate
\teveryone userprop
Create time permissions:
\tcreate,destroy,mount
"""


def test_it_parses_zfs_list_with_exact_numbers():
    snaps = parse_snapshot_list(LIST_P)
    assert [s.short for s in snaps] == [
        "autosnap_2024-03-01_00:00:01_daily",
        "autosnap_2024-03-01_01:00:01_hourly",
        "syncoid_ovh3_2024-03-01:01:02:11",
    ]
    assert snaps[1].guid == 12745160238530937563
    assert snaps[1].creation == 1709254801
    assert snaps[1].userrefs == 1
    assert snaps[0].dataset == "zfs-hdd/off"
    assert snaps[0].period == "daily" and snaps[2].period is None


def test_it_orders_by_createtxg_when_listed():
    text = "p/a@late\t2\t3\t100\t0\np/a@early\t1\t2\t100\t0\n"
    snaps = parse_snapshot_list(text, LIST_COLUMNS)
    assert [s.short for s in snaps] == ["early", "late"]
    assert [s.index for s in snaps] == [0, 1]


def test_it_refuses_human_readable_numbers():
    # zfs-fuse's list has no -p: guids come out as "14.0E", which must not pass silently.
    with pytest.raises(ParseError):
        parse_snapshot_list("tank1/data@s2\t2.82E\tMon Nov 23  1:46 2026\t1\n")
    with pytest.raises(ParseError):
        parse_snapshot_list("tank1/data@s2\t1\t2\n")


def test_it_reads_snapshots_from_zfs_get_and_skips_children():
    snaps = snapshots_from_get(GET_R, "tank1/data")
    assert [(s.short, s.guid, s.userrefs) for s in snaps] == [
        ("autosnap_2024-01-01_00:00:00_hourly", 16194186351735321005, 0),
        ("s2", 3247122490274274343, 1),
    ]
    assert parse_get(GET_R)["tank1/data"]["userrefs"] == "-"


def test_it_parses_holds_including_tags_with_spaces():
    holds = parse_holds(HOLDS)
    assert holds["rpool/off@autosnap_2024-03-01_00:00:01_daily"] == [
        "cutover_job3",
        "keep for audit",
    ]
    assert holds["rpool/off@s9"] == ["syncoid"]


def test_it_parses_zpool_get_with_and_without_header():
    assert parse_zpool_get(ZPOOL_FUSE) == {"tank1": {"version": "23"}}
    modern = parse_zpool_get(ZPOOL_MODERN)["rpool"]
    assert modern["version"] == "-"
    assert modern["feature@extensible_dataset"] == "active"


def test_it_parses_zfs_allow_and_resolves_what_a_user_may_do():
    blocks = parse_zfs_allow(ALLOW)
    assert [b.dataset for b in blocks] == ["zfs-hdd/off", "zfs-hdd"]
    assert blocks[1].sets == {"@replicate": {"hold", "release", "send"}}
    assert blocks[1].create_time == {"create", "destroy", "mount"}
    # Granted on the pool for it and its descendants; @sets expanded; everyone counts.
    assert allowed_permissions(blocks, dataset="zfs-hdd/off", user="ovh3operator") == {
        "hold",
        "release",
        "send",
        "userprop",
    }
    assert allowed_permissions(blocks, dataset="zfs-hdd/off", user="off1operator") == {
        "hold",
        "send",
        "userprop",
    }
    # Local permissions apply to the dataset itself only, descendent ones below it only.
    assert "send" in allowed_permissions(blocks, dataset="zfs-hdd/off", user="auditor")
    assert "send" not in allowed_permissions(blocks, dataset="zfs-hdd/off/x", user="auditor")
    assert "snapshot" not in allowed_permissions(
        blocks, dataset="zfs-hdd/off", user="u", groups=["backup"]
    )
    assert "snapshot" in allowed_permissions(
        blocks, dataset="zfs-hdd/off/images", user="u", groups=["backup"]
    )


def test_it_refuses_allow_output_it_does_not_understand():
    with pytest.raises(ParseError):
        parse_zfs_allow("internal error: /usr/lib/zfs/pyzfs.py not found\n")
