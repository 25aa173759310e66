"""Realistic ns8 phonehome inventories, for the demo fleet, the simulator and the benchmarks.

The shape follows ns8-core's ``print-phonehome``: ``$schema``, ``uuid``,
``installation`` and ``facts`` with ``cluster``, ``nodes`` (keyed by node id, one
``cluster_leader``), ``modules`` (a list of ``{id, name, node, version, …}``) and the
``migration`` fingerprint.
"""

import random
import uuid as uuidlib
from typing import Any

MODULE_NAMES = (
    "traefik",
    "loki",
    "samba",
    "mail",
    "webtop",
    "nextcloud",
    "nethvoice",
    "mattermost",
    "ejabberd",
    "roundcubemail",
    "collabora",
    "dokuwiki",
    "crowdsec",
    "metrics",
    "openldap",
    "imapsync",
    "wordpress",
    "n8n",
    "zammad",
    "nethvoice-proxy",
)


def ns8_inventory(
    *,
    seed: int,
    nodes: int = 3,
    modules: int = 60,
    version: str = "3.9.1",
    from_legacy_system_id: str | None = None,
    migrated_at: str | None = None,
    uptime: int | None = None,
) -> dict[str, Any]:
    """A phonehome document; ``modules=60`` with three nodes is about 50 KB of JSON."""
    rng = random.Random(seed)  # noqa: S311 - demo data, deterministic on purpose
    cluster_uuid = str(uuidlib.UUID(int=rng.getrandbits(128)))
    domain = f"c{seed}.example.org"
    node_facts = {}
    for n in range(1, nodes + 1):
        node_facts[str(n)] = {
            "cluster_leader": n == 1,
            "fqdn": f"node{n}.{domain}",
            "ui_name": f"Node {n}",
            "version": version,
            "default_ipv4": f"10.{seed % 250}.{n}.{rng.randint(2, 250)}",
            "default_ipv6": f"fd00:{seed % 9999:x}::{n}",
            "distro": {"name": "rocky", "version": "9.6"},
            "hypervisor": rng.choice(["kvm", "vmware", "none"]),
            "product": {"name": "Standard PC", "manufacturer": "QEMU"},
            "processors": {"count": rng.choice([2, 4, 8]), "model": "Intel Xeon E-2288G"},
            "memory": {"total": 16 * 2**30, "used": rng.randint(1, 15) * 2**30},
            "mountpoints": {
                "/": {"size_bytes": 100 * 2**30, "used_bytes": rng.randint(1, 99) * 2**30},
                "/home": {"size_bytes": 500 * 2**30, "used_bytes": rng.randint(1, 499) * 2**30},
            },
            "uptime_seconds": uptime if uptime is not None else rng.randint(1, 10**7),
            "network_rx_bytes": rng.randint(0, 10**12),
            "network_tx_bytes": rng.randint(0, 10**12),
        }
    module_facts = []
    for m in range(modules):
        name = MODULE_NAMES[m % len(MODULE_NAMES)]
        module_facts.append(
            {
                "id": f"{name}{m // len(MODULE_NAMES) + 1}",
                "name": name,
                "node": str(m % nodes + 1),
                "version": f"{1 + m % 3}.{m % 7}.{m % 5}",
                "image": f"ghcr.io/nethserver/{name}:{1 + m % 3}.{m % 7}.{m % 5}",
                "flags": ["rootless"] if m % 2 else ["rootfull"],
                "users": rng.randint(0, 500),
                "domains": [f"{name}.{domain}"],
                "settings": {
                    "backup_enabled": bool(m % 3),
                    "tls": "letsencrypt" if m % 2 else "custom",
                    "storage_bytes": rng.randint(0, 10**11),
                    "notes": "x" * 500,
                },
            }
        )
    return {
        "$schema": "https://schema.nethserver.org/facts/2022-12.json",
        "uuid": cluster_uuid,
        "installation": "nethserver",
        "facts": {
            "cluster": {
                "ui_name": f"Cluster {seed}",
                "fqdn": domain,
                "subscription": {"provider": "nsent", "status": "active"},
                "backup_repositories": rng.randint(0, 3),
                "smarthost_enabled": bool(seed % 2),
            },
            "nodes": node_facts,
            "modules": module_facts,
            "migration": {
                "from_legacy_system_id": from_legacy_system_id,
                "migrated_at": migrated_at,
            },
        },
    }
