"""`m2ad leaderboard publish`: the dry-run folder, and the real upload path against a loopback
fake of the Hub's HTTP routes (nothing of ours is faked)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from hub_server import FakeHub
from leaderboard import paper
from leaderboard.store import Store
from m2ad.cli import app

CLI = [sys.executable, "-c", "from m2ad.cli import app; app()"]
TOKEN = "hf_loopback_secret_token_42"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("board")
    paper.seed(Store(folder))
    return folder


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "COLUMNS": "200", **env}
    environment = {key: value for key, value in environment.items() if value != "<unset>"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=environment)


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def dry_run(store_dir: Path, out: Path) -> None:
    result = CliRunner().invoke(app, ["leaderboard", "publish", "--repo", "m2ad/leaderboard", "--dry-run", "--out", str(out), "--store", str(store_dir)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")


def test_dry_run_writes_the_folder_with_a_card_the_hub_viewer_understands(store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "upload"
    dry_run(store_dir, out)
    files = files_under(out)
    assert {"README.md", "data/leaderboard.parquet", "data/summary.parquet", "site/index.html", "site/leaderboard.md"} <= set(files)
    assert any(name.startswith("site/figures/") for name in files)
    card = DatasetCard((out / "README.md").read_text())
    configs = {config["config_name"]: config["data_files"] for config in card.data.configs}
    assert configs == {"summary": "data/summary.parquet", "rows": "data/leaderboard.parquet"}
    for data_file in configs.values():
        assert (out / data_file).is_file()
    assert "@article{cao2025m2ad" in card.text and "arXiv:2505.10996" in card.text
    assert card.data.license == "apache-2.0" and "## License" in card.text
    rows = pl.read_parquet(out / "data/leaderboard.parquet")
    assert rows.sort(["entry_id", "category", "metric"]).equals(Store(store_dir).read().sort(["entry_id", "category", "metric"]))
    assert pl.read_parquet(out / "data/summary.parquet").height == 10  # 5 methods x 2 resolutions


@pytest.mark.slow
def test_publish_uploads_that_folder_to_a_loopback_hub(store_dir: Path, tmp_path: Path) -> None:
    dry = tmp_path / "dry"
    dry_run(store_dir, dry)
    with FakeHub() as hub:
        result = run_cli(["leaderboard", "publish", "--repo", "org/board", "--private", "--store", str(store_dir)],
                         HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"))
        assert result.returncode == 0, result.stderr
        assert hub.state.repos["org/board"] == {"name": "board", "organization": "org", "visibility": "private", "type": "dataset"}
        uploaded = hub.state.files["org/board"]
        assert len(hub.state.commits) == 1 and hub.state.unexpected == []
        assert set(hub.state.authorizations) == {f"Bearer {TOKEN}"}
    expected = files_under(dry)
    assert set(uploaded) == set(expected)
    for name in ("README.md", "site/leaderboard.md"):
        assert uploaded[name] == expected[name]
    (tmp_path / "got.parquet").write_bytes(uploaded["data/leaderboard.parquet"])
    assert pl.read_parquet(tmp_path / "got.parquet").height == 300
    assert TOKEN not in result.stdout + result.stderr
    assert "org/board" in result.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_clearly(store_dir: Path, tmp_path: Path) -> None:
    result = run_cli(["leaderboard", "publish", "--repo", "org/board", "--store", str(store_dir)],
                     HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    assert result.returncode == 1
    assert "cannot reach the Hub" in result.stderr and "Traceback" not in result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("offline", "token", "message"),
    [("1", TOKEN, "HF_HUB_OFFLINE is set"), ("0", None, "no Hugging Face token")],
)
def test_offline_or_tokenless_publish_fails_clearly(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, offline: str, token: str | None, message: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    result = CliRunner().invoke(app, ["leaderboard", "publish", "--repo", "org/board", "--store", str(store_dir)])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()) and TOKEN not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_bad_repo_and_empty_store_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["leaderboard", "publish", "--repo", "../etc", "--dry-run", "--store", str(tmp_path)])
    assert bad.exit_code == 1 and "ORG/NAME" in " ".join(bad.output.split())
    (tmp_path / "emptied" / "data").mkdir(parents=True)  # a store whose every entry was removed (a new one has the paper rows)
    empty = runner.invoke(app, ["leaderboard", "publish", "--repo", "a/b", "--dry-run", "--store", str(tmp_path / "emptied")])
    assert empty.exit_code == 1 and "empty" in " ".join(empty.output.split())


def test_the_card_licence_is_chosen_with_license(store_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    chosen = runner.invoke(app, ["leaderboard", "publish", "--repo", "m2ad/leaderboard", "--dry-run", "--out", str(tmp_path / "cc"),
                                 "--store", str(store_dir), "--license", "cc-by-4.0"])
    assert chosen.exit_code == 0, chosen.output
    card = DatasetCard((tmp_path / "cc" / "README.md").read_text())
    assert card.data.license == "cc-by-4.0" and "`cc-by-4.0`" in card.text
    bad = runner.invoke(app, ["leaderboard", "publish", "--repo", "m2ad/leaderboard", "--dry-run", "--out", str(tmp_path / "bad"),
                              "--store", str(store_dir), "--license", "Not: a licence"])
    assert bad.exit_code == 1 and "--license must be" in " ".join(bad.output.split()) and not (tmp_path / "bad").exists()
