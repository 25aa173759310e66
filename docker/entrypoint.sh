#!/bin/sh
# The image's entry point: `entrypoint.sh web|worker|beat|migrate|healthcheck|manage ARGS…`
# (see controlplane/entrypoint.py). Started as root, it hands the data folders to the app
# user (a volume created by an older image or by hand may be root's), then drops to that
# user; started as anyone else, or with APP_USER empty, it runs as the caller.
set -eu

APP_USER="${APP_USER-cutover}"
PYTHON="${PYTHON:-python}"

if [ "$(id -u)" = 0 ] && [ -n "$APP_USER" ] && [ "${1:-}" != healthcheck ] \
    && id -u "$APP_USER" >/dev/null 2>&1; then
    for folder in "${MEDIA_ROOT:-}" "${BACKUP_WORK_DIR:-}" "${RUN_DIR:-}"; do
        [ -n "$folder" ] || continue
        mkdir -p "$folder"
        find "$folder" ! -user "$APP_USER" -exec chown "$APP_USER:$APP_USER" {} +
    done
    exec setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups \
        "$PYTHON" -m controlplane.entrypoint "$@"
fi
exec "$PYTHON" -m controlplane.entrypoint "$@"
