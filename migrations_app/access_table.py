"""The cutover's and the accounts' rows of the permission table (see fleet_app/access.py)."""

from fleet_app.access import PUBLIC, ROOT, SUPERUSER_ONLY, TENANT, rule

ALL_VIEW = {"superuser": "v", "operator": "v", "admin": "v", "support": "v", "reader": "v"}
# The cutover's figures are fleet-wide: a tenant persona reads them only at the root.
ROOT_VIEW = ALL_VIEW

RULES = [
    # --- Models -----------------------------------------------------------------------------
    rule(
        "model",
        "migrations_app.legacymapping",
        TENANT,
        org="system__organization",
        note="(changed only by its actions)",
        superuser="vc",
        operator="v",
        admin="vc",
        support="vc",
        reader="v",
    ),
    rule(
        "model",
        "migrations_app.rotationrun",
        TENANT,
        org="created_by__organization",
        superuser="va",
        operator="v",
        admin="va",
        support="v",
        reader="v",
    ),
    rule(
        "model",
        "migrations_app.fingerprintanomaly",
        TENANT,
        org="system__organization",
        note="(a tenant is not told whether a legacy id exists elsewhere)",
        superuser="vc",
        operator="v",
        admin="vc",
        support="vc",
        reader="v",
    ),
    rule("model", "migrations_app.cutoverday", ROOT, **ROOT_VIEW),
    rule("model", "migrations_app.deduperun", SUPERUSER_ONLY, superuser="va"),
    rule("model", "migrations_app.dedupejournal", SUPERUSER_ONLY, superuser="v"),
    rule("model", "migrations_app.legacyaccount", SUPERUSER_ONLY, superuser="v"),
    rule("model", "migrations_app.quotarun", SUPERUSER_ONLY, superuser="va"),
    # --- Admin actions ----------------------------------------------------------------------
    rule(
        "action",
        "migrations_app.legacymapping.reopen",
        TENANT,
        superuser="r",
        admin="r",
        support="r",
    ),
    rule(
        "action",
        "migrations_app.legacymapping.start_rotation",
        TENANT,
        superuser="r",
        admin="r",
    ),
    rule(
        "action",
        "migrations_app.fingerprintanomaly.resolve",
        TENANT,
        superuser="r",
        admin="r",
        support="r",
    ),
    rule("action", "migrations_app.deduperun.undo", SUPERUSER_ONLY, superuser="r"),
    # --- Routes -----------------------------------------------------------------------------
    rule("route", "proxy-credentials", PUBLIC, note="(legacy id and token)"),
    rule("route", "proxy-freekey", PUBLIC, note="(legacy id and token)"),
    rule("route", "cutover-api-root", ROOT, note="(the index of /api/cutover/)", **ROOT_VIEW),
    rule("route", "cutover-summary-list", ROOT, **ROOT_VIEW),
    rule("route", "cutover-straggler-list", ROOT, **ROOT_VIEW),
    rule("route", "cutover-anomaly-list", ROOT, **ROOT_VIEW),
    rule("route", "cutover-anomaly-detail", ROOT, **ROOT_VIEW),
    rule("route", "cutover-mapping-list", ROOT, **ROOT_VIEW),
    rule("route", "cutover-mapping-detail", ROOT, **ROOT_VIEW),
    # --- Dashboards -------------------------------------------------------------------------
    rule("dashboard", "cutover-dashboard", ROOT, title="Cutover dashboard", **ROOT_VIEW),
    # --- Commands ---------------------------------------------------------------------------
    rule(
        "command",
        "import_legacy_mappings",
        TENANT,
        note="(into an organization the caller reaches)",
        superuser="r",
        operator="r",
        admin="r",
    ),
    rule("command", "rotate_mappings", ROOT, superuser="r", operator="r"),
    rule("command", "import_legacy_accounts", SUPERUSER_ONLY, superuser="r"),
    rule("command", "dedupe_users", SUPERUSER_ONLY, superuser="r"),
    rule("command", "quotas", SUPERUSER_ONLY, superuser="r"),
    rule("command", "seed_demo_cutover", SUPERUSER_ONLY, superuser="r"),
]
