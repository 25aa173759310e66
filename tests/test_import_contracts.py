"""The layering is import-linter's contracts (pyproject.toml): the tree keeps them, and a
forbidden import breaks them — checked on a copy of the tree with one bad import added."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("controlplane", "fleet_app", "migrations_app", "backups_app")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


@pytest.fixture
def tree(tmp_path):
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_contracts(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("fleet_app/probe.py", "import migrations_app.models\n", "fleet_app imports no other app"),
        ("backups_app/probe.py", "from migrations_app import models\n", "are independent"),
        ("migrations_app/probe.py", "import controlplane.settings\n", "never import controlplane"),
        # A service that imports its own tasks (the circles this layering forbids).
        ("backups_app/zfs/services.py", "from . import tasks\n", "zfs rooms in order"),
        ("migrations_app/cutover/services.py", "from . import tasks\n", "cutover rooms in order"),
        ("migrations_app/accounts/merge.py", "from . import services\n", "accounts rooms in order"),
        ("backups_app/zfs/models.py", "from ..cluster_backups import models\n", "capabilities"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tree, module, line, contract):
    path = tree / module
    path.write_text((path.read_text() if path.exists() else "") + line)
    result = lint(tree)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout
