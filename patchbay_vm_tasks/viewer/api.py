"""The HTTP API of patchbay's devtools server over a work dir, as plain request -> response.

Paths are split on `/` before percent-decoding: the `{run}` segment arrives URL-encoded
(`sim-260101-120000%2Fping`) and must be the exact name of a listed run, while a file path
is taken segment by segment, and a segment that decodes to something with a slash or to
`..` is refused. Whatever is refused answers 404 and nothing is read.

Everything under the work dir is written by the guest (SPEC 11): files are read only
through `files` (no link followed below the work dir, regular files only, so a FIFO
answers 404 at once), JSON with size and nesting limits, a log a window at a time
(`?after=BYTE&limit=N`, at most LOG_WINDOW) or streamed in chunks (no query), events a
window at a time with broken lines skipped. A query value that is not 1 to 18 ASCII
digits answers 400.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import files, packagedata
from . import logs, runs, testdir

POLL_S = 0.5
# The most one `?after=` read of a log returns (the page reads on from where it ended).
LOG_WINDOW = 1024 * 1024
KEEPALIVE_S = 15.0
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes = b""
    # Server-sent events: chunks to write until the client leaves or the server stops.
    stream: Callable[[threading.Event], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # A file sent as it is read, `length` bytes (its Content-Length); closed when sent.
    chunks: files.FileStream | None = None
    length: int = 0
    # Called once the answer is sent or abandoned (the results server lets go of a run).
    on_close: Callable[[], None] | None = None


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


def _not_found(what: str = "not found") -> Response:
    return _json({"error": what}, 404)


def _bad_request(what: str) -> Response:
    return _json({"error": what}, 400)


def static_file(name: str) -> bytes:
    return (packagedata.path(packagedata.VIEWER_STATIC) / name).read_bytes()


def sse_data(text: str) -> bytes:
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


def sse_comment(text: str) -> bytes:
    """A line EventSource ignores: what the stream skipped, for whoever reads it raw."""
    return f": {text}\n\n".encode()


# Query values are byte offsets and counts: plain ASCII digits, at most this many.
_NUMBER = re.compile(r"[0-9]{1,18}")


def query_number(query: dict[str, list[str]], name: str) -> int | None:
    """The value of ?name= as a non-negative integer, None when absent; ValueError when it
    is anything but 1 to 18 ASCII digits (int() would take `²`, ` 7`, `1_0` and 10**19,
    which no file offset reaches and seek() refuses)."""
    values = query.get(name)
    if not values:
        return None
    if not _NUMBER.fullmatch(values[0]):
        raise ValueError(f"{name} must be a whole number of 1 to 18 digits")
    return int(values[0])


class Api:
    def __init__(self, base: Path, *, testdir: bool = False) -> None:
        self.base = base.resolve()
        # `sim.serve --testdir`: the labs of Rust tests (viewer/testdir.py), not sim runs.
        self.testdir = testdir

    def list_runs(self) -> list[runs.RunInfo]:
        """The runs shown: the work dir's sim runs, or with testdir the labs of the current
        generation of test output (looked up anew: a new `test.run` makes a new one)."""
        if not self.testdir:
            return runs.discover_runs(self.base)
        prefix = testdir.parts(self.base)
        if prefix is None:
            return []
        return runs.discover_runs(self.base, prefix, testdir.MAX_DEPTH, testdir.MAX_FOLDERS)

    def find_run(self, name: str) -> runs.RunInfo | None:
        """The listed run of exactly that name."""
        return next((r for r in self.list_runs() if r.name == name), None)

    def handle(self, target: str) -> Response:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        raw = parts.path.split("/")[1:]
        if raw in ([""], ["index.html"]):
            page = static_file("index.html")
            return Response(200, "text/html; charset=utf-8", page, headers=PAGE_HEADERS)
        if len(raw) == 2 and raw[0] == "static" and raw[1] in STATIC:
            return Response(200, STATIC[raw[1]], static_file(raw[1]))
        if raw[:1] != ["api"]:
            return _not_found()
        try:
            after = query_number(query, "after")
            limit = query_number(query, "limit")
        except ValueError as e:
            return _bad_request(str(e))
        if raw == ["api", "runs"]:
            return _json([r.api() for r in self.list_runs()])
        if raw == ["api", "runs", "subscribe"]:
            return Response(200, "text/event-stream", stream=self._runs_stream)
        if raw in (["api", "groups"], ["api", "compare"]) or raw[:2] == ["api", "groups"]:
            return self._compare_route(raw, query)
        if len(raw) >= 4 and raw[1] == "runs":
            return self._run_route(
                unquote(raw[2]), raw[3], [unquote(s) for s in raw[4:]], after, limit
            )
        if len(raw) == 4 and raw[1] == "invocations":
            return self._invocation_route(unquote(raw[2]), raw[3])
        return _not_found()

    # -- runs ---------------------------------------------------------------------------

    def _run_route(
        self, name: str, what: str, rest: list[str], after: int | None, limit: int | None
    ) -> Response:
        run = self.find_run(name)
        if run is None:
            return _not_found("no such run")
        if what == "state" and not rest:
            state = runs.read_json(self.base, run.rel(runs.STATE))
            return _json(state) if state is not None else _not_found("state.json not readable")
        if what == "events" and not rest:
            rel = run.rel(runs.EVENTS)
            return Response(
                200,
                "text/event-stream",
                stream=lambda stop: events_stream(self.base, rel, after, stop),
            )
        if what == "logs" and not rest:
            return _json(logs.list_logs(self.base, run.parts))
        if what in ("logs", "files") and rest:
            rel = runs.file_parts(run, rest)
            if rel is None:
                return _not_found()
            try:
                fd, st = files.open_in(self.base, rel)
            except OSError:
                return _not_found()
            if what == "logs" and (after is not None or limit is not None):
                return _log_window(fd, st.st_size, after or 0, limit)
            try:
                kind = _file_type(rel[-1], fd) if what == "files" else LOG_TYPE
            except OSError:
                os.close(fd)
                return _not_found()
            return Response(
                200,
                kind,
                chunks=files.FileStream(fd, 0, st.st_size),
                length=st.st_size,
                headers={"X-Log-Size": str(st.st_size)} if what == "logs" else {},
            )
        return _not_found()

    def _runs_stream(self, stop: threading.Event) -> Iterator[bytes]:
        # Tell the client once at once (it may have listed before subscribing), then on change.
        last = None
        quiet_since = time.monotonic()
        while not stop.is_set():
            now = self._runs_signature()
            if now != last:
                last = now
                quiet_since = time.monotonic()
                yield sse_data("update")
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            stop.wait(POLL_S)

    def _runs_signature(self) -> tuple:
        """What the run list shows: runs with label and status, and each invocation's progress."""
        listed = tuple((r.name, r.label, r.status) for r in self.list_runs())
        if self.testdir:  # the same tests' names in a new generation are new labs
            return listed, testdir.current(self.base)
        stamps = []
        for folder in _invocation_folders(self.base):
            for name in ("progress.json", "manifest.json"):
                with contextlib.suppress(OSError):
                    stamps.append((folder, name, (self.base / folder / name).lstat().st_mtime_ns))
        return listed, tuple(stamps)

    # -- compare and --repeat groups (ours) ----------------------------------------------

    def _compare_route(self, raw: list[str], query: dict[str, list[str]]) -> Response:
        from . import comparing  # loads the sim side's readers only when asked

        if getattr(self, "testdir", False):  # test labs: no sim runs to group or compare
            return _json([]) if raw == ["api", "groups"] else _not_found("no sim runs here")
        if raw == ["api", "groups"]:
            return _json(comparing.groups(self.base))
        if raw == ["api", "compare"]:
            pick = {k: (query.get(k) or [""])[0] or None for k in ("base", "head")}
            status, data = comparing.comparison(self.base, pick["base"], pick["head"])
            return _json(data, status)
        if len(raw) == 4 and raw[3] == "summary":
            data = comparing.group_summary(self.base, unquote(raw[2]))
            return _json(data) if data is not None else _not_found("no such group")
        return _not_found()

    # -- invocations --------------------------------------------------------------------

    def _invocation_route(self, name: str, what: str) -> Response:
        if self.testdir:  # test output has no invocations (no progress, no combined results)
            return _json({"runs": []} if what == "combined-results" else {"error": "none"}, 404)
        folder = runs.invocation_dir(self.base, name)
        if folder is None:
            return _json(
                {"runs": []} if what == "combined-results" else {"error": "not found"}, 404
            )
        if what == "combined-results":
            data = runs.read_json(self.base, [name, "combined-results.json"])
            return _json(data) if isinstance(data, dict) else _json({"runs": []}, 404)
        if what == "progress":  # ours: the page's live status and the sims with no run folder
            data = runs.invocation_progress(self.base, name)
            return _json(data) if data is not None else _not_found("no progress.json")
        return _not_found()


# The page runs only its own script and talks only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
}


LOG_TYPE = "text/plain; charset=utf-8"


def _invocation_folders(base: Path) -> list[str]:
    """The sim-* folders of base (links left out)."""
    try:
        with os.scandir(base) as entries:
            return sorted(
                e.name
                for e in entries
                if e.name.startswith("sim-") and e.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []


def _file_type(name: str, fd: int) -> str:
    # Never text/html: a run's file must not run script under this origin.
    if name.endswith(".json"):
        return "application/json"
    os.lseek(fd, 0, os.SEEK_SET)
    binary = b"\x00" in os.read(fd, 4096)
    return "application/octet-stream" if binary else LOG_TYPE


def _log_window(fd: int, size: int, after: int, limit: int | None) -> Response:
    """`?after=BYTE[&limit=N]`: at most LOG_WINDOW bytes of the log from after (empty past
    its end), so that a live tail of a 1 GB log costs the server no more than that. The
    headers say the log's size and where the next read starts."""
    want = LOG_WINDOW if limit is None else min(limit, LOG_WINDOW)
    try:
        body = b""
        if after < size and want:
            os.lseek(fd, after, os.SEEK_SET)
            body = os.read(fd, min(want, size - after))
    finally:
        os.close(fd)
    headers = {"X-Log-Size": str(size), "X-Log-Next": str(after + len(body))}
    return Response(200, LOG_TYPE, body, headers=headers)


def events_stream(
    base: Path, rel: list[str], after: int | None, stop: threading.Event
) -> Iterator[bytes]:
    """events.jsonl as it grows: complete lines only, a partial last line waits for its
    end. Events whose opid is above `after`; without it, all of them (patchbay's library
    numbers a lab's events from 0, its runner from 1). Read a window at a time; a line
    that is broken, too deep or longer than a window is skipped (an SSE comment says so)
    and the stream goes on."""
    pos = 0
    skipping = False  # inside a line longer than a window: dropped up to its end
    quiet_since = time.monotonic()
    while not stop.is_set():
        try:
            data, size = files.read_window(base, rel, pos, logs.MAX_EVENT_LINE)
        except OSError:
            data, size = b"", 0
        sent = False
        if skipping:
            end = data.find(b"\n")
            pos += len(data) if end < 0 else end + 1
            skipping = end < 0
        else:
            lines, used = logs.complete_lines(data)
            if not used and len(data) >= logs.MAX_EVENT_LINE:
                pos += len(data)
                skipping = True
                yield sse_comment(f"skipped an events line longer than {logs.MAX_EVENT_LINE} bytes")
                sent = True
            pos += used
            for line in lines:
                event = logs.parse_event(line)
                if event is None:
                    if line.strip():
                        yield sse_comment("skipped an events line that is not a JSON event")
                        sent = True
                elif after is None or event["opid"] > after:
                    yield sse_data(json.dumps(event))
                    sent = True
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        if pos < size and data:
            continue  # more is there already: no wait
        stop.wait(POLL_S)
