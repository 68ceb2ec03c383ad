"""`sim.serve` as a user meets it (issue 22): the Host check for every kind of bind, with
real servers on real sockets; HEAD; what the task says, once each and when it is true;
a work dir that is not there."""

from __future__ import annotations

import http.client
import ipaddress
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from test_viewer_fixture import INV_OK, make_workdir

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.tasks import view
from patchbay_vm_tasks.viewer import hosts
from patchbay_vm_tasks.viewer import server as viewer_server

PING = f"{INV_OK}/ping-e2e"
LOG = "device.sender.ping-check.stdout.log"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return make_workdir(tmp_path)


@pytest.fixture
def serving(work: Path) -> Iterator:
    """serving(bind, **limits) -> a started server, stopped at the end of the test."""
    started = []

    def start(bind: str, **limits: object) -> viewer_server.ViewerServer:
        srv = viewer_server.serve_in_thread(work, bind, **limits)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def request(
    srv, host: str, method: str = "GET", path: str = "/api/runs", connect: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """method path on the server, reached at `connect`, with `host` as the Host header."""
    conn = http.client.HTTPConnection(connect, srv.server_address[1], timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, {k.lower(): v for k, v in res.getheaders()}, body


def ip_addr_json() -> list[dict]:
    """`ip -j addr` (iproute2): the test's own, independent view of the addresses."""
    if shutil.which("ip") is None:
        pytest.skip("no iproute2 `ip` to compare with")
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def own_addresses(version: int) -> list[str]:
    """This machine's addresses of an IP version, neither loopback nor link-local."""
    found = []
    for link in ip_addr_json():
        for info in link.get("addr_info", []):
            address = ipaddress.ip_address(info["local"])
            if address.version == version and not (address.is_loopback or address.is_link_local):
                found.append(str(address))
    return found


def ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ the addresses


def test_interface_addresses_are_the_ones_ip_lists() -> None:
    listed = {
        ipaddress.ip_address(i["local"]) for link in ip_addr_json() for i in link["addr_info"]
    }
    assert hosts.interface_addresses() >= listed
    # The kernel's list alone (netlink), not what resolving or routing adds.
    assert hosts._netlink_addresses() == listed


def test_host_header_parsing() -> None:
    split = hosts.split_host_header
    v6 = ipaddress.ip_address("2001:db8::1")
    assert split("Example.ORG:8080") == ("example.org", 8080)
    assert split("example.org.") == ("example.org", None)
    assert split("192.0.2.7:80") == (ipaddress.ip_address("192.0.2.7"), 80)
    assert split("[2001:DB8:0::1]:7745") == (v6, 7745)
    assert split("[2001:db8::1]") == (v6, None)
    for bad in ("2001:db8::1", "[2001:db8::1", "[192.0.2.7]:80", "[::1]x", "a:b", "a:", "", ":80"):
        assert split(bad) is None, bad
    assert split("a:123456") is None and split("a:²") is None


def test_which_hosts_each_bind_accepts() -> None:
    loopback = hosts.Hosts("127.0.0.1", "127.0.0.1", 7421)
    assert loopback.values() == {"127.0.0.1:7421", "localhost:7421", "[::1]:7421"}
    assert not loopback.network and loopback.urls() == []
    assert loopback.local_url == "http://127.0.0.1:7421/"
    # One address that is not the machine's: that address alone; on port 80 also bare.
    other = hosts.Hosts("198.51.100.7", "198.51.100.7", 80)
    assert other.values() == {"198.51.100.7:80", "198.51.100.7"}
    assert other.network and other.urls() == ["http://198.51.100.7:80/"]
    assert other.allows("198.51.100.7") and not other.allows("127.0.0.1:80")
    # A name as the bind's host is accepted as well as what it resolved to.
    named = hosts.Hosts("LocalHost", "127.0.0.1", 9000)
    assert named.allows("localhost:9000") and named.allows("127.0.0.1:9000")
    # All addresses: the machine's names and addresses, loopback, nothing foreign.
    everything = hosts.Hosts("0.0.0.0", "0.0.0.0", 7745)
    name = socket.gethostname().lower()
    assert everything.network and everything.local_url == "http://127.0.0.1:7745/"
    for ok in (f"{name}:7745", f"{name.upper()}:7745", "localhost:7745", "127.0.0.1:7745"):
        assert everything.allows(ok), ok
    for address in own_addresses(4):
        assert everything.allows(f"{address}:7745")
        assert f"http://{address}:7745/" in everything.urls()
    assert f"http://{name}:7745/" in everything.urls()
    assert not any(
        u.startswith(("http://127.", "http://0.0.0.0", "http://[")) for u in everything.urls()
    )
    for bad in (
        "evil.example:7745",
        f"{name}:7746",
        "[::1]:7745",
        f"{name}.evil.example:7745",
        None,
    ):
        assert not everything.allows(bad), bad


# ------------------------------------------------------------------ real binds


def test_all_addresses_bind_answers_the_machine_names_and_addresses(serving) -> None:
    srv = serving("0.0.0.0:0")
    port = srv.server_address[1]
    assert srv.url == f"http://127.0.0.1:{port}/"
    name = socket.gethostname()
    status, _, body = request(srv, f"{name}:{port}")
    assert status == 200 and b"ping-e2e" in body
    assert request(srv, f"localhost:{port}")[0] == 200
    addresses = own_addresses(4)
    if not addresses:
        pytest.skip("this machine has no IPv4 address but loopback")
    address = addresses[0]
    # Reached at that address, as another machine would.
    status, _, body = request(srv, f"{address}:{port}", connect=address)
    assert status == 200 and b"ping-e2e" in body
    for foreign in (f"evil.example:{port}", f"{address}:{port + 1}", f"{name}.evil.example:{port}"):
        status, _, body = request(srv, foreign, connect=address)
        assert status == 403 and b"ping-e2e" not in body, foreign


def test_ipv6_all_addresses_bind_takes_both_families(serving) -> None:
    if not ipv6_works():
        pytest.skip("no IPv6 here")
    srv = serving("[::]:0")
    port = srv.server_address[1]
    assert srv.url == f"http://[::1]:{port}/"
    assert request(srv, f"[::1]:{port}", connect="::1")[0] == 200
    assert request(srv, f"127.0.0.1:{port}", connect="127.0.0.1")[0] == 200  # dual stack
    assert request(srv, f"{socket.gethostname()}:{port}", connect="::1")[0] == 200
    for address in own_addresses(6):
        assert request(srv, f"[{address}]:{port}", connect=address)[0] == 200
    assert request(srv, f"evil.example:{port}", connect="::1")[0] == 403


def test_one_address_bind_answers_that_address_only(serving) -> None:
    addresses = own_addresses(4)
    if not addresses:
        pytest.skip("this machine has no IPv4 address but loopback")
    address = addresses[0]
    srv = serving(f"{address}:0")
    port = srv.server_address[1]
    assert srv.hosts.network and srv.hosts.urls()[-1] == f"http://{address}:{port}/"
    assert request(srv, f"{address}:{port}", connect=address)[0] == 200
    for other in ("localhost", "127.0.0.1", "evil.example"):
        assert request(srv, f"{other}:{port}", connect=address)[0] == 403, other


def test_loopback_bind_still_refuses_other_names(serving) -> None:
    srv = serving("127.0.0.1:0")
    port = srv.server_address[1]
    assert not srv.hosts.network
    assert request(srv, f"localhost:{port}")[0] == 200
    for other in (socket.gethostname(), "evil.example", "0.0.0.0"):
        assert request(srv, f"{other}:{port}")[0] == 403, other


# ------------------------------------------------------------------ HEAD

HEAD_PATHS = [
    "/",
    "/index.html",
    "/static/app.js",
    "/static/style.css",
    "/api/runs",
    f"/api/runs/{quote(PING, safe='')}/state",
    f"/api/runs/{quote(PING, safe='')}/logs",
    f"/api/runs/{quote(PING, safe='')}/logs/{LOG}",
    f"/api/runs/{quote(PING, safe='')}/logs/{LOG}?after=10",
    f"/api/runs/{quote(PING, safe='')}/files/results.json",
    f"/api/invocations/{INV_OK}/combined-results",
    f"/api/invocations/{INV_OK}/progress",
    "/api/runs/nope/state",
    "/nothing",
]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_is_get_without_the_body(serving, path: str) -> None:
    srv = serving("127.0.0.1:0")
    host = f"127.0.0.1:{srv.server_address[1]}"
    got, got_headers, body = request(srv, host, "GET", path)
    head, head_headers, nothing = request(srv, host, "HEAD", path)
    assert head == got and nothing == b""
    for name in ("content-type", "content-length", "x-log-size", "x-log-next"):
        assert head_headers.get(name) == got_headers.get(name), name
    assert int(head_headers["content-length"]) == len(body)


def test_head_of_a_live_stream_holds_no_stream(serving) -> None:
    srv = serving("127.0.0.1:0", streams=1)
    host = f"127.0.0.1:{srv.server_address[1]}"
    for path in ["/api/runs/subscribe", f"/api/runs/{quote(PING, safe='')}/events"] * 3:
        status, headers, body = request(srv, host, "HEAD", path)
        assert (status, headers["content-type"], body) == (200, "text/event-stream", b"")
    # Its one stream slot is free still.
    sock = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10)
    try:
        sock.sendall(f"GET /api/runs/subscribe HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert sock.makefile("rb").readline().split()[1] == b"200"
    finally:
        sock.close()


def test_head_with_a_foreign_host_and_other_methods(serving) -> None:
    srv = serving("127.0.0.1:0")
    port = srv.server_address[1]
    assert request(srv, f"evil.example:{port}", "HEAD", "/")[0] == 403
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, _ = request(srv, f"127.0.0.1:{port}", method, "/api/runs")
        assert status == 405 and headers["allow"] == "GET, HEAD", method


# ------------------------------------------------------------------ the task's words


def test_start_and_still_serving_each_when_true(work: Path, monkeypatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(view, "say", said.append)
    # sim.run --open: the viewer shows the run as it goes; after the run, still serving.
    srv = view.start_viewer(work, "127.0.0.1:0", open_browser=False)
    assert said == [f"viewer on {srv.url} over {work}; it shows the run as it goes"]
    srv.stopping.set()  # as a Ctrl-C would end the wait
    view.serve_until_interrupted(srv)
    assert said[1:] == [f"still serving {srv.url}; Ctrl-C stops it"]
    # sim.serve: one line, and no "still".
    said.clear()
    srv = view.start_viewer(work, "127.0.0.1:0", open_browser=False, serving_only=True)
    srv.stopping.set()
    view.serve_until_interrupted(srv, say_still=False)
    assert said == [f"viewer on {srv.url} over {work}; Ctrl-C stops it"]
    # An interrupted run: the viewer stops at once, and says nothing more.
    said.clear()
    srv = view.start_viewer(work, "127.0.0.1:0", open_browser=False)
    view.serve_until_interrupted(srv, interrupted=True)
    assert len(said) == 1


def test_work_dir_checks(tmp_path: Path) -> None:
    assert view.check_work_dir(tmp_path, str(tmp_path)) is None
    with pytest.raises(UsageError, match="--work-dir nope: no such folder"):
        view.check_work_dir(tmp_path / "nope", "nope")
    note = view.check_work_dir(tmp_path / ".patchbay-work", None)
    assert note == (
        f"{tmp_path / '.patchbay-work'} does not exist yet: "
        "runs appear on the page as sim.run writes them there"
    )
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a folder"):
        view.check_work_dir(tmp_path / "file", None)


class Serve:
    """`patchbay-vm serve ...` (sim.serve) running for real; its stderr read line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patchbay_vm_tasks", "serve", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.seen: list[str] = []

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, needle: str) -> str:
        while True:
            line = self.lines.get(timeout=30)
            assert line is not None, f"ended before {needle!r}: {self.seen}"
            self.seen.append(line)
            if needle in line:
                return line

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_serve_on_all_addresses_says_so_and_answers_by_name(work: Path, tmp_path: Path) -> None:
    serve = Serve(tmp_path, str(work), "--bind", "0.0.0.0:0")
    try:
        first = serve.until("viewer on ")
        assert first.startswith("viewer on http://127.0.0.1:") and first.endswith(
            f" over {work}; Ctrl-C stops it"
        )
        port = urlsplit(first.split()[2]).port
        network = serve.until("visible to the network")
        prefix = f"the runs in {work} are now visible to the network, no login asked: "
        assert network.startswith(prefix)
        urls = network[len(prefix) :].split(", ")
        assert f"http://{socket.gethostname().lower()}:{port}/" in urls
        assert not any("0.0.0.0" in u or "127.0.0.1" in u for u in urls)
        for url in urls:  # each URL it gives answers (reached here over loopback)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/api/runs", headers={"Host": urlsplit(url).netloc})
            assert conn.getresponse().status == 200, url
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/runs", headers={"Host": f"evil.example:{port}"})
        assert conn.getresponse().status == 403
        conn.close()
        assert serve.stop() == 0
    finally:
        serve.kill()
    assert len(serve.seen) == 2, serve.seen  # no "still serving", nothing twice


def test_serve_of_the_default_work_dir_before_any_run(tmp_path: Path) -> None:
    serve = Serve(tmp_path, "--bind", "127.0.0.1:0")
    try:
        serve.until("viewer on ")
        note = serve.until("does not exist yet")
        assert note == (
            f"{tmp_path / '.patchbay-work'} does not exist yet: "
            "runs appear on the page as sim.run writes them there"
        )
        assert serve.stop() == 0
    finally:
        serve.kill()
    assert len(serve.seen) == 2, serve.seen
    assert not any("visible to the network" in line for line in serve.seen)


def test_serve_of_a_work_dir_that_is_not_there_is_exit_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "patchbay_vm_tasks", "serve", "NOPE"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        "error: --work-dir NOPE: no such folder (give the work dir of a sim.run; "
        "without --work-dir the default one is served)"
    ]
