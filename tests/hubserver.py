"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for tests and tools/bench_remote.py.

It serves the endpoints weightsurgeon uses, the way the Hub answers them:

- ``GET /api/models/ORG/NAME[/revision/REV]?blobs=True``: the model info (``sha`` = the
  commit, ``siblings`` with ``size`` and, for .safetensors files, ``lfs.sha256``);
- ``GET /ORG/NAME/resolve/REV/FILE``: the file, with ``Range`` (206 + Content-Range), ETag;
  LFS files (.safetensors) answer with a 302 to ``http://localhost:PORT/cdn/...`` (another
  host name), as the Hub redirects to its CDN, which serves the range;
- 401 (no or wrong token when one is required, with X-Error-Code RepoNotFound), 403
  (gated), 404 (unknown repository, revision or file).

It counts the body bytes it sends per kind of request, logs each request, and can be
told to misbehave (`faults`): cut a connection after N bytes, ignore Range, answer a
status, wait before answering, give a wrong size or none in the file list or no commit,
redirect in a loop or without a Location, or send a Content-Range of its choosing. `rate` (bytes/s, None: unlimited) paces the file bytes of
all connections together, one link shared by every request in flight (tools/bench_remote.py
--rate: curl with one connection and the diff with several then see the same link). It serves
from threads that stop with `close()`, or by themselves after `lifetime` seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_PACED_PIECE = 1 << 20  # bytes booked on a paced link at a time: 1 ms at 1000 MB/s


@dataclass
class Repo:
    folder: Path
    commit: str
    branches: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    sha: dict[str, str] = field(default_factory=dict)  # file -> sha256, computed once


@dataclass
class Faults:
    cut_after: int | None = None  # close the connection after this many body bytes of a ranged response ...
    cut_times: int = 1  # ... this many times
    ignore_range: bool = False  # answer ranged requests with 200 and the whole file
    status: dict[str, int] = field(default_factory=dict)  # file name -> status to answer on resolve
    data_status: dict[str, int] = field(default_factory=dict)  # ... on reads past the header (start > 0) only
    delay_s: float = 0.0  # wait before answering resolve/cdn requests
    require_token: str | None = None  # every request needs "Authorization: Bearer <token>"
    info_status: int | None = None  # answer the model info (the file list) with this status
    info_no_sha: bool = False  # the model info names no commit
    sizes: dict[str, int | None] = field(default_factory=dict)  # file name -> size the file list gives (None: none)
    redirect_loop: bool = False  # LFS files redirect to their own resolve URL, forever
    redirect_no_location: bool = False  # LFS files answer 302 with no Location
    content_range: str | None = None  # the Content-Range header of every ranged answer, as given


class _Loopback:
    """An HTTP server on 127.0.0.1 serving from threads, for `with`; it stops by itself after `lifetime` s."""

    def _serve(self, handler: type, lifetime: float) -> None:
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.timer = threading.Timer(lifetime, self.close)
        self.timer.daemon = True

    def __enter__(self):
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


class HubServer(_Loopback):
    """``with HubServer() as hub: hub.add("org/model", folder); env HF_ENDPOINT=hub.url``."""

    def __init__(self, lifetime: float = 300.0, rate: float | None = None) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.rate = rate  # bytes/s for all file bodies together; None: as fast as sendfile goes
        self._link_free = 0.0  # monotonic time at which the paced link has sent what was booked
        self.sent: dict[str, int] = {"api": 0, "resolve": 0, "cdn": 0}
        self.log: list[dict] = []
        server = self

        class Handler(_Handler):
            hub = server

        self._serve(Handler, lifetime)

    def add(self, repo_id: str, folder: Path, commit: str | None = None, gated: bool = False) -> str:
        commit = commit or hashlib.sha1(f"{repo_id}:{folder}".encode()).hexdigest()
        self.repos[repo_id] = Repo(Path(folder), commit, {"main": commit}, gated)
        return commit

    @property
    def data_bytes(self) -> int:
        """Body bytes sent for files (resolve + CDN), not for the API."""
        return self.sent["resolve"] + self.sent["cdn"]

    def reset(self) -> None:
        with self.lock:
            self.sent = {k: 0 for k in self.sent}
            self.log.clear()

    def pace(self, n: int) -> None:
        """Wait for this piece's turn on the shared link: each piece of `n` bytes books n / rate
        seconds after the pieces booked before it, by any connection (a total, not a per-connection, limit)."""
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._link_free)
            self._link_free = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _error(self, status: int, code: str | None = None) -> None:
        body = json.dumps({"error": f"HTTP {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        self.wfile.write(body)

    def _count(self, kind: str, n: int) -> None:
        with self.hub.lock:
            self.hub.sent[kind] += n

    def _repo(self, repo_id: str, rev: str | None) -> tuple[Repo | None, str | None]:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return None, None
        rev = rev or "main"
        commit = repo.branches.get(rev, rev if rev == repo.commit else None)
        return repo, commit

    def _sha(self, repo: Repo, name: str) -> str:
        if name not in repo.sha:
            h = hashlib.sha256()
            with open(repo.folder / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            repo.sha[name] = h.hexdigest()
        return repo.sha[name]

    # -- endpoints -------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with self.hub.lock:
            self.hub.log.append({"path": path, "range": self.headers.get("Range"),
                                 "authorization": self.headers.get("Authorization"),
                                 "user_agent": self.headers.get("User-Agent")})
        token = self.hub.faults.require_token
        if token and self.headers.get("Authorization") != f"Bearer {token}" and not path.startswith("/cdn/"):
            return self._error(401, "RepoNotFound")
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
        if m:
            return self._info(m.group(1), m.group(2))
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(m.group(1), m.group(2), m.group(3))
        m = re.match(r"^/cdn/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$", path)
        if m:
            repo, commit = self._repo(m.group(1), m.group(2))
            if repo is None or commit is None or not (repo.folder / m.group(3)).is_file():
                return self._error(404)
            return self._send_file(repo.folder / m.group(3), "cdn", self._sha(repo, m.group(3)))
        return self._error(404)

    def _info(self, repo_id: str, rev: str | None) -> None:
        repo, commit = self._repo(repo_id, rev)
        if repo is None:
            return self._error(401, "RepoNotFound")  # as the Hub: unknown and private look alike
        if self.hub.faults.info_status:
            return self._error(self.hub.faults.info_status)
        if commit is None:
            return self._error(404, "RevisionNotFound")
        if repo.gated and not self.headers.get("Authorization"):
            return self._error(403, "GatedRepo")
        siblings = []
        for p in sorted(repo.folder.iterdir()):
            if p.is_file():
                size = self.hub.faults.sizes.get(p.name, p.stat().st_size)
                entry = {"rfilename": p.name, "size": size, "blobId": hashlib.sha1(p.name.encode()).hexdigest()}
                if p.suffix == ".safetensors":
                    entry["lfs"] = {"sha256": self._sha(repo, p.name), "size": p.stat().st_size, "pointerSize": 134}
                siblings.append(entry)
        info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                "gated": "manual" if repo.gated else False, "siblings": siblings}
        if self.hub.faults.info_no_sha:
            del info["sha"]
        body = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._count("api", len(body))

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        faults = self.hub.faults
        if faults.delay_s:
            time.sleep(faults.delay_s)
        repo, commit = self._repo(repo_id, rev)
        if repo is None:
            return self._error(401, "RepoNotFound")
        if commit is None:
            return self._error(404, "RevisionNotFound")
        if name in faults.status:
            return self._error(faults.status[name], "GatedRepo" if faults.status[name] == 403 else "EntryNotFound")
        if repo.gated and not self.headers.get("Authorization"):
            return self._error(403, "GatedRepo")
        file = repo.folder / name
        if not file.is_file():
            return self._error(404, "EntryNotFound")
        if file.suffix == ".safetensors":  # LFS: the Hub redirects to its CDN
            self.send_response(302)
            # another host name for the same server, as the Hub's CDN is another host (no token goes there)
            port = self.hub.httpd.server_address[1]
            if faults.redirect_loop:
                self.send_header("Location", self.path)
            elif not faults.redirect_no_location:
                self.send_header("Location", f"http://localhost:{port}/cdn/{repo_id}/{commit}/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(file, "resolve", f"{commit}:{name}")

    def _send_file(self, file: Path, kind: str, etag: str) -> None:
        faults = self.hub.faults
        if kind == "cdn" and faults.delay_s:
            time.sleep(faults.delay_s)
        size = file.stat().st_size
        header = self.headers.get("Range")
        m = _RANGE.match(header or "")
        if header and not m:
            return self._error(416)
        start, end = 0, size - 1
        partial = m is not None and not faults.ignore_range
        if partial:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if start > 0 and file.name in faults.data_status:
            return self._error(faults.data_status[file.name], "EntryNotFound")
        length = end - start + 1
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", faults.content_range or f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.wfile.flush()
        limit = length
        with self.hub.lock:
            if partial and faults.cut_after is not None and faults.cut_times > 0 and length > faults.cut_after:
                faults.cut_times -= 1
                limit = faults.cut_after
        sent = 0
        try:
            with open(file, "rb") as f:
                while sent < limit:
                    piece = min(limit - sent, _PACED_PIECE if self.hub.rate else 1 << 22)
                    self.hub.pace(piece)
                    n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, piece)
                    if n == 0:
                        break
                    sent += n
        except OSError:  # the client went away (as it must when we ignore Range)
            self.close_connection = True
        finally:
            self._count(kind, sent)
        if sent < length:
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass


class ForwardProxy(_Loopback):
    """A plain-HTTP forward proxy on 127.0.0.1 (``HTTP_PROXY=proxy.url``): it takes absolute-URL
    GETs, fetches them from the named host, streams the answer back, and logs each request."""

    def __init__(self, lifetime: float = 300.0) -> None:
        self.log: list[dict] = []
        self.sent = 0
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._serve(Handler, lifetime)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: ForwardProxy
    protocol_version = "HTTP/1.1"
    _PASS = ("Content-Type", "Content-Length", "Content-Range", "Location", "ETag", "Accept-Ranges", "X-Error-Code")

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        import http.client

        parts = urlsplit(self.path)
        with self.owner.lock:
            self.owner.log.append({"url": self.path, "range": self.headers.get("Range"),
                                   "proxy_authorization": self.headers.get("Proxy-Authorization")})
        if parts.scheme != "http" or not parts.netloc:
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-") and k.lower() != "connection"}
        upstream = http.client.HTTPConnection(parts.netloc, timeout=30)
        try:
            upstream.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
            resp = upstream.getresponse()
            self.send_response(resp.status)
            for key in self._PASS:
                if resp.getheader(key) is not None:
                    self.send_header(key, resp.getheader(key))
            self.end_headers()
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                self.wfile.write(block)
                with self.owner.lock:
                    self.owner.sent += len(block)
        except OSError:
            self.close_connection = True
        finally:
            upstream.close()
