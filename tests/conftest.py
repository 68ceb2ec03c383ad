"""Shared fixtures: a local HTTP server (standing in for the Debian and GitHub servers,
which this machine cannot reach) and the one booted VM that VM tests share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

pytest_plugins = ["vmfixtures"]


class Routes(dict):
    """path -> bytes (200) or (status, headers, bytes). Records the paths asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []


@pytest.fixture
def http_server() -> Iterator[tuple[str, Routes]]:
    """(base URL on 127.0.0.1, routes to fill in)."""
    routes = Routes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            routes.requests.append(self.path)
            entry = routes.get(self.path)
            if entry is None:
                entry = (404, {}, b"not found")
            elif isinstance(entry, bytes):
                entry = (200, {}, entry)
            status, headers, body = entry
            self.send_response(status)
            # A route may claim another length, to play a download cut short.
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    from vmfixtures import serving  # here: pytest_plugins registers the module first

    with serving(Handler) as base:
        yield base, routes


# The patchbay sim corpus lies beside the repo (../shared/sims-from-patchbay); it is read
# where it lies, never copied into the project.
CORPUS_SKIP = "sim corpus not found; set PATCHBAY_SIM_CORPUS=/path/to/sims-from-patchbay"


def corpus_path() -> Path:
    """Where the corpus should be: $PATCHBAY_SIM_CORPUS, else <repo>/../shared/...."""
    env = os.environ.get("PATCHBAY_SIM_CORPUS")
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[2] / "shared" / "sims-from-patchbay").resolve()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The sim corpus folder; skips the test with a one-line reason when it is absent.
    Every test that reads the corpus asks for it here (module and session fixtures too:
    it is session-scoped), so that a lone clone skips them instead of failing."""
    path = corpus_path()
    if not path.is_dir():
        pytest.skip(CORPUS_SKIP)
    return path
