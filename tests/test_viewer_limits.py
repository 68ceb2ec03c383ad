"""The viewer under bad runs and load (issue 19): FIFOs, deep nesting, huge offsets and
logs, many connections at once, half-sent requests. Each ends bounded: an answer (404,
400, 503), a skipped line, a window of a log, a timeout."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from test_viewer_fixture import INV_FAIL, INV_OK, make_workdir

from patchbay_vm_tasks import files
from patchbay_vm_tasks.viewer import api, logs, report
from patchbay_vm_tasks.viewer import server as viewer_server

PING = f"{INV_OK}/ping-e2e"
IPERF = f"{INV_OK}/iperf-e2e"
BROKEN = f"{INV_FAIL}/broken-e2e"
LOG = "device.sender.ping-check.stdout.log"
# Generous: a FIFO read would block forever, so anything answered at all passed.
ANSWER_S = 10


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return make_workdir(tmp_path)


@pytest.fixture
def srv(work: Path) -> Iterator[viewer_server.ViewerServer]:
    s = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    yield s
    s.shutdown()
    s.server_close()


def get(srv, path: str, timeout: float = ANSWER_S) -> tuple[int, dict[str, str], bytes]:
    port = srv.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, dict(res.getheaders()), body


def url(run: str, rest: str) -> str:
    return f"/api/runs/{quote(run, safe='')}/{rest}"


def runs_of(srv) -> dict[str, dict]:
    status, _, body = get(srv, "/api/runs")
    assert status == 200
    return {r["name"]: r for r in json.loads(body)}


def sse_lines(srv, path: str, until: bytes, seconds: float = 5.0) -> list[bytes]:
    """The stream's lines up to one that starts with `until` (or the time is up)."""
    port = srv.server_address[1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    f = sock.makefile("rb")
    lines = []
    try:
        while line := f.readline():
            lines.append(line)
            if line.startswith(until):
                break
    except TimeoutError:
        pass
    finally:
        f.close()
        sock.close()
    return lines


# --------------------------------------------------------------------- FIFOs


def test_a_fifo_state_json_blocks_no_request(srv, work: Path) -> None:
    (work / PING / "state.json").unlink()
    os.mkfifo(work / PING / "state.json")
    started = time.monotonic()
    listed = runs_of(srv)
    assert listed[PING]["label"] is None and listed[IPERF]["label"] == "iperf-e2e"
    assert get(srv, url(PING, "state"))[0] == 404
    assert "state.json" not in [e["path"] for e in json.loads(get(srv, url(PING, "logs"))[2])]
    assert get(srv, url(PING, "logs/state.json"))[0] == 404
    assert get(srv, url(PING, "files/state.json"))[0] == 404
    assert time.monotonic() - started < ANSWER_S


def test_fifos_as_log_progress_and_events(srv, work: Path, tmp_path: Path) -> None:
    os.mkfifo(work / PING / "device.sender.fifo.stdout.log")
    for name in ("progress.json", "combined-results.json"):
        (work / INV_OK / name).unlink()
        os.mkfifo(work / INV_OK / name)
    (work / IPERF / "events.jsonl").unlink()
    os.mkfifo(work / IPERF / "events.jsonl")
    started = time.monotonic()
    assert get(srv, url(PING, "logs/device.sender.fifo.stdout.log"))[0] == 404
    assert get(srv, f"/api/invocations/{INV_OK}/progress")[0] == 200  # manifest.json
    assert get(srv, f"/api/invocations/{INV_OK}/combined-results")[0] == 404
    assert IPERF not in runs_of(srv)  # a run needs a regular events.jsonl
    report.write_report(work, tmp_path / "r.html", INV_OK)
    assert time.monotonic() - started < ANSWER_S


# --------------------------------------------------------------- deep nesting


def test_deeply_nested_state_breaks_only_its_own_run(srv, work: Path) -> None:
    (work / PING / "state.json").write_text("[" * 100_000)
    (work / IPERF / "state.json").write_text("[" * 200 + "]" * 200)  # parses; over the limit
    listed = runs_of(srv)
    assert listed[PING]["label"] is None and listed[PING]["status"] is None
    assert listed[IPERF]["label"] is None
    assert listed[BROKEN]["label"] == "broken-e2e"
    assert get(srv, url(PING, "state"))[0] == 404
    assert get(srv, url(BROKEN, "state"))[0] == 200
    (work / INV_OK / "combined-results.json").write_text('{"runs": ' + "[" * 50_000)
    status, _, body = get(srv, f"/api/invocations/{INV_OK}/combined-results")
    assert (status, json.loads(body)) == (404, {"runs": []})


def test_a_log_of_20000_brackets_keeps_the_log_list(srv, work: Path) -> None:
    (work / PING / "device.sender.deep.stdout.log").write_text("[" * 20_000)
    status, _, body = get(srv, url(PING, "logs"))
    assert status == 200
    kinds = {e["path"]: e["kind"] for e in json.loads(body)}
    assert kinds["device.sender.deep.stdout.log"] == "text"
    assert kinds[LOG] == "text" and "state.json" in kinds


def test_a_broken_events_line_is_skipped_and_the_stream_goes_on(srv, work: Path) -> None:
    events = work / PING / "events.jsonl"
    good = [json.loads(line) for line in events.read_text().splitlines()]
    last = good[-1]["opid"]
    with events.open("a") as f:
        f.write("[" * 50_000 + "\n")  # RecursionError in json
        f.write('{"opid": ' + str(last + 1) + ', "x": ' + "[" * 150 + "]" * 150 + "}\n")
        f.write("x" * (logs.MAX_EVENT_LINE + 10) + "\n")  # longer than a window
        f.write(json.dumps({"opid": last + 2, "kind": "link_up", "timestamp": "t"}) + "\n")
    lines = sse_lines(srv, url(PING, "events"), until=f'data: {{"opid": {last + 2}'.encode())
    data = [json.loads(line[6:]) for line in lines if line.startswith(b"data: ")]
    assert [e["opid"] for e in data] == [*(e["opid"] for e in good), last + 2]
    skipped = [line for line in lines if line.startswith(b": skipped")]
    assert len(skipped) == 3, skipped


def test_parse_event_bounds() -> None:
    assert logs.parse_event(b'{"opid": 1}') == {"opid": 1}
    assert logs.parse_event(b"[" * 100_000) is None
    assert logs.parse_event(b'{"opid": 1, "a": NaN}') is None
    assert logs.parse_event(b'{"opid": true}') is None
    deep = b'{"opid": 1, "a": ' + b"[" * files.MAX_JSON_DEPTH + b"]" * files.MAX_JSON_DEPTH + b"}"
    assert logs.parse_event(deep) is None
    assert files.json_depth(json.loads(b"[" * 127 + b"]" * 127)) == 127


# ------------------------------------------------------------- query values


@pytest.mark.parametrize(
    "query",
    ["99999999999999999999", "1" * 19, "-1", "%C2%B2", "%D9%A0", "1_0", "%201", "", "0x10"],
)
def test_bad_offsets_are_400(srv, query: str) -> None:
    for rest in (f"logs/{LOG}?after={query}", f"events?after={query}", f"logs/{LOG}?limit={query}"):
        status, _, body = get(srv, url(PING, rest))
        assert status == 400, rest
        assert "1 to 18 digits" in json.loads(body)["error"]
    assert get(srv, f"/api/runs?after={query}")[0] == 400


def test_largest_offset_reads_nothing(srv) -> None:
    status, headers, body = get(srv, url(PING, f"logs/{LOG}?after={'9' * 18}"))
    assert (status, body) == (200, b"")
    assert headers["X-Log-Next"] == "9" * 18


# ---------------------------------------------------------------- big logs


@pytest.fixture
def big_log(work: Path) -> tuple[str, bytes]:
    name = "device.sender.big.stdout.log"
    line = b"".join(b"%08d abcdefghijklmnopqrstuvwxyz\n" % i for i in range(1000))
    data = line * 200  # 7 MB
    (work / PING / name).write_bytes(data)
    return name, data


def test_a_big_log_is_served_in_windows(srv, big_log) -> None:
    name, data = big_log
    status, headers, body = get(srv, url(PING, f"logs/{name}?after=0"))
    assert status == 200 and len(body) == api.LOG_WINDOW and body == data[: api.LOG_WINDOW]
    assert headers["X-Log-Size"] == str(len(data))
    assert headers["X-Log-Next"] == str(api.LOG_WINDOW)
    _, _, body = get(srv, url(PING, f"logs/{name}?after={len(data) - 5}"))
    assert body == data[-5:]
    _, headers, body = get(srv, url(PING, f"logs/{name}?after=100&limit=10"))
    assert body == data[100:110] and headers["X-Log-Next"] == "110"
    _, headers, body = get(srv, url(PING, f"logs/{name}?after=0&limit=0"))
    assert body == b"" and headers["X-Log-Size"] == str(len(data))
    # Larger limits are cut to the window.
    _, _, body = get(srv, url(PING, f"logs/{name}?after=0&limit={10**12}"))
    assert len(body) == api.LOG_WINDOW
    # The whole log (the page's "raw" link): all of it, sent as it is read.
    status, headers, body = get(srv, url(PING, f"logs/{name}"))
    assert status == 200 and body == data and headers["Content-Length"] == str(len(data))


def record_reads(monkeypatch, name: str) -> list[int]:
    """The sizes os.read is asked for on the file called name (from now on)."""
    asked: list[int] = []
    real_read = os.read

    def read(fd: int, n: int) -> bytes:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
                asked.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    return asked


def test_the_server_reads_a_big_log_in_bounded_pieces(srv, big_log, monkeypatch) -> None:
    """Every read the server makes of the file asks for at most a chunk (64 KiB) when it
    sends the whole log, and at most a window (1 MiB) in all for a window: a 7 MB log (or
    a 200 MB one) is never held whole."""
    name, data = big_log
    asked = record_reads(monkeypatch, name)
    assert get(srv, url(PING, f"logs/{name}"))[2] == data
    assert len(asked) >= len(data) // files.CHUNK and max(asked) <= files.CHUNK
    asked.clear()
    assert len(get(srv, url(PING, f"logs/{name}?after=0"))[2]) == api.LOG_WINDOW
    assert asked and sum(asked) <= api.LOG_WINDOW + logs.SAMPLE_BYTES


def test_file_stream_chunks_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * files.CHUNK + 5))
    fd = os.open(path, os.O_RDONLY)
    stream = files.FileStream(fd, 2, 3 * files.CHUNK)
    pieces = list(stream)
    assert [len(p) for p in pieces] == [files.CHUNK] * 3
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once done
    fd = os.open(path, os.O_RDONLY)
    files.FileStream(fd, 0, 10).close()  # never iterated: still closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_the_report_embeds_a_bounded_tail_of_a_big_log(work: Path, big_log, monkeypatch) -> None:
    name, data = big_log
    asked = record_reads(monkeypatch, name)
    text = report.report_data(work, INV_OK)["runData"][PING]["logText"][name]
    assert text.startswith(f"[... {len(data) - report.LOG_CAP} earlier bytes left out")
    assert text.endswith(data[-report.LOG_CAP :].decode())
    # Its sample for the kind, then its tail: never the whole 7 MB.
    assert sum(asked) <= report.LOG_CAP + logs.SAMPLE_BYTES


# ------------------------------------------------------------------ load


def test_200_concurrent_requests_are_all_answered(srv) -> None:
    def one(_i: int) -> int:
        return get(srv, "/api/runs", timeout=120)[0]

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200


def test_200_open_connections_at_once_all_get_in(srv) -> None:
    """Connected all before any is answered: they wait in the listen backlog."""
    port = srv.server_address[1]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(200)]
    try:
        for s in socks:
            s.sendall(f"GET /api/runs HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        answers = []
        for s in socks:
            f = s.makefile("rb")
            answers.append(f.readline())
            f.close()
    finally:
        for s in socks:
            s.close()
    assert all(a.startswith(b"HTTP/1.0 200") for a in answers)


def handler_threads() -> list[threading.Thread]:
    """The server's threads that handle one connection each (socketserver names them)."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_half_sent_requests_time_out_and_threads_stay_bounded(work: Path) -> None:
    s = viewer_server.serve_in_thread(work, "127.0.0.1:0", workers=8, timeout=1.0)
    port = s.server_address[1]
    half = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            half.append(sock)
        # Every worker taken by a half-sent request, and no thread more for the other 32.
        deadline = time.monotonic() + 30  # liveness only
        while (busy := len(handler_threads())) < 8:
            assert time.monotonic() < deadline, handler_threads()
            time.sleep(0.01)
        assert busy == 8
        # A whole request still gets its answer once the half-sent ones have timed out
        # (the client's timeout guards against a hang only).
        assert get(s, "/api/runs", timeout=60)[0] == 200
        # The server closed each half-sent connection (EOF), after about its timeout.
        for sock in half:
            assert sock.recv(100) == b""
    finally:
        for sock in half:
            sock.close()
        s.shutdown()
        s.server_close()


def test_live_streams_are_limited_and_plain_requests_still_served(work: Path) -> None:
    s = viewer_server.serve_in_thread(work, "127.0.0.1:0", workers=4, streams=2)
    port = s.server_address[1]
    held = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(
                f"GET /api/runs/subscribe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            assert sock.recv(100).startswith(b"HTTP/1.0 200")
            held.append(sock)
        assert get(s, "/api/runs/subscribe", timeout=10)[0] == 503
        assert get(s, "/api/runs", timeout=10)[0] == 200
    finally:
        for sock in held:
            sock.close()
        s.shutdown()
        s.server_close()


def test_an_unexpected_error_is_a_500_not_a_dead_server(srv, monkeypatch, capsys) -> None:
    def boom(target: str) -> api.Response:
        raise RuntimeError("bug")

    monkeypatch.setattr(srv.api, "handle", boom)
    status, _, body = get(srv, "/api/runs")
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    monkeypatch.undo()
    assert get(srv, "/api/runs")[0] == 200
    assert "RuntimeError: bug" in capsys.readouterr().err
