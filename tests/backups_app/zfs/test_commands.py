"""The argv Cutover builds, including the OpenZFS-only paths zfs-fuse cannot run
(bookmarks, resume tokens, ``receive -s -u``), and the SSH command with the pinned key."""

from pathlib import Path

import pytest

from backups_app.zfs import commands
from backups_app.zfs.names import InvalidName
from backups_app.zfs.runner import SshRunner, known_hosts_line

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx7pinnedkeypinnedkeypinnedkeypinnedkey0"


def test_full_and_incremental_sends():
    assert commands.send("t/a@s1") == ["send", "t/a@s1"]
    assert commands.send("t/a@s9", base="t/a@s1") == ["send", "-I", "t/a@s1", "t/a@s9"]
    assert commands.send("t/a@s9", base="t/a@s1", intermediates=False) == [
        "send",
        "-i",
        "t/a@s1",
        "t/a@s9",
    ]


def test_a_bookmark_base_is_sent_with_i():
    # ZFS cannot send intermediates from a bookmark.
    assert commands.send("t/a@s9", base="t/a#s1") == ["send", "-i", "t/a#s1", "t/a@s9"]
    assert commands.bookmark("t/a@s9", "t/a#s9") == ["bookmark", "t/a@s9", "t/a#s9"]


def test_resume_token_commands():
    token = "1-e604ea4bf-e0-789c63a2"
    assert commands.send_resume(token) == ["send", "-t", token]
    assert commands.resume_token("b/a") == [
        "get",
        "-H",
        "-p",
        "-o",
        "value",
        "receive_resume_token",
        "b/a",
    ]
    with pytest.raises(ValueError):
        commands.send_resume("1-abc; reboot")


def test_receive_flags_appear_only_when_asked():
    assert commands.receive("b/a") == ["receive", "b/a"]
    assert commands.receive("b/a", resumable=True, unmounted=True) == ["receive", "-s", "-u", "b/a"]
    assert commands.receive("b/a", force=True) == ["receive", "-F", "b/a"]
    assert commands.receive_abort("b/a") == ["receive", "-A", "b/a"]


def test_destructive_commands_name_their_snapshot():
    assert commands.rollback("b/a@s3") == ["rollback", "-r", "b/a@s3"]
    assert commands.rename("b/a", "b/a-diverged-1") == ["rename", "b/a", "b/a-diverged-1"]
    assert commands.destroy_snapshot("b/a@s3") == ["destroy", "b/a@s3"]


def test_listing_commands():
    assert commands.snapshots_list("t/a")[:4] == ["list", "-H", "-p", "-o"]
    assert commands.snapshots_get("t/a")[-2:] == ["guid,creation,userrefs", "t/a"]
    assert commands.zpool_version("t/a/b") == ["get", "version", "t"]
    assert "feature@bookmarks" in commands.zpool_features("t")[5]


def test_builders_refuse_bad_names():
    for build in (
        lambda: commands.send("t/a@s1; rm -rf /"),
        lambda: commands.receive("b/$(id)"),
        lambda: commands.hold("tag with space", "t/a@s1"),
        lambda: commands.rollback("b/a"),
    ):
        with pytest.raises(InvalidName):
            build()


def test_ssh_argv_pins_the_host_key_and_quotes_the_remote_command(tmp_path):
    key = tmp_path / "id"
    runner = SshRunner(host="10.0.0.5", port=2299, user="ovh3operator", key_path=key, host_key=KEY)
    try:
        argv = runner.zfs_argv(commands.send("zfs-hdd/off@s9", base="zfs-hdd/off@s1"))
        assert argv[0] == "ssh"
        assert "StrictHostKeyChecking=yes" in argv
        known = next(a for a in argv if a.startswith("UserKnownHostsFile="))
        pinned = known.split("=", 1)[1]
        assert Path(pinned).read_text() == f"[10.0.0.5]:2299 {KEY}\n"
        assert argv[argv.index("-p") + 1] == "2299"
        assert argv[argv.index("-i") + 1] == str(key)
        assert argv[argv.index("-l") + 1] == "ovh3operator"
        # One remote command string after "--": the binary's absolute path, then the args.
        assert argv[-2:] == ["--", "/usr/sbin/zfs send -I zfs-hdd/off@s1 zfs-hdd/off@s9"]
    finally:
        runner.close()


def test_known_hosts_line_for_port_22():
    assert known_hosts_line("backup.example", 22, KEY) == f"backup.example {KEY}\n"


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "a;b"},
        {"user": "root; id"},
        {"port": 0},
        {"host_key": "not a key"},
    ],
)
def test_ssh_runner_refuses_bad_connection_fields(fields):
    base = {"host": "h", "port": 22, "user": "op", "key_path": "/k", "host_key": KEY}
    with pytest.raises(ValueError):
        SshRunner(**{**base, **fields})
