"""Organizations get a unique slug; existing ones get theirs from their names, in id order:
the first "Acme" is ``acme``, the next ``acme-2``, and so on. The column becomes unique and
required in 0008: on PostgreSQL a table whose rows were just updated (deferred foreign-key
checks still pending) cannot be altered in the same transaction."""

from django.db import migrations, models
from django.utils.text import slugify

# As fleet_app.services.SLUG_BASE_MAX when this migration was written.
SLUG_BASE_MAX = 70


def slugs_backfill(apps, schema_editor):
    Organization = apps.get_model("fleet_app", "Organization")
    taken: set[str] = set()
    changed = []
    for organization in Organization.objects.order_by("pk").only("pk", "name"):
        base = slugify(organization.name)[:SLUG_BASE_MAX].strip("-") or "organization"
        slug, n = base, 2
        while slug in taken:
            slug, n = f"{base}-{n}", n + 1
        taken.add(slug)
        organization.slug = slug
        changed.append(organization)
    Organization.objects.bulk_update(changed, ["slug"], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("fleet_app", "0006_api_tokens_hashed"),
    ]

    operations = [
        migrations.AddField(
            model_name="organization",
            name="slug",
            field=models.SlugField(max_length=80, null=True, db_index=False),
        ),
        migrations.RunPython(slugs_backfill, migrations.RunPython.noop, elidable=True),
    ]
