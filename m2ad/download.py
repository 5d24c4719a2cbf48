"""Fetch a registered dataset (Hub, HTTP(S) mirror, local folder), verify it, shard it.

One category at a time: fetch its archives (resumable), verify their sha256, shard them
straight out of the zips with :func:`m2ad.shard.shard_tree`, then optionally delete the
archives, so that a 256-px M2AD needs disk for about one category archive at a time.

Downloads go to ``<cache>/downloads/<dataset>/<file>.part`` and continue from the part's size
with an HTTP ``Range`` request after a cut connection, a Ctrl-C or a kill; a finished file is
hashed, compared with the expected sha256 and moved into place with ``os.replace``.  A checksum
mismatch deletes the file and fetches it once more before failing.  Verified files are
remembered (``verified.json``: size, mtime, sha256) so that a rerun does not hash them again,
and a lock file (``<file>.lock``, ``m2ad.ownership.ExclusiveLock``: it names its holder and is
removed when the download finishes) keeps two processes from writing the same download.  A
rerun into the same output folder skips the categories already sharded there.

A resolution above the dataset's image size (``DatasetSpec.image_size``) is refused before
anything is fetched, unless ``allow_upsample``; sharding then bounds every resize by memory
(see :mod:`m2ad.shard`).

Zips are read in place; a tar (MVTec AD's ``.tar.xz``, VisA's ``.tar``) is extracted once,
safely (``m2ad.archive``), into the download folder.  A file name may hold a folder
(Real-IAD's ``realiad_1024/<category>.zip``).  ``--source`` may also be the URL of one of the
dataset's files (MVTec AD's links rotate): its folder is then the mirror.

Where the expected sha256 comes from (first that applies): the registry's pinned table (only
at the pinned Hub revision, or for a mirror whose file is the pinned one), the Hub's LFS
metadata (``X-Linked-Etag``), a mirror's ``SHA256SUMS``.  Where none applies and the registry
records the file's published md5 (MVTec 3D-AD publishes nothing else), the md5 is checked
instead and the card records the file as verified by ``md5``, a weaker check.  Nothing to
check against: refused unless ``insecure_skip_verify``, and then recorded as unverified in the
dataset card.

The Hub token (``huggingface_hub.get_token()``: ``HF_TOKEN`` or ``hf auth login``) is sent to
the Hub only, never to a CDN it redirects to, and never appears in messages or records.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from m2ad import files, ownership
from m2ad.archive import DEFAULT_MAX_RATIO, ZipSource, extract, is_tar
from m2ad.datasets.registry import get
from m2ad.datasets.spec import DatasetSpec, FileSpec, HubSource, ManualSource, UrlSource
from m2ad.files import sha256_file
from m2ad.schema import SPLITS, DatasetInfo, TreeSource, shard_dir_name

CHUNK_SIZE = 1 << 20
CONNECT_TIMEOUT_S = 3.0
"""Preflight connection timeout: with no network we fail within seconds, not minutes."""
READ_TIMEOUT_S = 60.0
MAX_RESUMES = 5
"""Automatic resumes after a connection cut within one run (each must make progress)."""
SHA256SUMS = "SHA256SUMS"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """A download could not be completed; the message says why and what to do."""


class InsufficientSpaceError(DownloadError):
    """Not enough free disk space for the next step."""


@dataclass
class FetchedFile:
    """One archive, ready to read: where it is and how it was obtained and checked."""

    name: str
    path: Path
    size: int
    sha256: str
    status: str  # "fetched", "resumed", "cached" or "local"
    verified: str  # "pinned", "hub-lfs", "SHA256SUMS", "md5" or "unverified"
    bytes_transferred: int = 0
    attempts: int = 0


@dataclass
class DownloadReport:
    """What one ``download_dataset`` call fetched, verified and wrote."""

    dataset: str
    out: Path
    files: list[FetchedFile] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already sharded in ``out`` by an earlier run
    source_info: dict[str, Any] = field(default_factory=dict)


def check_free_space(folder: Path, needed: int, step: str) -> None:
    """Raise :class:`InsufficientSpaceError` when ``folder`` (or, before it exists, its
    nearest existing parent) has less than ``needed`` bytes free."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise InsufficientSpaceError(
            f"not enough disk space to {step}: needs about {_gb(needed)}, {_gb(free)} free in {folder}. "
            "Free some space, or point --cache-dir / --out at a larger disk."
        )


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def parse_sha256sums(text: str) -> dict[str, str]:
    """``{file name: sha256}`` from a ``sha256sum``-format listing (``HASH  NAME`` or
    ``HASH *NAME``); malformed lines raise ``ValueError``."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip("\r"))
        if not match:
            raise ValueError(f"{SHA256SUMS} line {number} is not '<sha256>  <name>': {line[:80]!r}")
        sums[match.group(2).removeprefix("./")] = match.group(1).lower()
    return sums


# ----------------------------------------------------------------------------- HTTP transfer


def _redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (a token) replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def _describe(url: str) -> str:
    """A URL without its query string (signed CDN URLs carry credentials there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def preflight(url: str, timeout: float = CONNECT_TIMEOUT_S, mirror_hint: str = "pass --source with a folder (or mirror URL) that holds them") -> None:
    """Open and close a TCP connection to ``url``'s host, failing fast with a clear message
    (``mirror_hint``: how the calling command takes another source)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"not an http(s) URL: {_describe(url)}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise DownloadError(
            f"cannot reach {parts.hostname}:{port} ({error.__class__.__name__}: {error.strerror or error}). "
            f"Check the network connection, or download the files by other means and {mirror_hint}."
        ) from None


def _open(url: str, headers: dict[str, str], secret_headers: dict[str, str]) -> http.client.HTTPResponse:
    """GET ``url``; ``secret_headers`` are not forwarded when a redirect leaves the host."""
    request = urllib.request.Request(url, headers=headers)
    for name, value in secret_headers.items():
        request.add_unredirected_header(name, value)
    return urllib.request.urlopen(request, timeout=READ_TIMEOUT_S)


def _content_range(response: http.client.HTTPResponse) -> tuple[int | None, int | None]:
    """(first byte, total size) of a 206 answer's ``Content-Range: bytes a-b/total``."""
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        return None, None
    return int(match.group(1)), (int(match.group(2)) if match.group(2) != "*" else None)


def fetch_url(
    url: str,
    dest: Path,
    *,
    headers: dict[str, str] | None = None,
    secret_headers: dict[str, str] | None = None,
    expected_size: int | None = None,
    progress: Progress | None = None,
    label: str | None = None,
) -> tuple[str, int, bool]:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming an existing part.

    Returns ``(sha256, bytes transferred in this call, resumed)``.  ``dest`` appears only
    complete (``os.replace``); it is not checked against any checksum here.  A cut connection
    is resumed up to :data:`MAX_RESUMES` times as long as data keeps arriving.
    """
    headers = dict(headers or {})
    secret_headers = dict(secret_headers or {})
    # The token is the last word of an "Authorization: Bearer <token>" value.
    secret = next((value.split()[-1] for value in secret_headers.values()), None)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    have = part.stat().st_size if part.exists() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0
    if have:
        with open(part, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
    resumed = have > 0
    transferred = 0
    task = progress.add_task(label or dest.name, total=expected_size, completed=have) if progress else None
    resumes = 0
    while True:
        if expected_size is not None and have == expected_size:
            break
        range_headers = {**headers, "Range": f"bytes={have}-"} if have else headers
        try:
            response = _open(url, range_headers, secret_headers)
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:
                # The part already holds the whole file (its size was not known in advance).
                break
            raise DownloadError(
                f"{_describe(url)}: HTTP {error.code} {error.reason}"
                + (" (authentication needed: set HF_TOKEN or run `hf auth login`)" if error.code in (401, 403) else "")
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(_redact(f"cannot download {_describe(url)}: {reason}", secret)) from None
        with response:
            first, total = _content_range(response)
            if have and (response.status != 206 or first != have):
                # The server ignored the Range request: start over.
                have, digest = 0, hashlib.sha256()
                part.unlink(missing_ok=True)
                resumed = False
                if progress is not None and task is not None:
                    progress.reset(task, total=expected_size)
            if expected_size is None:
                length = response.headers.get("Content-Length")
                expected_size = total if response.status == 206 else (int(length) if length is not None else None)
                if progress is not None and task is not None:
                    progress.update(task, total=expected_size)
            received = 0
            try:
                with open(part, "ab", buffering=0) as sink:
                    while chunk := response.read1(CHUNK_SIZE):
                        sink.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        if progress is not None and task is not None:
                            progress.advance(task, len(chunk))
            except (OSError, http.client.HTTPException) as error:
                have += received
                transferred += received
                if received == 0 or resumes >= MAX_RESUMES:
                    raise DownloadError(
                        f"download of {_describe(url)} broke off at {have:,} B ({error.__class__.__name__}); "
                        "run the same command again to continue where it stopped"
                    ) from None
                resumes += 1
                time.sleep(0.5)
                continue
            have += received
            transferred += received
        if expected_size is None or have >= expected_size:
            break
        if received == 0 or resumes >= MAX_RESUMES:
            raise DownloadError(
                f"download of {_describe(url)} stopped at {have:,} of {expected_size:,} B; "
                "run the same command again to continue where it stopped"
            )
        resumes += 1
    if expected_size is not None and have != expected_size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{_describe(url)}: got {have:,} B, expected {expected_size:,} B; the partial file was removed")
    os.replace(part, dest)
    if progress is not None and task is not None:
        progress.update(task, completed=have)
    return digest.hexdigest(), transferred, resumed


# ----------------------------------------------------------------------------- origins


@dataclass
class _Candidate:
    """An acceptable sha256 for a file and where that value came from."""

    sha256: str
    how: str


@dataclass
class _Local:
    """A file already on this machine and what its content must hash to."""

    path: Path
    candidates: list[_Candidate]


@dataclass
class _Remote:
    """Where to GET one file and what its content must hash to."""

    url: str
    size: int | None
    candidates: list[_Candidate]
    headers: dict[str, str] = field(default_factory=dict)
    secret_headers: dict[str, str] = field(default_factory=dict)
    mirror: bool = False


class Origin(Protocol):
    """Where a dataset's files come from: resolves a file to a remote or a local path."""

    description: dict[str, Any]

    def locate(self, spec: FileSpec) -> _Remote | _Local: ...


def _pinned(spec: FileSpec) -> list[_Candidate]:
    return [_Candidate(spec.sha256.lower(), "pinned")] if spec.sha256 else []


class _HubOrigin:
    """A Hub repository at a revision, through ``huggingface_hub`` (endpoint, token, offline
    mode, redirects); the file bytes are then fetched with :func:`fetch_url`."""

    def __init__(self, source: HubSource, revision: str | None, notes: str = "") -> None:
        from huggingface_hub import constants, get_token

        self.source = source
        self.notes = notes
        self.revision = revision or source.revision
        self.pins_apply = self.revision == source.revision
        self.endpoint = constants.ENDPOINT  # HF_ENDPOINT, as huggingface_hub read it
        if constants.is_offline_mode():
            raise DownloadError(
                "the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE is set). Unset it, or pass "
                "--source with a folder or mirror URL that holds the dataset's files."
            )
        preflight(self.endpoint)
        self._token = get_token()
        self.commit: str | None = None
        self.description = {
            "kind": "hub",
            "repo_id": source.repo_id,
            "repo_type": source.repo_type,
            "revision": self.revision,
            "endpoint": self.endpoint,
        }

    def locate(self, spec: FileSpec) -> _Remote:
        import httpx2
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(
            self.source.repo_id, spec.name, repo_type=self.source.repo_type, revision=self.revision, endpoint=self.endpoint
        )
        where = f"{self.source.repo_id}@{self.revision}"
        try:
            metadata = get_hf_file_metadata(url, token=self._token, timeout=10, endpoint=self.endpoint)
        except EntryNotFoundError:
            raise DownloadError(f"{spec.name} is not in {where} on {self.endpoint}; try another --revision. {self.notes}") from None
        except RevisionNotFoundError:
            raise DownloadError(f"revision {self.revision!r} does not exist in {self.source.repo_id}. {self.notes}") from None
        except GatedRepoError:
            how = self.source.access or "request access on its Hub page, then run `hf auth login` or set HF_TOKEN"
            state = "the token found was not granted access" if self._token else "no Hugging Face token was found"
            raise DownloadError(f"{self.source.repo_id} is gated and {state}: {how}") from None
        except RepositoryNotFoundError:
            raise DownloadError(
                f"{self.source.repo_id} was not found on {self.endpoint}, or it is gated/private and needs a token "
                "(set HF_TOKEN or run `hf auth login`)"
            ) from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else "?"
            raise DownloadError(_redact(f"{spec.name} from {where}: HTTP {status}", self._token)) from None
        except (OSError, httpx2.TransportError) as error:
            raise DownloadError(
                _redact(
                    f"cannot get {spec.name} from {self.endpoint} ({error.__class__.__name__}: {error}); "
                    "check the network, or use --source with a mirror",
                    self._token,
                )
            ) from None
        self.commit = metadata.commit_hash or self.commit
        candidates = _pinned(spec) if self.pins_apply else []
        etag = (metadata.etag or "").lower()
        if _HEX64.fullmatch(etag):
            if candidates and candidates[0].sha256 != etag:
                raise DownloadError(
                    f"{spec.name} at {where} has sha256 {etag} on the Hub, but the registry pins {candidates[0].sha256}; "
                    "the registry entry is wrong or the Hub changed: report it"
                )
            candidates.append(_Candidate(etag, "hub-lfs"))
        if spec.size is not None and metadata.size is not None and self.pins_apply and spec.size != metadata.size:
            raise DownloadError(f"{spec.name} at {where} has {metadata.size:,} B on the Hub, but the registry pins {spec.size:,} B")
        headers = build_hf_headers(token=False)
        headers["Accept-Encoding"] = "identity"
        location = metadata.location or url
        same_host = urlsplit(location).netloc == urlsplit(self.endpoint).netloc
        secret = {"Authorization": f"Bearer {self._token}"} if self._token and same_host else {}
        return _Remote(location, metadata.size or spec.size, candidates, headers, secret)


class _UrlMirrorOrigin:
    """A base URL holding the same files as the dataset's release (and maybe ``SHA256SUMS``)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        preflight(self.base)
        self.sums = self._read_sums()
        self.description = {"kind": "mirror-url", "url": _describe(self.base), "sha256sums": bool(self.sums)}

    def _read_sums(self) -> dict[str, str]:
        try:
            with _open(f"{self.base}/{SHA256SUMS}", {}, {}) as response:
                text = response.read(1 << 20).decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return {}
            raise DownloadError(f"{_describe(self.base)}/{SHA256SUMS}: HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            raise DownloadError(f"cannot read {_describe(self.base)}/{SHA256SUMS}: {error}") from None
        try:
            return parse_sha256sums(text)
        except ValueError as error:
            raise DownloadError(f"{_describe(self.base)}: {error}") from None

    def locate(self, spec: FileSpec) -> _Remote:
        candidates = _pinned(spec)
        if spec.name in self.sums:
            candidates.append(_Candidate(self.sums[spec.name], SHA256SUMS))
        return _Remote(f"{self.base}/{spec.name}", None, candidates, mirror=True)


class _SpecUrlOrigin:
    """The registry's own HTTP(S) URLs (pinned checksums)."""

    def __init__(self) -> None:
        self.description = {"kind": "url"}
        self._checked: set[str] = set()

    def locate(self, spec: FileSpec) -> _Remote:
        if not spec.url:
            raise DownloadError(f"the registry gives no URL for {spec.name}")
        host = urlsplit(spec.url).netloc
        if host not in self._checked:
            preflight(spec.url)
            self._checked.add(host)
        return _Remote(spec.url, spec.size, _pinned(spec))


class _FolderOrigin:
    """A local folder holding the release's files (a mirror, or files fetched by hand)."""

    def __init__(self, folder: Path, renamed: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.renamed = renamed or {}
        sums_file = folder / SHA256SUMS
        try:
            self.sums = parse_sha256sums(sums_file.read_text()) if sums_file.is_file() else {}
        except ValueError as error:
            raise DownloadError(f"{sums_file}: {error}") from None
        self.description = {"kind": "local", "path": str(folder), "sha256sums": bool(self.sums)}

    def locate(self, spec: FileSpec) -> _Local:
        name = self.renamed.get(spec.name, spec.name)
        path = self.folder / name
        if not path.is_file():
            raise DownloadError(f"{name} is not in {self.folder}")
        candidates = _pinned(spec)
        if name in self.sums:
            candidates.append(_Candidate(self.sums[name], SHA256SUMS))
        return _Local(path, candidates)


# ----------------------------------------------------------------------------- fetching


class _VerifiedStore:
    """``verified.json``: files already hashed (path -> size, mtime_ns, sha256)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.records: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            self.records = {}

    def known_sha256(self, file: Path) -> str | None:
        record = self.records.get(str(file.resolve()))
        if record is None or not file.is_file():
            return None
        stat = file.stat()
        if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
            return None
        return record.get("sha256")

    def remember(self, file: Path, sha256: str) -> None:
        stat = file.stat()
        self.records[str(file.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        temp.write_text(json.dumps(self.records, indent=1, sort_keys=True))
        os.replace(temp, self.path)

    def forget(self, file: Path) -> None:
        self.records.pop(str(file.resolve()), None)


def _match(sha256: str, candidates: list[_Candidate]) -> str | None:
    for candidate in candidates:
        if candidate.sha256 == sha256:
            return candidate.how
    return None


def md5_file(path: Path) -> str:
    """The md5 of a file (only to compare with a published md5, never as our own checksum)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verdict(spec: FileSpec, path: Path, sha256: str, candidates: list[_Candidate]) -> str | None:
    """How a file is verified: the source of the sha256 candidate it matches; without
    candidates, ``md5`` when it matches the registry's published md5, ``unverified`` when
    there is none; ``None`` when a check fails."""
    if candidates:
        return _match(sha256, candidates)
    if spec.md5:
        return "md5" if md5_file(path) == spec.md5.lower() else None
    return "unverified"


def _expected(spec: FileSpec, candidates: list[_Candidate]) -> str:
    """What a file should have hashed to, for messages."""
    if candidates:
        return " or ".join(f"sha256 {c.sha256} ({c.how})" for c in candidates)
    return f"md5 {spec.md5} (published)"


_ADD_SUMS = (
    f"Add a {SHA256SUMS} file (sha256sum format) next to the archives, or pass --insecure-skip-verify "
    "to accept it unverified (the dataset card will say so)."
)


def _unverifiable(name: str) -> DownloadError:
    return DownloadError(
        f"cannot verify {name}: the registry pins no checksum for it, the source gives none and no "
        f"{SHA256SUMS} lists it. {_ADD_SUMS}"
    )


def _not_the_pinned_file(candidates: list[_Candidate], mirror: bool) -> bool:
    """A mirror's file that differs from the pinned one may be another version: then it is
    unverifiable rather than corrupt (unless the mirror's own SHA256SUMS vouches for it)."""
    return mirror and all(candidate.how == "pinned" for candidate in candidates)


def _check_local(spec: FileSpec, local: _Local, store: _VerifiedStore, insecure_skip_verify: bool) -> FetchedFile:
    """Verify a file on this machine in place (never copied, never deleted)."""
    candidates = local.candidates
    if not candidates and not spec.md5 and not insecure_skip_verify:
        raise _unverifiable(spec.name)
    sha256 = store.known_sha256(local.path) or sha256_file(local.path)
    how = _verdict(spec, local.path, sha256, candidates)
    soft = bool(candidates) and _not_the_pinned_file(candidates, mirror=True)
    if how is None and not (soft and insecure_skip_verify):
        raise DownloadError(
            f"{local.path} does not match: expected {_expected(spec, candidates)}, its sha256 is {sha256}; "
            "the file is corrupt or a different version." + (f" {_ADD_SUMS}" if soft else "")
        )
    store.remember(local.path, sha256)
    return FetchedFile(spec.name, local.path, local.path.stat().st_size, sha256, "local", how or "unverified")


def fetch_file(
    spec: FileSpec,
    origin: Origin,
    folder: str | Path,
    *,
    insecure_skip_verify: bool = False,
    progress: Progress | None = None,
) -> FetchedFile:
    """Obtain one file from ``origin``, verified, in ``folder`` (or in place for local files).

    A verified file already in ``folder`` is reused ("cached"); a ``.part`` is resumed.
    """
    folder = Path(folder)
    store = _VerifiedStore(folder / "verified.json")
    located = origin.locate(spec)
    if isinstance(located, _Local):
        return _check_local(spec, located, store, insecure_skip_verify)

    remote = located
    if not remote.candidates and not spec.md5 and not insecure_skip_verify:
        raise _unverifiable(spec.name)
    (folder / spec.name).parent.mkdir(parents=True, exist_ok=True)  # a name may hold a folder: realiad_1024/pcb.zip
    try:
        lock = ownership.ExclusiveLock(folder / f"{spec.name}.lock", f"the download of {spec.name} into {folder}").acquire()
    except ownership.LockedError as error:
        holder = f" ({error.holder.describe()})" if error.holder else ""
        raise DownloadError(f"another m2ad process is downloading {spec.name} into {folder}{holder}; wait for it to finish") from None
    try:
        return _fetch_remote(spec, remote, folder, store, insecure_skip_verify, progress)
    finally:
        lock.release()


def _fetch_remote(
    spec: FileSpec,
    remote: _Remote,
    folder: Path,
    store: _VerifiedStore,
    insecure_skip_verify: bool,
    progress: Progress | None,
) -> FetchedFile:
    """Reuse, resume or download ``remote`` into ``folder`` and verify it (lock held)."""
    dest = folder / spec.name
    if dest.is_file():
        known = store.known_sha256(dest) or sha256_file(dest)
        soft = insecure_skip_verify and bool(remote.candidates) and _not_the_pinned_file(remote.candidates, remote.mirror)
        how = _verdict(spec, dest, known, remote.candidates) or ("unverified" if soft else None)
        if how is not None:
            store.remember(dest, known)
            return FetchedFile(spec.name, dest, dest.stat().st_size, known, "cached", how)
        store.forget(dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    remaining = (remote.size or 0) - (part.stat().st_size if part.exists() else 0)
    check_free_space(folder, max(remaining, 0) + (64 << 20), f"download {spec.name}")
    transferred = 0
    for attempt in (1, 2):
        sha256, moved, resumed = fetch_url(
            remote.url,
            dest,
            headers=remote.headers,
            secret_headers=remote.secret_headers,
            expected_size=remote.size,
            progress=progress,
            label=spec.name if attempt == 1 else f"{spec.name} (again)",
        )
        transferred += moved
        how = _verdict(spec, dest, sha256, remote.candidates)
        if how is not None:
            store.remember(dest, sha256)
            status = "resumed" if resumed else "fetched"
            return FetchedFile(spec.name, dest, dest.stat().st_size, sha256, status, how, transferred, attempt)
        if attempt == 2 and insecure_skip_verify and remote.candidates and _not_the_pinned_file(remote.candidates, remote.mirror):
            store.remember(dest, sha256)
            return FetchedFile(spec.name, dest, dest.stat().st_size, sha256, "fetched", "unverified", transferred, attempt)
        dest.unlink()
    raise DownloadError(
        f"{spec.name}: checksum mismatch twice (got sha256 {sha256}, expected {_expected(spec, remote.candidates)}); "
        "the download was deleted. "
        + (
            f"The mirror's file may be another version than the pinned one. {_ADD_SUMS}"
            if remote.candidates and _not_the_pinned_file(remote.candidates, remote.mirror)
            else "The source may be corrupt: try again later or use another --source."
        )
    )


def open_origin(spec: DatasetSpec, source: str | None = None, revision: str | None = None) -> Origin:
    """Where ``spec``'s files come from: its registry source (``source=None``), a mirror base
    URL, or a local folder or archive.  Checks the connection first (fails within seconds)."""
    if revision is not None and (source is not None or not isinstance(spec.source, HubSource)):
        raise DownloadError("--revision applies only to a download from the Hugging Face Hub")
    if source is None:
        if isinstance(spec.source, HubSource):
            return _HubOrigin(spec.source, revision, spec.notes)
        if isinstance(spec.source, UrlSource):
            return _SpecUrlOrigin()
        assert isinstance(spec.source, ManualSource)
        raise DownloadError(f"{spec.name} cannot be downloaded automatically. {spec.source.instructions}")
    if re.match(r"https?://", source, re.IGNORECASE):
        path = urlsplit(source).path
        named = [item.name for item in spec.files if path.endswith("/" + item.name)]
        if named:  # the URL of one of the files (e.g. MVTec AD's current link): its folder is the mirror
            return _UrlMirrorOrigin(source[: source.rindex(named[0])])
        return _UrlMirrorOrigin(source)
    path = Path(source).expanduser()
    if path.is_file():
        if path.name in {f.name for f in spec.files}:
            return _FolderOrigin(path.parent)
        if len(spec.files) == 1:
            return _FolderOrigin(path.parent, {spec.files[0].name: path.name})
        raise DownloadError(f"{path.name} is not one of {spec.name}'s files ({', '.join(f.name for f in spec.files)})")
    if path.is_dir():
        return _FolderOrigin(path)
    raise DownloadError(f"--source {source}: no such folder or file, and not an http(s) URL")


def _shard_estimate(archives: Sequence[FetchedFile], resolution: int | str) -> int:
    """Rough bytes of shards made from ``archives``: PNG size scales with the pixel count
    (M2AD originals are 1024 px), plus 10 %."""
    total = sum(item.size for item in archives)
    scale = 1.0 if resolution == "original" else min(1.0, (int(resolution) / 1024) ** 2)
    return int(total * scale * 1.1)


def _tree_for(archives: list[FetchedFile], work: Path, max_ratio: float, progress: bool) -> tuple[TreeSource, Path | None]:
    """A ``TreeSource`` over the archives: zips are read in place, a tar is extracted once."""
    from m2ad.shard import FolderSource

    if all(item.path.suffix.lower() == ".zip" for item in archives):
        return ZipSource([item.path for item in archives], max_ratio=max_ratio), None
    if len(archives) != 1 or not is_tar(archives[0].path):
        raise DownloadError(f"cannot combine these archives into one tree: {', '.join(a.name for a in archives)}")
    target = work / "extracted" / archives[0].name
    if not target.is_dir():
        check_free_space(work, int(archives[0].size * 1.2), f"extract {archives[0].name}")
        extract(archives[0].path, target, max_ratio=max_ratio, progress=progress)
    return FolderSource(target), target


def _already_sharded(out: Path, dataset: str, resolution: int | str, variant: str, category: str) -> bool:
    """Whether an earlier run wrote every split of ``category`` into ``out`` at this dataset,
    resolution and variant, so that its archives are not needed again (they may have been deleted)."""
    from m2ad.shard import JOB_FILE, UNIT_MARKER, parse_resolution

    try:
        job = json.loads((out / JOB_FILE).read_text())
    except (OSError, ValueError):
        return False
    if job.get("dataset") != dataset or str(job.get("resolution")) != str(parse_resolution(resolution)) or job.get("variant", "") != variant:
        return False
    return all((out / shard_dir_name(category, split) / UNIT_MARKER).is_file() for split in SPLITS)


def _earlier_files(out: Path) -> dict[str, Any]:
    """Per-file provenance recorded in ``out/dataset.json`` by an earlier run, if any."""
    try:
        return dict(DatasetInfo.read(out).source.get("files", {}))
    except (OSError, ValueError):
        return {}


def check_resolution(spec: DatasetSpec, resolution: int | str, allow_upsample: bool) -> None:
    """Refuse, before any download, a resolution above the dataset's image size (unless
    ``allow_upsample``) or one that is not 'original' or a pixel count."""
    from m2ad.shard import parse_resolution

    try:
        pixels = parse_resolution(resolution)
    except ValueError as error:
        raise DownloadError(str(error)) from None
    if pixels != "original" and spec.image_size is not None and int(pixels) > spec.image_size and not allow_upsample:
        raise DownloadError(
            f"resolution {pixels} px is larger than {spec.name}'s images ({spec.image_size} px on the longer side); "
            "upsampling adds no information and costs memory: choose at most that, or pass --allow-upsample"
        )


def download_dataset(
    name: str,
    out: str | Path,
    *,
    categories: Sequence[str] | None = None,
    resolution: int | str = 256,
    source: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    insecure_skip_verify: bool = False,
    keep_archives: bool = True,
    workers: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    max_ratio: float = DEFAULT_MAX_RATIO,
    allow_upsample: bool = False,
    variant: str | None = None,
) -> DownloadReport:
    """Fetch, verify and shard dataset ``name`` into ``out``, one category at a time.

    ``source``: ``None`` for the registry's source (the Hub for M2AD), or a mirror (base URL or
    local folder holding the same files, optionally with ``SHA256SUMS``).  ``revision`` picks
    another Hub revision (pinned checksums then no longer apply; the Hub's LFS sha256 does).
    ``keep_archives=False`` deletes each downloaded archive once its category is sharded
    (files in a local ``source`` folder are never deleted).  A rerun into the same ``out``
    skips the categories that are already sharded there and resumes the others.
    ``allow_upsample`` accepts a ``resolution`` above the images' size; ``variant`` picks a
    release variant (Real-IAD's image resolution folder; default: the spec's).
    """
    try:
        spec = get(name)
        chosen_variant = spec.check_variant(variant)
    except (KeyError, ValueError) as error:
        raise DownloadError(str(error.args[0])) from None
    if not spec.files:
        raise DownloadError(f"{spec.name} has nothing to download: {getattr(spec.source, 'instructions', '')}")
    if spec.modalities[0] == "points":
        resolution = "original"  # point clouds are stored as released (m2ad.shard.shard_tree)
    check_resolution(spec, resolution, allow_upsample)
    by_lower = {category.lower(): category for category in spec.categories}
    wanted = list(spec.categories) if not categories else [by_lower.get(c.lower(), c) for c in categories]
    unknown = [c for c in wanted if c not in spec.categories]
    if unknown:
        raise DownloadError(f"{spec.name} has no categories {', '.join(unknown)}; expected some of {', '.join(spec.categories)}")
    out = Path(out)
    folder = Path(cache_dir) if cache_dir is not None else files.cache_dir()
    folder = folder / "downloads" / spec.name
    origin = open_origin(spec, source, revision)
    from m2ad.shard import (  # slow to import (datasets): only once the source answers
        ShardError,
        shard_tree,
    )

    report = DownloadReport(spec.name, out)
    earlier = _earlier_files(out)
    fetched: dict[str, FetchedFile] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    for index, category in enumerate(wanted):
        if _already_sharded(out, spec.name, resolution, chosen_variant, category):
            report.skipped.append(category)
            continue
        needed = spec.files_for(category, chosen_variant)
        with Progress(*columns, console=console, disable=not progress, transient=False) as bars:
            for file_spec in needed:
                if file_spec.name not in fetched or not fetched[file_spec.name].path.is_file():
                    fetched[file_spec.name] = fetch_file(
                        file_spec, origin, folder, insecure_skip_verify=insecure_skip_verify, progress=bars if progress else None
                    )
        archives = [fetched[f.name] for f in needed]
        check_free_space(out, _shard_estimate(archives, resolution), f"shard {category}")
        report.source_info = _source_info(spec, origin, fetched, earlier)
        tree, extracted = _tree_for(archives, folder, max_ratio, progress)
        try:
            shard_tree(
                tree,
                out,
                resolution=resolution,
                dataset=spec.name,
                categories=[category],
                workers=workers,
                progress=progress,
                source_info=report.source_info,
                allow_upsample=allow_upsample,
                variant=chosen_variant or None,
            )
        except ShardError as error:
            listed = "".join(f"\n  {problem.kind}: {problem.path}: {problem.message}" for problem in error.problems[:20])
            raise DownloadError(f"{category}: the downloaded release does not shard cleanly: {error}{listed}") from error
        except ValueError as error:  # a resolution the images refuse (upsampling, memory)
            raise DownloadError(f"{category}: {error}") from None
        finally:
            if isinstance(tree, ZipSource):
                tree.close()
        report.categories.append(category)
        if not keep_archives:
            later = {f.name for c in wanted[index + 1 :] for f in spec.files_for(c, chosen_variant)}
            for item in archives:
                if item.name not in later and item.status != "local":
                    item.path.unlink(missing_ok=True)
            if extracted is not None and archives[0].name not in later:
                shutil.rmtree(extracted, ignore_errors=True)
    report.files = list(fetched.values())
    return report


def _source_info(
    spec: DatasetSpec, origin: Origin, fetched: dict[str, FetchedFile], earlier: dict[str, Any]
) -> dict[str, Any]:
    """The provenance written to the dataset card: source, revision, per-file checksums and
    how each was verified, keeping the entries of earlier runs into the same folder (never a
    token or a signed URL)."""
    info: dict[str, Any] = dict(origin.description)
    if isinstance(origin, _HubOrigin):
        info["commit"] = origin.commit
        info["version"] = f"{origin.source.repo_id}@{origin.commit or origin.revision}"
    info["license"] = spec.license
    info["citation"] = spec.citation
    info["files"] = earlier | {
        item.name: {"sha256": item.sha256, "size": item.size, "verified": item.verified} for item in fetched.values()
    }
    info["verified"] = all(entry.get("verified") != "unverified" for entry in info["files"].values())
    return info

