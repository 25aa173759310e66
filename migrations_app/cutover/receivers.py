"""Wiring fleet events to the cutover: the arrow points from migrations_app to fleet_app."""

from fleet_app.signals import inventory_received, secret_confirmed

from . import services


def _on_inventory(sender, system, inventory, **kwargs) -> None:
    services.mapping_fingerprint(system=system, inventory=inventory)


def _on_secret_confirmed(sender, system, **kwargs) -> None:
    services.mapping_confirm(system=system)


def connect() -> None:
    inventory_received.connect(_on_inventory, dispatch_uid="cutover_fingerprint")
    secret_confirmed.connect(_on_secret_confirmed, dispatch_uid="cutover_confirm")
