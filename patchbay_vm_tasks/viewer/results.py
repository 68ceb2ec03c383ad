"""The results server for teams (`sim.serve --accept-push` / `--data-dir`): patchbay-serve's
push API over `store`, the runs page, and each stored run in the same viewer as a work dir.

    POST /api/push/{project}     a tar.gz of a run folder or a testdir holding run.json;
                                 Authorization: Bearer KEY, Content-Type: application/gzip
    GET  /  and  /runs           the runs page: by project, branch and PR, newest first
                                 (`/runs#PATH` opens the run PATH a push answered with)
    GET  /api/results            the stored runs as JSON (?project=P&limit=N)
    GET  /api/results/{P}/{R}    one run with its comparison against its base branch
    GET  /runs/{P}/{R}/...       the viewer over that run (page and /api/... as always)

Refusals are JSON `{"error": ...}`: 401 without the right key (compared in constant time,
never logged), 400 for a broken archive or a bad project name, 411 without a length, 413
past a size or member limit, 415 for another content type, 408 for a body that does not
arrive in time, 503 when pushes are queued too long, 507 when the disk is full; 405 for a
push to a server started without --accept-push. A refusal that can be made from the
headers is made before the body is read (with `Expect: 100-continue`, before it is sent).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import archive, pushed, store
from .api import PAGE_HEADERS, Api, Response, static_file
from .runs import RunInfo

# Pushes unpacked at once; more wait (up to PUSH_QUEUE_S) for a turn.
MAX_PUSHES = 8
PUSH_QUEUE_S = 120.0
# The whole body must have arrived by then (each read also has the server's timeout).
BODY_DEADLINE_S = 300.0
# What is read and thrown away of a refused body so that the client sees the answer.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_S = 2.0
GZIP_TYPES = {
    "application/gzip",
    "application/x-gzip",
    "application/x-tar+gzip",
    "application/octet-stream",
}
RESULTS_STATIC = {
    "results.js": "text/javascript; charset=utf-8",
    "results.css": "text/css; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
DEFAULT_LIMIT = 1000
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _json(data: Any, status: int = 200, **headers: str) -> Response:
    return Response(status, "application/json", json.dumps(data).encode(), headers=dict(headers))


def _error(status: int, message: str, **headers: str) -> Response:
    return _json({"error": message}, status, **headers)


class _ClientGone(Exception):
    """The client stopped sending (closed, or a read timed out)."""


class StoredRunApi(Api):
    """The viewer's API over one stored run, as over a work dir; its labs are found as
    deep as a testdir's, and listed from the store's cache (a stored run never changes)."""

    def __init__(self, results: Results, stored: store.Stored) -> None:
        super().__init__(results.store.folder(stored))
        self.results = results
        self.stored = stored

    def list_runs(self) -> list[RunInfo]:
        return self.results.store.run_listing(self.stored.path) or []

    def handle(self, target: str) -> Response:
        if urlsplit(target).path == "/api/pushed":  # the page's header: what was pushed
            return _json(self.stored.api())
        return super().handle(target)


class Results:
    """The results server's routes; `server.Handler` hands it every request."""

    def __init__(
        self,
        results_store: store.Store,
        *,
        api_key: str | None = None,
        limits: archive.Limits | None = None,
        pushes: int = MAX_PUSHES,
        queue_s: float = PUSH_QUEUE_S,
        body_deadline_s: float = BODY_DEADLINE_S,
    ) -> None:
        self.store = results_store
        self.limits = limits or archive.Limits()
        self.accepts_push = api_key is not None
        # Compared as digests: the same length whatever was sent, compare_digest on them.
        self._expected = hashlib.sha256(api_key.encode()).digest() if api_key is not None else None
        self.push_slots = threading.BoundedSemaphore(pushes)
        self.queue_s = queue_s
        self.body_deadline_s = body_deadline_s
        self._cache: dict[tuple, bytes] = {}
        self._cache_lock = threading.Lock()
        self.pushes_accepted = 0
        self.pushes_refused: dict[int, int] = {}

    # -- GET and HEAD ------------------------------------------------------------------

    def get(self, target: str) -> Response:
        parts = urlsplit(target)
        raw = parts.path.split("/")[1:]
        if raw == ["runs", ""]:  # the page's relative URLs want /runs
            return Response(301, "text/plain", b"", headers={"Location": "../runs"})
        if raw in ([""], ["index.html"], ["runs"]):
            page = static_file("results.html")
            return Response(200, "text/html; charset=utf-8", page, headers=PAGE_HEADERS)
        if len(raw) == 2 and raw[0] == "static" and raw[1] in RESULTS_STATIC:
            return Response(200, RESULTS_STATIC[raw[1]], static_file(raw[1]))
        if raw == ["api", "results"]:
            return self._list(parse_qs(parts.query))
        if len(raw) == 4 and raw[:2] == ["api", "results"]:
            stored = self._stored(raw[2], raw[3])
            if stored is None:
                return _error(404, "no such run")
            return _json(stored.api(full=True))
        if raw[:2] == ["api", "push"]:
            return _error(405, "push with POST", Allow="POST")
        if len(raw) >= 3 and raw[0] == "runs":
            return self._viewer(raw, parts.query)
        return _error(404, "not found")

    def _stored(self, project: str, run: str) -> store.Stored | None:
        project, run = unquote(project), unquote(run)
        if not store.valid_project(project) or not store.RUN_ID.fullmatch(run):
            return None
        return self.store.get(f"{project}/{run}")

    def _viewer(self, raw: list[str], query: str) -> Response:
        stored = self._stored(raw[1], raw[2])
        if stored is None:
            return _error(404, "no such run (it may have been deleted by retention)")
        if len(raw) == 3:  # the page's relative URLs need the slash
            # Relative: right behind a reverse proxy that serves this under a prefix too.
            return Response(301, "text/plain", b"", headers={"Location": f"{stored.run}/"})
        rest = "/" + "/".join(raw[3:]) + (f"?{query}" if query else "")
        if not self.store.acquire(stored.path):
            return _error(404, "no such run (it may have been deleted by retention)")
        try:
            response = StoredRunApi(self, stored).handle(rest)
        except BaseException:
            self.store.release(stored.path)
            raise
        response.on_close = lambda: self.store.release(stored.path)
        return response

    def _list(self, query: dict[str, list[str]]) -> Response:
        project = (query.get("project") or [""])[0]
        limit_text = (query.get("limit") or [str(DEFAULT_LIMIT)])[0]
        if project and not store.valid_project(project):
            return _error(400, "project: letters, digits, '.', '_' and '-'")
        if not re.fullmatch(r"[0-9]{1,6}", limit_text):
            return _error(400, "limit must be a whole number of 1 to 6 digits")
        key = (self.store.generation, project, int(limit_text))
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is None:
            listing = self.store.listing()
            key = (self.store.generation, project, int(limit_text))
            chosen = [s for s in listing if not project or s.project == project]
            body = {
                "runs": [s.api() for s in chosen[: int(limit_text)]],
                "total": len(chosen),
                "projects": sorted({s.project for s in listing}),
                "size": sum(s.size for s in listing),
                "retention": self.store.retention,
                "accepts_push": self.accepts_push,
            }
            cached = json.dumps(body).encode()
            with self._cache_lock:
                if len(self._cache) > 64:
                    self._cache.clear()
                self._cache[key] = cached
        return Response(200, "application/json", cached)

    # -- POST /api/push/{project} --------------------------------------------------------

    def post(self, handler: BaseHTTPRequestHandler) -> Response:
        response = self._push(handler)
        if response.status != 200:
            self.pushes_refused[response.status] = self.pushes_refused.get(response.status, 0) + 1
        return response

    def _refuse_early(self, handler: BaseHTTPRequestHandler, response: Response) -> Response:
        """A refusal made before the body was read: the connection closes after it, and
        what the client still sends is read and thrown away for a moment first, so that
        it sees the answer rather than a reset."""
        response.headers["Connection"] = "close"
        handler.close_connection = True
        previous = response.on_close

        def drain() -> None:
            if previous:
                previous()
            _drain(handler)

        response.on_close = drain
        return response

    def _push(self, h: BaseHTTPRequestHandler) -> Response:
        if h.request_version >= "HTTP/1.1":
            h.protocol_version = "HTTP/1.1"  # for 100 Continue; the answer closes anyway
        raw = urlsplit(h.path).path.split("/")[1:]
        if len(raw) != 3 or raw[:2] != ["api", "push"]:
            return self._refuse_early(h, _error(405, "only GET and HEAD here", Allow="GET, HEAD"))
        if not self.accepts_push:
            return self._refuse_early(
                h,
                _error(
                    405,
                    "this server does not accept pushes (start it with --accept-push)",
                    Allow="GET, HEAD",
                ),
            )
        if not self._key_ok(h.headers.get("Authorization", "")):
            return self._refuse_early(
                h,
                _error(
                    401,
                    "missing or wrong API key (send Authorization: Bearer KEY)",
                    **{"WWW-Authenticate": 'Bearer realm="patchbay"'},
                ),
            )
        project = unquote(raw[2])
        if not store.valid_project(project):
            return self._refuse_early(
                h,
                _error(400, "project name: letters, digits, '.', '_' and '-' (at most 100)"),
            )
        ctype = h.headers.get_content_type() if h.headers.get("Content-Type") else ""
        if ctype not in GZIP_TYPES:
            return self._refuse_early(
                h, _error(415, "send the tar.gz with Content-Type: application/gzip")
            )
        chunked = "chunked" in h.headers.get("Transfer-Encoding", "").lower()
        length_text = h.headers.get("Content-Length")
        length = None
        if not chunked:
            if length_text is None:
                return self._refuse_early(h, _error(411, "send a Content-Length"))
            if not re.fullmatch(r"[0-9]{1,18}", length_text.strip()):
                return self._refuse_early(h, _error(400, "Content-Length is not a number"))
            length = int(length_text)
            if length > self.limits.max_body:
                return self._refuse_early(
                    h, _error(413, f"the body is over {self.limits.max_body} bytes")
                )
        if not self.push_slots.acquire(timeout=self.queue_s):
            return self._refuse_early(
                h, _error(503, "too many pushes at once; try again", **{"Retry-After": "10"})
            )
        try:
            return self._receive(h, project, length, chunked)
        finally:
            self.push_slots.release()

    def _key_ok(self, header: str) -> bool:
        """`Bearer KEY` (the scheme in any case) with the server's key, compared in
        constant time (digests of both, so not even the length is told)."""
        scheme, _, token = header.strip().partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        same = hmac.compare_digest(given, self._expected or b"")
        return same and scheme.lower() == "bearer"

    def _receive(
        self, h: BaseHTTPRequestHandler, project: str, length: int | None, chunked: bool
    ) -> Response:
        if h.headers.get("Expect", "").lower() == "100-continue":
            with contextlib.suppress(OSError):
                h.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                h.wfile.flush()
        h.close_connection = True
        folder = self.store.new_push_folder()
        try:
            body = folder / "body.tar.gz"
            try:
                self._read_body(h, body, length, chunked)
            except archive.Refused as e:
                return self._refuse_early(h, _error(e.status, e.message))
            except _ClientGone as e:
                return _error(408, f"the body did not arrive ({e})", Connection="close")
            tree = folder / "tree"
            tree.mkdir(mode=0o755)
            try:
                archive.take_apart(body, tree, self.limits)
            except archive.Refused as e:
                return _error(e.status, e.message, Connection="close")
            moved = pushed.normalise_layout(tree)
            stored = self.store.add(tree, project)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return _error(507, "the server's disk is full", Connection="close")
            print(f"results: a push to {project} failed: {type(e).__name__}: {e}")
            return _error(500, "the push could not be stored", Connection="close")
        finally:
            store._remove_tree(folder)
        self.pushes_accepted += 1
        answer = {
            "ok": True,
            **stored.api(),
            # patchbay-serve's later snippets read these two.
            "invocation": stored.path,
            "first_run": stored.path,
            "warnings": [w for w in (stored.note,) if w]
            + ([f"the archive's top was put into {moved}/ (one invocation)"] if moved else []),
        }
        return _json(answer, Connection="close")

    def _read_body(
        self, h: BaseHTTPRequestHandler, dest: Any, length: int | None, chunked: bool
    ) -> None:
        deadline = time.monotonic() + self.body_deadline_s
        limit = self.limits.max_body
        received = 0
        fd = open(dest, "xb")  # noqa: SIM115 (closed below)
        try:
            pieces = _chunked(h.rfile, deadline) if chunked else _fixed(h.rfile, length or 0)
            for piece in pieces:
                received += len(piece)
                if received > limit:
                    raise archive.too_big(f"the body is over {limit} bytes")
                if time.monotonic() > deadline:
                    raise _ClientGone(f"not all of it within {self.body_deadline_s:.0f} s")
                fd.write(piece)
            fd.flush()
        finally:
            fd.close()


def _fixed(rfile: Any, length: int) -> Any:
    left = length
    while left > 0:
        try:
            piece = rfile.read(min(left, archive.CHUNK))
        except (OSError, ValueError) as e:
            raise _ClientGone(str(e) or type(e).__name__) from None
        if not piece:
            raise _ClientGone(f"the connection ended {left} bytes short of its Content-Length")
        left -= len(piece)
        yield piece


def _chunked(rfile: Any, deadline: float) -> Any:
    """The pieces of a `Transfer-Encoding: chunked` body (trailers read and dropped)."""
    try:
        while True:
            line = rfile.readline(1026)
            if not line.endswith(b"\n"):
                raise _ClientGone("the chunked body ended inside a chunk's size")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise archive.broken("the chunked body is malformed")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(64):  # trailers, then the blank line
                    trailer = rfile.readline(8192)
                    if trailer in (b"\r\n", b"\n", b""):
                        return
                raise archive.broken("the chunked body has too many trailers")
            left = size
            while left > 0:
                piece = rfile.read(min(left, archive.CHUNK))
                if not piece:
                    raise _ClientGone("the connection ended inside a chunk")
                left -= len(piece)
                yield piece
            if rfile.readline(3) not in (b"\r\n", b"\n"):
                raise archive.broken("the chunked body is malformed")
            if time.monotonic() > deadline:
                raise _ClientGone("the body took too long")
    except (OSError, ValueError) as e:
        raise _ClientGone(str(e) or type(e).__name__) from None


def _drain(handler: BaseHTTPRequestHandler) -> None:
    """After a refusal: stop sending, then read (and drop) what the client still sends,
    at most DRAIN_BYTES or DRAIN_S, so that closing does not reset the connection under
    the answer."""
    sock = handler.connection
    with contextlib.suppress(OSError):
        handler.wfile.flush()
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + DRAIN_S
    left = DRAIN_BYTES
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(0.2)
        while left > 0 and time.monotonic() < deadline:
            try:
                data = sock.recv(min(left, 65536))
            except TimeoutError:
                continue
            if not data:
                break
            left -= len(data)
