"""The viewer's HTTP API against a hand-written work dir: every route, encoded run names,
traversal attempts, the Host check, live event tails. No browser."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from test_viewer_fixture import INV_FAIL, INV_OK, SECRET, make_workdir

from patchbay_vm_tasks.viewer import logs
from patchbay_vm_tasks.viewer import server as viewer_server

PING = f"{INV_OK}/ping-e2e"
IPERF = f"{INV_OK}/iperf-e2e"
BROKEN = f"{INV_FAIL}/broken-e2e"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return make_workdir(tmp_path)


@pytest.fixture
def srv(work: Path) -> Iterator[viewer_server.ViewerServer]:
    s = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    yield s
    s.shutdown()
    s.server_close()


def get(srv, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    port = srv.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", path, skip_host=True)
    if host != "-":  # "-": send no Host header at all
        conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, res.getheader("Content-Type") or "", body


def run_url(run: str, rest: str) -> str:
    return f"/api/runs/{quote(run, safe='')}/{rest}"


class Sse:
    """A server-sent event stream read line by line with a deadline."""

    def __init__(self, srv, path: str) -> None:
        port = srv.server_address[1]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def data(self, n: int, timeout: float = 5.0) -> list[str]:
        out: list[str] = []
        self.sock.settimeout(timeout)
        while len(out) < n:
            line = self.file.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                out.append(line[6:].decode().rstrip("\n"))
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_runs_lists_each_sim_folder_newest_first(srv) -> None:
    status, ctype, body = get(srv, "/api/runs")
    assert status == 200 and ctype == "application/json"
    runs = json.loads(body)
    assert runs == [
        {"name": BROKEN, "label": "broken-e2e", "status": "stopped", "invocation": INV_FAIL},
        {"name": PING, "label": "ping-e2e", "status": "stopped", "invocation": INV_OK},
        {"name": IPERF, "label": "iperf-e2e", "status": "stopped", "invocation": INV_OK},
    ]  # `latest` and the linked folder (links) are not listed


def test_state_of_an_url_encoded_run(srv) -> None:
    status, _, body = get(srv, run_url(PING, "state"))
    assert status == 200
    state = json.loads(body)
    assert state["label"] == "ping-e2e" and state["routers"]["home"]["nat"] == "home"
    # The slash may also arrive unencoded? No: {run} is one segment, as in the Rust server.
    assert get(srv, f"/api/runs/{PING}/state")[0] == 404


def test_half_written_state_is_404_not_a_crash(srv, work: Path) -> None:
    (work / PING / "state.json").write_text('{"opid": 3, "label": "pi')
    assert get(srv, run_url(PING, "state"))[0] == 404
    runs = json.loads(get(srv, "/api/runs")[2])
    assert {"name": PING, "label": None, "status": None, "invocation": INV_OK} in runs


def test_logs_list_with_node_and_kind(srv) -> None:
    status, _, body = get(srv, run_url(IPERF, "logs"))
    assert status == 200
    logs = json.loads(body)
    by_path = {e["path"]: e for e in logs}
    assert by_path["device.client.iperf-client.stdout.log"] == {
        "node": "client",
        "kind": "jsonl",  # one JSON line: jsonl, as patchbay's server says
        "path": "device.client.iperf-client.stdout.log",
    }
    assert by_path["device.server.iperf-server.stdout.log"]["kind"] == "text"
    assert by_path["events.jsonl"] == {"node": "_run", "kind": "lab_events", "path": "events.jsonl"}
    assert by_path["state.json"]["kind"] == "json"
    assert [e["node"] for e in logs] == sorted(e["node"] for e in logs)


def test_log_kinds_sniffed_as_patchbay_server_does() -> None:
    """detect_log_kind of patchbay-server, case by case (found driving its ui/ over our API)."""
    kind = logs.kind_of
    qlog_head = b'\x1e{"qlog_version":"0.3","file_schema":"urn:ietf:params:qlog:file:sequential",'
    qlog_head += b'"serialization_format":"JSON-SEQ"}\n\x1e{"time":0,"name":"x"}\n'
    # qlog by content, whatever the name (.sqlog); not jsonl, which the timeline would read
    assert kind("device.client.conn.sqlog", qlog_head) == "qlog"
    assert kind("device.client.x.qlog-0", b"anything") == "qlog"
    trace = b'{"timestamp":"t","level":"INFO","target":"a","fields":{}}'
    # a tracing line among the first five wins even if a later line is cut off
    assert kind("device.c.out.log", trace + b'\n{"cut') == "tracing_jsonl"
    # ...but a non-object line before it does not
    assert kind("device.c.out.log", b"[1]\n" + trace + b"\n") == "jsonl"
    # U+2028 / NEL inside a JSON string do not end its line (str.splitlines would)
    assert kind("device.c.out.log", '{"a":"x\u2028y\x85z"}\n'.encode()) == "jsonl"
    assert kind("device.c.out.log", b'{"a":NaN}') == "text"
    assert kind("device.c.out.log", b'{"a":1}') == "jsonl"
    assert kind("device.c.out.log", b'{"a":\n1}') == "json"
    assert kind("device.c.out.log", b"\x1b[31mred\x1b[0m") == "ansi_text"
    assert kind("device.c.tracing.jsonl", b"not json") == "tracing_jsonl"
    assert kind("events.jsonl", b"") == "lab_events"


def test_links_are_not_listed_as_logs(srv) -> None:
    paths = [e["path"] for e in json.loads(get(srv, run_url(PING, "logs"))[2])]
    assert "device.sender.leak.stdout.log" not in paths and "outlink" not in paths


def test_log_tail_from_a_byte_offset(srv, work: Path) -> None:
    name = "device.sender.ping-check.stdout.log"
    full = (work / PING / name).read_bytes()
    status, ctype, body = get(srv, run_url(PING, f"logs/{name}"))
    assert status == 200 and ctype.startswith("text/plain") and body == full
    assert get(srv, run_url(PING, f"logs/{name}?after=10"))[2] == full[10:]
    assert get(srv, run_url(PING, f"logs/{name}?after={len(full) + 5}"))[2] == b""
    assert get(srv, run_url(PING, f"logs/{name}?after=x"))[0] == 400


def test_files_route(srv) -> None:
    status, ctype, body = get(srv, run_url(IPERF, "files/results.json"))
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["steps"][0]["down_bytes"] == "262144000"
    status, _, body = get(srv, run_url(BROKEN, "files/sim.json"))
    assert json.loads(body)["error"]["step"]["id"] == "ping-check"
    assert get(srv, run_url(IPERF, "files/nope.json"))[0] == 404


def test_combined_results_and_progress(srv) -> None:
    status, _, body = get(srv, f"/api/invocations/{INV_OK}/combined-results")
    assert status == 200
    assert [r["sim"] for r in json.loads(body)["runs"]] == ["ping-e2e", "iperf-e2e"]
    status, _, body = get(srv, f"/api/invocations/{INV_FAIL}/combined-results")
    assert status == 404 and json.loads(body) == {"runs": []}
    status, _, body = get(srv, f"/api/invocations/{INV_FAIL}/progress")
    assert status == 200 and json.loads(body)["error"] == 1


def test_page_and_static_files(srv) -> None:
    status, ctype, body = get(srv, "/")
    assert status == 200 and ctype.startswith("text/html") and b"static/app.js" in body
    assert get(srv, "/static/app.js")[1].startswith("text/javascript")
    assert get(srv, "/static/style.css")[0] == 200
    assert get(srv, "/static/../api.py")[0] == 404
    assert get(srv, "/nothing")[0] == 404


TRAVERSALS = [
    run_url(PING, "files/..%2F..%2F..%2Foutside%2Fsecret.txt"),
    run_url(PING, "files/../../../outside/secret.txt"),
    run_url(PING, "logs/..%2f..%2f..%2foutside%2fsecret.txt"),
    run_url(PING, "files/%2E%2E/%2E%2E/%2E%2E/outside/secret.txt"),
    run_url(PING, "files/outlink/secret.txt"),
    run_url(PING, "logs/device.sender.leak.stdout.log"),
    run_url(PING, "files/device.sender.leak.stdout.log"),
    run_url(PING, "files/%2Fetc%2Fpasswd"),
    run_url(PING, "files//etc/passwd"),
    run_url(f"{INV_OK}/../../outside", "files/secret.txt"),
    run_url("../outside", "state"),
    run_url(f"{INV_OK}/linked-run", "files/secret.txt"),
    run_url("latest/broken-e2e", "state"),
    "/api/runs/..%2F..%2Foutside/files/secret.txt",
    "/api/invocations/..%2Foutside/combined-results",
    "/api/invocations/../outside/combined-results",
    "/api/invocations/%2E%2E/progress",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_refused(srv, path: str) -> None:
    status, _, body = get(srv, path)
    assert status == 404
    assert SECRET.encode() not in body


def test_wrong_host_is_refused(srv) -> None:
    port = srv.server_address[1]
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", "", "-"):
        status, _, body = get(srv, "/api/runs", host=host)
        assert status == 403, host
        assert b"ping-e2e" not in body
    assert get(srv, "/api/runs", host=f"localhost:{port}")[0] == 200


def test_events_stream_waits_for_a_partial_line(srv, work: Path) -> None:
    stream = Sse(srv, run_url(BROKEN, "events"))
    try:
        assert stream.status == 200
        first = [json.loads(d) for d in stream.data(5)]
        assert [e["kind"] for e in first] == [
            "lab_created",
            "ix_created",
            "router_added",
            "device_added",
            "device_added",
        ]
        # The half-written opid 99 is not sent until its line ends.
        with (work / BROKEN / "events.jsonl").open("a") as f:
            f.write('wn", "device": "sender", "iface": "eth0"}\n')
        late = json.loads(stream.data(1)[0])
        assert late["opid"] == 99 and late["kind"] == "link_down"
    finally:
        stream.close()


def test_partial_line_is_not_sent_early(srv) -> None:
    stream = Sse(srv, run_url(BROKEN, "events?after=4"))
    try:
        assert [json.loads(d)["opid"] for d in stream.data(1)] == [5]
        stream.sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            stream.data(1, timeout=1.5)
    finally:
        stream.close()


def test_runs_subscribe_tells_of_a_new_run(srv, work: Path) -> None:
    from test_viewer_fixture import write_invocation

    stream = Sse(srv, "/api/runs/subscribe")
    try:
        assert stream.data(1) == ["update"]  # at once, then on change
        write_invocation(work, "sim-260301-140000", [("late-e2e", "ping")])
        assert stream.data(1) == ["update"]
        names = [r["name"] for r in json.loads(get(srv, "/api/runs")[2])]
        assert names[0] == "sim-260301-140000/late-e2e"
    finally:
        stream.close()


def test_unknown_runs_and_routes(srv) -> None:
    assert get(srv, run_url("sim-000000-000000/nope", "state"))[0] == 404
    assert get(srv, run_url(PING, "bogus"))[0] == 404
    assert get(srv, run_url(PING, "state/extra"))[0] == 404
    assert Sse(srv, run_url("nope", "events")).status == 404


def test_single_run_work_dir(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    s = viewer_server.serve_in_thread(work / INV_OK / "ping-e2e", "127.0.0.1:0")
    try:
        runs = json.loads(get(s, "/api/runs")[2])
        assert runs == [
            {"name": "ping-e2e", "label": "ping-e2e", "status": "stopped", "invocation": None}
        ]
        assert get(s, "/api/runs/ping-e2e/state")[0] == 200
    finally:
        s.shutdown()
        s.server_close()


def test_parse_bind() -> None:
    assert viewer_server.parse_bind("127.0.0.1:7421") == ("127.0.0.1", 7421)
    assert viewer_server.parse_bind("[::1]:80") == ("::1", 80)
    for bad in ("7421", "host:", ":80", "host:x"):
        with pytest.raises(ValueError):
            viewer_server.parse_bind(bad)
    # Which Host headers each bind accepts: test_viewer_serve.py.


def test_shutdown_ends_open_streams(work: Path) -> None:
    s = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    stream = Sse(s, run_url(PING, "events"))
    stream.data(3)
    s.shutdown()
    s.server_close()
    # The stream ends (EOF) rather than going on: a stream left open would send its
    # keep-alive comment within api.KEEPALIVE_S. The socket timeout is liveness only.
    stream.sock.settimeout(60)
    rest = []
    while line := stream.file.readline():
        rest.append(line)
        assert not line.startswith(b": keep-alive"), f"the stream went on after shutdown: {rest}"
    stream.close()
