"""Heartbeats become HOT updates on PostgreSQL: the index on ``last_heartbeat_at`` goes, and
the system table keeps a tenth of each page free.

A heartbeat writes ``last_heartbeat_at`` and nothing else. While an index covered that
column, every heartbeat was a non-HOT update: a new entry in each of the table's eight
indexes, and their pages in the WAL after every checkpoint — at a million systems most of
a heartbeat's cost. Without it, and with room on the page for the new row version
(``fillfactor`` 90; existing pages gain room as their old versions are pruned), the
update touches the heap page only. No row changes; the index can be created again by
reversing this migration.
"""

from django.db import migrations

SYSTEM_TABLE = "fleet_app_system"


def fillfactor_set(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {SYSTEM_TABLE} SET (fillfactor = 90)")


def fillfactor_reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {SYSTEM_TABLE} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [
        ("fleet_app", "0011_merge_inventory_inbox"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="system",
            name="fleet_sys_heartbeat_idx",
        ),
        migrations.RunPython(fillfactor_set, fillfactor_reset, elidable=False),
    ]
