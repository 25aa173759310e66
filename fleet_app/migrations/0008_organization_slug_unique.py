"""Every organization has its slug (0007): it becomes required and unique."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("fleet_app", "0007_organization_slug"),
    ]

    operations = [
        migrations.AlterField(
            model_name="organization",
            name="slug",
            field=models.SlugField(max_length=80, unique=True),
        ),
    ]
