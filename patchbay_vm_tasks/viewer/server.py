"""`sim.serve`'s server: the API over a work dir on the standard library's threading server.

Safe by default: it binds 127.0.0.1, and answers only requests whose Host header names the
bound address (a page on another site cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import DEFAULT_BIND
from .api import Api, Response


def parse_bind(bind: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) -> (host, port); ValueError when malformed."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--bind wants HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host header values that name this server."""
    names = {host}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if (ip is not None and ip.is_loopback) or host == "localhost":
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if ip is not None and ip.version == 6:
        names.add(f"[{host}]")
    return {f"{n}:{port}" for n in names}


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, work_dir: Path, host: str = "127.0.0.1", port: int = 7421) -> None:
        self.api = Api(work_dir)
        self.stopping = threading.Event()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.hosts = allowed_hosts(host, self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def shutdown(self) -> None:
        self.stopping.set()  # ends the event streams, which would otherwise hold threads
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "patchbay-vm-viewer"

    def log_message(self, format: str, *args: object) -> None:  # quiet: a page polls a lot
        pass

    def do_GET(self) -> None:
        if self.headers.get("Host", "").lower() not in self.server.hosts:
            self._send(Response(403, "text/plain", b"forbidden: unexpected Host header\n"))
            return
        try:
            response = self.server.api.handle(self.path)
        except OSError:
            response = Response(404, "application/json", b'{"error": "not readable"}')
        self._send(response)

    def _refuse(self) -> None:
        self._send(Response(405, "text/plain", b"only GET\n"))

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.stream is None:
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            return
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in response.stream(self.server.stopping):
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away


def make_server(work_dir: Path, bind: str = DEFAULT_BIND) -> ViewerServer:
    host, port = parse_bind(bind)
    return ViewerServer(work_dir, host, port)


def serve_in_thread(work_dir: Path, bind: str = DEFAULT_BIND) -> ViewerServer:
    """A started server (for `sim.run --open` and tests); call .shutdown() to stop it."""
    server = make_server(work_dir, bind)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="viewer"
    ).start()
    return server
