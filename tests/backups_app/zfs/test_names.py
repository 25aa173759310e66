"""Dataset/snapshot name validation and sanoid's autosnap names."""

import datetime as dt

import pytest

from backups_app.zfs.names import (
    InvalidName,
    dataset_validate,
    sanoid_format,
    sanoid_parse,
    snapshot_validate,
    tag_validate,
)


@pytest.mark.parametrize(
    "name", ["tank", "zfs-hdd/off/products", "rpool/off-backups/off1-pve", "p/a.b:c_d-e"]
)
def test_it_accepts_zfs_dataset_names(name):
    assert dataset_validate(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/tank",
        "tank/",
        "tank//a",
        "tank/a b",
        "tank/$(reboot)",
        "tank/a;rm -rf /",
        "tank/`id`",
        "tank/a\nb",
        "-tank",
        "tank/..",
        "tank/a@b",
        "x" * 300,
    ],
)
def test_it_refuses_names_zfs_or_a_shell_would_misread(name):
    with pytest.raises(InvalidName):
        dataset_validate(name)


def test_it_checks_both_halves_of_a_snapshot_name():
    assert snapshot_validate("tank/a@autosnap_2024-03-01_00:00:01_daily")
    for bad in ("tank/a", "tank/a@", "tank/a@b c", "tank a@b", "tank/a@b@c"):
        with pytest.raises(InvalidName):
            snapshot_validate(bad)


def test_hold_tags_are_restricted():
    assert tag_validate("cutover_job12")
    with pytest.raises(InvalidName):
        tag_validate("a b")


def test_it_parses_and_formats_sanoid_names():
    parsed = sanoid_parse("autosnap_2024-03-01_23:59:07_hourly")
    assert parsed.period == "hourly"
    assert parsed.taken_at == dt.datetime(2024, 3, 1, 23, 59, 7, tzinfo=dt.UTC)
    assert sanoid_format(parsed.taken_at, "hourly") == "autosnap_2024-03-01_23:59:07_hourly"
    # A zoned time is written in UTC.
    paris = dt.timezone(dt.timedelta(hours=1))
    assert (
        sanoid_format(dt.datetime(2024, 3, 2, 0, 30, tzinfo=paris), "daily")
        == "autosnap_2024-03-01_23:30:00_daily"
    )


@pytest.mark.parametrize(
    "short",
    [
        "syncoid_ovh3_2024-03-01:00:00:01",
        "autosnap_2024-03-01_00:00:01_hourly_extra",
        "autosnap_2024-13-01_00:00:01_daily",
        "autosnap_2024-03-01_00:00:01_minutely",
        "manual",
    ],
)
def test_other_names_are_not_sanoid_snapshots(short):
    assert sanoid_parse(short) is None
