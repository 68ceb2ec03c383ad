"""How long stopping takes, where the tests only check that it happens (issue 18): each
case beside a baseline that stops nothing, median seconds of N runs and their ratio.

    .venv/bin/python -m benchmarks.stop_latency [N]      (the lab case needs root)

- lab teardown with a process asleep in a node's namespace, against an empty lab's;
- cancelling a running `cargo test --no-run` (a stand-in asleep), against one that ends
  by itself at once;
- viewer shutdown with an event stream open, against one with no client.
The tests these timings came out of assert the facts instead: the process was killed,
the build never got past its sleep, the stream ended.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchbay_vm_tasks.rusttest import cargo  # noqa: E402 (after the path fix)
from patchbay_vm_tasks.simcore import model  # noqa: E402
from patchbay_vm_tasks.simrunner.lab import NETNS_DIR, Lab  # noqa: E402
from patchbay_vm_tasks.viewer import server as viewer_server  # noqa: E402


def median_of(runs: int, once: Callable[[], float]) -> float:
    return round(statistics.median(once() for _ in range(runs)), 4)


def lab_teardown(with_process: bool) -> float:
    topo = model.Topology(
        routers=(model.Router("dc"),),
        devices=(model.Device("a", (model.Interface("eth0", "dc"),), "eth0"),),
    )
    lab = Lab(topo, f"sl{os.getpid() % 10000}", lambda kind, fields: None)
    sleeper = None
    try:
        lab.build()
        if with_process:
            sleeper = subprocess.Popen([*lab.netns_argv("a"), "sleep", "600"])
            ns = os.stat(f"{NETNS_DIR}/{lab.ns_of('a')}").st_ino
            while os.readlink(f"/proc/{sleeper.pid}/ns/net") != f"net:[{ns}]" or (
                Path(f"/proc/{sleeper.pid}/comm").read_text().strip() != "sleep"
            ):
                time.sleep(0.005)
        t0 = time.monotonic()
        lab.teardown()
        return time.monotonic() - t0
    finally:
        lab.teardown()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()


def cargo_stop(tmp: Path, asleep: bool) -> float:
    started = tmp / "started"
    started.unlink(missing_ok=True)
    fake = tmp / "fake-cargo"
    body = f"open({str(started)!r}, 'w').close()" + ("; time.sleep(60)" if asleep else "")
    fake.write_text(f"#!{sys.executable}\nimport time\n{body}\n")
    fake.chmod(0o755)
    job = cargo.start_build(cargo.TestBuild("x86_64-unknown-linux-gnu"), tmp, cargo=str(fake))
    while not started.exists():
        time.sleep(0.001)
    t0 = time.monotonic()
    if asleep:
        job.cancel()
    else:
        job.result(timeout=60)
    return time.monotonic() - t0


def viewer_shutdown(work: Path, with_stream: bool) -> float:
    srv = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    port = srv.server_address[1]
    sock = None
    if with_stream:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(f"GET /api/runs/subscribe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        sock.recv(1)  # the stream is open
    t0 = time.monotonic()
    srv.shutdown()
    srv.server_close()
    if sock is not None:
        while sock.recv(4096):
            pass
        sock.close()
    return time.monotonic() - t0


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cases: dict[str, tuple[float, float]] = {}
    if os.geteuid() == 0 and shutil.which("ip"):
        cases["lab teardown: a process in a node vs none"] = (
            median_of(runs, lambda: lab_teardown(True)),
            median_of(runs, lambda: lab_teardown(False)),
        )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cases["cargo build: cancel vs ending by itself"] = (
            median_of(runs, lambda: cargo_stop(tmp, True)),
            median_of(runs, lambda: cargo_stop(tmp, False)),
        )
        (tmp / "work").mkdir()
        cases["viewer shutdown: an open stream vs none"] = (
            median_of(runs, lambda: viewer_shutdown(tmp / "work", True)),
            median_of(runs, lambda: viewer_shutdown(tmp / "work", False)),
        )
    print(
        json.dumps(
            {
                "runs": runs,
                "cases": {
                    name: {"s": case, "baseline_s": base, "ratio": round(case / base, 1)}
                    for name, (case, base) in cases.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
