"""Loopback HTTP servers for tests: a plain file server with Range support and a fake
Hugging Face Hub that answers the routes ``huggingface_hub`` uses to download files.

Both run in a background thread on ``127.0.0.1`` and count what they send, so tests can assert
on bytes served and on the requests made.  Failures are injected per path:

- ``drop_after[path] = n``: the next response for ``path`` stops after ``n`` body bytes and the
  connection is closed (a network cut); one-shot.
- ``stall_after[path] = n``: every response for ``path`` hangs after ``n`` body bytes until the
  server stops (a client that is then killed leaves a partial download behind).
- ``corrupt[path] = times``: the next ``times`` responses for ``path`` have one byte flipped in
  the middle of the file.
- ``ignore_range = True``: Range headers are ignored (full 200 answers), as some proxies do.

Use::

    with FileServer({"data/Bird.zip": payload}) as server:
        url = server.url + "/data/Bird.zip"

    with FakeHub() as hub:
        hub.add_file("ChengYuQi99/M2AD", "Bird.zip", payload)   # a dataset repo, LFS file
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.bytes_served["ChengYuQi99/M2AD/Bird.zip"]           # counted per "<repo_id>/<file>"
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_CHUNK = 16 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr log
        return

    def do_HEAD(self) -> None:
        self.server.owner._handle(self, head=True)

    def do_GET(self) -> None:
        self.server.owner._handle(self, head=False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer


class FileServer:
    """A plain HTTP file server on loopback: ``files`` maps URL paths (no leading slash) to
    content.  Honours ``Range: bytes=a-`` / ``bytes=a-b`` with 206 answers."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.bytes_served: Counter[str] = Counter()
        self.requests: list[Served] = []
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self.ignore_range = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> FileServer:
        """Start serving on a free port of 127.0.0.1."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release stalled responses."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def total_bytes_served(self, suffix: str = "") -> int:
        """Body bytes sent for every path ending with ``suffix``."""
        return sum(count for path, count in self.bytes_served.items() if path.endswith(suffix))

    # -- routing (overridden by FakeHub) ------------------------------------------------------
    def route(self, request: Served) -> tuple[int, dict[str, str], bytes, str]:
        """Status, headers, full content and the key under which the content's bytes are
        counted and failures injected (here: the path without its leading slash)."""
        key = request.path.lstrip("/")
        content = self.files.get(key)
        if content is None:
            return 404, {}, b"not found", key
        return 200, {}, content, key

    # -- serving -----------------------------------------------------------------------------
    def _handle(self, handler: _Handler, *, head: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        request = Served(handler.command, path, {key.lower(): value for key, value in handler.headers.items()})
        with self._lock:
            self.requests.append(request)
        status, headers, content, key = self.route(request)
        if status != 200:
            body = content
            request.status = status
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if not head:
                handler.wfile.write(body)
            return
        with self._lock:
            if not head and self.corrupt.get(key, 0) > 0:
                self.corrupt[key] -= 1
                middle = len(content) // 2
                content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1 :]
        start, end = 0, len(content)
        status = 200
        match = None if self.ignore_range else _RANGE.match(request.headers.get("range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(content)
            end = min(end, len(content))
            if start >= len(content) or start >= end:
                request.status = 416
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(content)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            status = 206
        request.status = status
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(end - start))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
        handler.end_headers()
        if head:
            return
        self._send_body(handler, request, key, content[start:end])

    def _send_body(self, handler: _Handler, request: Served, key: str, body: bytes) -> None:
        with self._lock:
            drop = self.drop_after.pop(key, None)
            stall = self.stall_after.get(key)
        limit = len(body) if drop is None and stall is None else min(len(body), drop if drop is not None else stall)
        sent = 0
        try:
            while sent < limit:
                chunk = body[sent : min(sent + _CHUNK, limit)]
                handler.wfile.write(chunk)
                handler.wfile.flush()
                sent += len(chunk)
                self._count(request, key, len(chunk))
            if stall is not None and limit < len(body):
                while not self._stopping.wait(0.05):
                    pass
                return
            if drop is not None and limit < len(body):
                handler.close_connection = True
                handler.connection.shutdown(2)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _count(self, request: Served, key: str, size: int) -> None:
        with self._lock:
            self.bytes_served[key] += size
            request.body_bytes += size


@dataclass
class _Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)
    commit: str = ""
    branches: tuple[str, ...] = ("main",)


class FakeHub(FileServer):
    """A fake Hugging Face Hub endpoint for ``hf_hub_download`` / ``get_hf_file_metadata``.

    Serves ``HEAD``/``GET`` ``/{repo_type}s/{repo_id}/resolve/{revision}/{filename}`` (models
    without the prefix) with the headers the client reads: ``X-Repo-Commit``, ``ETag``,
    ``X-Linked-Etag`` and ``X-Linked-Size`` for LFS files (the etag is the sha256), and
    ``Content-Length``/``Accept-Ranges``; Range requests get 206.  Unknown repos, revisions and
    files get 404 with the ``X-Error-Code`` the client maps to its exceptions.  A revision may
    be a branch name, the full commit hash or a prefix of at least 7 hex digits.

    ``token``: when set, every request must carry ``Authorization: Bearer <token>`` (a gated
    repo); others get 401.  ``cdn_host``: when set (e.g. ``"localhost"``), LFS files answer
    with a 302 to ``http://<cdn_host>:<port>/cdn/<sha256>``, another origin, as the real Hub
    redirects to its CDN; the client must then not forward the token.
    """

    def __init__(self, *, token: str | None = None, cdn_host: str | None = None) -> None:
        super().__init__()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.token = token
        self.cdn_host = cdn_host
        self._by_sha: dict[str, tuple[str, bytes]] = {}

    def add_file(
        self, repo_id: str, filename: str, content: bytes, *, repo_type: str = "dataset", lfs: bool = True
    ) -> str:
        """Put ``content`` at ``filename`` of the repo (created on first use); a new commit
        hash is made each time.  Returns the file's sha256."""
        repo = self.repos.setdefault((repo_type, repo_id), _Repo())
        repo.files[filename] = content
        if lfs:
            repo.lfs.add(filename)
        repo.commit = hashlib.sha1(f"{repo_type}/{repo_id}/{sorted(repo.files)}/{time.time_ns()}".encode()).hexdigest()
        sha256 = hashlib.sha256(content).hexdigest()
        self._by_sha[sha256] = (f"{repo_id}/{filename}", content)
        return sha256

    def set_commit(self, repo_id: str, commit: str, *, repo_type: str = "dataset") -> None:
        """Give a repo a chosen commit hash (40 hex digits), e.g. one a registry pins."""
        assert re.fullmatch(r"[0-9a-f]{40}", commit), "a commit hash is 40 lowercase hex digits"
        self.repos[(repo_type, repo_id)].commit = commit

    def commit(self, repo_id: str, *, repo_type: str = "dataset") -> str:
        """The current commit hash of a repo."""
        return self.repos[(repo_type, repo_id)].commit

    def route(self, request: Served) -> tuple[int, dict[str, str], bytes, str]:
        """Failures are injected and bytes counted under ``"<repo_id>/<filename>"``, whether
        the bytes come from the resolve route or the CDN."""
        path = request.path.lstrip("/")
        if path.startswith("cdn/"):
            found = self._by_sha.get(path[4:])
            return (200, {}, found[1], found[0]) if found is not None else (404, {}, b"no such object", path)
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted"}, b"", path
        match = re.fullmatch(r"(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not match:
            return 404, {"X-Error-Code": "RepoNotFound"}, b"", path
        prefix, repo_id, revision, filename = match.groups()
        key = f"{repo_id}/{filename}"
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[prefix]
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"", key
        if not (revision in repo.branches or (len(revision) >= 7 and repo.commit.startswith(revision.lower()))):
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b"", key
        content = repo.files.get(filename)
        headers = {"X-Repo-Commit": repo.commit}
        if content is None:
            return 404, {**headers, "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, b"", key
        if filename in repo.lfs:
            sha256 = hashlib.sha256(content).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)), "ETag": f'"{sha256}"'})
            if self.cdn_host is not None:
                return 302, {**headers, "Location": f"http://{self.cdn_host}:{self.port}/cdn/{sha256}"}, b"", key
        else:
            blob = hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()
            headers["ETag"] = f'"{blob}"'
        return 200, headers, content, key



def write_sha256sums(folder: Path, names: list[str]) -> Path:
    """Write ``folder/SHA256SUMS`` in the ``sha256sum`` format for the given files."""
    lines = [f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in names]
    target = folder / "SHA256SUMS"
    target.write_text("".join(lines))
    return target
