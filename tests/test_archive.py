"""Safe archive reading (ZipSource) and extraction: zip-slip, tar-slip, symlinks, devices, bombs."""

from __future__ import annotations

import io
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2ad.archive import UnsafeArchiveError, ZipSource, extract, safe_member_path


def _zip(path: Path, members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(zipfile.ZipInfo(name) if "\\" in name else name, content)
    return path


def _zip_symlink(path: Path, name: str, target: str) -> Path:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ok/file.txt", b"fine")
        archive.writestr(info, target)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None, mode: str = "w") -> Path:
    contents = contents or {}
    with tarfile.open(path, mode) as archive:
        for member in members:
            data = contents.get(member.name)
            if data is not None:
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# ------------------------------------------------------------------------------- member names


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "\\windows\\x", "C:/x.png", "c:x", "../evil.txt", "a/../../evil", "a\\..\\..\\evil", "", "a/\x00b", "./", "//"],
)
def test_unsafe_member_names_are_rejected(name: str) -> None:
    with pytest.raises(UnsafeArchiveError):
        safe_member_path(name)


def test_harmless_member_names_are_normalised() -> None:
    assert safe_member_path("Bird/Good/000/A000_I01.png") == PurePosixPath("Bird/Good/000/A000_I01.png")
    assert safe_member_path("./jsons//meta.json") == PurePosixPath("jsons/meta.json")
    assert safe_member_path("Bird\\GT\\x.png") == PurePosixPath("Bird/GT/x.png")
    assert safe_member_path("a..b/c..") == PurePosixPath("a..b/c..")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b..", "", "/", "\\", "C:", "x y"]), min_size=1, max_size=6))
def test_accepted_member_names_never_leave_the_target(parts: list[str]) -> None:
    """Whatever name is accepted resolves, by plain path arithmetic, inside the target."""
    name = "".join(part if part in ("/", "\\") else part + "/" for part in parts).rstrip("/")
    try:
        path = safe_member_path(name)
    except UnsafeArchiveError:
        return
    root = Path("/target/root")
    resolved = Path(os.path.normpath(root / Path(*path.parts)))
    assert resolved != root and root in resolved.parents


# ------------------------------------------------------------------------------- ZipSource


def test_zip_source_reads_members_of_several_zips_without_extracting(tmp_path: Path) -> None:
    jsons = _zip(tmp_path / "jsons.zip", {"jsons/meta_unsupervised.json": b'{"train": {}}'})
    bird = _zip(
        tmp_path / "Bird.zip",
        {"Bird/Good/000/A000_I01.png": b"png-1", "Bird/GT/scratch_1_000/A000_mask.png": b"mask"},
        compression=zipfile.ZIP_DEFLATED,
    )
    before = _all_files(tmp_path)
    with ZipSource([jsons, bird]) as source:
        assert source.list_files() == [
            "Bird/GT/scratch_1_000/A000_mask.png",
            "Bird/Good/000/A000_I01.png",
            "jsons/meta_unsupervised.json",
        ]
        assert source.read_bytes("Bird/Good/000/A000_I01.png") == b"png-1"
        assert source.read_bytes("jsons/meta_unsupervised.json") == b'{"train": {}}'
        with pytest.raises(FileNotFoundError):
            source.read_bytes("Bird/Good/000/missing.png")
        clone = pickle.loads(pickle.dumps(source))
        assert clone.read_bytes("Bird/GT/scratch_1_000/A000_mask.png") == b"mask"
        clone.close()
    assert _all_files(tmp_path) == before


def test_zip_source_skips_directory_entries_and_rejects_duplicates(tmp_path: Path) -> None:
    first = _zip(tmp_path / "a.zip", {"Bird/": b"", "Bird/x.png": b"1"})
    assert ZipSource([first]).list_files() == ["Bird/x.png"]
    second = _zip(tmp_path / "b.zip", {"Bird/x.png": b"2"})
    with pytest.raises(UnsafeArchiveError, match="both"):
        ZipSource([first, second])


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "C:/evil.png", "Bird\\..\\..\\evil.png"])
def test_zip_source_rejects_traversal_members(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"Bird/ok.png": b"1", name: b"evil"})
    with pytest.raises(UnsafeArchiveError):
        ZipSource([archive])


def test_zip_source_rejects_symlink_entries(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        ZipSource([_zip_symlink(tmp_path / "link.zip", "Bird/link.png", "/etc/passwd")])


def test_zip_bomb_is_rejected_by_the_ratio_cap(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(8 << 20)}, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size * 200 < 8 << 20
    with pytest.raises(UnsafeArchiveError, match="bomb"):
        ZipSource([bomb])
    with pytest.raises(UnsafeArchiveError, match="bomb"):
        extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    # The same archive passes with a cap that allows it: the check is about the ratio only.
    assert ZipSource([bomb], max_ratio=10_000).list_files() == ["zeros.bin"]


def test_zip_member_that_lies_about_its_size_yields_no_extra_bytes(tmp_path: Path) -> None:
    """A member whose headers declare fewer bytes than its data holds fails its CRC instead of
    inflating past the declared size."""
    content = b"A" * 4096
    archive = _zip(tmp_path / "liar.zip", {"x.bin": content}, compression=zipfile.ZIP_DEFLATED)
    raw = bytearray(archive.read_bytes())
    declared = (4096).to_bytes(4, "little")
    assert raw.count(declared) == 2  # local header and central directory
    archive.write_bytes(bytes(raw).replace(declared, (16).to_bytes(4, "little")))
    source = ZipSource([archive])
    with pytest.raises(zipfile.BadZipFile):
        source.read_bytes("x.bin")


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip at all")
    with pytest.raises(UnsafeArchiveError, match="not a readable zip"):
        ZipSource([junk])


# ------------------------------------------------------------------------------- extract


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")])
def test_extract_tar_round_trip(tmp_path: Path, mode: str, suffix: str) -> None:
    contents = {"bottle/train/good/000.png": b"img", "bottle/ground_truth/broken/000_mask.png": b"mask"}
    folder = _file("bottle/train")
    folder.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / f"mvtec{suffix}", [folder, *[_file(n) for n in contents]], contents, mode)
    target = extract(archive, tmp_path / "out")
    assert {p: (target / p).read_bytes() for p in contents} == contents
    assert not (tmp_path / "out.partial").exists()


def test_extract_zip_round_trip_and_refuses_existing_target(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "r.zip", {"airplane/train/1_template.pcd": b"pcd", "airplane/gt/": b""})
    target = extract(archive, tmp_path / "out")
    assert (target / "airplane/train/1_template.pcd").read_bytes() == b"pcd"
    with pytest.raises(FileExistsError):
        extract(archive, tmp_path / "out")


@pytest.mark.parametrize(
    "members",
    [
        [_file("../evil.txt")],
        [_file("/tmp/evil-m2ad-absolute.txt")],
        [_file("ok.txt"), _link("escape", "../../outside")],
        [_link("abs", "/etc/passwd")],
        [_link("hard", "../evil.txt", tarfile.LNKTYPE)],
        [_link("dir/up", "../../x")],
    ],
    ids=["dotdot", "absolute", "symlink-escape", "symlink-absolute", "hardlink-escape", "nested-symlink-escape"],
)
def test_extract_rejects_tar_slip(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    contents = {m.name: b"evil" for m in members if m.isreg()}
    archive = _tar(tmp_path / "slip.tar", members, contents)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, work / "target")
    assert _all_files(work) == set()
    assert not Path("/tmp/evil-m2ad-absolute.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_extract_rejects_a_write_through_a_symlink_chain(tmp_path: Path) -> None:
    """``a -> .`` and ``a/b -> ..`` look harmless one by one but ``a/b`` is the parent folder."""
    work = tmp_path / "work"
    work.mkdir()
    archive = _tar(tmp_path / "chain.tar", [_link("a", "."), _link("a/b", ".."), _file("a/b/evil.txt")], {"a/b/evil.txt": b"x"})
    with pytest.raises(UnsafeArchiveError):
        extract(archive, work / "target")
    assert _all_files(work) == set()
    assert not (work / "evil.txt").exists()


def test_extract_allows_symlinks_that_stay_inside(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "ok.tar", [_file("data/x.txt"), _link("data/y.txt", "x.txt")], {"data/x.txt": b"x"})
    target = extract(archive, tmp_path / "out")
    assert (target / "data/y.txt").read_bytes() == b"x"


def test_extract_rejects_device_files(tmp_path: Path) -> None:
    device = _file("dev/null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    archive = _tar(tmp_path / "dev.tar", [device])
    with pytest.raises(UnsafeArchiveError, match="device"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_rejects_tar_compression_bomb(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "bomb.tar.xz", [_file("zeros.bin")], {"zeros.bin": bytes(16 << 20)}, "w:xz")
    with pytest.raises(UnsafeArchiveError, match="bomb"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_extract_of_a_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "c.tar.gz", [_file("a.txt")], {"a.txt": os.urandom(200_000)}, "w:gz")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnsafeArchiveError, match="cannot be read"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
