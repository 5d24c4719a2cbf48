"""A loopback fake of the Hugging Face Hub's *upload* routes, for the leaderboard publish test.

It implements exactly what ``huggingface_hub`` 2.4 calls for ``HfApi.create_repo`` and
``HfApi.upload_folder``: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
``POST /api/{type}s/{repo}/preupload/{revision}`` (every file "regular", i.e. inlined in the
commit) and ``POST /api/{type}s/{repo}/commit/{revision}`` (NDJSON).  Everything it receives
is recorded; any other route answers 404 and is recorded too, so a test sees unexpected calls.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeHubState:
    """What the fake Hub received."""

    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> bytes
    commits: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: FakeHubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            """Stay quiet: tests read the recorded state instead."""

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            # huggingface_hub fetches its agent registry for the user agent; no answer is fine.
            if not self.path.startswith("/api/agent-harnesses"):
                with state.lock:
                    state.unexpected.append(f"GET {self.path}")
            self._send(404, {"error": "not implemented by the fake Hub"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            body = self._body()
            path = self.path.split("?")[0]
            with state.lock:
                state.authorizations.append(self.headers.get("Authorization", ""))
            if path == "/api/repos/create":
                request = json.loads(body)
                repo = f"{request['organization']}/{request['name']}"
                with state.lock:
                    state.repos[repo] = request
                    state.files.setdefault(repo, {})
                self._send(200, {"url": f"http://{self.headers['Host']}/datasets/{repo}"})
                return
            if path == "/api/validate-yaml":
                self._send(200, {"errors": [], "warnings": []})
                return
            parts = path.strip("/").split("/")
            # api / datasets / org / name / (preupload|commit) / revision
            if len(parts) == 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
                repo = f"{parts[2]}/{parts[3]}"
                if repo not in state.repos:
                    self._send(404, {"error": f"repository {repo} not found"})
                    return
                if parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                    return
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                with state.lock:
                    for line in lines:
                        if line["key"] == "file":
                            value = line["value"]
                            content = value["content"]
                            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                            state.files[repo][value["path"]] = data
                    state.commits.append({"repo": repo, "header": lines[0]["value"] if lines else {}, "count": len(lines) - 1})
                oid = f"{len(state.commits):040x}"
                self._send(200, {"commitUrl": f"http://{self.headers['Host']}/datasets/{repo}/commit/{oid}", "commitOid": oid})
                return
            with state.lock:
                state.unexpected.append(f"POST {self.path}")
            self._send(404, {"error": "not implemented by the fake Hub"})

    return Handler


class FakeHub:
    """Start with ``with FakeHub() as hub:``; ``hub.endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.state = FakeHubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
