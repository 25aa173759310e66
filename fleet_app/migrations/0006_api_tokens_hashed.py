"""API tokens move from DRF's authtoken (keys in clear) to knox (a SHA-512 digest).

knox looks a token up by the digest of the whole token and keeps its first 15 characters
as ``token_key``; neither depends on the token's length, so a 40-character authtoken key
hashed the same way authenticates as it did. Each legacy key becomes a knox row (its
digest, its first 15 characters, its creation time, an expiry ``API_TOKEN_TTL_DAYS`` from
the upgrade), the move is audited, and the clear-text table is dropped.

``rest_framework.authtoken`` is no longer installed, so its table is read by name when a
database that had it is upgraded; a new database has none and nothing happens
(authtoken's migrations stay recorded as applied).
"""

from django.apps import apps as installed_apps
from django.db import migrations
from django.db.models import Case, Value, When
from django.utils import timezone

LEGACY_TABLE = "authtoken_token"
BATCH = 1000


def tokens_hash(apps, schema_editor):
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS, knox_settings

    connection = schema_editor.connection
    if LEGACY_TABLE not in connection.introspection.table_names():
        return
    AuthToken = apps.get_model("knox", "AuthToken")
    AuditEntry = apps.get_model("fleet_app", "AuditEntry")
    ContentType = apps.get_model("contenttypes", "ContentType")
    User = apps.get_model("fleet_app", "User")
    user_type = ContentType.objects.filter(app_label="fleet_app", model="user").first()
    expiry = timezone.now() + knox_settings.TOKEN_TTL
    table = connection.ops.quote_name(LEGACY_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, created, user_id FROM {table} ORDER BY key")  # noqa: S608
        rows = cursor.fetchall()
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        users = User.objects.in_bulk([user_id for _, _, user_id in batch])
        tokens = []
        created_at = {}
        entries = []
        for key, created, user_id in batch:
            token = AuthToken(
                digest=hash_token(key),
                token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH],
                user_id=user_id,
                expiry=expiry,
            )
            tokens.append(token)
            created_at[token.digest] = created
            user = users[user_id]
            entries.append(
                AuditEntry(
                    actor=None,
                    actor_repr="system",
                    action="api_token.migrate",
                    content_type=user_type,
                    object_id=str(user_id) if user_type else "",
                    object_repr=user.email[:255],
                    organization_id=user.organization_id,
                    after={"token_key": token.token_key, "expiry": expiry.isoformat()},
                )
            )
        AuthToken.objects.bulk_create(tokens)
        # created is auto_now_add, so bulk_create stamped it now: put each key's date back.
        AuthToken.objects.filter(digest__in=list(created_at)).update(
            created=Case(
                *(When(digest=d, then=Value(c)) for d, c in created_at.items()),
                output_field=AuthToken._meta.get_field("created"),
            )
        )
        AuditEntry.objects.bulk_create(entries)
    # The keys exist only as digests from here on. The table goes too: nothing installed
    # owns it any more, and its foreign key to the users would stay in every flush's way.
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {table}")


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("fleet_app", "0005_system_indexes_trimmed"),
        ("knox", "0009_extend_authtoken_field"),
    ]
    if installed_apps.is_installed("rest_framework.authtoken"):
        dependencies.append(("authtoken", "0004_alter_tokenproxy_options"))

    operations = [
        migrations.RunPython(tokens_hash, migrations.RunPython.noop, elidable=False),
    ]
