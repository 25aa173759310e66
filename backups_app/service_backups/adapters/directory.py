"""A directory tree (an NFS share, an uploaded configuration folder) as a gzipped tar.

Configuration: ``{"path": "/srv/share"}``. The manifest lists every regular file with its
size and SHA-256, so verify can prove a restored tree has every byte. Extraction uses
tarfile's ``data`` filter: no absolute paths, no ``..``, no device files, no links out
of the target.
"""

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any

from .base import Adapter, AdapterError, Log, check, report

CHUNK = 1024 * 1024
# Verify lists at most this many differing files; the counts say the rest.
LISTED = 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path, path.relative_to(root).as_posix()


class DirectoryAdapter(Adapter):
    kind = "directory"
    extension = ".tar.gz"

    def _root(self, config: dict[str, Any]) -> Path:
        path = config.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise AdapterError("A directory service needs an absolute 'path'.")
        return Path(path)

    def config_check(self, config: dict[str, Any]) -> None:
        self._root(config)

    def backup(self, config: dict[str, Any], archive: Path, log: Log) -> dict[str, Any]:
        root = self._root(config)
        if not root.is_dir():
            raise AdapterError(f"{root} is not a directory.")
        files: dict[str, dict[str, Any]] = {}
        with tarfile.open(archive, "w:gz") as tar:
            for path, name in _files(root):
                files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
                tar.add(path, arcname=name, recursive=False)
        log(f"archived {len(files)} files, {sum(f['size'] for f in files.values())} bytes")
        return {"path": str(root), "files": files}

    def original_target(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"path": str(self._root(config))}

    def target_check(self, target: dict[str, Any]) -> dict[str, Any]:
        return {"path": str(self._root(target or {}))}

    def plan(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        target = self.target_check(target)
        root = Path(target["path"])
        files = manifest.get("files", {})
        overwritten = (
            sorted(name for name in files if (root / name).exists()) if root.exists() else []
        )
        return {
            "target": target,
            "target_exists": root.exists(),
            "action": "extract the archive into the folder; files it holds are overwritten, "
            "other files are left alone",
            "files": len(files),
            "bytes": sum(f["size"] for f in files.values()),
            "files_overwritten": len(overwritten),
            "first_overwritten": overwritten[:LISTED],
        }

    def restore(
        self, config: dict[str, Any], target: dict[str, Any], archive: Path, log: Log
    ) -> None:
        root = Path(self.target_check(target)["path"])
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
        log(f"extracted into {root}")

    def verify(
        self, config: dict[str, Any], target: dict[str, Any], manifest: dict[str, Any], log: Log
    ) -> dict[str, Any]:
        root = Path(self.target_check(target)["path"])
        files = manifest.get("files", {})
        missing, differing = [], []
        for name, meta in sorted(files.items()):
            path = root / name
            if not path.is_file():
                missing.append(name)
            elif path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                differing.append(name)
        checks = [
            check("files present", len(files), len(files) - len(missing)),
            check("files with the archived SHA-256", len(files) - len(missing),
                  len(files) - len(missing) - len(differing)),
        ]  # fmt: skip
        if missing:
            checks.append(check("missing files", [], missing[:LISTED]))
        if differing:
            checks.append(check("differing files", [], differing[:LISTED]))
        log(f"verify: {len(missing)} missing, {len(differing)} differing of {len(files)} files")
        return report(checks)

    def scratch_target(self, config: dict[str, Any], token: str) -> dict[str, Any]:
        from django.conf import settings

        return {"path": str(Path(settings.BACKUP_WORK_DIR).resolve() / f"drill-{token}")}

    def scratch_drop(self, config: dict[str, Any], target: dict[str, Any]) -> None:
        import shutil

        shutil.rmtree(Path(self.target_check(target)["path"]), ignore_errors=True)
