"""Cutover settings: everything configurable comes from the environment (django-environ).

With nothing set, the project runs on the embedded default: SQLite, a local media
folder and Celery tasks executed in-process.
"""

import datetime as dt
from pathlib import Path
from urllib.parse import urlsplit

import environ
from csp.constants import NONCE, NONE, SELF

from controlplane.production import EMBEDDED_SECRET_KEY

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# The embedded default runs without configuration, with DEBUG on; with DEBUG off the
# entry points refuse to start on this key or without ALLOWED_HOSTS (production.py).
SECRET_KEY = env.str("SECRET_KEY", default=EMBEDDED_SECRET_KEY)
# Keyed digests of machine credentials (system secrets, legacy tokens) use their own key,
# so rotating SECRET_KEY (sessions, signed links) does not invalidate every system.
CREDENTIAL_DIGEST_KEY = env.str("CREDENTIAL_DIGEST_KEY", default=SECRET_KEY)
# Loopback names only for a DEBUG server; production names its own hosts.
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies in front of the service that append to X-Forwarded-For. 0: the TCP peer
# is the client and X-Forwarded-For is ignored (a client could write anything there);
# throttles and lockouts key on the address fleet_app.client_address derives from it.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# --- Browser hardening ----------------------------------------------------------------
# With DEBUG off, cookies travel over HTTPS only and browsers are told to use HTTPS for a
# year; a plain-http lab sets SESSION_COOKIE_SECURE=false and SECURE_HSTS_SECONDS=0.
# HSTS is sent only on HTTPS responses (behind a proxy: X-Forwarded-Proto: https).
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=SESSION_COOKIE_SECURE)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = env.str("SECURE_REFERRER_POLICY", default="same-origin")
X_FRAME_OPTIONS = "DENY"
# Content Security Policy (django-csp): only this origin's files run or style a page. No
# inline script or style attribute anywhere (the dashboards' styles and bars are static
# files); the one inline <style> left, Swagger UI's, carries the per-request nonce. data:
# images are the SVG icons inside the admin's and Swagger UI's stylesheets.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "csp",
    "controlplane",
    "fleet_app",
    "migrations_app",
    "backups_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
                "fleet_app.access_http.links",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Persistent connections: the ingest path cannot afford a new PostgreSQL connection
# per request.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# A health check costs a round trip per request, a fifth of a heartbeat; without it the
# first request of a thread after a database restart fails once and the client retries.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database serves a threaded server, the in-process tasks and the demo
    # fleet at once. WAL lets readers run beside the one writer; IMMEDIATE takes the write
    # lock when a transaction begins, so a transaction that read first never fails to
    # upgrade (SQLite answers that at once, whatever the timeout); the timeout makes a
    # writer wait its turn instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": env.int("SQLITE_BUSY_TIMEOUT_SECONDS", default=20),
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "fleet_app.User"
# E-mail is unique only among active accounts, case-insensitively; the backend looks
# the active account up the same way.
AUTHENTICATION_BACKENDS = ["fleet_app.auth.EmailBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Staff sign-in throttle ---------------------------------------------------------------
# django-axes counts failed sign-ins per account at an address and per address in
# the database: lockouts show in the admin and outlive a cache flush. Reset with
# `manage.py axes_reset` (or axes_reset_username / axes_reset_ip).
INSTALLED_APPS += ["axes"]
# First, the collect API's refusals under saturation (fleet_app/api/busy.py), then the
# refusal of sign-ins while every hashing slot is taken (it must cost nothing);
# last, as axes asks, axes' own, which turns a lockout flagged on the request into a page.
MIDDLEWARE = [
    "fleet_app.api.busy.CollectBusyMiddleware",
    "fleet_app.signin.SignInBusyMiddleware",
    *MIDDLEWARE,
    "axes.middleware.AxesMiddleware",
]
# Axes first: a locked-out sign-in is refused before any password is hashed.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", *AUTHENTICATION_BACKENDS]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env.int("STAFF_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.int("STAFF_LOGIN_COOLOFF_MINUTES", default=15))
# An account is locked per address it failed from, and an address for every account: guesses
# from elsewhere never lock the owner out, and the hashing bound (SIGNIN_HASH_SLOTS) caps
# how fast a spread-out guesser can try.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_CLIENT_IP_CALLABLE = "fleet_app.client_address.client_ip"
AXES_USERNAME_FORM_FIELD = "username"  # the admin form's field, whatever USERNAME_FIELD is
AXES_USERNAME_CALLABLE = "fleet_app.auth.login_username"
# A lockout ends when its cool-off does: failures during it do not extend it, so nobody
# can keep an account locked by guessing at it.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "fleet_app.signin.locked_out"
# Password hashes at once on this host (0: unbounded), how long a sign-in waits for one
# before it is refused without hashing, and how much lower the hashing threads run
# (fleet_app/hashing.py). The wait holds a web thread, so it stays short.
SIGNIN_HASH_SLOTS = env.int("SIGNIN_HASH_SLOTS", default=1)
SIGNIN_HASH_WAIT_SECONDS = env.float("SIGNIN_HASH_WAIT_SECONDS", default=0.25)
SIGNIN_HASH_NICE = env.int("SIGNIN_HASH_NICE", default=10)
# Per-host runtime files (the hashing slots' lock files); on local disk, not shared.
RUN_DIR = Path(env.str("RUN_DIR", default=str(BASE_DIR / "var" / "run")))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Set in production images (collectstatic); unset, whitenoise serves from the finders.
STATIC_ROOT = env.str("STATIC_ROOT", default="") or None
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(BASE_DIR / "var" / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Without collectstatic (the embedded default), whitenoise serves from the finders.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Celery -------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "memory://")
# No broker configured: run tasks in-process (the embedded default).
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Run rows hold job results; no result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# With acks_late, Redis hands the task of a dead worker to another one after this many
# seconds; it must exceed the longest task (a chunk), not the longest job.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
}
# Beat reads its entries from the database (django-celery-beat), where staff edit backup
# schedules in the admin; the static entries below are written there when beat starts.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "fleet-prune-history": {"task": "fleet_app.tasks.fleet_prune_history", "schedule": 3600.0},
    "fleet-runs-reap": {"task": "fleet_app.tasks.runs_reap", "schedule": 3600.0},
}
# A run (rotation, dedupe, backup, restore, ZFS…) no worker has written to for this long is
# failed by the hourly reaper: its worker or its message is gone. Longer than any one step
# of any job (a pg_dump of the largest database writes nothing until it ends).
RUN_STALE_HOURS = env.int("RUN_STALE_HOURS", default=24)


# --- Cache (throttles) --------------------------------------------------------------------
# Shared across web workers through Redis when there is one (its own database number, so
# clearing the cache never touches the broker's queues); in-process otherwise.
def _redis_cache_location(url: str) -> str:
    return urlsplit(url)._replace(path=f"/{env.int('REDIS_CACHE_DB', default=1)}").geturl()


CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": _redis_cache_location(REDIS_URL),
            "KEY_PREFIX": "cutover",
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Fleet ----------------------------------------------------------------------------
# Clients send in synchronized 10-minute waves: a 10-minute timeout makes the fleet flap.
FLEET_HEARTBEAT_TIMEOUT_MINUTES = env.int("FLEET_HEARTBEAT_TIMEOUT_MINUTES", default=20)
# The development server keeps the demo fleet alive (fleet_app/demo_live.py): its live
# systems heartbeat and send their daily inventory through the real services. `make run`
# turns it on; it starts only under `manage.py runserver`, never under gunicorn.
DEMO_LIVE = env.bool("DEMO_LIVE", default=False)
DEMO_LIVE_TICK_SECONDS = env.float("DEMO_LIVE_TICK_SECONDS", default=30.0)
# Systems whose credentials a web process remembers for the heartbeat fast path
# (fleet_app/hot.py); about 150 bytes each.
COLLECT_HOT_SYSTEMS = env.int("COLLECT_HOT_SYSTEMS", default=200_000)
# Heartbeat group commit (fleet_app/hot.py): how long the thread writing a batch waits for
# the heartbeats already on their way in its process (0: never wait). A heartbeat alone
# never waits.
COLLECT_HEARTBEAT_FLUSH_MS = env.float("COLLECT_HEARTBEAT_FLUSH_MS", default=3.0)
# The collect API under saturation (fleet_app/api/busy.py): a request the proxy stamped
# (X-Request-Start) that waited longer than this before a thread took it is answered 503
# at once (0: never shed); a 503 says to retry after this many seconds, jittered up to twice.
COLLECT_QUEUE_LIMIT_MS = env.int("COLLECT_QUEUE_LIMIT_MS", default=5000)
COLLECT_RETRY_AFTER_SECONDS = env.int("COLLECT_RETRY_AFTER_SECONDS", default=10)
COLLECT_INVENTORY_MAX_BYTES = env.int("COLLECT_INVENTORY_MAX_BYTES", default=10 * 1024 * 1024)
# The inventory inbox (fleet_app.services.inventory_inbox_drain): rows per batch (one
# transaction each), how often a web process sends the drain task at most while
# inventories arrive, and how often beat sweeps the inbox whatever arrived (what drains
# it after a broker outage).
INVENTORY_INBOX_BATCH = env.int("INVENTORY_INBOX_BATCH", default=50)
INVENTORY_INBOX_NUDGE_SECONDS = env.float("INVENTORY_INBOX_NUDGE_SECONDS", default=1.0)
INVENTORY_INBOX_SWEEP_SECONDS = env.float("INVENTORY_INBOX_SWEEP_SECONDS", default=10.0)
CELERY_BEAT_SCHEDULE["fleet-inventory-inbox-sweep"] = {
    "task": "fleet_app.tasks.inventory_inbox_drain",
    "schedule": INVENTORY_INBOX_SWEEP_SECONDS,
}
# Inventories and activity days older than this are pruned (the latest inventory of each
# system is always kept).
FLEET_HISTORY_DAYS = env.int("FLEET_HISTORY_DAYS", default=90)
# Failed legacy logins on /proxy/credentials and freekey: after this many failures in the
# window, an address is refused (429 with Retry-After) whatever it presents, and a legacy
# id is refused to the addresses that failed for it; others' failures never lock a system
# out (migrations_app/cutover/throttle.py).
PROXY_THROTTLE_FAILURES = env.int("PROXY_THROTTLE_FAILURES", default=10)
PROXY_THROTTLE_WINDOW_SECONDS = env.int("PROXY_THROTTLE_WINDOW_SECONDS", default=900)
# A bulk rotation leaves alone mappings whose credentials were fetched this recently: the
# cluster may not have used them yet and would never ask again.
ROTATION_GRACE_MINUTES = env.int("ROTATION_GRACE_MINUTES", default=60)
# While a rotated system has not used its native credentials, the newest this many secrets
# issued to it authenticate (each for ROTATION_GRACE_MINUTES after it was issued): overlapping
# /proxy/credentials calls never strand a cluster that kept an earlier answer.
ROTATION_PENDING_SECRETS = env.int("ROTATION_PENDING_SECRETS", default=5)
# The "Import mappings" page: the largest upload it takes (bigger exports go through
# manage.py import_legacy_mappings), and how long an uploaded file, kept sealed, may wait
# between its plan and its import.
MAPPINGS_UPLOAD_MAX_BYTES = env.int("MAPPINGS_UPLOAD_MAX_BYTES", default=100 * 1024 * 1024)
MAPPINGS_UPLOAD_MAX_AGE_HOURS = env.int("MAPPINGS_UPLOAD_MAX_AGE_HOURS", default=24)
CELERY_BEAT_SCHEDULE["migrations-mapping-uploads-expire"] = {
    "task": "migrations_app.tasks.mapping_uploads_expire",
    "schedule": 3600.0,
}
# /metrics requires "Authorization: Bearer <METRICS_TOKEN>"; with no token it answers 403
# unless METRICS_PUBLIC opens it to anyone who can reach it (fleet_app/metrics.py).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
# Base URL the systems use to reach this service (what register hands back as collect_url).
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000")

# --- Staff API ----------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: a caller without credentials is told how to authenticate (401 and
    # "WWW-Authenticate: Token"), not just refused (403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet_app.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleet_app.access_http.TablePermission"],
    "EXCEPTION_HANDLER": "fleet_app.access_http.api_exception_handler",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "fleet_app.api.pagination.NewestFirst",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "controlplane.schema.AutoSchema",
}
# API tokens (django-rest-knox): the database keeps a SHA-512 digest and the first 15
# characters; the token is shown once. Every token expires; the expired ones are purged
# (and audited) hourly by fleet_app.tasks.api_tokens_purge_expired.
API_TOKEN_TTL_DAYS = env.int("API_TOKEN_TTL_DAYS", default=90)
REST_KNOX = {
    "TOKEN_TTL": dt.timedelta(days=API_TOKEN_TTL_DAYS),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}
CELERY_BEAT_SCHEDULE["fleet-api-tokens-purge-expired"] = {
    "task": "fleet_app.tasks.api_tokens_purge_expired",
    "schedule": 3600.0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cutover staff API",
    "DESCRIPTION": "Fleet registry, inventories and changes, scoped to the caller's organization.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# E-mail is unique among active accounts only (a conditional constraint on lower(email));
# fleet_app.auth.EmailBackend resolves logins against exactly that set.
SILENCED_SYSTEM_CHECKS = ["auth.W004"]

# --- Accounts: quotas, dedupe and legacy import -------------------------------------------
# Default quota limits per resource; a Quota row with limit NULL has these, and the legacy
# import stores only limits that differ from them.
FLEET_QUOTA_DEFAULTS = {
    "systems": env.int("FLEET_QUOTA_SYSTEMS", default=100),
    "backup_bytes": env.int("FLEET_QUOTA_BACKUP_BYTES", default=100 * 1024**3),
    # The legacy platform's resources, with its default limits (Synnefo 0.13's uplimits).
    "cyclades.vm": env.int("FLEET_QUOTA_CYCLADES_VM", default=2),
    "cyclades.cpu": env.int("FLEET_QUOTA_CYCLADES_CPU", default=6),
    "cyclades.ram": env.int("FLEET_QUOTA_CYCLADES_RAM", default=6 * 1024**3),
    "cyclades.disk": env.int("FLEET_QUOTA_CYCLADES_DISK", default=30 * 1024**3),
    "cyclades.network.private": env.int("FLEET_QUOTA_CYCLADES_NETWORK_PRIVATE", default=1),
    "pithos+.diskspace": env.int("FLEET_QUOTA_PITHOS_DISKSPACE", default=5 * 1024**3),
}
# A dedupe run whose worker has not written a heartbeat for this long is dead: it no
# longer blocks another run, and it can be resumed or undone.
DEDUPE_RUN_DEAD_SECONDS = env.int("DEDUPE_RUN_DEAD_SECONDS", default=60)

# --- Backups ------------------------------------------------------------------------------
# Blob store: empty → a local folder (BACKUP_LOCAL_ROOT, under MEDIA_ROOT by default);
# "s3://bucket/prefix" → an S3-compatible bucket through django-storages/boto3.
BACKUP_STORAGE_URL = env.str("BACKUP_STORAGE_URL", default="")
BACKUP_LOCAL_ROOT = Path(env.str("BACKUP_LOCAL_ROOT", default=str(MEDIA_ROOT / "backups")))
# fsync each stored backup before its row is written: a backup acknowledged is on disk.
BACKUP_LOCAL_FSYNC = env.bool("BACKUP_LOCAL_FSYNC", default=True)
BACKUP_S3_ENDPOINT_URL = env.str("BACKUP_S3_ENDPOINT_URL", default="")
BACKUP_S3_ACCESS_KEY_ID = env.str("BACKUP_S3_ACCESS_KEY_ID", default="")
BACKUP_S3_SECRET_ACCESS_KEY = env.str("BACKUP_S3_SECRET_ACCESS_KEY", default="")
BACKUP_S3_REGION = env.str("BACKUP_S3_REGION", default="")
BACKUP_S3_PART_BYTES = env.int("BACKUP_S3_PART_BYTES", default=8 * 1024 * 1024)
# Cluster backups (POST {collect_url}/backups): size cap, read chunk, per-system rate.
CLUSTER_BACKUP_MAX_BYTES = env.int("CLUSTER_BACKUP_MAX_BYTES", default=2 * 1024**3)
CLUSTER_BACKUP_CHUNK_BYTES = env.int("CLUSTER_BACKUP_CHUNK_BYTES", default=1024 * 1024)
CLUSTER_BACKUP_RATE_COUNT = env.int("CLUSTER_BACKUP_RATE_COUNT", default=6)
CLUSTER_BACKUP_RATE_WINDOW_SECONDS = env.int("CLUSTER_BACKUP_RATE_WINDOW_SECONDS", default=3600)
# Uploads streaming at once per web process (0: unbounded); one more is refused at once
# with 503 and a Retry-After of BUSY_RETRY to 2 × BUSY_RETRY seconds. Below the process's
# threads (WEB_THREADS, 4), so a thread is left to answer the rest while uploads fsync.
CLUSTER_BACKUP_UPLOAD_SLOTS = env.int("CLUSTER_BACKUP_UPLOAD_SLOTS", default=3)
CLUSTER_BACKUP_BUSY_RETRY_SECONDS = env.int("CLUSTER_BACKUP_BUSY_RETRY_SECONDS", default=10)
# Retention per system: at most this many backups and this many bytes (newest kept).
CLUSTER_BACKUP_KEEP_COUNT = env.int("CLUSTER_BACKUP_KEEP_COUNT", default=10)
CLUSTER_BACKUP_KEEP_BYTES = env.int("CLUSTER_BACKUP_KEEP_BYTES", default=500 * 1024**2)
# Retention runs in a task, not in the upload request: a web process sends it at most once
# per NUDGE seconds while uploads arrive, beat sweeps every SWEEP seconds, and each run
# looks at the systems that uploaded within LOOKBACK seconds.
CLUSTER_BACKUP_PRUNE_NUDGE_SECONDS = env.float("CLUSTER_BACKUP_PRUNE_NUDGE_SECONDS", default=5.0)
CLUSTER_BACKUP_PRUNE_SWEEP_SECONDS = env.float("CLUSTER_BACKUP_PRUNE_SWEEP_SECONDS", default=60.0)
CLUSTER_BACKUP_PRUNE_LOOKBACK_SECONDS = env.int(
    "CLUSTER_BACKUP_PRUNE_LOOKBACK_SECONDS", default=900
)
CELERY_BEAT_SCHEDULE["backups-cluster-prune"] = {
    "task": "backups_app.cluster_backups.tasks.cluster_backups_prune_recent",
    "schedule": CLUSTER_BACKUP_PRUNE_SWEEP_SECONDS,
}
# Freshness dashboard: a system with no backup for longer than this is stale.
CLUSTER_BACKUP_STALE_DAYS = env.int("CLUSTER_BACKUP_STALE_DAYS", default=2)
# Service backups: scratch space for archives, where drills restore, the drill threshold.
BACKUP_WORK_DIR = Path(env.str("BACKUP_WORK_DIR", default=str(BASE_DIR / "var" / "backup-work")))
BACKUP_PG_BIN_DIR = env.str("BACKUP_PG_BIN_DIR", default="")
BACKUP_DRILL_MAX_AGE_DAYS = env.int("BACKUP_DRILL_MAX_AGE_DAYS", default=7)
BACKUP_DRILL_EVERY_HOURS = env.int("BACKUP_DRILL_EVERY_HOURS", default=24)
CELERY_BEAT_SCHEDULE["backups-restore-drills"] = {
    "task": "backups_app.tasks.restore_drills_start",
    "schedule": BACKUP_DRILL_EVERY_HOURS * 3600.0,
}
# Storage sweep (backups_app/sweep.py): objects no row points at and uploads left unfinished
# are removed once older than this; an object is committed just before its row.
BACKUP_SWEEP_GRACE_HOURS = env.int("BACKUP_SWEEP_GRACE_HOURS", default=24)
CELERY_BEAT_SCHEDULE["backups-storage-sweep"] = {
    "task": "backups_app.tasks.storage_sweep",
    "schedule": 6 * 3600.0,
}

# --- ZFS ----------------------------------------------------------------------------------
# A snapshot or replication run whose row has not moved for this long belongs to a dead
# worker (a running replication touches its row every 10 s): it is failed as interrupted
# and its (job, dataset) may be claimed again.
ZFS_RUN_STALE_SECONDS = env.int("ZFS_RUN_STALE_SECONDS", default=60)
# How long an SSH connection to a storage host may take before the host counts as
# unreachable (the run fails saying why), and how many datasets of a tree send at once.
ZFS_SSH_CONNECT_TIMEOUT = env.int("ZFS_SSH_CONNECT_TIMEOUT", default=15)
ZFS_PARALLEL_SENDS = env.int("ZFS_PARALLEL_SENDS", default=4)
# Every minute beat sends the tick that starts due snapshot and replication jobs.
CELERY_BEAT_SCHEDULE["zfs-tick"] = {"task": "backups_app.zfs.tasks.zfs_tick", "schedule": 60.0}
# What the workers execute, and with which key: settings of the workers, never columns, so
# editing a storage host can change where they connect but not what they run. ZFS_BIN is
# also the path run on the remote hosts (their forced command may insist on it).
ZFS_BIN = env.str("ZFS_BIN", default="/usr/sbin/zfs")
ZPOOL_BIN = env.str("ZPOOL_BIN", default="/usr/sbin/zpool")
ZFS_SSH_BIN = env.str("ZFS_SSH_BIN", default="/usr/bin/ssh")
# The private key the workers log in to the storage hosts with; unset, no host is reached
# over SSH (runs on remote hosts fail saying so).
ZFS_SSH_KEY_PATH = env.str("ZFS_SSH_KEY_PATH", default="")
# Storage hosts (by name) the workers run on: their commands run locally, as the worker's
# own user, without SSH. No other host is ever local.
ZFS_LOCAL_HOSTS = frozenset(env.list("ZFS_LOCAL_HOSTS", default=[]))

# --- Bundles (moving a selection of the data to another instance) ------------------------
# Where exports are written by default (<root>/<selection>/<date>-<sequence>/), how many
# are kept per selection, and the file holding this instance's Ed25519 signing key (made
# on first use; its public half is what other instances trust).
BUNDLE_EXPORT_ROOT = Path(env.str("BUNDLE_EXPORT_ROOT", default=str(BASE_DIR / "var" / "bundles")))
BUNDLE_EXPORT_KEEP = env.int("BUNDLE_EXPORT_KEEP", default=10)
BUNDLE_SIGNING_KEY_FILE = Path(
    env.str("BUNDLE_SIGNING_KEY_FILE", default=str(BASE_DIR / "var" / "bundle-signing.key"))
)
BUNDLE_UPLOAD_ROOT = Path(
    env.str("BUNDLE_UPLOAD_ROOT", default=str(BASE_DIR / "var" / "bundle-uploads"))
)
# Rows per batch of an import (one transaction and one checkpoint each).
BUNDLE_BATCH_ROWS = env.int("BUNDLE_BATCH_ROWS", default=1000)
# Bytes an import leaves free beyond the blobs it places.
BUNDLE_DISK_RESERVE_BYTES = env.int("BUNDLE_DISK_RESERVE_BYTES", default=64 * 1024**2)
# The blob store bundles read and write (a callable returning it), and what runs once an
# import wrote rows (the cutover's day counters are rebuilt from the mappings).
BUNDLE_BLOB_STORE = "backups_app.storage.get_store"
# The backups' own writer of a schedule's beat entry: imported schedules get theirs from it.
BUNDLE_SCHEDULE_SYNC = "backups_app.service_backups.schedules.backup_schedule_periodic_task_sync"
BUNDLE_AFTER_APPLY = ["migrations_app.cutover.services.cutover_counters_rebuild"]
