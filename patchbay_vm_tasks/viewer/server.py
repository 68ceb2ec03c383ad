"""`sim.serve`'s server: the API over a work dir on the standard library's threading server.

Safe by default: it binds 127.0.0.1, and answers only requests whose Host header names the
server as bound (`hosts`: a page on another site cannot reach it through DNS rebinding).
GET and HEAD (the same answer without its body); any other method is 405.

Bounded under load: a listen backlog of LISTEN_BACKLOG, at most MAX_WORKERS requests served
at once (more wait in the backlog), of which at most MAX_STREAMS live event streams (one
more is answered 503), and REQUEST_TIMEOUT_S for each read from and write to a client, so
a half-sent request or a reader that stopped reading frees its thread.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import DEFAULT_BIND
from .api import Api, Response
from .hosts import Hosts, parse_address

if TYPE_CHECKING:
    from .results import Results

# Listen backlog: 200 clients at once must all get in (the default, 5, left 25-51 of 200
# unanswered); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 512
# Requests served at once; the others wait in the backlog until a thread is free.
MAX_WORKERS = 64
# Of those, live event streams (each open page holds two): the rest stay for plain requests.
MAX_STREAMS = 32
# Seconds a read from or write to a client may take: a request sent halfway, or a client
# that stopped reading, ends here.
REQUEST_TIMEOUT_S = 10.0

_PORT = re.compile(r"[0-9]{1,5}")


def parse_bind(bind: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) -> (host, port); ValueError when malformed or
    the port is not 0-65535 (plain ASCII digits: `isdigit` takes `²`)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or host == "[]" or not (host.isascii() and host.isprintable()):
        raise ValueError(f"--bind wants HOST:PORT, got {bind!r}")
    if " " in host:
        raise ValueError(f"--bind wants HOST:PORT, got {bind!r}")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"--bind {bind!r}: the port must be a number from 0 to 65535")
    return host.strip("[]"), int(port)


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        work_dir: Path,
        host: str = "127.0.0.1",
        port: int = 7421,
        *,
        workers: int = MAX_WORKERS,
        streams: int = MAX_STREAMS,
        timeout: float = REQUEST_TIMEOUT_S,
        testdir: bool = False,
        results: Results | None = None,
    ) -> None:
        self.api = Api(work_dir, testdir=testdir)
        # `sim.serve --accept-push`/`--data-dir`: the results server answers instead.
        self.results = results
        self.stopping = threading.Event()
        self.workers = threading.BoundedSemaphore(workers)
        self.streams = threading.BoundedSemaphore(min(streams, workers))
        self.request_timeout = timeout
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.hosts = Hosts(host, str(self.server_address[0]), self.server_address[1])

    def server_bind(self) -> None:
        # `::` means every address, IPv4 too, whatever the system's default.
        address = parse_address(str(self.server_address[0]))
        if self.address_family == socket.AF_INET6 and address and address.is_unspecified:
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # In the accepting thread: with every worker busy, accepting waits (the clients
        # wait in the backlog) instead of starting one thread per connection.
        while not self.workers.acquire(timeout=0.2):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.workers.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.workers.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # One line, not a traceback per broken connection.
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            print(f"viewer: {type(error).__name__}: {error}", file=sys.stderr)

    @property
    def url(self) -> str:
        """The URL for a browser on this machine (for an all-addresses bind, loopback's)."""
        return self.hosts.local_url

    def shutdown(self) -> None:
        self.stopping.set()  # ends the event streams, which would otherwise hold threads
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "patchbay-vm-viewer"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # for every recv and send on this socket
        super().setup()

    def log_message(self, format: str, *args: object) -> None:  # quiet: a page polls a lot
        pass

    def do_GET(self) -> None:
        self._send(self._answer())

    def do_HEAD(self) -> None:
        self._send(self._answer(), head=True)

    def _answer(self) -> Response:
        if not self.server.hosts.allows(self.headers.get("Host")):
            return Response(403, "text/plain", b"forbidden: unexpected Host header\n")
        try:
            if self.server.results is not None:
                return self.server.results.get(self.path)
            return self.server.api.handle(self.path)
        except OSError:
            return Response(404, "application/json", b'{"error": "not readable"}')
        except Exception as e:  # noqa: BLE001 (whatever a run's files do, the server answers)
            print(f"viewer: {self.path[:200]!r}: {type(e).__name__}: {e}", file=sys.stderr)
            return Response(500, "application/json", b'{"error": "internal error"}')

    def _refuse(self) -> None:
        response = Response(405, "text/plain", b"only GET and HEAD\n")
        response.headers["Allow"] = "GET, HEAD"
        self._send(response)

    def do_POST(self) -> None:
        if self.server.results is None:
            return self._refuse()
        if not self.server.hosts.allows(self.headers.get("Host")):
            self.close_connection = True
            return self._send(Response(403, "text/plain", b"forbidden: unexpected Host header\n"))
        try:
            response = self.server.results.post(self)
        except Exception as e:  # noqa: BLE001 (whatever a push does, the server answers)
            print(f"viewer: POST: {type(e).__name__}: {e}", file=sys.stderr)
            self.close_connection = True
            response = Response(500, "application/json", b'{"error": "internal error"}')
        self._send(response)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _send(self, response: Response, head: bool = False) -> None:
        """The response; for HEAD its status and headers alone (a stream is not started,
        a file not read)."""
        on_close = response.on_close  # kept when a 503 takes the answer's place
        if head:
            try:
                self._send_headers(response)
            except OSError:
                self.close_connection = True
            finally:
                if response.chunks is not None:
                    response.chunks.close()
                if on_close is not None:
                    on_close()
            return
        holds_stream = False
        if response.stream is not None:
            holds_stream = self.server.streams.acquire(blocking=False)
            if not holds_stream:
                response = Response(503, "text/plain", b"too many live streams open\n")
                response.headers["Retry-After"] = "5"
        try:
            self._send_headers(response)
            if response.chunks is not None:
                self.close_connection = True  # a file that shrank meanwhile ends it short
                for chunk in response.chunks:
                    self.wfile.write(chunk)
            elif response.stream is not None:
                self.close_connection = True
                for chunk in response.stream(self.server.stopping):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            else:
                self.wfile.write(response.body)
        except OSError:  # the client went away or stopped reading (the timeout)
            self.close_connection = True
        finally:
            if response.chunks is not None:
                response.chunks.close()
            if holds_stream:
                self.server.streams.release()
            if on_close is not None:
                on_close()

    def _send_headers(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.stream is None:
            length = response.length if response.chunks is not None else len(response.body)
            self.send_header("Content-Length", str(length))
        self.end_headers()


def make_server(work_dir: Path, bind: str = DEFAULT_BIND, **limits: Any) -> ViewerServer:
    """The server on bind (HOST:PORT); limits: workers, streams, timeout (tests), and
    testdir (`sim.serve --testdir`: the labs of Rust tests instead of sim runs)."""
    host, port = parse_bind(bind)
    return ViewerServer(work_dir, host, port, **limits)


def serve_in_thread(work_dir: Path, bind: str = DEFAULT_BIND, **limits: Any) -> ViewerServer:
    """A started server (for `sim.run --open` and tests); call .shutdown() to stop it."""
    server = make_server(work_dir, bind, **limits)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="viewer"
    ).start()
    return server
