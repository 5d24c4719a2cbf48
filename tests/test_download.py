"""`m2ad download` end to end against servers started on 127.0.0.1: a fake Hugging Face Hub
(reached through huggingface_hub with HF_ENDPOINT) and a plain HTTP mirror with Range support.

The archives are zips of a synthetic M2AD tree in the official Hub layout (``jsons.zip`` and
``<Category>.zip``); every test runs the real download code, nothing of ours is patched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import huggingface_hub.constants
import polars as pl
import pytest
from typer.testing import CliRunner

from m2ad.archive import UnsafeArchiveError
from m2ad.cli import app
from m2ad.datasets import FileSpec, ManualSource, UrlSource, get
from m2ad.download import (
    DownloadError,
    InsufficientSpaceError,
    check_free_space,
    download_dataset,
    fetch_file,
    open_origin,
    parse_sha256sums,
)
from m2ad.ownership import ExclusiveLock
from m2ad.schema import MANIFEST_FILE, DatasetInfo
from m2ad.shard import FolderSource, shard_tree
from m2ad.synth import generate
from servers import FakeHub, FileServer, write_sha256sums

REPO = "ChengYuQi99/M2AD"
CATEGORIES = ("Cube", "Ring")
RESOLUTION = 32


def _zip_folder(tree: Path, top: str, target: Path) -> Path:
    """Zip ``tree/top`` so that it extracts to ``top/...`` (the Hub layout)."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted((tree / top).rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tree).as_posix())
    return target


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the synthetic tree, a folder with its Hub files: jsons.zip, Cube.zip, Ring.zip)."""
    root = tmp_path_factory.mktemp("release")
    tree = generate(
        root / "tree", categories=CATEGORIES, normal_specimens=2, ng_specimens=2, resolution=RESOLUTION, seed=3, workers=1, progress=False
    )
    hub_files = root / "hub"
    hub_files.mkdir()
    _zip_folder(tree, "jsons", hub_files / "jsons.zip")
    for category in CATEGORIES:
        _zip_folder(tree, category, hub_files / f"{category}.zip")
    return tree, hub_files


@pytest.fixture(scope="module")
def reference_shards(release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tree sharded locally, without any download."""
    out = tmp_path_factory.mktemp("reference") / "shards"
    shard_tree(FolderSource(release[0]), out, resolution=RESOLUTION, dataset="m2ad", workers=1, progress=False)
    return out


@pytest.fixture
def point_hub_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``point_hub_at(url)``: huggingface_hub online, talking to ``url`` only, without a token.

    huggingface_hub derives its endpoint and offline flag from HF_ENDPOINT and HF_HUB_OFFLINE
    when ``huggingface_hub.constants`` is imported (tests/conftest.py sets offline mode), so
    the module is reloaded after the variables change, and again once they are restored.
    """

    def point(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        importlib.reload(huggingface_hub.constants)

    yield point
    monkeypatch.undo()
    importlib.reload(huggingface_hub.constants)


@pytest.fixture
def hub(release: tuple[Path, Path], point_hub_at: Callable[[str], None]) -> Iterator[FakeHub]:
    """A fake Hub holding the release; huggingface_hub points at it, online, without a token."""
    server = FakeHub().start()
    for path in sorted(release[1].iterdir()):
        server.add_file(REPO, path.name, path.read_bytes())
    point_hub_at(server.url)
    yield server
    server.stop()


def _assert_same_shards(actual: Path, expected: Path, categories: tuple[str, ...]) -> None:
    """Same manifest and byte-identical Arrow contents, unit by unit."""
    got = pl.read_parquet(actual / MANIFEST_FILE).sort("sample_id")
    want = pl.read_parquet(expected / MANIFEST_FILE).filter(pl.col("category").is_in(list(categories))).sort("sample_id")
    assert got.height > 0
    assert got.equals(want)
    for unit in got["shard_dir"].unique().to_list():
        assert datasets.load_from_disk(str(actual / unit)).data.table.equals(datasets.load_from_disk(str(expected / unit)).data.table)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------------------- acceptance


def test_hub_download_gives_the_same_shards_as_sharding_the_tree(
    hub: FakeHub, release: tuple[Path, Path], reference_shards: Path, tmp_path: Path
) -> None:
    report = download_dataset(
        "m2ad", tmp_path / "out", categories=["cube"], resolution=RESOLUTION, revision="main",
        cache_dir=tmp_path / "cache", keep_archives=False, workers=1, progress=False,
    )
    _assert_same_shards(tmp_path / "out", reference_shards, ("Cube",))
    assert report.categories == ["Cube"]
    assert {item.name: (item.status, item.verified) for item in report.files} == {
        "jsons.zip": ("fetched", "hub-lfs"),
        "Cube.zip": ("fetched", "hub-lfs"),
    }
    assert hub.bytes_served[f"{REPO}/Cube.zip"] == (release[1] / "Cube.zip").stat().st_size
    assert not (tmp_path / "cache/downloads/m2ad/Cube.zip").exists(), "--no-keep-archives deletes the archive"
    source = DatasetInfo.read(tmp_path / "out").source
    assert source["commit"] == hub.commit(REPO) and source["verified"] is True
    assert source["files"]["Cube.zip"]["sha256"] == hashlib.sha256((release[1] / "Cube.zip").read_bytes()).hexdigest()

    # A rerun finds Cube sharded and fetches nothing, although the archive is gone.
    served = sum(hub.bytes_served.values())
    again = download_dataset("m2ad", tmp_path / "out", categories=["Cube"], resolution=RESOLUTION, revision="main",
                             cache_dir=tmp_path / "cache", keep_archives=False, workers=1, progress=False)
    assert again.skipped == ["Cube"] and again.files == [] and sum(hub.bytes_served.values()) == served


def test_mirror_folder_with_sha256sums_builds_every_category(
    release: tuple[Path, Path], reference_shards: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in release[1].iterdir():
        (mirror / path.name).write_bytes(path.read_bytes())
    write_sha256sums(mirror, ["jsons.zip", *[f"{c}.zip" for c in CATEGORIES]])
    report = download_dataset(
        "m2ad", tmp_path / "out", categories=list(CATEGORIES), resolution=RESOLUTION, source=str(mirror),
        cache_dir=tmp_path / "cache", keep_archives=False, workers=1, progress=False,
    )
    _assert_same_shards(tmp_path / "out", reference_shards, CATEGORIES)
    assert {item.status for item in report.files} == {"local"}
    assert {item.verified for item in report.files} == {"SHA256SUMS"}
    assert sorted(p.name for p in mirror.iterdir()) == ["Cube.zip", "Ring.zip", "SHA256SUMS", "jsons.zip"], "local files are never deleted"


def test_a_cut_connection_is_resumed_with_little_extra_traffic(release: tuple[Path, Path], tmp_path: Path) -> None:
    payload = (release[1] / "Cube.zip").read_bytes()
    with FileServer({"m/Cube.zip": payload}) as server:
        server.files["m/SHA256SUMS"] = f"{hashlib.sha256(payload).hexdigest()}  Cube.zip\n".encode()
        server.drop_after["m/Cube.zip"] = len(payload) // 2
        origin = open_origin(get("m2ad"), source=server.url + "/m/")
        fetched = fetch_file(get("m2ad").file("Cube.zip"), origin, tmp_path)
        assert fetched.verified == "SHA256SUMS" and fetched.path.read_bytes() == payload
        assert server.total_bytes_served("Cube.zip") < 1.2 * len(payload)
        assert [r.headers.get("range") for r in server.requests if r.path.endswith("Cube.zip")] == [None, f"bytes={len(payload) // 2}-"]
        # A second call finds the verified file and transfers nothing.
        again = fetch_file(get("m2ad").file("Cube.zip"), origin, tmp_path)
        assert again.status == "cached" and server.total_bytes_served("Cube.zip") < 1.2 * len(payload)


def test_a_server_that_ignores_range_gets_a_clean_restart(release: tuple[Path, Path], tmp_path: Path) -> None:
    payload = (release[1] / "Ring.zip").read_bytes()
    (tmp_path / "Ring.zip.part").write_bytes(b"stale bytes from an older, different download")
    with FileServer({"Ring.zip": payload}) as server:
        server.ignore_range = True
        server.files["SHA256SUMS"] = f"{hashlib.sha256(payload).hexdigest()}  Ring.zip\n".encode()
        fetched = fetch_file(get("m2ad").file("Ring.zip"), open_origin(get("m2ad"), source=server.url), tmp_path)
    assert fetched.status == "fetched" and fetched.path.read_bytes() == payload


def test_a_second_process_cannot_download_the_same_file_at_once(release: tuple[Path, Path], tmp_path: Path) -> None:
    payload = (release[1] / "Ring.zip").read_bytes()
    with FileServer({"Ring.zip": payload}) as server:
        server.files["SHA256SUMS"] = f"{hashlib.sha256(payload).hexdigest()}  Ring.zip\n".encode()
        origin = open_origin(get("m2ad"), source=server.url)
        with ExclusiveLock(tmp_path / "Ring.zip.lock", "the download of Ring.zip"):
            with pytest.raises(DownloadError, match="another m2ad process is downloading Ring.zip"):
                fetch_file(get("m2ad").file("Ring.zip"), origin, tmp_path)
        assert fetch_file(get("m2ad").file("Ring.zip"), origin, tmp_path).path.read_bytes() == payload
        assert not (tmp_path / "Ring.zip.lock").exists(), "the lock file goes with the finished download"


def test_killed_download_resumes_on_rerun(
    hub: FakeHub, release: tuple[Path, Path], reference_shards: Path, tmp_path: Path
) -> None:
    """`m2ad download` killed (SIGKILL) mid-download leaves a .part; the rerun continues from
    it and still gives the right shards."""
    size = (release[1] / "Cube.zip").stat().st_size
    hub.stall_after[f"{REPO}/Cube.zip"] = size * 3 // 5
    cache, out = tmp_path / "cache", tmp_path / "out"
    command = ["download", "m2ad", "-c", "Cube", "--revision", "main", "--resolution", str(RESOLUTION),
               "--cache-dir", str(cache), "--out", str(out), "--workers", "1"]
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from m2ad.cli import app; app()", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    part = cache / "downloads/m2ad/Cube.zip.part"
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size >= size // 2) and time.monotonic() < deadline:
        assert process.poll() is None, "the download process ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert part.stat().st_size >= size // 2 and not (cache / "downloads/m2ad/Cube.zip").exists()
    hub.stall_after.clear()

    report = download_dataset("m2ad", out, categories=["Cube"], resolution=RESOLUTION, revision="main",
                              cache_dir=cache, workers=1, progress=False)
    cube = next(item for item in report.files if item.name == "Cube.zip")
    assert cube.status == "resumed" and cube.verified == "hub-lfs"
    assert hub.bytes_served[f"{REPO}/Cube.zip"] < 1.2 * size
    assert not part.exists()
    _assert_same_shards(out, reference_shards, ("Cube",))


def test_a_corrupted_byte_is_caught_retried_once_then_a_clear_failure(hub: FakeHub, tmp_path: Path) -> None:
    spec = get("m2ad")
    origin = open_origin(spec, revision="main")
    hub.corrupt[f"{REPO}/Cube.zip"] = 1
    fetched = fetch_file(spec.file("Cube.zip"), origin, tmp_path / "once")
    assert fetched.attempts == 2 and fetched.verified == "hub-lfs"

    hub.corrupt[f"{REPO}/Ring.zip"] = 2
    with pytest.raises(DownloadError, match="checksum mismatch twice"):
        fetch_file(spec.file("Ring.zip"), origin, tmp_path / "twice")
    assert not (tmp_path / "twice/Ring.zip").exists() and not (tmp_path / "twice/Ring.zip.part").exists()


def test_no_network_is_a_clear_error_within_seconds(
    point_hub_at: Callable[[str], None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    point_hub_at(f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1") as error:
        download_dataset("m2ad", tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - started < 5
    assert "--source" in str(error.value)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="offline mode"):
        download_dataset("m2ad", tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_dataset("m2ad", tmp_path / "out", source=f"http://127.0.0.1:{_closed_port()}/m2ad", progress=False)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- verification


def test_pinned_checksum_disagreeing_with_the_hub_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    """At the pinned revision the registry's jsons.zip sha256 applies; our fake one differs."""
    with pytest.raises(DownloadError, match="revision '72d6620' does not exist.*--revision main"):
        fetch_file(get("m2ad").file("jsons.zip"), open_origin(get("m2ad")), tmp_path)
    hub.set_commit(REPO, "72d6620" + "0" * 33)
    with pytest.raises(DownloadError, match="registry pins 13bbf10e"):
        fetch_file(get("m2ad").file("jsons.zip"), open_origin(get("m2ad")), tmp_path)
    assert not any(tmp_path.iterdir())


def test_unverifiable_file_is_refused_unless_insecure(release: tuple[Path, Path], tmp_path: Path) -> None:
    files = {f"m/{p.name}": p.read_bytes() for p in release[1].iterdir()}
    with FileServer(files) as server:
        # jsons.zip is not the pinned one (it is synthetic): unverifiable, like Cube.zip, which
        # nothing pins; Cube.zip is refused before a byte of it is downloaded.
        with pytest.raises(DownloadError, match="another version than the pinned one.*insecure-skip-verify"):
            download_dataset("m2ad", tmp_path / "out", categories=["Cube"], resolution=RESOLUTION,
                             source=server.url + "/m", cache_dir=tmp_path / "cache", progress=False)
        with pytest.raises(DownloadError, match="cannot verify Cube.zip.*insecure-skip-verify"):
            fetch_file(get("m2ad").file("Cube.zip"), open_origin(get("m2ad"), source=server.url + "/m"), tmp_path / "cache")
        assert server.total_bytes_served("Cube.zip") == 0
        report = download_dataset("m2ad", tmp_path / "out", categories=["Cube"], resolution=RESOLUTION, source=server.url + "/m",
                                  cache_dir=tmp_path / "cache", insecure_skip_verify=True, workers=1, progress=False)
    assert {item.verified for item in report.files} == {"unverified"}
    info = DatasetInfo.read(tmp_path / "out")
    assert info.source["verified"] is False and info.source["files"]["Cube.zip"]["verified"] == "unverified"
    assert "unverified" in (tmp_path / "out" / "README.md").read_text()


def test_local_file_that_differs_from_sha256sums_is_refused_and_kept(release: tuple[Path, Path], tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in release[1].iterdir():
        (mirror / path.name).write_bytes(path.read_bytes())
    write_sha256sums(mirror, ["jsons.zip", "Cube.zip"])
    data = bytearray((mirror / "Cube.zip").read_bytes())
    data[len(data) // 3] ^= 1
    (mirror / "Cube.zip").write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="corrupt"):
        fetch_file(get("m2ad").file("Cube.zip"), open_origin(get("m2ad"), source=str(mirror)), tmp_path / "cache")
    assert (mirror / "Cube.zip").read_bytes() == bytes(data)


def test_a_verified_but_malicious_archive_is_rejected_before_anything_is_written(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "jsons.zip").write_bytes((release[1] / "jsons.zip").read_bytes())
    with zipfile.ZipFile(mirror / "Cube.zip", "w") as archive:
        archive.writestr("Cube/Good/000/A000_I01.png", b"png")
        archive.writestr("../../escaped.png", b"evil")
    write_sha256sums(mirror, ["jsons.zip", "Cube.zip"])
    with pytest.raises(UnsafeArchiveError, match="path traversal"):
        download_dataset("m2ad", tmp_path / "work/out", categories=["Cube"], resolution=RESOLUTION, source=str(mirror),
                         cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert not (tmp_path / "work").exists()
    assert not list(tmp_path.rglob("escaped.png"))


def test_token_goes_to_the_hub_only_and_never_into_messages(
    release: tuple[Path, Path], point_hub_at: Callable[[str], None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = "hf_" + "S3cr3tT0k3n" * 3
    with FakeHub(token=token, cdn_host="localhost") as server:
        for path in sorted(release[1].iterdir()):
            server.add_file(REPO, path.name, path.read_bytes())
        point_hub_at(server.url)
        monkeypatch.setenv("HF_TOKEN", token)
        fetched = fetch_file(get("m2ad").file("Cube.zip"), open_origin(get("m2ad"), revision="main"), tmp_path)
        assert fetched.verified == "hub-lfs"
        resolve = [r for r in server.requests if "/resolve/" in r.path]
        cdn = [r for r in server.requests if r.path.startswith("/cdn/")]
        assert resolve and all(r.headers.get("authorization") == f"Bearer {token}" for r in resolve)
        assert cdn and all("authorization" not in r.headers for r in cdn)
        monkeypatch.setenv("HF_TOKEN", token[::-1])
        with pytest.raises(DownloadError) as error:
            fetch_file(get("m2ad").file("Ring.zip"), open_origin(get("m2ad"), revision="main"), tmp_path)
        assert token[::-1] not in str(error.value) and "HF_TOKEN" in str(error.value)


def test_a_gated_dataset_needs_a_granted_token_that_is_never_printed(
    point_hub_at: Callable[[str], None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real-IAD (a gated Hub dataset): without a token, or with one not granted, one clear line
    that says how to get access; with the granted token (HF_TOKEN, read by huggingface_hub), the
    download works, verified against the Hub's LFS sha256, and the token is nowhere."""
    spec = get("real-iad")
    tree = tmp_path / "tree"
    tree.mkdir()
    spec.fixture.write(tree, categories=("audiojack",), normal_specimens=2, ng_specimens=1, resolution=16, seed=0, workers=1, progress=False)
    packed = spec.fixture.pack(tree, tmp_path / "release")
    token = "hf_" + "Gr4nt3dT0k3n" * 3
    with FakeHub(token=token, cdn_host="localhost") as server:
        for path in packed:
            server.add_file("Real-IAD/Real-IAD", path.relative_to(tmp_path / "release").as_posix(), path.read_bytes())
        point_hub_at(server.url)
        options = dict(categories=["audiojack"], resolution=16, cache_dir=tmp_path / "cache", workers=1, progress=False)
        for granted in (None, token[::-1]):
            if granted is not None:
                monkeypatch.setenv("HF_TOKEN", granted)
            with pytest.raises(DownloadError) as error:
                download_dataset("real-iad", tmp_path / "refused", **options)
            message = str(error.value)
            assert "Real-IAD/Real-IAD is gated" in message and "https://huggingface.co/datasets/Real-IAD/Real-IAD" in message
            assert "hf auth login" in message and "HF_TOKEN" in message and token not in message and token[::-1] not in message
            result = CliRunner().invoke(app, ["download", "real-iad", "-c", "audiojack", "--resolution", "16", "--out", str(tmp_path / "cli"),
                                              "--cache-dir", str(tmp_path / "cache")])
            assert result.exit_code == 1 and "is gated" in result.output and token not in result.output and "Traceback" not in result.output
        monkeypatch.setenv("HF_TOKEN", token)
        report = download_dataset("real-iad", tmp_path / "out", **options)
    assert report.categories == ["audiojack"] and {item.verified for item in report.files} == {"hub-lfs"}
    assert {item.name for item in report.files} == {"realiad_jsons.zip", "realiad_1024/audiojack.zip"}
    written = "".join(path.read_text(errors="replace") for path in (tmp_path / "out").rglob("*.json")) + (tmp_path / "out/README.md").read_text()
    assert token not in written and "Real-IAD/Real-IAD" in written
    local = tmp_path / "local"
    shard_tree(tree, local, dataset="real-iad", resolution=16, workers=1, progress=False)
    _assert_same_shards(tmp_path / "out", local, ("audiojack",))


def test_a_file_url_as_source_is_verified_against_the_pin(tmp_path: Path) -> None:
    """MVTec AD's links rotate: --source may be the archive's current URL; the pinned sha256 holds."""
    payload = os.urandom(50_000)
    spec = dataclasses.replace(get("mvtec-ad"), files=(FileSpec("mvtec_anomaly_detection.tar.xz", sha256=hashlib.sha256(payload).hexdigest()),))
    with FileServer({"share/9/download/mvtec_anomaly_detection.tar.xz": payload}) as server:
        origin = open_origin(spec, source=f"{server.url}/share/9/download/mvtec_anomaly_detection.tar.xz")
        fetched = fetch_file(spec.files[0], origin, tmp_path / "cache")
        assert (fetched.verified, fetched.path.read_bytes()) == ("pinned", payload)
        wrong = dataclasses.replace(spec.files[0], sha256="0" * 64)
        with pytest.raises(DownloadError, match="checksum mismatch twice"):
            fetch_file(wrong, origin, tmp_path / "other")


def test_url_and_manual_sources_of_a_registry_entry(tmp_path: Path) -> None:
    """The spec types for MVTec-AD-like (one pinned tar.xz URL) and Real3D-AD-like (fetched by
    hand) datasets, on an entry built here."""
    payload = os.urandom(300_000)
    with FileServer({"files/mvtec.tar.xz": payload}) as server:
        tar = FileSpec("mvtec.tar.xz", sha256=hashlib.sha256(payload).hexdigest(), size=len(payload),
                       url=server.url + "/files/mvtec.tar.xz")
        spec = dataclasses.replace(get("mvtec-ad"), name="mvtec-like", files=(tar,))
        assert isinstance(spec.source, UrlSource)
        assert spec.files_for("bottle") == [tar]
        fetched = fetch_file(tar, open_origin(spec), tmp_path / "cache")
        assert (fetched.status, fetched.verified, fetched.path.read_bytes()) == ("fetched", "pinned", payload)
        wrong = FileSpec("mvtec.tar.xz", sha256="0" * 64, url=tar.url)
        with pytest.raises(DownloadError, match="checksum mismatch twice.*corrupt"):
            fetch_file(wrong, open_origin(spec), tmp_path / "other")
        assert server.total_bytes_served() == 3 * len(payload)
    manual = dataclasses.replace(get("mvtec-ad"), name="real3d-like", categories=("duck",), files=(FileSpec("real3d-ad-pcd.zip"),),
                                 source=ManualSource("Download real3d-ad-pcd.zip from Google Drive, then pass --source."))
    with pytest.raises(DownloadError, match="cannot be downloaded automatically. Download real3d"):
        open_origin(manual)
    archive = tmp_path / "my-download.zip"
    archive.write_bytes(b"PK-not-really")
    origin = open_origin(manual, source=str(archive))
    with pytest.raises(DownloadError, match="cannot verify real3d-ad-pcd.zip"):
        fetch_file(manual.files[0], origin, tmp_path / "cache")
    accepted = fetch_file(manual.files[0], origin, tmp_path / "cache", insecure_skip_verify=True)
    assert (accepted.path, accepted.status, accepted.verified) == (archive, "local", "unverified")


# ----------------------------------------------------------------------------- small pieces


def test_parse_sha256sums_reads_the_sha256sum_format() -> None:
    text = f"{'a' * 64}  jsons.zip\n{'B' * 64} *Bird.zip\n\n# comment\n{'c' * 64}  ./sub dir/x.zip\n"
    assert parse_sha256sums(text) == {"jsons.zip": "a" * 64, "Bird.zip": "b" * 64, "sub dir/x.zip": "c" * 64}
    with pytest.raises(ValueError, match="line 1"):
        parse_sha256sums("deadbeef  short.zip\n")


def test_free_space_check_names_the_need_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(InsufficientSpaceError, match=r"needs about .* GB, .* free in"):
        check_free_space(tmp_path, 1 << 62, "download Bird.zip")
    check_free_space(tmp_path, 1, "download a byte")


def test_cli_downloads_from_a_mirror_and_reports_bad_input(release: tuple[Path, Path], tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in release[1].iterdir():
        (mirror / path.name).write_bytes(path.read_bytes())
    write_sha256sums(mirror, ["jsons.zip", "Cube.zip", "Ring.zip"])
    runner = CliRunner()
    common = ["--source", str(mirror), "--resolution", str(RESOLUTION), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    result = runner.invoke(app, ["download", "m2ad", "-c", "Cube", "--out", str(tmp_path / "out"), *common])
    assert result.exit_code == 0, result.output
    assert "Cube.zip" in result.output and "SHA256SUMS" in result.output
    assert pl.read_parquet(tmp_path / "out" / MANIFEST_FILE)["category"].unique().to_list() == ["Cube"]

    for args, message in [
        (["download", "mvtec-zz"], "unknown dataset"),
        (["download", "m2ad", "--resolution", "big"], "--resolution"),
        (["download", "m2ad", "-c", "Unicorn", "--out", str(tmp_path / "x"), *common], "no categories Unicorn"),
        (["download", "m2ad", "--source", str(tmp_path / "nowhere")], "no such folder"),
        (["download", "m2ad", "--source", str(mirror), "--revision", "main"], "--revision applies only"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
