"""The data flows one way: each package imports only what is upstream of it.

Checked statically (every import statement, including those inside functions), so a
downstream import cannot hide behind a lazy import either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = {"m2ad/cli", "m2ad/run", "m2ad/embedded.py"}

# package (or module path prefix) -> top-level packages it must never import
FORBIDDEN = {
    "m2ad": {"protocols", "baselines", "leaderboard"},
    "protocols": {"baselines", "leaderboard", "m2ad.run", "m2ad.embedded", "m2ad.cli"},
    "baselines": {"protocols", "leaderboard", "m2ad.run", "m2ad.embedded", "m2ad.cli"},
    "leaderboard": {"baselines", "m2ad.run", "m2ad.embedded", "m2ad.cli"},
}
METRICS_FORBIDDEN = {"m2ad.schema", "m2ad.data", "m2ad.shard", "m2ad.predictions", "datasets", "torch"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_orchestration(path: Path) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == item or relative.startswith(item + "/") for item in ORCHESTRATION)


def _violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if _is_orchestration(path):
            continue
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_upstream(package: str) -> None:
    assert _violations(package, FORBIDDEN[package]) == []


def test_metrics_is_a_pure_library() -> None:
    assert _violations("m2ad/metrics", METRICS_FORBIDDEN) == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from protocols import get\n    import baselines.base\n")
    assert _imports(module) == {"protocols", "baselines.base"}
