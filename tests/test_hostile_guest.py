"""A hostile guest (issue 19): links planted under the work dir lead nowhere.

The guest writes /work through 9p with security_model=none, so it can put a symbolic link
at any name there. Here links to files holding a token replace a run's state.json, the
invocation's progress.json and combined-results.json, a log, the run's `files/` folder,
and `.patchbay-bin`; then every viewer route (the real HTTP server on 127.0.0.1),
`sim.report`, the JUnit file, the staging of the runner, the pruning of old runs and the
pulling of runs home (QEMU_VM_FS=none) run over them. The token must never appear, and
nothing outside the work dir may change.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from test_viewer_fixture import INV_FAIL, INV_OK, SECRET, make_workdir

from patchbay_vm_tasks import files
from patchbay_vm_tasks.errors import TaskError
from patchbay_vm_tasks.sim import runner, staging, workdir
from patchbay_vm_tasks.viewer import junit, report
from patchbay_vm_tasks.viewer import server as viewer_server
from patchbay_vm_tasks.vm import sync

TOKEN = "TOKEN-OUTSIDE-THE-WORK-DIR-5f1c"
PING = f"{INV_OK}/ping-e2e"
LOG = "device.sender.ping-check.stdout.log"


def _link(target: Path, at: Path) -> None:
    """Replace whatever is at `at` with a link to target, as the guest would."""
    if at.is_dir() and not at.is_symlink():
        shutil.rmtree(at)
    else:
        at.unlink(missing_ok=True)
    os.symlink(target, at)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry below folder with its kind, bytes, mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(path.relative_to(folder))] = (st.st_mode, data, st.st_mtime_ns)
    return out


@pytest.fixture
def hostile(tmp_path: Path) -> SimpleNamespace:
    work = make_workdir(tmp_path)
    outside = tmp_path / "outside"
    # The outside files are shaped as each reader would accept them, so that a read
    # through a link would show.
    (outside / "state.json").write_text(
        json.dumps({"opid": 1, "label": TOKEN, "status": "stopped", "routers": {}})
    )
    (outside / "progress.json").write_text(
        json.dumps(
            {
                "run": TOKEN,
                "status": "done",
                "total": 1,
                "simulations": [{"sim": TOKEN, "status": "error", "sim_dir": "ping-e2e"}],
            }
        )
    )
    (outside / "combined-results.json").write_text(
        json.dumps({"runs": [{"run": TOKEN, "sim": TOKEN, "steps": [{"id": TOKEN}]}]})
    )
    (outside / "token.log").write_text(f"{TOKEN}\n")
    (outside / "files" / "gen").mkdir(parents=True)
    (outside / "files" / "gen" / "content").write_text(TOKEN)
    (outside / "bin").mkdir()
    (outside / "bin" / "keep").write_text(TOKEN)
    (outside / "events.jsonl").write_text(
        json.dumps({"opid": 1, "kind": "lab_created", "label": TOKEN}) + "\n"
    )

    run = work / PING
    _link(outside / "state.json", run / "state.json")
    _link(outside / "token.log", run / LOG)
    _link(outside / "files", run / "files")
    _link(outside / "state.json", run / "sim.json")
    _link(outside / "combined-results.json", run / "results.json")
    inv = work / INV_OK
    _link(outside / "progress.json", inv / "progress.json")
    _link(outside / "progress.json", inv / "manifest.json")
    _link(outside / "combined-results.json", inv / "combined-results.json")
    # A would-be run whose events.jsonl is a link: not a run at all.
    (inv / "evil-e2e").mkdir()
    _link(outside / "events.jsonl", inv / "evil-e2e" / "events.jsonl")
    _link(outside / "state.json", inv / "evil-e2e" / "state.json")
    # Staging's folder, and the release cache, lead out.
    _link(outside / "bin", work / ".patchbay-bin")
    (work / ".patchbay-cache" / "v9.9.9").mkdir(parents=True)
    _link(outside / "token.log", work / ".patchbay-cache" / "v9.9.9" / "patchbay")
    return SimpleNamespace(work=work, outside=outside, before=snapshot(outside))


def assert_clean(h: SimpleNamespace, *texts: bytes | str) -> None:
    for text in texts:
        raw = text.encode() if isinstance(text, str) else text
        assert TOKEN.encode() not in raw
        assert SECRET.encode() not in raw
    assert snapshot(h.outside) == h.before, "something outside the work dir changed"


# ------------------------------------------------------------------------- viewer


@pytest.fixture
def srv(hostile: SimpleNamespace) -> Iterator[viewer_server.ViewerServer]:
    s = viewer_server.serve_in_thread(hostile.work, "127.0.0.1:0")
    yield s
    s.shutdown()
    s.server_close()


def get(srv, path: str) -> tuple[int, bytes]:
    port = srv.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


def read_stream(srv, path: str, seconds: float = 1.5) -> bytes:
    """What an event stream sends within `seconds`."""
    port = srv.server_address[1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            piece = sock.recv(65536)
            if not piece:
                break
            got += piece
    except TimeoutError:
        pass
    finally:
        sock.close()
    return got


def test_no_route_reads_through_a_planted_link(hostile, srv) -> None:
    bodies: list[bytes] = []
    status, body = get(srv, "/api/runs")
    bodies.append(body)
    listed = json.loads(body)
    names = [r["name"] for r in listed]
    assert f"{INV_OK}/evil-e2e" not in names  # its events.jsonl is a link
    ping = next(r for r in listed if r["name"] == PING)
    assert ping["label"] is None and ping["status"] is None  # state.json is a link
    for run in names:
        base = f"/api/runs/{quote(run, safe='')}"
        for rest in ("state", "logs", "files/sim.json", "files/results.json", "files/state.json"):
            bodies.append(get(srv, f"{base}/{rest}")[1])
        for entry in json.loads(get(srv, f"{base}/logs")[1]):
            for query in ("", "?after=0", "?after=0&limit=100"):
                status, body = get(srv, f"{base}/logs/{quote(entry['path'])}{query}")
                assert status == 200
                bodies.append(body)
        bodies.append(read_stream(srv, f"{base}/events", 1.0))
    base = f"/api/runs/{quote(PING, safe='')}"
    for rest in (
        f"logs/{LOG}",
        f"logs/{LOG}?after=0",
        f"files/{LOG}",
        "files/files/gen/content",
        "files/state.json",
        "files/sim.json",
        "state",
    ):
        status, body = get(srv, f"{base}/{rest}")
        assert status == 404, rest
        bodies.append(body)
    for inv in (INV_OK, INV_FAIL, "latest"):
        for what in ("combined-results", "progress"):
            bodies.append(get(srv, f"/api/invocations/{inv}/{what}")[1])
    assert get(srv, f"/api/invocations/{INV_OK}/combined-results")[0] == 404
    assert get(srv, f"/api/invocations/{INV_OK}/progress")[0] == 404
    bodies.append(read_stream(srv, "/api/runs/subscribe", 1.0))
    assert_clean(hostile, *bodies)


def test_report_and_junit_embed_nothing_from_outside(hostile, tmp_path: Path) -> None:
    html = report.write_report(hostile.work, tmp_path / "r.html", INV_OK).read_text()
    assert "ping-e2e" in html and "iperf-e2e" in html  # the run is there, its links are not
    latest = report.write_report(hostile.work, tmp_path / "latest.html").read_text()
    xml = junit.write_sim_junit(hostile.work, tmp_path / "j.xml", INV_OK).read_text()
    data = report.report_data(hostile.work, INV_OK)
    assert data["runData"][PING]["state"] is None
    assert "sim.json" not in data["runData"][PING]["files"]
    assert LOG not in data["runData"][PING]["logText"]
    assert data["progress"] == {} and data["combined"] == {}
    assert_clean(hostile, html, latest, xml)


def test_report_latest_link_leading_out_is_not_followed(hostile, tmp_path: Path) -> None:
    _link(hostile.outside, hostile.work / "latest")
    # `latest` names no folder of the work dir: the newest sim-* folder is used instead.
    assert report.resolve_invocation(hostile.work, "latest") == INV_FAIL
    html = report.write_report(hostile.work, tmp_path / "r.html").read_text()
    assert_clean(hostile, html)


# ------------------------------------------------------------------------ staging


def test_staging_replaces_planted_links_and_writes_nothing_outside(hostile, tmp_path) -> None:
    work = hostile.work
    dest = runner.install_runner(runner.builtin_runner(), work)
    assert dest == work / ".patchbay-bin" / "patchbay"
    assert not (work / ".patchbay-bin").is_symlink() and (work / ".patchbay-bin").is_dir()
    assert stat.S_IMODE(dest.lstat().st_mode) == 0o755 and dest.read_bytes().startswith(b"#!")
    # A link at the runner's own name: replaced by the new file, its target untouched.
    _link(hostile.outside / "bin" / "keep", dest)
    user_runner = tmp_path / "my-patchbay"
    user_runner.write_bytes(b"\x7fELF runner")
    src = runner.ResolvedRunner(runner.RunnerKind.PATH, user_runner, "path:x")
    runner.install_runner(src, work)
    assert not dest.is_symlink() and dest.read_bytes() == b"\x7fELF runner"
    _link(hostile.outside / "bin", work / ".patchbay-bin")
    runner.install_runner(runner.builtin_runner(), work)
    assert_clean(hostile, dest.read_bytes())


def test_a_cached_runner_that_is_a_link_is_never_staged(hostile) -> None:
    work = hostile.work
    assert runner.newest_cached_runner(work) is None
    cached = runner.cached_runner_path(work, "v9.9.9")
    with pytest.raises(TaskError, match="cannot stage the runner from .*v9.9.9/patchbay"):
        runner.install_runner(runner.ResolvedRunner(runner.RunnerKind.TAG, cached, "v9.9.9"), work)
    staged = work / ".patchbay-bin" / "patchbay"
    assert not staged.exists() or TOKEN.encode() not in staged.read_bytes()
    assert_clean(hostile)


def test_release_cache_link_is_replaced_before_a_download(hostile, monkeypatch) -> None:
    work = hostile.work
    _link(hostile.outside / "bin", work / ".patchbay-cache")

    def download(url: str, dest: Path, **_kw) -> str:
        assert dest.parent == work / ".patchbay-cache" / "v1.2.3"
        assert not dest.parent.is_symlink() and not (work / ".patchbay-cache").is_symlink()
        raise runner.HttpError("not found", 404)

    monkeypatch.setattr(runner, "download", download)
    with pytest.raises(TaskError, match="HTTP 404"):
        runner.fetch_release("v1.2.3", work, "x86_64", "http://127.0.0.1:9/releases")
    assert_clean(hostile)


def test_a_fifo_stamp_does_not_block_the_runner_choice(hostile, monkeypatch) -> None:
    work = hostile.work
    base = "http://127.0.0.1:9/releases"
    stamp = runner._latest_stamp(work, base)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(stamp)  # fresh: "checked today", so its content would be read

    def unreachable(url: str, **_kw) -> str:
        raise runner.Unreachable("no network here")

    monkeypatch.setattr(runner, "resolve_latest_tag", unreachable)
    chosen: list = []
    choosing = threading.Thread(
        target=lambda: chosen.append(
            runner.resolve_runner("latest", work, "x86_64", base_url=base)
        ),
        daemon=True,
    )
    choosing.start()
    choosing.join(60)  # liveness only: a reader that opened the FIFO would wait for ever
    if choosing.is_alive():
        with open(stamp, "w"):  # a writer lets the blocked open return
            pass
        choosing.join(10)
        pytest.fail("resolve_runner blocked reading the FIFO stamp")
    assert [c.is_builtin for c in chosen] == [True]
    assert_clean(hostile)


# ------------------------------------------------------------ runs: prune, pull


def test_latest_leading_out_is_no_run_and_pruning_stays_inside(hostile) -> None:
    newest = workdir.run_dirs(hostile.work)[-1]
    for target in (hostile.outside, Path("../outside")):
        _link(target, hostile.work / "latest")
        assert workdir.linked_run(hostile.work) is None  # names no run of ours
        assert workdir.latest_run(hostile.work) == newest
    # A run folder name that is a link is no run folder: never deleted through.
    _link(hostile.outside, hostile.work / "sim-200101-000000")
    assert workdir.prune_runs(hostile.work, 1) == [hostile.work / INV_OK]
    assert hostile.work.joinpath("sim-200101-000000").is_symlink()
    assert_clean(hostile)


class _ListsDotDot:
    """An SFTP client whose guest lists a `..` entry, as a hostile guest's server could."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def listdir_attr(self, path: str):
        import paramiko

        out = self.inner.listdir_attr(path)
        fake = paramiko.SFTPAttributes()
        fake.filename, fake.st_mode, fake.st_size, fake.st_mtime = "..", 0o100644, 1, 1
        return [*out, fake]


def test_pull_makes_no_link_out_and_writes_through_none(hostile, tmp_path: Path) -> None:
    from test_sync import FakeConn

    guest = tmp_path / "guest"
    run = guest / "work" / "sim-250101-000000"
    (run / "ping").mkdir(parents=True)
    (run / "ping" / "sim.json").write_text('{"status": "ok"}')
    os.symlink("ping/sim.json", run / "inside")
    os.symlink("../../../../outside", run / "escape")
    os.symlink("/etc/passwd", run / "absolute")
    conn = FakeConn(guest)
    conn.client = _ListsDotDot(conn.client)
    # The host side already has links where the run's folders go (left by an earlier
    # run over shares): they are replaced, not written through.
    host = hostile.work
    _link(hostile.outside, host / "sim-250101-000000")
    out = sync.pull(conn, "/work/sim-250101-000000", host / "sim-250101-000000", root=host)
    home = host / "sim-250101-000000"
    assert not home.is_symlink() and (home / "ping" / "sim.json").read_text() == '{"status": "ok"}'
    assert os.readlink(home / "inside") == "ping/sim.json"
    assert not (home / "escape").exists() and not (home / "absolute").is_symlink()
    assert any("escape" in f and "out of the folder" in f for f in out.failed)
    assert any("not a plain file name" in f for f in out.failed)
    assert_clean(hostile)


def test_bring_runs_home_makes_latest_only_to_a_run(hostile, tmp_path: Path) -> None:
    from test_sync import FakeConn

    guest = tmp_path / "guest"
    (guest / "work" / "sim-250101-000000").mkdir(parents=True)
    (guest / "work" / "sim-250101-000000" / "x").write_text("x")
    os.symlink("../../outside", guest / "work" / "latest")
    settings = SimpleNamespace(ssh_user="dev", work_dir=hostile.work, keep_runs=0)
    os.unlink(hostile.work / "latest")
    staging.bring_runs_home(FakeConn(guest), settings, set())
    assert not (hostile.work / "latest").exists()
    assert (hostile.work / "sim-250101-000000" / "x").read_text() == "x"
    assert_clean(hostile)


# ------------------------------------------------------------------ files itself


def test_open_in_refuses_links_fifos_and_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("ok")
    (tmp_path / "out").write_text(TOKEN)
    os.symlink(tmp_path / "out", root / "link")
    os.symlink(tmp_path, root / "dirlink")
    os.symlink("f", root / "d" / "samedir")  # inside, but a link all the same
    os.mkfifo(root / "fifo")
    assert files.read_limited(root, "d/f", 10) == b"ok"
    for rel in ("link", "dirlink/out", "d/samedir", "fifo", "d", "../out", "d/../link", "/x", ""):
        with pytest.raises(OSError):
            files.read_limited(root, rel, 100)
        assert files.read_json(root, rel) is None
        assert not files.is_regular(root, rel)
    with pytest.raises(files.RefusedFile, match="holds 2 bytes, more than 1"):
        files.read_limited(root, "d/f", 1)
    assert files.read_window(root, "d/f", 1, 10) == (b"k", 2)
    assert files.read_tail(root, "d/f", 1) == (b"k", 2)


def test_real_dir_replaces_a_link_and_leaves_its_target(tmp_path: Path) -> None:
    root, out = tmp_path / "root", tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text(TOKEN)
    root.mkdir()
    os.symlink(out, root / "a")
    made = files.real_dir(root, "a/b")
    assert made == root / "a" / "b" and made.is_dir() and not (root / "a").is_symlink()
    assert sorted(os.listdir(out)) == ["keep"]
    (root / "c").write_text("a file where a folder belongs")
    assert files.real_dir(root, "c").is_dir()


def test_staging_test_binaries_follows_no_planted_link(tmp_path: Path) -> None:
    from patchbay_vm_tasks.rusttest import cargo, staging

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text(TOKEN)
    outside.chmod(0o700)
    before = snapshot(outside)
    exe = tmp_path / "build" / "net-0123abcd"
    exe.parent.mkdir()
    exe.write_bytes(b"\x7fELF test")
    work = tmp_path / "work"
    (work / "binaries").mkdir(parents=True)
    # The guest's plants: the tests folder is a link out; the list of staged names is a
    # FIFO, then a link to a file outside (naming a file there, and a path out).
    os.symlink(outside, work / "binaries" / "tests")
    os.mkfifo(work / "binaries" / staging.STAGED_MANIFEST)
    (guest,) = staging.stage_test_binaries([cargo.TestExecutable(exe, "net", "pkg", "test")], work)
    tests = work / "binaries" / "tests"
    assert not tests.is_symlink() and stat.S_IMODE(tests.stat().st_mode) == 0o777
    assert (tests / "net-0123abcd").read_bytes() == b"\x7fELF test"
    assert guest == "/work/binaries/tests/net-0123abcd"

    (outside / "names").write_text("keep.txt\n../../outside/keep.txt\n")
    manifest = work / "binaries" / staging.STAGED_MANIFEST
    manifest.unlink()
    os.symlink(outside / "names", manifest)
    staging.stage_test_binaries([cargo.TestExecutable(exe, "net", "pkg", "test")], work)
    assert not manifest.is_symlink() and manifest.read_text() == "net-0123abcd\n"
    assert snapshot(outside) == {**before, "names": snapshot(outside)["names"]}
    assert (outside / "keep.txt").read_text() == TOKEN


def test_sim_run_summary_reads_nothing_through_a_link(hostile) -> None:
    from patchbay_vm_tasks.sim import inputs

    # The invocation's combined results and a sim's results.json are links out (the
    # fixture's); `latest` and a whole sim folder lead out too; a FIFO does not block.
    _link(hostile.outside, hostile.work / "latest")
    _link(hostile.outside, hostile.work / INV_OK / "elsewhere")
    _link(hostile.outside / "combined-results.json", hostile.work / "combined-results.json")
    os.mkfifo(hostile.work / INV_FAIL / "combined-results.json")
    for _ in range(2):
        text = inputs.format_summary(inputs.summarize_results(hostile.work))
        assert TOKEN not in text
        hostile.work.joinpath("latest").unlink()
        os.symlink(INV_FAIL, hostile.work / "latest")
    assert_clean(hostile)
