"""Backup errors, on top of the fleet's: each carries the status an endpoint answers."""

from fleet_app.errors import FleetError


class NotFound(FleetError):
    status = 404


class LengthRequired(FleetError):
    status = 411


class BackupCorrupt(FleetError):
    """The stored bytes are not the bytes that were uploaded: never served."""

    status = 500


class StorageUnavailable(FleetError):
    """The blob store failed while writing (disk full, bucket unreachable): retry later."""

    status = 503
