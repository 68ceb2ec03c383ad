"""The results server (issue 25): patchbay-serve's push API, the stored runs and their
index, the comparison with the base branch, every refusal by its code with nothing
written outside the data dir, the index rebuilt from the folders, retention that never
takes a run being read, and a read-only server."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from resultsfixtures import (
    KEY,
    get,
    get_json,
    gz,
    member,
    post,
    raw_tar,
    results_server,
    sim_run,
    tar_gz,
    tree_digest,
    write_labs,
)

from patchbay_vm_tasks.viewer import api as api_mod
from patchbay_vm_tasks.viewer import archive, store

MAIN = {"project": "demo", "branch": "main", "commit": "a" * 40, "pr": None, "pr_url": "",
        "title": "main run", "created_at": "2026-03-20T10:00:00Z"}  # fmt: skip
PR = {"project": "demo", "branch": "feat-x", "commit": "b" * 40, "pr": 7,
      "pr_url": "https://github.com/o/demo/pull/7", "title": "a PR",
      "created_at": "2026-03-20T11:00:00Z"}  # fmt: skip


def index_rows(data: Path) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(data / store.INDEX)
    db.row_factory = sqlite3.Row
    try:
        return {r["path"]: r for r in db.execute("SELECT * FROM runs")}
    finally:
        db.close()


def folders(data: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (data / "runs").glob("*/*") if p.is_dir()}


def outside_snapshot(root: Path, data: Path) -> set[str]:
    """Every path below root that is not in the data dir."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.is_relative_to(data)
    }  # fmt: skip


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    sim_run(work, "sim-260320-100000")
    sim_run(work, "sim-260320-110000", factor=0.5, fail=True)
    return work


def test_a_push_is_stored_whole_indexed_and_served(tmp_path: Path, runs: Path) -> None:
    data = tmp_path / "data"
    inv = runs / "sim-260320-100000"
    with results_server(data) as (srv, app, _s):
        url = srv.url.rstrip("/")
        status, answer = post(url, "demo", tar_gz(inv, MAIN, top=inv.name))
        assert status == 200, answer
        path = answer["path"]
        project, run = path.split("/")
        assert answer["ok"] is True and answer["project"] == "demo" and answer["run"] == run
        assert answer["invocation"] == path and answer["view"] == f"/runs#{path}"
        assert store.RUN_ID.fullmatch(run)
        assert answer["kind"] == "sims" and answer["status"] == "ok"
        assert answer["summary"]["sims"] == 2 and answer["summary"]["passed"] == 2
        assert answer["comparison"] is None  # nothing of main before it
        # On disk as sent, byte for byte; in the index; nothing left in incoming/.
        stored = data / "runs" / project / run
        assert tree_digest(stored / inv.name) == tree_digest(inv)
        assert json.loads((stored / "run.json").read_text()) == MAIN
        assert list((data / "incoming").iterdir()) == []
        row = index_rows(data)[path]
        assert (row["branch"], row["commit_id"], row["title"]) == ("main", "a" * 40, "main run")
        # Listed, described, and opened in the viewer like a work dir.
        listing = get_json(url, "/api/results")
        assert [r["path"] for r in listing["runs"]] == [path]
        assert listing["projects"] == ["demo"] and listing["accepts_push"] is True
        detail = get_json(url, f"/api/results/{path}")
        assert detail["branch"] == "main" and detail["files"] > 5
        status, _, headers = get(url, f"/runs/{path}")
        assert status == 301 and headers["Location"] == f"{run}/"
        status, page, _ = get(url, f"/runs/{path}/")
        assert status == 200 and b"static/app.js" in page
        names = {r["name"] for r in get_json(url, f"/runs/{path}/api/runs")}
        assert names == {f"{inv.name}/ping-e2e", f"{inv.name}/iperf-e2e"}
        state = get_json(url, f"/runs/{path}/api/runs/{inv.name}%2Fping-e2e/state")
        assert state["label"] == "ping-e2e"
        combined = get_json(url, f"/runs/{path}/api/invocations/{inv.name}/combined-results")
        assert len(combined["runs"]) == 2
        assert get_json(url, f"/runs/{path}/api/pushed")["path"] == path
        for page_path in ("/", "/runs", "/static/results.js", "/static/results.css"):
            assert get(url, page_path)[0] == 200, page_path
        assert get(url, "/runs/")[0] == 301
        assert get(url, "/runs/demo/20260101_000000_000000-000000000000/")[0] == 404
        assert app.pushes_accepted == 1


def test_a_pr_run_is_compared_with_the_newest_run_of_its_base_branch(
    tmp_path: Path, runs: Path
) -> None:
    data = tmp_path / "data"
    good, worse = runs / "sim-260320-100000", runs / "sim-260320-110000"
    with results_server(data) as (srv, _app, _s):
        url = srv.url.rstrip("/")
        _, old_main = post(url, "demo", tar_gz(good, MAIN, top=good.name))
        _, new_main = post(url, "demo", tar_gz(good, {**MAIN, "commit": "c" * 40}, top=good.name))
        # Another project's main and an older PR run are never the base.
        post(url, "other", tar_gz(good, {**MAIN, "project": "other"}, top=good.name))
        _, old_pr = post(url, "demo", tar_gz(good, {**PR, "pr": 6}, top=good.name))
        pr_json = {**PR, "thresholds": ["throughput=-10%", "latency=+50%"]}
        status, answer = post(url, "demo", tar_gz(worse, pr_json, top=worse.name))
        assert status == 200, answer
        c = answer["comparison"]
        assert c["base"] == new_main["path"] and c["base_commit"] == "c" * 40
        assert c["base_branch"] == "main"
        assert c["worse"] >= 1 and c["newly_failed"] == []
        assert answer["status"] == "error" and answer["summary"]["failed_names"] == ["broken-e2e"]
        assert len(c["crossed"]) == 1 and "throughput=-10%" in c["crossed"][0]
        assert "iperf-e2e" in c["crossed"][0]
        detail = get_json(url, f"/api/results/{answer['path']}")
        (iperf,) = [s for s in detail["comparison"]["sims"] if s["sim"] == "iperf-e2e"]
        rows = {r["metric"]: r for r in iperf["rows"]}
        assert rows["down_mbit_s"]["class"] == "worse"
        assert rows["down_mbit_s"]["crossed"] == "throughput=-10%"
        assert round(rows["down_mbit_s"]["change_pct"]) == -50
        assert "where" not in detail["comparison"]["base"]  # no server path leaks
        assert detail["comparison"]["only_in_head"] == ["broken-e2e"]
        # A push to main compares with the main run before it.
        _, again = post(url, "demo", tar_gz(good, MAIN, top=good.name))
        assert again["comparison"]["base"] == new_main["path"]
        assert old_main["path"] != new_main["path"] and old_pr["comparison"]
        # run.json's base_branch chooses the base; a branch with no runs: not compared.
        _, rel = post(url, "demo", tar_gz(good, {**PR, "base_branch": "release"}, top=good.name))
        assert rel["comparison"] is None


def test_labs_are_compared_test_by_test(tmp_path: Path) -> None:
    base = write_labs(tmp_path / "base", {"crate/a/one": "success", "crate/b/two": "success"})
    head = write_labs(
        tmp_path / "head",
        {"crate/a/one": "success", "crate/b/two": "failed", "crate/c/new": "success"},
    )
    with results_server(tmp_path / "data") as (srv, _app, _s):
        url = srv.url.rstrip("/")
        status, first = post(url, "rusty", tar_gz(base, MAIN))
        assert status == 200 and first["kind"] == "labs" and first["status"] == "ok"
        status, answer = post(url, "rusty", tar_gz(head, PR))
        assert answer["status"] == "error" and answer["summary"]["failed_names"] == ["crate/b/two"]
        c = answer["comparison"]
        assert c["kind"] == "labs" and c["worse"] == 1 and c["newly_failed"] == ["crate/b/two"]
        detail = get_json(url, f"/api/results/{answer['path']}")
        assert detail["comparison"]["only_in_head"] == ["crate/c/new"]
        labs = get_json(url, f"/runs/{answer['path']}/api/runs")
        assert {r["name"] for r in labs} == {"crate/a/one", "crate/b/two", "crate/c/new"}


def test_an_invocations_contents_at_the_top_are_put_into_its_folder(
    tmp_path: Path, runs: Path
) -> None:
    inv = runs / "sim-260320-100000"
    with results_server(tmp_path / "data") as (srv, _app, _s):
        status, answer = post(srv.url.rstrip("/"), "demo", tar_gz(inv, MAIN))
        assert status == 200 and answer["kind"] == "sims"
        assert "put into sim-260320-100000/" in answer["warnings"][0]
        stored = tmp_path / "data" / "runs" / answer["path"]
        assert tree_digest(stored / "sim-260320-100000") == tree_digest(inv)
        assert (stored / "run.json").is_file()


def test_without_run_json_or_with_a_broken_one_the_run_is_kept_and_said(tmp_path: Path) -> None:
    labs = write_labs(tmp_path / "labs", {"c/t": "success"})
    (labs / "run.json").write_text('{"title": "a "quoted" title"}')  # the snippet's risk
    with results_server(tmp_path / "data") as (srv, _app, _s):
        url = srv.url.rstrip("/")
        status, answer = post(url, "demo", tar_gz(labs))
        assert status == 200 and "not readable JSON" in answer["warnings"][0]
        (labs / "run.json").unlink()
        status, answer = post(url, "demo", tar_gz(labs))
        assert status == 200 and answer["warnings"] == ["no run.json in the archive"]
        evil = {"pr_url": "javascript:alert(1)", "pr": "12", "title": "x\ny"}
        status, answer = post(url, "demo", tar_gz(labs, evil))
        assert answer["pr_url"] is None and answer["pr"] == 12 and answer["title"] == "xy"


# ---------------------------------------------------------------- refusals


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """A request written by hand (no Content-Length, chunked, odd headers)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    payload = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(payload) if payload.strip() else {}


def _head(port: int, extra: str) -> bytes:
    return (
        f"POST /api/push/demo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/gzip\r\n{extra}\r\n"
    ).encode()


def test_every_refusal_by_its_code_with_nothing_written_outside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    labs = write_labs(tmp_path / "labs", {"c/t": "success"})
    good = tar_gz(labs, MAIN)
    limits = archive.Limits(max_body=200_000, max_unpacked=300_000, max_members=50)
    with results_server(data, limits=limits) as (srv, _app, _s):
        url = srv.url.rstrip("/")
        port = urlsplit(url).port
        before = outside_snapshot(tmp_path, data)
        cases = {
            "no key": (post(url, "demo", good, key=None), 401, "API key"),
            "wrong key": (post(url, "demo", good, key=KEY[:-1] + "x"), 401, "API key"),
            "key too long": (post(url, "demo", good, key=KEY + "x"), 401, "API key"),
            "other scheme": (
                post(url, "demo", good, key=None, headers={"Authorization": f"Basic {KEY}"}),
                401,
                "API key",
            ),
            "bad project": (post(url, "..", good), 400, "project name"),
            "slash project": (post(url, "a%2Fb", good), 400, "project name"),
            "dash project": (post(url, "-x", good), 400, "project name"),
            "content type": (post(url, "demo", good, ctype="text/plain"), 415, "application/gzip"),
            "not gzip": (post(url, "demo", b"hello"), 400, "not gzip"),
            "not tar": (post(url, "demo", gz(b"hello world" * 99)), 400, "not a tar archive"),
            "empty tar": (post(url, "demo", tar_gz(None)), 400, "no member"),
            "dotdot": (post(url, "demo", raw_tar([member("../../evil", b"x")])), 400, "'..'"),
            "absolute": (post(url, "demo", raw_tar([member(f"{tmp_path}/evil")])), 400, "absolute"),
            "symlink": (
                post(url, "demo", raw_tar([member("l", kind=b"2", linkname=str(tmp_path))])),
                400,
                "symbolic link",
            ),
            "fifo": (post(url, "demo", raw_tar([member("f", kind=b"6")])), 400, "FIFO"),
            "device": (
                post(url, "demo", raw_tar([member("d", kind=b"3", devmajor=1, devminor=3)])),
                400,
                "character device",
            ),
            "too big": (post(url, "demo", os.urandom(250_000)), 413, "over 200000 bytes"),
            "unpacks too big": (
                post(url, "demo", raw_tar([member("z", bytes(400_000))])),
                413,
                "unpacks to more",
            ),
            "too many": (
                post(url, "demo", raw_tar([member(f"m{i}") for i in range(60)])),
                413,
                "more than 50 members",
            ),
            "no length": (raw_request(url, _head(port, "")), 411, "Content-Length"),
            "chunked too big": (
                raw_request(
                    url,
                    _head(port, "Transfer-Encoding: chunked\r\n"),
                    b"".join(b"10000\r\n" + bytes(65536) + b"\r\n" for _ in range(5))
                    + b"0\r\n\r\n",
                ),
                413,
                "over 200000",
            ),
            "chunked broken": (
                raw_request(url, _head(port, "Transfer-Encoding: chunked\r\n"), b"zz\r\nxx\r\n"),
                400,
                "chunked",
            ),
        }
        for name, ((status, answer), want, words) in cases.items():
            assert status == want, (name, status, answer)
            assert words in answer.get("error", ""), (name, answer)
        # A foreign Host (DNS rebinding) and a GET are refused too.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/push/demo", body=good, headers={"Host": "evil.example"})
        assert conn.getresponse().status == 403
        conn.close()
        assert get(url, "/api/push/demo")[0] == 405
        # Nothing stored, nothing left half-done, nothing written anywhere else.
        assert get_json(url, "/api/results")["runs"] == []
        assert folders(data) == set() and index_rows(data) == {}
        assert list((data / "incoming").iterdir()) == []
        assert outside_snapshot(tmp_path, data) == before
        assert not list(tmp_path.rglob("evil"))
        # and the server still takes a good push
        assert post(url, "demo", good)[0] == 200


def test_chunked_and_expect_100_continue(tmp_path: Path) -> None:
    labs = write_labs(tmp_path / "labs", {"c/t": "success"}, payload=300_000)
    body = tar_gz(labs, MAIN)
    with results_server(tmp_path / "data") as (srv, _app, _s):
        url = srv.url.rstrip("/")
        port = urlsplit(url).port
        chunks = b"".join(
            f"{len(body[i : i + 7000]):x}\r\n".encode() + body[i : i + 7000] + b"\r\n"
            for i in range(0, len(body), 7000)
        )
        status, answer = raw_request(
            url, _head(port, "Transfer-Encoding: chunked\r\n"), chunks + b"0\r\n\r\n"
        )
        assert status == 200, answer
        # Expect: 100-continue: the server says go on before the body is sent...
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(_head(port, f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"))
            assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(body)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200")
        # ... and refuses at once without it (a wrong key: no body sent at all).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            head = _head(port, f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n")
            s.sendall(head.replace(KEY.encode(), b"nope"))
            assert s.recv(100).startswith(b"HTTP/1.1 401")


def test_a_push_to_a_read_only_server_is_405(tmp_path: Path, runs: Path) -> None:
    data = tmp_path / "data"
    with results_server(data) as (srv, _app, _s):
        inv = runs / "sim-260320-100000"
        _, answer = post(srv.url.rstrip("/"), "demo", tar_gz(inv, MAIN, top=inv.name))
    stamp = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    with results_server(data, key=None) as (srv, _app, s):
        url = srv.url.rstrip("/")
        status, refusal = post(url, "demo", tar_gz(inv, MAIN))
        assert status == 405 and "--accept-push" in refusal["error"]
        listing = get_json(url, "/api/results")
        assert [r["path"] for r in listing["runs"]] == [answer["path"]]
        assert listing["accepts_push"] is False
        assert get(url, f"/runs/{answer['path']}/api/runs")[0] == 200
        assert s.rebuilt  # built in memory from the folders
    # Nothing was written: no file new, none changed.
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == stamp


# ---------------------------------------------------------------- the index and the folders


def test_the_index_is_rebuilt_from_the_folders(tmp_path: Path, runs: Path) -> None:
    data = tmp_path / "data"
    good, worse = runs / "sim-260320-100000", runs / "sim-260320-110000"
    with results_server(data) as (srv, _app, _s):
        url = srv.url.rstrip("/")
        answers = [
            post(url, "demo", tar_gz(good, MAIN, top=good.name))[1],
            post(url, "demo", tar_gz(worse, PR, top=worse.name))[1],
        ]
        before = get_json(url, "/api/results")["runs"]
    # Lost: made anew from the folders, with the same facts and comparison.
    for suffix in ("", "-wal", "-shm"):
        (data / (store.INDEX + suffix)).unlink(missing_ok=True)
    with results_server(data) as (srv, _app, s):
        assert s.rebuilt
        assert get_json(srv.url.rstrip("/"), "/api/results")["runs"] == before
    # Unreadable: put aside and rebuilt.
    (data / store.INDEX).write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (data / (store.INDEX + suffix)).unlink(missing_ok=True)
    with results_server(data) as (srv, _app, s):
        assert s.rebuilt and list(data.glob("index.sqlite3.unreadable-*"))
        assert get_json(srv.url.rstrip("/"), "/api/results")["runs"] == before
    # A folder gone behind its back: its row goes; a half-received push: deleted unseen.
    import shutil

    shutil.rmtree(data / "runs" / answers[0]["path"])
    (data / "incoming" / "push-x" / "tree" / "c").mkdir(parents=True)
    (data / "incoming" / "push-x" / "body.tar.gz").write_bytes(b"half")
    with results_server(data) as (srv, _app, _s):
        listed = get_json(srv.url.rstrip("/"), "/api/results")["runs"]
        assert [r["path"] for r in listed] == [answers[1]["path"]]
        assert list(index_rows(data)) == [answers[1]["path"]]
        assert list((data / "incoming").iterdir()) == []


def test_a_second_writer_of_one_data_dir_is_refused(tmp_path: Path) -> None:
    with (
        results_server(tmp_path / "data"),
        pytest.raises(store.DataDirBusy),
    ):
        store.Store(tmp_path / "data", writable=True)


# ---------------------------------------------------------------- retention


def _hold(url: str, path: str, s: store.Store) -> socket.socket:
    """A reader of a stored run: an event stream of its lab, left open."""
    port = urlsplit(url).port
    reader = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = f"GET /runs/{path}/api/runs/c%2Ft/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    reader.sendall(request.encode())
    assert b"200" in reader.recv(200)
    deadline = time.monotonic() + 5
    while not s.refs.get(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.refs.get(path) == 1
    return reader


@pytest.fixture
def labs_body(tmp_path: Path) -> tuple[bytes, int]:
    labs = write_labs(tmp_path / "labs", {"c/t": "success"}, payload=100_000)
    size = sum(p.stat().st_size for p in labs.rglob("*") if p.is_file())
    return tar_gz(labs, MAIN), size + len(json.dumps(MAIN))


def test_retention_deletes_the_oldest_first_never_one_being_read(
    tmp_path: Path, labs_body: tuple[bytes, int]
) -> None:
    body, size = labs_body
    data = tmp_path / "data"
    with results_server(data, retention=int(size * 3.5)) as (srv, _app, s):
        url = srv.url.rstrip("/")
        p = [post(url, "demo", body)[1]["path"] for _ in range(3)]
        assert folders(data) == set(p)
        p.append(post(url, "demo", body)[1]["path"])
        assert folders(data) == set(p[1:])  # the oldest went
        assert s.total_size() <= s.retention
        reader = _hold(url, p[1], s)  # someone reads the oldest one left
        p.append(post(url, "demo", body)[1]["path"])
        # The next oldest went instead; the one being read is there, whole.
        assert folders(data) == {p[1], p[3], p[4]}
        assert set(index_rows(data)) == {p[1], p[3], p[4]}
        assert get(url, f"/runs/{p[1]}/api/runs/c%2Ft/state")[0] == 200
        reader.close()
        assert get(url, f"/runs/{p[2]}/")[0] == 404
        assert list((data / "trash").iterdir()) == []


def test_a_run_being_read_is_deleted_once_let_go(
    tmp_path: Path, labs_body: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event stream notices its reader left when it next writes: its keep-alive.
    monkeypatch.setattr(api_mod, "KEEPALIVE_S", 0.5)
    body, size = labs_body
    data = tmp_path / "data"
    with results_server(data, retention=int(size * 1.5)) as (srv, _app, s):
        url = srv.url.rstrip("/")
        first = post(url, "demo", body)[1]["path"]
        reader = _hold(url, first, s)
        second = post(url, "demo", body)[1]["path"]
        # Over the limit, but the first is being read and the second just came.
        assert folders(data) == {first, second} and s.over_limit
        reader.close()
        deadline = time.monotonic() + 10
        while first in folders(data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert folders(data) == {second} and set(index_rows(data)) == {second}
        assert not s.over_limit


def test_sizes_parse_as_patchbay_serve_reads_them() -> None:
    assert store.parse_size("10GB") == 10 * 1000**3
    assert store.parse_size("500MB") == 500 * 1000**2
    assert store.parse_size("1.5GB") == 1_500_000_000
    assert store.parse_size("2GiB") == 2 * 1024**3
    assert store.parse_size("4096") == 4096
    assert store.parse_size("1 kb") == 1000
    for bad in ("", "GB", "-1GB", "10XB", "0", "1e9"):
        with pytest.raises(ValueError):
            store.parse_size(bad)


def test_pushes_at_once_are_each_stored_whole(tmp_path: Path) -> None:
    sources = [
        write_labs(tmp_path / f"labs{i}", {f"c/t{i}": "success"}, payload=50_000) for i in range(12)
    ]
    data = tmp_path / "data"
    with results_server(data) as (srv, _app, _s):
        url = srv.url.rstrip("/")
        answers: list = [None] * len(sources)

        def one(i: int) -> None:
            answers[i] = post(url, "demo", tar_gz(sources[i], MAIN))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sources))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(a[0] == 200 for a in answers), answers
        for i, (_status, answer) in enumerate(answers):
            stored = tree_digest(data / "runs" / answer["path"])
            stored.pop("run.json")
            assert stored == tree_digest(sources[i])
        assert len(set(index_rows(data))) == len(sources) == len(folders(data))
