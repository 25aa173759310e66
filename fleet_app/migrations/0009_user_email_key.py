"""Accounts get their canonical e-mail key (backfilled), the constraint that keeps one
active account per key, and the legacy platform's six quota resources."""

import unicodedata

from django.db import migrations, models
from django.db.models import Count, Min
from django.db.models.functions import Upper

BATCH = 2000


def _key(email):
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", email or "").casefold())


def backfill_keys(apps, schema_editor):
    """Every account gets its key before the constraint exists; active accounts that
    already share a key are let be (flagged), never deactivated and never deleted, so the
    constraint cannot fail and no row is lost. The dedupe decides them later."""
    User = apps.get_model("fleet_app", "User")
    last = 0
    while True:
        batch = list(User.objects.filter(pk__gt=last).order_by("pk").only("pk", "email")[:BATCH])
        if not batch:
            break
        for user in batch:
            user.email_key = _key(user.email)
        User.objects.bulk_update(batch, ["email_key"])
        last = batch[-1].pk
    shared = (
        User.objects.filter(is_active=True)
        .values("email_key")
        .annotate(n=Count("pk"), first=Min("pk"))
        .filter(n__gt=1)
    )
    for row in shared:
        User.objects.filter(is_active=True, email_key=row["email_key"]).exclude(
            pk=row["first"]
        ).update(email_key_duplicate_allowed=True)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("fleet_app", "0008_organization_slug_unique"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_key",
            field=models.CharField(default="", editable=False, max_length=1024),
        ),
        migrations.AddField(
            model_name="user",
            name="email_key_duplicate_allowed",
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.RunPython(backfill_keys, migrations.RunPython.noop, elidable=False),
        migrations.AlterField(
            model_name="quota",
            name="resource",
            field=models.CharField(
                choices=[
                    ("systems", "Systems"),
                    ("backup_bytes", "Backup storage (bytes)"),
                    ("cyclades.vm", "Virtual machines"),
                    ("cyclades.cpu", "Virtual machine processors"),
                    ("cyclades.ram", "Virtual machine memory (bytes)"),
                    ("cyclades.disk", "Virtual machine disk (bytes)"),
                    ("cyclades.network.private", "Private networks"),
                    ("pithos+.diskspace", "File storage (bytes)"),
                ],
                max_length=32,
            ),
        ),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(fields=["email_key"], name="fleet_user_email_key_idx"),
        ),
        migrations.AddIndex(
            model_name="user",
            index=models.Index(Upper("email"), name="fleet_user_email_upper_idx"),
        ),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                condition=models.Q(("email_key_duplicate_allowed", False), ("is_active", True)),
                fields=("email_key",),
                name="fleet_user_email_key_unique_active",
                violation_error_message="An active account with this e-mail already exists.",
            ),
        ),
    ]
