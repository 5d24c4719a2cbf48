"""The README's two set-up commands: `make demo` and `make test`, the latter what CI runs, and
able to pass on a fresh machine without Chromium (it installs Debian's, or says how)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENSURE = REPO / "tools" / "ensure-chromium"


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Set-up"):]
    block = section[section.index("```bash\n") + len("```bash\n"):section.index("```", section.index("```bash\n") + 8)]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_the_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    assert _setup_commands() == ["make demo", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"
    assert not any(re.search(r"apt-get|chromium", line) for line in ci), "CI must not do set-up that the README's command lacks"


def test_make_test_ensures_chromium_before_the_tests() -> None:
    planned = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    ensure = next(index for index, line in enumerate(planned) if "tools/ensure-chromium" in line)
    tests = next(index for index, line in enumerate(planned) if "pytest" in line)
    assert ensure < tests


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _machine(tmp_path: Path, uid: int, apt: bool, chromium: bool = False) -> tuple[Path, dict[str, str]]:
    """A PATH of stubs: `id -u`, optionally `apt-get` (it logs its arguments; `install` makes a
    `chromium`), optionally a `chromium` already there; no sudo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "env").symlink_to("/usr/bin/env")
    _stub(bin_dir, "id", f"echo {uid}")
    log = tmp_path / "apt.log"
    if apt:
        _stub(bin_dir, "apt-get", f'echo "$@" >> {log}\ncase "$1" in install) printf "#!/bin/sh\\n" > {bin_dir}/chromium; '
                                  f'/bin/chmod +x {bin_dir}/chromium;; esac')
    if chromium:
        _stub(bin_dir, "chromium", "exit 0")
    return log, {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def _ensure(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(ENSURE)], capture_output=True, text=True, timeout=60, env=env)


def test_a_machine_without_chromium_gets_debians(tmp_path: Path) -> None:
    log, env = _machine(tmp_path, uid=0, apt=True)
    done = _ensure(env)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq" and "install" in calls[1] and "chromium" in calls[1].split()
    assert os.access(tmp_path / "bin" / "chromium", os.X_OK)


def test_a_machine_with_chromium_is_left_alone(tmp_path: Path) -> None:
    log, env = _machine(tmp_path, uid=0, apt=True, chromium=True)
    assert _ensure(env).returncode == 0 and not log.exists()


def test_a_machine_where_it_cannot_install_says_how_in_one_line(tmp_path: Path) -> None:
    for uid, apt in ((1000, True), (0, False)):  # not root and no sudo; root but no apt-get
        folder = tmp_path / f"{uid}-{apt}"
        folder.mkdir()
        log, env = _machine(folder, uid=uid, apt=apt)
        refused = _ensure(env)
        assert refused.returncode != 0 and not log.exists()
        assert refused.stderr.count("\n") == 1 and "sudo apt-get install chromium" in refused.stderr
