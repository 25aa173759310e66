"""The adapter interface."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

Log = Callable[[str], None]


class AdapterError(Exception):
    """The adapter could not do what was asked; the message is for the run's error."""


class Adapter:
    """Back up a service to one archive file, restore an archive to a target, verify.

    ``config`` is the service's configuration; a ``target`` says where a restore goes
    (a database name, a folder). ``backup`` returns the manifest that ``verify`` later
    compares a restored target with.
    """

    kind = "abstract"
    extension = ".bin"

    def config_check(self, config: dict[str, Any]) -> None:
        """Raise ``AdapterError`` if the configuration cannot work."""

    def backup(self, config: dict[str, Any], archive: Path, log: Log) -> dict[str, Any]:
        raise NotImplementedError

    def original_target(self, config: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def target_check(self, target: dict[str, Any]) -> dict[str, Any]:
        """The target, cleaned; ``AdapterError`` if it is not one this adapter takes."""
        raise NotImplementedError

    def plan(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        """What a restore would do, without doing it (the dry run)."""
        raise NotImplementedError

    def restore(
        self, config: dict[str, Any], target: dict[str, Any], archive: Path, log: Log
    ) -> None:
        raise NotImplementedError

    def verify(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any], log: Log
    ) -> dict[str, Any]:
        """``{"ok": bool, "checks": [{"check", "ok", "expected", "found"}]}``."""
        raise NotImplementedError

    def scratch_target(self, config: dict[str, Any], token: str) -> dict[str, Any]:
        """A throw-away target for a restore drill."""
        raise NotImplementedError

    def scratch_drop(self, config: dict[str, Any], target: dict[str, Any]) -> None:
        raise NotImplementedError


def report(checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ok": all(c["ok"] for c in checks) and bool(checks), "checks": checks}


def check(name: str, expected: Any, found: Any) -> dict[str, Any]:
    return {"check": name, "ok": expected == found, "expected": expected, "found": found}
