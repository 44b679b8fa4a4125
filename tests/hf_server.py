"""A tiny Hugging-Face-Hub-compatible HTTP server for tests (stdlib only), checked against huggingface_hub 2.4.0.

    with HubServer({"org/tiny": folder}) as hub:   # or {"org/tiny": {"main": folder, "v2": other_folder}}
        snapshot_download("org/tiny", endpoint=hub.endpoint, cache_dir=tmp)

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_TELEMETRY into its ``constants`` at import time:
pass ``endpoint=hub.endpoint`` to each call, set the env before the import (subprocess), or patch both
``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE``; patch ``constants.HF_HUB_OFFLINE`` for offline.

Routes (GET/HEAD): ``/api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds size/blobId/lfs to siblings),
``/api/models/{repo}/tree/{rev}[/{path}]`` (snapshot_download's file list), ``/{repo}/resolve/{rev}/{file}``,
``/_cdn/{sha256}/{file}``, ``/api/agent-harnesses`` (fetched by the client's user-agent code). Small files: 200 with
``ETag: "<git blob sha1>"``. LFS files (``lfs_patterns`` or > ``lfs_threshold``): 302 to ``http://{cdn_host}:{port}
/_cdn/...`` with ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``; ``cdn_host="localhost"`` is another origin, so
the client's HEAD stops at the 302 as with the real CDN. No ``X-Xet-*``/``xetHash`` is sent: never the Xet path.
``Range: bytes=N-[M]`` gets 206. Errors carry the Hub's X-Error-Code/X-Error-Message and ``{"error": ...}``:
RepoNotFound (401; 404 if authenticated), RevisionNotFound, EntryNotFound (404), GatedRepo (401/403; file
downloads only: as on the Hub, model info and tree of a gated repo stay public).

Fault knobs, keyed by path in repo: ``fail_after_bytes[f] = n`` (or ``[n1, n2, ...]``, one per GET) sends n body
bytes then drops the connection; ``corrupt[f] = True`` serves same-length wrong bytes; ``stop()``/``start()`` (or
``offline = True/False``) close/reopen the listening socket on the same port.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.onnx", "*.onnx_data", "*.gguf", "*.pt", "*.pth", "*.h5", "*.msgpack")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$")
_DATE = "2024-01-01T00:00:00.000Z"
_FLIP = bytes(255 - i for i in range(256))


@dataclass(frozen=True)
class RepoFileEntry:
    path: str  # path in the repo, "/"-separated
    disk: Path
    size: int
    blob_id: str  # git blob sha1 of the content (of the LFS pointer for LFS files)
    sha256: str | None  # set for LFS files only
    pointer_size: int | None


@dataclass(frozen=True)
class Revision:
    repo_id: str
    name: str
    sha: str
    folder: Path
    files: dict[str, RepoFileEntry]


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _front_matter(readme: Path) -> dict[str, Any]:
    """Minimal YAML front matter reader: ``key: value`` scalars and ``- item`` lists."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    m = re.match(r"---\r?\n(.*?)\r?\n---", text, re.DOTALL)
    out: dict[str, Any] = {}
    key: str | None = None
    for line in m[1].splitlines() if m else []:
        if line.lstrip().startswith("- ") and key is not None:
            out.setdefault(key, []).append(line.strip()[2:].strip().strip("'\""))
        elif ":" in line and not line.startswith(" "):
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip().strip("'\"")
            if value:
                out[key] = value
    return out


class HubServer:
    def __init__(
        self,
        repos: Mapping[str, str | Path | Mapping[str, str | Path]],
        *,
        gated: Iterable[str] = (),
        token: str | None = None,
        extra_info: Mapping[str, Mapping[str, Any]] | None = None,
        cdn_host: str = "localhost",
        lfs_patterns: Iterable[str] = LFS_PATTERNS,
        lfs_threshold: int = 10 * 1024 * 1024,
        host: str = "127.0.0.1",
    ) -> None:
        """``repos``: ``{repo_id: folder}`` (served as "main") or ``{repo_id: {revision_name: folder}}``.
        ``gated``: repo ids whose files need ``Authorization: Bearer <token>``. ``extra_info``: per-repo fields
        merged into the model info JSON (e.g. ``{"library_name": "onnx"}``). Files are hashed here, once."""
        self.gated, self.token, self.cdn_host, self.host = set(gated), token, cdn_host, host
        self.extra_info = {k: dict(v) for k, v in (extra_info or {}).items()}
        self._lfs_patterns, self._lfs_threshold = tuple(lfs_patterns), lfs_threshold
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, raw path, lower-cased headers)
        self.fail_after_bytes: dict[str, int | list[int]] = {}
        self.corrupt: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._revs: dict[tuple[str, str], Revision] = {}  # (repo_id, branch name or commit sha) -> Revision
        self._blobs: dict[str, RepoFileEntry] = {}  # sha256 -> entry, for the CDN
        for repo_id, spec in repos.items():
            for name, folder in ({"main": spec} if isinstance(spec, (str, Path)) else spec).items():
                self.add_revision(repo_id, name, Path(folder))
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    def add_revision(self, repo_id: str, name: str, folder: Path) -> Revision:
        files: dict[str, RepoFileEntry] = {}
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if not p.is_file() or rel.startswith(".git/"):
                continue
            data = p.read_bytes()
            sha256: str | None = None
            if any(fnmatch(p.name, pat) for pat in self._lfs_patterns) or len(data) > self._lfs_threshold:
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
                blob_id, psize = _git_sha1(pointer.encode()), len(pointer)
            else:
                blob_id, psize = _git_sha1(data), None
            files[rel] = RepoFileEntry(rel, p, len(data), blob_id, sha256, psize)
            if sha256:
                self._blobs[sha256] = files[rel]
        digest = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
        sha = hashlib.sha1(f"{repo_id}\0{name}\0{digest}".encode()).hexdigest()
        rev = Revision(repo_id, name, sha, folder, files)
        self._revs[(repo_id, name)] = self._revs[(repo_id, sha)] = rev
        return rev

    def sha(self, repo_id: str, revision: str = "main") -> str:
        return self._revs[(repo_id, revision)].sha

    def model_info(self, rev: Revision, blobs: bool = False) -> dict[str, Any]:
        card = _front_matter(rev.folder / "README.md")
        config: dict[str, Any] = {}
        if (rev.folder / "config.json").is_file():
            raw = json.loads((rev.folder / "config.json").read_text(encoding="utf-8"))
            config = {k: raw[k] for k in ("architectures", "model_type") if k in raw}
        siblings: list[dict[str, Any]] = [{"rfilename": f.path} for f in rev.files.values()]
        for sib, f in zip(siblings, rev.files.values()) if blobs else ():
            sib.update(size=f.size, blobId=f.blob_id)
            if f.sha256:
                sib["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}
        tags = list(card.get("tags", [])) + ([card["library_name"]] if "library_name" in card else [])
        info: dict[str, Any] = {
            "_id": rev.sha[:24], "id": rev.repo_id, "modelId": rev.repo_id, "author": rev.repo_id.partition("/")[0],
            "sha": rev.sha, "lastModified": _DATE, "createdAt": _DATE, "private": False, "disabled": False,
            "gated": "manual" if rev.repo_id in self.gated else False, "downloads": 0, "likes": 0,
            "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"), "tags": tags,
            "cardData": card or None, "config": config or None, "siblings": siblings, "spaces": [],
            "usedStorage": sum(f.size for f in rev.files.values()),
        }
        info.update(self.extra_info.get(rev.repo_id, {}))
        return info

    def tree(self, rev: Revision, sub: str, recursive: bool) -> list[dict[str, Any]] | None:
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        out: dict[str, dict[str, Any]] = {}
        for f in rev.files.values():
            if not f.path.startswith(prefix):
                continue
            parts = f.path[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                d = prefix + "/".join(parts[:i])
                out[d] = {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            if recursive or len(parts) == 1:
                e: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                if f.sha256:
                    e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
                out[f.path] = e
        return list(out.values()) if out or not prefix else None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HubServer:
        if self._httpd is None:
            handler = type("Handler", (_Handler,), {"hub": self})
            self._httpd = _QuietServer((self.host, self.port), handler)
            self.port = self._httpd.server_address[1]
            threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def offline(self) -> bool:
        return self._httpd is None

    @offline.setter
    def offline(self, value: bool) -> None:
        (self.stop if value else self.start)()

    def __enter__(self) -> HubServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_fault(self, filename: str) -> int | None:
        with self._lock:
            spec = self.fail_after_bytes.pop(filename, None)
            if not isinstance(spec, list):
                return spec
            if len(spec) > 1:
                self.fail_after_bytes[filename] = spec[1:]
            return spec[0] if spec else None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # client hang-ups are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.0"  # one request per connection: stop() leaves no live keep-alive connection

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _send(self, status: int, headers: Mapping[str, str | int], body: bytes = b"", head: bool = False) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": len(body), **headers}.items():
            self.send_header(k, str(v))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool, **extra: str) -> None:
        body = json.dumps({"error": message}).encode()
        hdrs = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message, **extra}
        self._send(status, hdrs, body, head)

    def _route(self, head: bool) -> None:
        hub, url = self.hub, urlsplit(self.path)
        with hub._lock:
            hub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        path, query = url.path, parse_qs(url.query)
        if path == "/api/agent-harnesses":
            return self._send(200, {"Content-Type": "application/json"}, b'{"standardEnvVars":[],"harnesses":{}}', head)
        if path.startswith("/_cdn/"):
            sha256, _, fname = path[len("/_cdn/"):].partition("/")
            entry = hub._blobs.get(sha256)
            if entry is None:
                return self._send(404, {"Content-Type": "text/plain"}, b"NoSuchKey", head)
            return self._file(entry, unquote(fname), head, {"ETag": f'"{sha256}"'})
        if m := _API.match(path):
            repo, kind, rev_raw, rest = m["repo"], m["kind"] or "revision", m["rev"] or "main", m["sub"] or ""
        elif "/resolve/" in path:
            repo, _, tail = path[1:].partition("/resolve/")
            kind, (rev_raw, _, rest) = "resolve", tail.partition("/")
        else:
            return self._error(404, "RepoNotFound", "Repository not found", head)
        auth = self.headers.get("Authorization")
        if not any(r == repo for r, _ in hub._revs):
            status, msg = (404, "Repository not found") if auth else (401, "Invalid username or password.")
            return self._error(status, "RepoNotFound", msg, head)
        rev_name, fname = unquote(rev_raw), unquote(rest)
        rev = hub._revs.get((repo, rev_name))
        if rev is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev_name}", head)
        if kind == "revision":
            body = json.dumps(hub.model_info(rev, blobs="true" in query.get("blobs", [])), default=str).encode()
            return self._send(200, {"Content-Type": "application/json"}, body, head)
        if kind == "tree":
            listing = hub.tree(rev, fname, "true" in query.get("recursive", []))
            if listing is None:
                return self._error(404, "EntryNotFound", f"{fname} does not exist on {rev_name}", head)
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), head)
        commit = {"X-Repo-Commit": rev.sha}
        if repo in hub.gated and not (hub.token and auth == f"Bearer {hub.token}"):
            msg = f"Access to model {repo} is restricted. You must have access to it and be authenticated."
            return self._error(403 if auth else 401, "GatedRepo", msg, head, **commit)
        entry = rev.files.get(fname)
        if entry is None:
            return self._error(404, "EntryNotFound", "Entry not found", head, **commit)
        if entry.sha256 is None:
            return self._file(entry, fname, head, {**commit, "ETag": f'"{entry.blob_id}"'})
        location = f"http://{hub.cdn_host}:{hub.port}/_cdn/{entry.sha256}/{quote(fname)}"
        body = f"Found. Redirecting to {location}".encode()
        hdrs: dict[str, str | int] = {**commit, "Location": location, "ETag": f'"{entry.blob_id}"',
                                      "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": entry.size,
                                      "Content-Type": "text/plain; charset=utf-8"}
        self._send(302, hdrs, body, head)

    def _file(self, entry: RepoFileEntry, fname: str, head: bool, headers: dict[str, str]) -> None:
        start, end, status = 0, entry.size - 1, 200
        hdrs: dict[str, str | int] = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                                      "Content-Disposition": f"inline; filename*=UTF-8''{quote(fname.split('/')[-1])}"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if rng:
            start, end = int(rng[1]), min(int(rng[2]) if rng[2] else entry.size - 1, entry.size - 1)
            if start >= entry.size or start > end:
                return self._send(416, {**hdrs, "Content-Range": f"bytes */{entry.size}"}, b"", head)
            status, hdrs["Content-Range"] = 206, f"bytes {start}-{end}/{entry.size}"
        length = end - start + 1
        self._send(status, {**hdrs, "Content-Length": length}, head=True)
        if head:
            return
        budget = self.hub._take_fault(fname)
        corrupt = self.hub.corrupt.get(fname, False)
        with entry.disk.open("rb") as fh:
            fh.seek(start)
            left = length if budget is None else min(budget, length)
            while left > 0:
                chunk = fh.read(min(left, 64 * 1024))
                if not chunk:
                    break
                self.wfile.write(chunk.translate(_FLIP) if corrupt else chunk)
                left -= len(chunk)
        self.close_connection = True
