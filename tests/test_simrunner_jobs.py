"""The builtin runner with `--jobs N` for real on this host (root, network namespaces):
sims side by side, each in its own lab, what the manifest and each sim.json say about
it, the flag's bad values, and an interruption of several labs at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from test_simrunner_netns import (
    MARK,
    ONE_ROUTER,
    SLOW,
    lab_namespaces,
    namespaces,
    runner,
    start_runner,
    stray_processes,
    wait_for_line,
    write_sim,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "ping")), reason="needs ip, ping"),
]

# Two devices (ONE_ROUTER), a ping between them with a latency result, a file with a captured path.
PING = (
    ONE_ROUTER
    + """
[[step]]
action = "run"
id     = "ping"
device = "a"
cmd    = ["ping", "-c", "3", "-i", "0.2", "$NETSIM_IP_b"]
[step.captures.avg]
regex = "rtt min/avg/max/mdev = [\\\\d.]+/([\\\\d.]+)/"
[step.results]
latency_ms = "ping.avg"

[[step]]
action  = "gen-file"
id      = "note"
content = "from ${ping.avg}"

[[step]]
action = "wait"
duration = "{wait}"
"""
)


def _sims(folder: Path, waits: dict[str, str]) -> list[Path]:
    return [write_sim(folder, name, PING.replace("{wait}", w)) for name, w in waits.items()]


def test_jobs_runs_sims_side_by_side_and_says_so(tmp_path: Path) -> None:
    # p3 gets p1's slot when p1 ends, while p2 still runs for seconds.
    sims = _sims(tmp_path, {"p1": "1s", "p2": "4s", "p3": "100ms"})
    work = tmp_path / "work"
    out = runner("run", "--work-dir", str(work), "--jobs", "2", *map(str, sims))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "running up to 2 sims at once (--jobs)" in out.stdout
    root = work / "latest"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["concurrency"] == {"jobs": 2, "ran_concurrently": True}
    assert [s["sim"] for s in manifest["simulations"]] == ["p1", "p2", "p3"]
    assert all(s["status"] == "ok" for s in manifest["simulations"])
    alongside = {}
    for name in ("p1", "p2", "p3"):
        sim = json.loads((root / name / "sim.json").read_text())
        assert sim["concurrency"]["jobs"] == 2
        alongside[name] = sim["concurrency"]["alongside"]
        assert sim["concurrency"]["ran_concurrently"] is bool(alongside[name])
        assert lab_namespaces(root / name) == []  # each lab removed
    assert alongside["p1"] == ["p2"] and alongside["p3"] == ["p2"]
    assert alongside["p2"] == ["p1", "p3"]
    # Results in run order, whatever order the sims ended in.
    combined = json.loads((root / "combined-results.json").read_text())["runs"]
    assert [r["sim"] for r in combined] == ["p1", "p2", "p3"]
    prefixes = {json.loads((root / n / "state.json").read_text())["lab_prefix"] for n in alongside}
    assert len(prefixes) == 3  # a lab of its own each


def test_one_job_says_no_sim_ran_beside_another(tmp_path: Path) -> None:
    sims = _sims(tmp_path, {"q1": "100ms", "q2": "100ms"})
    out = runner("run", "--work-dir", str(tmp_path / "w"), *map(str, sims))
    assert out.returncode == 0, out.stdout + out.stderr
    root = tmp_path / "w" / "latest"
    assert json.loads((root / "manifest.json").read_text())["concurrency"] == {
        "jobs": 1, "ran_concurrently": False,
    }  # fmt: skip
    sim = json.loads((root / "q2" / "sim.json").read_text())
    assert sim["concurrency"] == {"jobs": 1, "ran_concurrently": False, "alongside": []}


@pytest.mark.parametrize("value", ["0", "-1", "65", "x"])
def test_bad_jobs_is_usage(tmp_path: Path, value: str) -> None:
    sims = _sims(tmp_path, {"r": "100ms"})
    out = runner("run", "--work-dir", str(tmp_path / "w"), "--jobs", value, *map(str, sims))
    assert out.returncode == 2 and "--jobs" in out.stderr
    assert not (tmp_path / "w").exists()


def test_interrupting_parallel_sims_cleans_up_every_lab(tmp_path: Path) -> None:
    sims = [write_sim(tmp_path, n, SLOW) for n in ("s1", "s2", "s3")]
    work = tmp_path / "work"
    before = set(namespaces())
    proc = start_runner(work, sims, "--jobs", "2")
    try:
        seen = {wait_for_line(proc, r"^\[s[12]\] step 1 up run b ok")[1:3] for _ in range(2)}
        assert seen == {"s1", "s2"}
        assert lab_namespaces(work / "latest" / "s1") and lab_namespaces(work / "latest" / "s2")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 130, err
    assert set(namespaces()) <= before and not stray_processes(MARK)
    manifest = json.loads((work / "latest" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["simulations"]] == ["error", "error", "pending"]
    assert manifest["interrupted"] is True
