"""Shared pieces of the results server's tests (issue 25): runs and labs written by hand
after RUNNER-FACTS 5 and patchbay's testdir layout, archives made as tar and Python make
them, a server in a thread or as `patchbay-vm serve --accept-push` in a process, and a
push as patchbay's curl snippet sends it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import queue
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from test_viewer_fixture import write_invocation

from patchbay_vm_tasks.viewer import results, store
from patchbay_vm_tasks.viewer import server as viewer_server

KEY = "0123456789abcdef" * 4
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- runs and labs


def sim_run(work: Path, inv: str, factor: float = 1.0, fail: bool = False) -> Path:
    """A sim run folder in work: a ping and an iperf sim (its throughput times factor),
    and with fail a third sim that failed."""
    sims = [("ping-e2e", "ping"), ("iperf-e2e", "iperf")] + ([("broken-e2e", "fail")] * fail)
    folder = write_invocation(work, inv, sims)
    down = str(int(262144000 * factor))
    res = folder / "iperf-e2e" / "results.json"
    data = json.loads(res.read_text())
    data["steps"][0]["down_bytes"] = down
    res.write_text(json.dumps(data))
    combined = folder / "combined-results.json"
    if combined.exists():
        c = json.loads(combined.read_text())
        for r in c["runs"]:
            for st in r["steps"]:
                if st["id"] == "iperf-client":
                    st["down_bytes"] = down
        combined.write_text(json.dumps(c))
    return folder


def write_labs(testdir: Path, outcomes: dict[str, str], payload: int = 0) -> Path:
    """A testdir generation as patchbay's testdir crate lays it out: a lab per test
    (`crate/module/test`) with events.jsonl, state.json (status: success, failed, stopped)
    and a tracing log; payload: that many random bytes in one more file per lab."""
    for i, (name, status) in enumerate(sorted(outcomes.items())):
        lab = testdir.joinpath(*name.split("/"))
        lab.mkdir(parents=True, exist_ok=True)
        events = [
            {"opid": 0, "timestamp": "2026-03-20T10:00:00Z", "kind": "lab_created",
             "lab_prefix": f"lab{i}", "label": name.rsplit("/", 1)[-1]},
        ]  # fmt: skip
        (lab / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        state = {
            "opid": 0, "lab_prefix": f"lab{i}", "label": name.rsplit("/", 1)[-1],
            "status": status, "created_at": "2026-03-20T10:00:00Z", "ix": None,
            "routers": {}, "devices": {}, "regions": {}, "region_links": [],
        }  # fmt: skip
        (lab / "state.json").write_text(json.dumps(state))
        (lab / "device.client.tracing.jsonl").write_text(
            json.dumps(
                {"timestamp": "2026-03-20T10:00:01Z", "level": "INFO",
                 "fields": {"message": f"hello from {name}"}, "target": "lab"}
            ) + "\n"
        )  # fmt: skip
        if payload:
            (lab / "payload.bin").write_bytes(os.urandom(payload))
    return testdir


def tree_digest(folder: Path) -> dict[str, str]:
    """Every regular file below folder by its relative path: sha256 of its bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- archives


def tar_gz(folder: Path | None, run_json: dict | None = None, top: str = "") -> bytes:
    """A tar.gz of folder's contents (under `top`, or at the top), run.json first."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if run_json is not None:
            data = json.dumps(run_json).encode()
            info = tarfile.TarInfo("run.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if folder is not None:
            tar.add(folder, arcname=top or ".")
    return buf.getvalue()


def raw_tar(
    members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.GNU_FORMAT
) -> bytes:  # noqa: E501
    """A tar.gz of hand-made members (a hostile archive)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, data if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else None


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


# ---------------------------------------------------------------- a server


@contextlib.contextmanager
def results_server(data: Path, key: str | None = KEY, **opts) -> Iterator[tuple]:
    """(server, results app, store) on 127.0.0.1:<free port>, in this process. opts:
    retention (bytes), limits, pushes, workers, timeout."""
    server_opts = {k: opts.pop(k) for k in ("workers", "timeout") if k in opts}
    s = store.Store(data, writable=key is not None, retention=opts.pop("retention", None))
    app = results.Results(s, api_key=key, **opts)
    srv = viewer_server.serve_in_thread(data, "127.0.0.1:0", results=app, **server_opts)
    try:
        yield srv, app, s
    finally:
        srv.shutdown()
        srv.server_close()
        s.close()


def post(
    url: str,
    project: str,
    body: bytes,
    key: str | None = KEY,
    ctype: str = "application/gzip",
    headers: dict | None = None,
    timeout: float = 60,
) -> tuple[int, dict]:
    """POST url/api/push/project as the snippet's curl does; (status, JSON answer)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    h = {"Content-Type": ctype, **({"Authorization": f"Bearer {key}"} if key else {})}
    h.update(headers or {})
    try:
        conn.request("POST", f"/api/push/{project}", body=body, headers=h)
        res = conn.getresponse()
        raw = res.read()
    finally:
        conn.close()
    try:
        return res.status, json.loads(raw)
    except ValueError:
        return res.status, {"raw": raw.decode("utf-8", "replace")}


def get(url: str, path: str, timeout: float = 30) -> tuple[int, bytes, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.read(), dict(res.getheaders())
    finally:
        conn.close()


def get_json(url: str, path: str) -> object:
    status, body, _ = get(url, path)
    assert status == 200, (status, body[:300])
    return json.loads(body)


class ServeProcess:
    """`patchbay-vm serve --accept-push ...` as a process (the key in PATCHBAY_API_KEY);
    its URL from its first line; its output kept."""

    def __init__(self, cwd: Path, *args: str, key: str | None = KEY, env: dict | None = None):
        full_env = {**os.environ, **(env or {})}
        full_env.pop("PATCHBAY_API_KEY", None)
        if key is not None:
            full_env["PATCHBAY_API_KEY"] = key
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patchbay_vm_tasks", "serve", *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, needle: str, timeout: float = 60) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"ended before {needle!r}: {self.seen}"
            self.seen.append(line)
            if needle in line:
                return line

    def start(self) -> ServeProcess:
        first = self.until("results server on ")
        self.url = first.split()[3].rstrip("/")
        return self

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return "\n".join(self.seen)
            if line is None:
                return "\n".join(self.seen)
            self.seen.append(line)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self.output()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
