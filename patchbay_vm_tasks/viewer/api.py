"""The HTTP API of patchbay's devtools server over a work dir, as plain request -> response.

Paths are split on `/` before percent-decoding: the `{run}` segment arrives URL-encoded
(`sim-260101-120000%2Fping`) and must be the exact name of a listed run, while a file path
is taken segment by segment, and a segment that decodes to something with a slash or to
`..` is refused. Whatever is refused answers 404 and nothing is read.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import logs, runs

POLL_S = 0.5
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


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


def _not_found(what: str = "not found") -> Response:
    return _json({"error": what}, 404)


def static_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def sse_data(text: str) -> bytes:
    return b"".join(b"data: " + line.encode() + b"\n" for line in text.split("\n")) + b"\n"


class Api:
    def __init__(self, base: Path) -> None:
        self.base = base.resolve()

    def handle(self, target: str) -> Response:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        raw = parts.path.split("/")[1:]
        if raw in ([""], ["index.html"]):
            page = static_file("index.html")
            return Response(200, "text/html; charset=utf-8", page, headers=PAGE_HEADERS)
        if len(raw) == 2 and raw[0] == "static" and raw[1] in STATIC:
            return Response(200, STATIC[raw[1]], static_file(raw[1]))
        if raw[:1] != ["api"]:
            return _not_found()
        try:
            after = int(query.get("after", ["0"])[0])
        except ValueError:
            return _json({"error": "after must be an integer"}, 400)
        if raw == ["api", "runs"]:
            return _json([r.api() for r in runs.discover_runs(self.base)])
        if raw == ["api", "runs", "subscribe"]:
            return Response(200, "text/event-stream", stream=self._runs_stream)
        if len(raw) >= 4 and raw[1] == "runs":
            return self._run_route(unquote(raw[2]), raw[3], [unquote(s) for s in raw[4:]], after)
        if len(raw) == 4 and raw[1] == "invocations":
            return self._invocation_route(unquote(raw[2]), raw[3])
        return _not_found()

    # -- runs ---------------------------------------------------------------------------

    def _run_route(self, name: str, what: str, rest: list[str], after: int) -> Response:
        run = runs.find_run(self.base, name)
        if run is None:
            return _not_found("no such run")
        if what == "state" and not rest:
            state = runs.read_json(run.path / runs.STATE)
            return _json(state) if state is not None else _not_found("state.json not readable")
        if what == "events" and not rest:
            path = run.path / runs.EVENTS
            return Response(
                200, "text/event-stream", stream=lambda stop: _events_stream(path, after, stop)
            )
        if what == "logs" and not rest:
            return _json(logs.list_logs(run.path))
        if what in ("logs", "files") and rest:
            path = runs.file_in(run.path, rest)
            if path is None:
                return _not_found()
            if what == "logs":
                return Response(200, "text/plain; charset=utf-8", logs.read_from(path, after))
            return Response(200, _file_type(path), path.read_bytes())
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
        listed = tuple((r.name, r.label, r.status) for r in runs.discover_runs(self.base))
        stamps = []
        for path in sorted(self.base.glob("sim-*/*.json")):
            if path.name in ("progress.json", "manifest.json"):
                with contextlib.suppress(OSError):
                    stamps.append((str(path), path.stat().st_mtime_ns))
        return listed, tuple(stamps)

    # -- invocations --------------------------------------------------------------------

    def _invocation_route(self, name: str, what: str) -> Response:
        folder = runs.invocation_dir(self.base, name)
        if folder is None:
            return _json(
                {"runs": []} if what == "combined-results" else {"error": "not found"}, 404
            )
        if what == "combined-results":
            data = runs.read_json(folder / "combined-results.json")
            return _json(data) if isinstance(data, dict) else _json({"runs": []}, 404)
        if what == "progress":  # ours: the page's live status and the sims with no run folder
            data = runs.invocation_progress(folder)
            return _json(data) if data is not None else _not_found("no progress.json")
        return _not_found()


# The page runs only its own script and talks only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
}


def _file_type(path: Path) -> str:
    # Never text/html: a run's file must not run script under this origin.
    if path.suffix in (".json",):
        return "application/json"
    with open(path, "rb") as f:
        binary = b"\x00" in f.read(4096)
    return "application/octet-stream" if binary else "text/plain; charset=utf-8"


def _events_stream(path: Path, after: int, stop: threading.Event) -> Iterator[bytes]:
    """events.jsonl as it grows: complete lines only, a partial last line waits for its end."""
    pos = 0
    quiet_since = time.monotonic()
    while not stop.is_set():
        try:
            data = logs.read_from(path, pos)
        except OSError:
            data = b""
        lines, used = logs.complete_lines(data)
        pos += used
        events = logs.parse_events(lines, after)
        for event in events:
            yield sse_data(json.dumps(event))
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        stop.wait(POLL_S)
