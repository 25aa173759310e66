"""What changed between two ns8 inventories: field path, old, new, severity.

Lists of objects that carry an ``id`` (``facts.modules``) are compared by id, so a
reordered list is not a change. Fields that change on every inventory (uptime, byte and
packet counters, load) are ignored; the patterns are in ``VOLATILE_KEY``.
"""

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

VOLATILE_KEY = re.compile(
    r"(uptime|_bytes$|^bytes|_packets$|^packets|load_?avg|^load\d*$|_free$|^free$|"
    r"_available$|^available$|_used$|^used$|timestamp|^last_|_at$|^now$|temperature)",
    re.IGNORECASE,
)
# Facts whose change an operator must look at first.
CRITICAL_KEY = re.compile(r"(^|\.)(version|cluster_leader|installation|uuid)$")
WARNING_KEY = re.compile(r"(fqdn|hostname|ipv4|ipv6|address|subscription|ui_name)", re.I)
MAX_CHANGES = 500


@lru_cache(maxsize=8192)
def _volatile(key: str) -> bool:
    # Inventories repeat the same few hundred key names: match each name once.
    return VOLATILE_KEY.search(key) is not None


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = value
        for key, item in value.items():
            key = str(key)
            if _volatile(key):
                continue
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(item, dict) and "id" in item for item in value)
    ):
        for item in value:
            _flatten(item, f"{prefix}[{item['id']}]", out)
    elif isinstance(value, list):
        # Plain lists are compared whole, order-insensitively when their items are scalars
        # of one type (addresses, flags, domains); lists of objects keep their order.
        try:
            out[prefix] = sorted(value)
        except TypeError:
            out[prefix] = value
    else:
        out[prefix] = value


def flatten(document: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten(document, "", out)
    return out


def facts_digest(flat: dict[str, Any]) -> str:
    """A digest of the facts that count: equal digests mean no change to record."""
    canonical = json.dumps(flat, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def severity_of(path: str) -> str:
    if CRITICAL_KEY.search(path):
        return "critical"
    if path.count("[") and path.endswith("]"):
        return "warning"  # a module appeared or went away
    if WARNING_KEY.search(path):
        return "warning"
    return "info"


def diff(previous: dict, current: dict) -> list[tuple[str, Any, Any, str]]:
    """``diff_flat`` of two whole documents."""
    return diff_flat(flatten(previous), flatten(current))


def diff_flat(
    old_flat: dict[str, Any], new_flat: dict[str, Any]
) -> list[tuple[str, Any, Any, str]]:
    """Return ``(path, old, new, severity)`` for each changed leaf, at most MAX_CHANGES.

    A module (an item of a list keyed by id) that appears or disappears is reported
    once at its own path rather than once per field.
    """
    old_roots = {path: _item_root(path) for path in old_flat}
    new_roots = {path: _item_root(path) for path in new_flat}
    old_items = set(old_roots.values()) - {None}
    new_items = set(new_roots.values()) - {None}
    gone_or_new = old_items ^ new_items
    changes: list[tuple[str, Any, Any, str]] = [
        (item, "present", None, "warning")
        if item in old_items
        else (item, None, "present", "warning")
        for item in sorted(gone_or_new)
    ]
    for path in sorted(old_flat.keys() | new_flat.keys()):
        if len(changes) >= MAX_CHANGES:
            break
        old, new = old_flat.get(path), new_flat.get(path)
        if old == new:
            continue
        root = old_roots.get(path) or new_roots.get(path)
        if root and root in gone_or_new:
            continue
        changes.append((path, old, new, severity_of(path)))
    return changes[:MAX_CHANGES]


def _item_root(path: str) -> str | None:
    """``facts.modules[traefik1].version`` → ``facts.modules[traefik1]``."""
    end = path.find("]")
    return path[: end + 1] if end != -1 else None
