"""The README's Python example: the same code as examples/quickstart.py, and it runs when pasted
into a plain script (no ``__main__`` guard), writing the predictions file it evaluates; the
library's process pools work from such a script."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from m2ad import processes

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "quickstart.py"


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("```python\n", readme.index("[examples/quickstart.py](examples/quickstart.py)")) + len("```python\n")
    return readme[start:readme.index("```\n", start)]


def _code_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_the_readme_example_is_the_quickstart_script() -> None:
    source = EXAMPLE.read_text()
    main = next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "main")
    body = textwrap.dedent("\n".join(source.splitlines()[main.lineno:main.end_lineno]))
    example = _readme_example()
    imports = [line for line in _code_lines(example) if line.startswith(("import ", "from "))]
    assert imports and set(imports) <= set(_code_lines(source))
    rest = [line for line in _code_lines(example) if line not in imports]
    assert rest == ['out = Path("quickstart")', *_code_lines(body)]
    assert "predictions.write(" in body and "evaluate(" in body


_UNGUARDED = """
from m2ad.shard import shard_tree
from m2ad.synth import generate

generate("tree", categories=["Cube"], normal_specimens=2, ng_specimens=1, resolution=32, workers=2)
shard_tree("tree", "shards", workers=2)
print("done")
"""


def test_process_pools_work_from_a_script_without_a_main_guard(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(_UNGUARDED)
    result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-3000:]
    assert (tmp_path / "shards" / "dataset.json").is_file()


def test_a_ray_driver_gets_a_fork_server(monkeypatch: pytest.MonkeyPatch) -> None:
    assert processes.pool_context().get_start_method() == "fork"  # Linux, no Ray
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert processes.pool_context().get_start_method() == "forkserver"


@pytest.mark.slow
def test_the_readme_example_runs_as_a_plain_script(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(_readme_example())
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "quickstart" / "my_predictions.parquet").is_file()
    printed = {line.partition(":")[0]: ast.literal_eval(line.partition(":")[2].strip()) for line in result.stdout.splitlines()
               if line.startswith(("gaussian:", "my method:"))}
    assert set(printed) == {"gaussian", "my method"}
    assert all(value is None or 0.0 <= value <= 1.0 for metrics in printed.values() for value in metrics.values())
