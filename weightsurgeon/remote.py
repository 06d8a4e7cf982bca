"""Read a checkpoint straight from the Hugging Face Hub, by range: only the bytes a command needs.

huggingface_hub supplies what it owns: the endpoint (``HF_ENDPOINT``), the token (``HF_TOKEN``
or ``hf auth login``), the user agent, the download timeout (``HF_HUB_DOWNLOAD_TIMEOUT``),
offline mode, and `model_info`, which resolves the revision to a commit hash and lists
the files with their sizes and LFS sha256. Every byte request then names that commit, so
the model cannot change under a run. Tensor bytes travel through `HubFile`, a `ByteSource`
whose ranged GETs land straight in the caller's reused buffers (http.client's readinto: no
copy, no per-request allocation), and `Prefetch` keeps a bounded number of requests in
flight ahead of the reader, in the order the plan reads; the reader computes on (or writes
out) the fetched pieces in place (`lend`), so each byte is copied once, by the socket.

What a ranged read cannot check: the bytes against the file's sha256 (that needs the whole
file). What it checks: every size against the file list, the header and the index, and the
server's Content-Range against what was asked.
"""
from __future__ import annotations

import bisect
import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote, urljoin, urlsplit

from weightsurgeon.checkpoint import INDEX_NAME, SINGLE_NAME, Checkpoint, assemble_checkpoint, parse_json_file, validate_index, MAX_JSON_BYTES
from weightsurgeon.errors import SurgeonError
from weightsurgeon.format import header_from_bytes, header_length

HEAD_GUESS = 100_000  # first request for a header when no index names the shard's tensors (as HfApi does)
HEAD_PER_TENSOR = 96  # bytes a header spends per tensor beyond its name ("dtype", "shape", "data_offsets")
PIECE_BYTES = 8 * 1024 * 1024  # one prefetch request
WINDOW_BYTES = 64 * 1024 * 1024  # every prefetch buffer of a run together, whatever the number of remote inputs
IN_FLIGHT = 4  # prefetch requests in flight per remote input
# The diff's read buffers per side when an input is remote (they come on top of the window):
# with numba's runtime (~170 MiB) a remote diff stays under 300 MiB at any model size.
CHUNK_BYTES = 16 * 1024 * 1024
HEADER_WORKERS = 8  # shard headers fetched at once
RETRIES = 5  # attempts after a failure that made no progress, then one clear error line
BACKOFF_S = 0.25  # first wait between attempts; doubles, at most BACKOFF_MAX_S
BACKOFF_MAX_S = 4.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repository at the pinned commit, as the Hub's file list describes it."""

    name: str
    size: int | None
    sha256: str | None  # the LFS object id (sha256 of the whole file); None for files kept in git


class _Retry(Exception):
    """A failure worth another attempt (dropped connection, timeout, 5xx, 429)."""


# ---------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------

class HubRepo:
    """A Hub repository pinned to one commit: its file list, HTTP connections and byte counters."""

    def __init__(self, repo_id: str, revision: str | None, commit: str, files: dict[str, RemoteFile],
                 endpoint: str, headers: dict[str, str], timeout: float) -> None:
        self.repo_id, self.revision, self.commit = repo_id, revision, commit
        self.files = files
        self.endpoint = endpoint.rstrip("/")
        self.headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        self.timeout = timeout
        self.where = Path(f"{repo_id}@{commit[:12]}")  # names its files in messages: ORG/NAME@COMMIT/FILE
        self.label = f"hf://{repo_id}@{commit}"
        self.fetched = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._sources: dict[Path, HubFile] = {}
        self._raw: dict[str, bytes] = {}  # side files fetched whole (config.json ...), kept byte for byte

    # -- files ------------------------------------------------------------------------------
    def url(self, filename: str) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.commit}/{quote(filename)}"

    def source(self, path: Path) -> "HubFile":
        """The HubFile for a shard path of this repository (ORG/NAME@COMMIT/FILE)."""
        src = self._sources.get(path)
        if src is None:
            meta = self.files.get(path.name)
            if meta is None or path.parent != self.where:
                # internal: paths come from this repository's own file list, checked at open (_open)
                raise SurgeonError(f"internal: {path} is not a file of {self.label}")
            src = self._sources[path] = HubFile(self, path, meta)
        return src

    def fetch(self, filename: str, limit: int = MAX_JSON_BYTES) -> bytes | None:
        """A whole small file (config, index, tokenizer), or None if the repository has none of that name."""
        if filename in self._raw:
            return self._raw[filename]
        meta = self.files.get(filename)
        if meta is None:
            return None
        if meta.size is not None and meta.size > limit:
            raise SurgeonError(f"{self.where / filename}: the Hub lists {meta.size} bytes, more than the {limit} this "
                               "file may have: the repository does not hold a model in safetensors")
        size = meta.size if meta.size is not None else limit
        buf = bytearray(size)
        got = self.read_range(filename, 0, memoryview(buf), whole_ok=True) if size else 0
        self._raw[filename] = data = bytes(buf[:got])
        return data

    # -- HTTP ------------------------------------------------------------------------------
    def _connection(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, dict[str, str] | None]:
        """This thread's connection to `netloc`, and None, or, through a plain-HTTP proxy, the
        headers that proxy needs (the request then names the absolute URL)."""
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        entry = conns.get((scheme, netloc))
        if entry is None:
            proxy = proxy_for(scheme, netloc)
            via: dict[str, str] | None = None
            if proxy is None:
                cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
                conn = cls(netloc, timeout=self.timeout)
            elif scheme == "https":  # a tunnel (CONNECT) through the proxy, TLS to the host itself
                conn = http.client.HTTPSConnection(proxy[0], timeout=self.timeout)
                conn.set_tunnel(netloc, headers=proxy[1])
            else:
                conn, via = http.client.HTTPConnection(proxy[0], timeout=self.timeout), proxy[1]
            entry = conns[(scheme, netloc)] = (conn, via)
            with self._lock:
                self._connections.append(conn)
        return entry

    def _drop(self, scheme: str, netloc: str) -> None:
        entry = getattr(self._local, "conns", {}).pop((scheme, netloc), None)
        if entry is not None:
            entry[0].close()

    def _get(self, url: str, first: int, last: int | None) -> tuple[http.client.HTTPResponse, tuple[str, str]]:
        """GET `url` for bytes first..last (inclusive; None: to the end), following redirects.

        Returns the response and the (scheme, host) of the connection that answered.
        """
        origin = urlsplit(self.endpoint).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            headers = dict(self.headers)
            if parts.netloc != origin:  # a CDN: the token is for the Hub only
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn, via = self._connection(parts.scheme, parts.netloc)
            if via is not None:  # a plain-HTTP proxy takes the absolute URL (http.client sends Host from it)
                target = f"{parts.scheme}://{parts.netloc}{target}"
                headers.update(via)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self._drop(parts.scheme, parts.netloc)
                raise _Retry(f"{type(e).__name__}: {e}") from e
            with self._lock:
                self.requests += 1
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                resp.read(64 * 1024)
                if resp.will_close or not resp.isclosed():
                    self._drop(parts.scheme, parts.netloc)
                if not location:
                    raise SurgeonError(f"{parts.netloc}: redirect (HTTP {resp.status}) without a Location for "
                                       f"{self.repo_id}; the server is broken: check HF_ENDPOINT and any proxy")
                url = urljoin(url, location)
                continue
            return resp, (parts.scheme, parts.netloc)
        raise SurgeonError(f"{self.repo_id}: more than {MAX_REDIRECTS} redirects for {url}; the server redirects "
                           "in a loop: check HF_ENDPOINT and any proxy")

    def read_range(self, filename: str, pos: int, view: memoryview, whole_ok: bool = False) -> int:
        """Fill `view` with the file's bytes from `pos`, resuming a dropped transfer where it stopped.

        Returns the bytes read (fewer only at the end of the file). A server that answers a
        ranged request with the whole file (200) is refused before its body is read, unless
        `whole_ok` and the read starts at 0 (a small side file). After RETRIES attempts in a
        row that made no progress, one clear SurgeonError.
        """
        url = self.url(filename)
        shown = self.where / filename
        done = failures = 0
        while done < len(view):
            first, last = pos + done, pos + len(view) - 1
            key: tuple[str, str] | None = None
            try:
                resp, key = self._get(url, first, last)
                got = self._receive(resp, key[1], shown, first, last, view[done:], whole_ok and first == 0)
                if resp.will_close or not resp.isclosed():
                    self._drop(*key)
                if got is None:  # end of file
                    break
                done += got
                failures = 0
            except _Retry as e:
                if key is not None:
                    self._drop(*key)
                failures += 1
                if failures > RETRIES:
                    raise SurgeonError(f"{shown}: reading bytes {first}-{last} failed {failures} times in a row "
                                       f"({e}); giving up (a dropped connection resumes where it stopped, up to "
                                       f"{RETRIES} retries): check the network and run again") from None
                time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1)))
        return done

    def _receive(self, resp: http.client.HTTPResponse, host: str, shown: Path, first: int, last: int,
                 view: memoryview, whole_ok: bool) -> int | None:
        status = resp.status
        if status in (401, 403):
            raise SurgeonError(f"{self.repo_id}: access denied (HTTP {status}) to {shown.name}: the repository is gated "
                               "or private; log in with `hf auth login` (or set HF_TOKEN) with an account that has "
                               "accepted the model's licence on its Hub page")
        if status == 404:
            raise SurgeonError(f"{self.repo_id}: {shown.name} not found at commit {self.commit} (HTTP 404), though the "
                               "file list names it; run again, or check HF_ENDPOINT")
        if status == 416:
            resp.close()
            size = self.files[shown.name].size
            if size is not None and first >= size:
                return None  # asked from the end of the file: nothing there
            raise SurgeonError(f"{shown}: bytes {first}-{last} are past the end of the file on the Hub (HTTP 416): "
                               "the file is shorter than its header says: its upload is incomplete or damaged")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}")
        if status == 200 and not whole_ok:
            resp.close()  # never read the body: it is the whole file
            raise SurgeonError(f"{host}: the server ignored the Range request for {shown} and started sending the "
                               "whole file (HTTP 200); refused, nothing more is read: check HF_ENDPOINT and any proxy")
        if status == 206:
            start, end, total = _content_range(resp.getheader("Content-Range"))
            size = self.files[shown.name].size
            if start != first or end > last or (size is not None and total is not None and total != size):
                resp.close()
                raise SurgeonError(f"{host}: answered bytes {start}-{end}/{total} of {shown} for a request of "
                                   f"{first}-{last} (file size {size}): the file changed or the server is broken; "
                                   "run again, and check HF_ENDPOINT and any proxy")
            want = end - start + 1
        elif status == 200:
            want = min(len(view), int(resp.getheader("Content-Length") or len(view)))
        else:
            raise SurgeonError(f"{host}: unexpected HTTP {status} for {shown}; check HF_ENDPOINT and any proxy")
        got = 0
        try:
            while got < want:
                n = resp.readinto(view[got:want])
                if not n:
                    break
                got += n
        except (OSError, http.client.HTTPException):
            pass  # counted below; the caller resumes from here
        finally:
            with self._lock:
                self.fetched += got
        if got < want:
            resp.close()
            if got:
                return got  # resumed from here by the caller
            raise _Retry("connection dropped before any data")
        if status == 200:  # a side file read whole: what is left is not ours
            resp.close()
            return got if got else None
        return got

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            conn.close()


def proxy_for(scheme: str, netloc: str) -> tuple[str, dict[str, str]] | None:
    """The proxy the environment names for this URL: (host:port, the headers it needs), or None.

    The variables huggingface_hub's own HTTP client honours for the API calls (HTTPS_PROXY,
    HTTP_PROXY, ALL_PROXY, NO_PROXY, either case), read by the standard library's rules, so
    the tensor bytes take the same way as the file list. Only http:// proxies are spoken to
    (https:// targets through them by CONNECT); other kinds are one error line.
    """
    import base64
    import urllib.request
    from urllib.parse import unquote

    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    host = urlsplit(f"//{netloc}").hostname or netloc
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise SurgeonError(f"the proxy {parts.scheme}://{parts.hostname or ''} (from the {scheme.upper()}_PROXY or "
                           "ALL_PROXY environment variable) is not an http:// proxy, the only kind spoken to for "
                           "tensor bytes")
    headers = {}
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(auth).decode()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 80}", headers


def _content_range(value: str | None) -> tuple[int, int, int | None]:
    """'bytes 0-99/1234' -> (0, 99, 1234); total None for '*'."""
    try:
        unit, spec = (value or "").split(" ", 1)
        span, total = spec.split("/", 1)
        start, end = span.split("-", 1)
        if unit.strip() != "bytes":
            raise ValueError(unit)
        return int(start), int(end), None if total.strip() == "*" else int(total)
    except ValueError:
        raise SurgeonError(f"the server sent an unreadable Content-Range {str(value)[:60]!r}; it is not answering "
                           "as the Hub does: check HF_ENDPOINT and any proxy") from None


# ---------------------------------------------------------------------------------------
# One remote file
# ---------------------------------------------------------------------------------------

class HubFile:
    """A ByteSource over one file of a pinned Hub repository: ranged reads, served ahead by a Prefetch."""

    def __init__(self, repo: HubRepo, path: Path, meta: RemoteFile) -> None:
        self.repo, self.path, self.meta = repo, path, meta
        self.name = str(path)
        self.size = meta.size or 0
        self.head = b""  # the header bytes, kept: the layout digest and header reads need no second fetch
        self.prefetch: Prefetch | None = None

    def fileno(self) -> None:
        return None

    def read_into(self, pos: int, view: memoryview) -> int:
        if pos + len(view) <= len(self.head):
            view[:] = self.head[pos:pos + len(view)]
            return len(view)
        if self.prefetch is not None:
            return self.prefetch.serve(self, pos, view)
        return self.direct(pos, view)

    def lendable(self, pos: int, align: int = 1) -> tuple[int, bool]:
        return (0, False) if self.prefetch is None else self.prefetch.lendable(self, pos, align)

    def lend(self, pos: int, nbytes: int) -> memoryview:
        return self.prefetch.lend(self, pos, nbytes)

    def give_back(self, pos: int, nbytes: int) -> None:
        self.prefetch.give_back(self, pos, nbytes)

    def direct(self, pos: int, view: memoryview) -> int:
        return self.repo.read_range(self.path.name, pos, view)

    def load_header(self, guess: int) -> Any:
        """Fetch and validate the header: one ranged request of `guess` bytes, a second only if it is longer."""
        first = bytearray(max(8, min(guess, self.size)))
        got = self.direct(0, memoryview(first))
        length = header_length(self.name, bytes(first[:got]), self.size)
        head = bytes(first[:min(got, 8 + length)])
        if len(head) < 8 + length:
            rest = bytearray(8 + length - len(head))
            more = self.direct(len(head), memoryview(rest))
            head += bytes(rest[:more])
        self.head = head
        return header_from_bytes(self.path, head, self.size)

    def close(self) -> None:
        pass  # connections belong to the repository


# ---------------------------------------------------------------------------------------
# Reading ahead of the plan
# ---------------------------------------------------------------------------------------

class _Piece:
    __slots__ = ("file", "begin", "end", "state", "buf", "error", "consumed", "ready")

    def __init__(self, file: HubFile, begin: int, end: int) -> None:
        self.file, self.begin, self.end = file, begin, end
        self.state = "pending"  # -> fetching -> done | failed; claimed (the reader took it); released
        self.buf: bytearray | None = None
        self.error: BaseException | None = None
        self.consumed = 0
        self.ready = threading.Event()


def coalesce(ranges: Iterable[tuple[Any, int, int]], piece: int | None = None) -> list[tuple[Any, int, int]]:
    """Byte ranges (file, begin, end) in reading order -> requests: neighbours merged, cut into pieces.

    Only ranges that touch merge (no gap bytes are fetched), so a selection costs its own
    bytes and nothing in between.
    """
    merged: list[list] = []
    for f, begin, end in ranges:
        if end <= begin:
            continue
        if merged and merged[-1][0] is f and merged[-1][2] == begin:
            merged[-1][2] = end
        else:
            merged.append([f, begin, end])
    out = []
    piece = piece or PIECE_BYTES
    for f, begin, end in merged:
        for start in range(begin, end, piece):
            out.append((f, start, min(end, start + piece)))
    return out


class Prefetch:
    """Fetches a remote input's planned ranges ahead of its reader: `in_flight` requests, `window` bytes at most.

    The reader (HubFile.read_into -> serve) takes each piece's bytes as it passes; a piece
    it reaches before a worker has started it is claimed and read directly into the
    reader's own buffer, so the reader never waits on a piece that is not in flight and
    the window can never deadlock. A fully read piece's buffer goes back to the pool.
    """

    def __init__(self, ranges: list[tuple[HubFile, int, int]], window: int, in_flight: int = IN_FLIGHT) -> None:
        self.pieces = [_Piece(f, b, e) for f, b, e in coalesce(ranges)]
        self.index: dict[HubFile, tuple[list[int], list[_Piece]]] = {}
        for p in sorted(self.pieces, key=lambda p: p.begin):
            starts, items = self.index.setdefault(p.file, ([], []))
            starts.append(p.begin)
            items.append(p)
        self.slots = threading.Semaphore(max(1, window // PIECE_BYTES))
        self.pool: list[bytearray] = []
        self.lock = threading.Lock()
        self.next = 0
        self.stopped = False
        self.threads = [threading.Thread(target=self._work, name=f"surgeon-fetch-{i}", daemon=True)
                        for i in range(max(1, min(in_flight, len(self.pieces))))]
        for f in self.index:
            f.prefetch = self
        for t in self.threads:
            t.start()

    def _take(self) -> _Piece | None:
        with self.lock:
            while self.next < len(self.pieces):
                p = self.pieces[self.next]
                self.next += 1
                if p.state == "pending":
                    p.state = "fetching"
                    p.buf = self.pool.pop() if self.pool else None
                    return p
            return None

    def _work(self) -> None:
        while not self.stopped:
            while not self.slots.acquire(timeout=0.2):
                if self.stopped:
                    return
            p = self._take()
            if p is None or self.stopped:
                self.slots.release()
                return
            try:
                if p.buf is None:
                    p.buf = bytearray(PIECE_BYTES)
                got = p.file.direct(p.begin, memoryview(p.buf)[:p.end - p.begin])
                if got != p.end - p.begin:
                    # internal: pieces lie inside the size the header was checked against; a short answer raises in read_range
                    raise SurgeonError(f"{p.file.name}: the file ends at byte {p.begin + got}, before its header says")
                p.state = "done"
            except BaseException as e:  # handed to the reader, who raises it in its own thread
                p.error, p.state = e, "failed"
            p.ready.set()

    def _find(self, f: HubFile, pos: int) -> _Piece | None:
        entry = self.index.get(f)
        if entry is None:
            return None
        starts, items = entry
        i = bisect.bisect_right(starts, pos) - 1
        if i >= 0 and items[i].begin <= pos < items[i].end:
            return items[i]
        return None

    def _next_start(self, f: HubFile, pos: int) -> int | None:
        entry = self.index.get(f)
        if entry is None:
            return None
        starts = entry[0]
        i = bisect.bisect_right(starts, pos)
        return starts[i] if i < len(starts) else None

    def serve(self, f: HubFile, pos: int, view: memoryview) -> int:
        """Fill `view` from prefetched pieces where they are, reading directly where they are not."""
        done = 0
        while done < len(view):
            at = pos + done
            p = self._find(f, at)
            with self.lock:
                claimed = p is not None and p.state == "pending"
                if claimed:
                    p.state = "claimed"
                usable = p is not None and p.state in ("fetching", "done", "failed")
            if not usable:  # not planned, read already, or claimed now: read it directly
                stop = pos + len(view)
                nxt = self._next_start(f, at)
                if p is not None:
                    stop = min(stop, p.end)
                elif nxt is not None:
                    stop = min(stop, nxt)
                got = f.direct(at, view[done:done + stop - at])
                done += got
                if got < stop - at:
                    break
                continue
            n = min(p.end, pos + len(view)) - at
            view[done:done + n] = self._arrived(p)[at - p.begin:at - p.begin + n]
            done += n
            self._consume(p, n)
        return done

    def _arrived(self, p: _Piece) -> memoryview:
        """The piece's buffer once its bytes are in (its worker's error raised here, in the reader's thread)."""
        p.ready.wait()
        if p.error is not None:
            raise p.error
        return memoryview(p.buf)

    def _consume(self, p: _Piece, n: int) -> None:
        """n more of the piece's bytes were read: once all were, its buffer goes back to the pool."""
        with self.lock:
            p.consumed += n
            if p.consumed >= p.end - p.begin and p.state == "done":
                p.state = "released"
                self.pool.append(p.buf)
                p.buf = None
                self.slots.release()

    def lendable(self, f: HubFile, pos: int, align: int) -> tuple[int, bool]:
        """(bytes from `pos` to the end of its piece, whether they can be lent): they can if a
        worker fetched or is fetching the piece and `pos` lies `align`-aligned in its buffer
        (a piece nobody started is read by serve directly into the reader's own buffer, also
        without a second copy)."""
        p = self._find(f, pos)
        if p is None:
            return 0, False
        with self.lock:
            return p.end - pos, p.state in ("fetching", "done", "failed") and (pos - p.begin) % align == 0

    def lend(self, f: HubFile, pos: int, nbytes: int) -> memoryview:
        """The bytes [pos, pos + nbytes) inside the fetch buffer (after lendable said so); waits for them."""
        p = self._find(f, pos)
        if p is None or pos + nbytes > p.end:
            raise ValueError(f"internal: {f.name} bytes {pos}+{nbytes} are not in one fetched piece")
        return self._arrived(p)[pos - p.begin:pos - p.begin + nbytes]

    def give_back(self, f: HubFile, pos: int, nbytes: int) -> None:
        p = self._find(f, pos)
        if p is not None:
            self._consume(p, nbytes)

    def stop(self) -> None:
        self.stopped = True
        for t in self.threads:
            t.join(timeout=5)
        for f in self.index:
            if f.prefetch is self:
                f.prefetch = None
        self.pool.clear()
        for p in self.pieces:
            p.buf = None


class prefetching:
    """Context manager: prefetch every remote range a run will read, in its order.

    `reads` are (checkpoint, TensorInfo-like file path, begin, end) in reading order; local
    checkpoints are skipped. The window is shared: WINDOW_BYTES over all remote inputs.
    """

    def __init__(self, reads: Iterable[tuple[Checkpoint, Path, int, int]]) -> None:
        by_ckpt: dict[int, tuple[Checkpoint, list]] = {}
        for ckpt, path, begin, end in reads:
            if ckpt.is_remote:
                by_ckpt.setdefault(id(ckpt), (ckpt, []))[1].append((ckpt.byte_source(path), begin, end))
        self.groups = list(by_ckpt.values())
        self.active: list[Prefetch] = []

    def __enter__(self) -> "prefetching":
        if self.groups:
            window = max(PIECE_BYTES, WINDOW_BYTES // len(self.groups))
            self.active = [Prefetch(ranges, window) for _, ranges in self.groups]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.active:
            p.stop()
        self.active = []


# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------

def _hub_settings(repo_id: str) -> tuple[str, dict[str, str], float]:
    """(endpoint, request headers with token and user agent, timeout) from huggingface_hub's own settings."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    if constants.HF_HUB_OFFLINE:
        raise SurgeonError(f"{repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set: download it "
                           f"first with `hf download {repo_id}`, or unset HF_HUB_OFFLINE to read it from the Hub")
    headers = build_hf_headers(library_name="weightsurgeon", library_version=_version())
    return constants.ENDPOINT, headers, float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _version() -> str:
    from weightsurgeon._version import __version__

    return __version__


def resolve(repo_id: str, revision: str | None) -> HubRepo:
    """Pin `revision` (default: the main branch) to its commit and list the files, with one Hub API call."""
    endpoint, headers, timeout = _hub_settings(repo_id)
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    shown = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        info = HfApi(endpoint=endpoint, library_name="weightsurgeon", library_version=_version()).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=timeout)
    except hub_errors.GatedRepoError as e:
        raise SurgeonError(f"{repo_id}: gated repository ({_status(e)}): accept its licence on the Hub page, then "
                           "log in with `hf auth login` (or set HF_TOKEN)") from None
    except hub_errors.RevisionNotFoundError as e:
        raise SurgeonError(f"{repo_id}: revision {revision!r} not found ({_status(e)}); give a branch, tag or commit "
                           "the repository has") from None
    except hub_errors.RepositoryNotFoundError as e:
        raise SurgeonError(f"{repo_id}: repository not found on {endpoint}, or private ({_status(e)}): check the id, "
                           "or log in with `hf auth login` (or set HF_TOKEN)") from None
    except hub_errors.HfHubHTTPError as e:
        raise SurgeonError(f"{shown}: the Hub answered {_status(e)} listing the repository; try again later, or "
                           "check HF_ENDPOINT") from None
    except hub_errors.HFValidationError as e:
        raise SurgeonError(f"{shown}: not a valid Hub id ({str(e)[:120]}); give ORG/NAME, or a folder that "
                           "exists") from None
    except Exception as e:  # connection refused, DNS, timeouts: whatever the HTTP library raises
        raise SurgeonError(f"{shown}: cannot reach {endpoint} ({type(e).__name__}: {str(e)[:160]}); check the network, "
                           "HF_ENDPOINT and any proxy settings") from None
    commit = getattr(info, "sha", None)
    if not commit:
        raise SurgeonError(f"{shown}: the Hub's model info names no commit for this revision, so the files cannot be "
                           "pinned; check HF_ENDPOINT (a mirror that answers otherwise than the Hub?)")
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        files[s.rfilename] = RemoteFile(s.rfilename, s.size, sha)
    return HubRepo(repo_id, revision, commit, files, endpoint, headers, timeout)


def _status(error: Exception) -> str:
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code else type(error).__name__


def _header_guess(index: dict | None, shard: str) -> int:
    """Bytes the first request for a shard's header asks for: from the index's tensor names, else HEAD_GUESS."""
    if index is None:
        return HEAD_GUESS
    names = [t for t, f in index["weight_map"].items() if f == shard]
    return 8 + 512 + sum(len(n.encode()) + HEAD_PER_TENSOR for n in names)


def open_remote(text: str, repo_id: str, revision: str | None) -> Checkpoint:
    """Open a checkpoint on the Hub from its config, index and shard headers only (tens of kB per shard)."""
    repo = resolve(repo_id, revision)
    try:
        return _open(text, repo)
    except BaseException:
        repo.close()
        raise


def _open(text: str, repo: HubRepo) -> Checkpoint:
    where = repo.where
    names = set(repo.files)
    index = None
    if INDEX_NAME in names:
        index = parse_json_file(where / INDEX_NAME, repo.fetch(INDEX_NAME) or b"")
        shards = validate_index(where / INDEX_NAME, index)
        for s in shards:
            if s not in names:
                raise SurgeonError(f"{where / INDEX_NAME}: names shard {s!r}, which the repository does not have: "
                                   "its upload is incomplete; choose another revision")
    elif SINGLE_NAME in names:
        shards = [SINGLE_NAME]
    else:
        shards = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n and n != "adapter_model.safetensors")
        if not shards:
            pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")) and "/" not in n)
            hint = f" (only {pickles[0]} ...: pickle checkpoints are never opened)" if pickles else ""
            raise SurgeonError(f"{repo.label}: no .safetensors files at the top of the repository{hint}; choose a "
                               "repository (or revision) with safetensors weights")
    files = [repo.source(where / s) for s in shards]
    for f in files:
        if f.meta.size is None:
            raise SurgeonError(f"{f.name}: the Hub's file list gives no size, so its header cannot be checked; "
                               "check HF_ENDPOINT (a mirror that answers otherwise than the Hub?)")
    with ThreadPoolExecutor(max_workers=min(HEADER_WORKERS, len(files))) as pool:
        headers = list(pool.map(lambda f: f.load_header(_header_guess(index, f.path.name)), files))
    config = parse_json_file(where / "config.json", repo.fetch("config.json")) if "config.json" in names else None
    surgeon = parse_json_file(where / "surgeon.json", repo.fetch("surgeon.json")) if "surgeon.json" in names else None
    return assemble_checkpoint(text, where, headers, index, config, surgeon, repo)


def side_files(ckpt: Checkpoint) -> Iterator[str]:
    """Names of the files at the top of a remote checkpoint's repository."""
    return iter(n for n in ckpt.remote.files if "/" not in n)
