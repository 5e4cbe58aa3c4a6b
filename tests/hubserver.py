"""A small Hugging Face Hub look-alike on 127.0.0.1 for tests, driven by the real huggingface_hub
client (point ``HF_ENDPOINT`` at :attr:`HubServer.url`).

It serves the two endpoints huggingface_hub uses to resolve and download model files:

* ``GET /api/models/{org}/{name}[/revision/{rev}]``: the repo's commit sha and file listing
  (what ``HfApi.model_info`` reads);
* ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``: one file, with the headers
  ``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``);

and answers errors the way the hub does, with ``X-Error-Code`` / ``X-Error-Message`` headers:
``RepoNotFound`` (404, or 401 without a token, as for a private repo), ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo`` (401 without a token, 403 with a token that has no access) and
401 "Invalid credentials" for a token the server does not know.

Repos are built from folders (or file dicts) in the tests; each :meth:`HubServer.add_repo` call
is one commit, moving a branch and setting tags. Every request is logged in
:attr:`HubServer.requests`; :attr:`HubServer.hang` makes every request wait without an answer.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted
    token: str | None


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    private: bool = False
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access

    def commit_of(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class HubServer:
    """``with HubServer(home) as hub:`` ... ``hub.url``, ``hub.add_repo(...)``, ``hub.requests``."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home  # HF_HOME for the clients of this server (see env())
        self.repos: dict[str, Repo] = {}
        self.known_tokens: set[str] = set()
        self.requests: list[Request] = []
        self.hang = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self, *, offline: bool = False, token: str | None = None, **extra: str) -> dict[str, str]:
        """Environment for a bbx subprocess using this hub and the cache under ``home``."""
        env = {
            "HF_ENDPOINT": self.url,
            "HF_HUB_OFFLINE": "1" if offline else "0",
            "HF_TOKEN": token or "",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        if self.home is not None:
            env["HF_HOME"] = str(self.home)
        env.update(extra)
        return env

    # -- content ---------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        folder: Path | None = None,
        *,
        files: dict[str, bytes] | None = None,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        private: bool = False,
        gated: bool = False,
        token: str | None = None,
    ) -> str:
        """Commit ``folder``'s files (plus ``files``) to ``repo_id`` on ``branch``; tag it with
        ``tags``. ``private``/``gated`` with ``token`` the one token given access. Returns the sha."""
        content: dict[str, bytes] = {}
        if folder is not None:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    content[path.relative_to(folder).as_posix()] = path.read_bytes()
        content.update(files or {})
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            repo.private = repo.private or private
            repo.gated = repo.gated or gated
            if token:
                repo.tokens.add(token)
                self.known_tokens.add(token)
            digest = hashlib.sha1(f"{repo_id}\n{len(repo.commits)}\n".encode())
            for name, data in sorted(content.items()):
                digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            sha = digest.hexdigest()
            repo.commits[sha] = content
            repo.refs[branch] = sha
            for tag in tags:
                repo.refs[tag] = sha
        return sha

    # -- request log -----------------------------------------------------------------------------
    def transfers(self, filename: str | None = None) -> list[Request]:
        """The GETs of files (bodies sent), optionally of one file name."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and "/resolve/" in r.path and (filename is None or r.path.endswith("/" + filename))
        ]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()


def _make_handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (quiet)
            pass

        def do_GET(self) -> None:  # noqa: N802
            self._handle(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle(body=False)

        # -- helpers -------------------------------------------------------------------------------
        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

        def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _error(self, status: int, code: str | None, message: str, body: bool, **headers: str) -> None:
            h = {"Content-Type": "application/json", "X-Error-Message": message, **headers}
            if code:
                h["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), h, body)

        def _access(self, repo: Repo | None, token: str | None, files: bool, body: bool) -> bool:
            """Answers (and returns False) when the request may not see the repo."""
            if token is not None and token not in hub.known_tokens:
                self._error(401, None, "Invalid credentials in Authorization header", body)
                return False
            if repo is None or (repo.private and token not in repo.tokens):
                status = 401 if token is None else 404
                self._error(status, "RepoNotFound", "Repository not found", body)
                return False
            if repo.gated and files and token not in repo.tokens:
                status = 401 if token is None else 403
                self._error(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted.", body)
                return False
            return True

        def _handle(self, body: bool) -> None:
            path = urlsplit(self.path).path
            token = self._token()
            with hub._lock:
                hub.requests.append(Request(self.command, unquote(path), token))
            if hub.hang:
                hub._released.wait(60)
                self.close_connection = True
                return
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._model_info(parts[2:], token, body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(parts, token, body)
            else:
                self._error(404, None, "Not found", body)

        def _commit(
            self, repo_id: str, revision: str, token: str | None, *, files: bool, body: bool
        ) -> tuple[Repo, str] | None:
            """(repo, commit sha) when the caller may see ``revision`` of ``repo_id``; else the
            error response is sent and None returned."""
            repo = hub.repos.get(repo_id)
            if not self._access(repo, token, files=files, body=body):
                return None
            assert repo is not None
            sha = repo.commit_of(revision)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
                return None
            return repo, sha

        def _model_info(self, parts: list[str], token: str | None, body: bool) -> None:
            repo_id = "/".join(parts[:2])
            revision = unquote(parts[3]) if len(parts) >= 4 and parts[2] == "revision" else "main"
            found = self._commit(repo_id, revision, token, files=False, body=body)
            if found is None:
                return
            repo, sha = found
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": n} for n in sorted(repo.commits[sha])],
            }
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

        def _resolve(self, parts: list[str], token: str | None, body: bool) -> None:
            repo_id = "/".join(parts[:2])
            revision = unquote(parts[3])
            filename = unquote("/".join(parts[4:]))
            found = self._commit(repo_id, revision, token, files=True, body=body)
            if found is None:
                return
            repo, sha = found
            data = repo.commits[sha].get(filename)
            if data is None:
                self._error(404, "EntryNotFound", f"{filename} does not exist", body, **{"X-Repo-Commit": sha})
                return
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Repo-Commit": sha,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            }
            self._send(200, data, headers, body)

    return Handler
