"""The kinds of row a bundle carries, in the order an import writes them (parents first)."""

from .kinds_backups import ReplicationJobs, ServiceBackups
from .kinds_fleet import Organizations, Systems, Users
from .kinds_more import Anomalies, Audit, ClusterBackups, Inventories, Mappings, Quotas
from .rows import Kind, Scope, Target

KINDS: list[Kind] = [
    Organizations(),
    Users(),
    Systems(),
    Mappings(),
    Anomalies(),
    Inventories(),
    ClusterBackups(),
    Quotas(),
    ServiceBackups(),
    ReplicationJobs(),
    Audit(),
]
BY_NAME = {kind.name: kind for kind in KINDS}
CREDENTIAL_KINDS = ("users", "systems", "mappings")

__all__ = ["BY_NAME", "CREDENTIAL_KINDS", "KINDS", "Kind", "Scope", "Target"]
