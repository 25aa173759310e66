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


def _module_cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over direct imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other():
    import grimp

    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert _module_cycles(graph) == []


def test_no_module_outside_migrations_and_tests_is_over_600_lines():
    sources = [
        path
        for folder in (*PACKAGES, "bench")
        for path in (ROOT / folder).rglob("*.py")
        if "migrations" not in path.relative_to(ROOT).parts
    ]
    long = {
        str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}


def test_the_circle_finder_finds_a_circle():
    class Graph:
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        modules = set(edges)

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _module_cycles(Graph()) == [["a", "b", "c"]]
