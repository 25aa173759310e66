"""Pluggable service adapters: each knows how to back up, plan, restore and verify one
kind of service (seed 003's "services", behind the backup and restore managers).

An adapter works on local files only; moving archives to and from the blob store,
checksums, run rows and retention are the caller's (``backups_app.service_backups``).
"""

from .base import Adapter, AdapterError
from .cutover_data import CutoverDataAdapter
from .directory import DirectoryAdapter
from .postgres import PostgresAdapter

ADAPTERS: dict[str, Adapter] = {
    PostgresAdapter.kind: PostgresAdapter(),
    DirectoryAdapter.kind: DirectoryAdapter(),
    CutoverDataAdapter.kind: CutoverDataAdapter(),
}


def get_adapter(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise AdapterError(f"No adapter {kind!r}; use one of {', '.join(ADAPTERS)}.") from None


__all__ = ["ADAPTERS", "Adapter", "AdapterError", "get_adapter"]
