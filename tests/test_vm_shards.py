"""--jobs, --shard and sim.merge end to end in the shared guest, through the tasks as a
user or a CI job types them (issue 21, items 4 and 5): three small sims run unsharded with
--jobs 2, then as two shards (balanced by the first run's durations), merged; the merged
run holds exactly the sims and result fields of the unsharded one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from vmfixtures import TIMINGS, VmEnv

pytestmark = pytest.mark.vm

# Two devices; a ping with a latency result and a file whose path is captured.
SIM = """
[sim]
name = "{name}"

[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"
[device.b.eth0]
gateway = "dc"

[[step]]
action = "run"
id     = "ping"
device = "a"
cmd    = ["ping", "-c", "2", "-i", "0.2", "$NETSIM_IP_b"]
[step.captures.avg]
regex = "rtt min/avg/max/mdev = [\\\\d.]+/([\\\\d.]+)/"
[step.results]
latency_ms = "ping.avg"

[[step]]
action = "wait"
duration = "{wait}"
"""
SIMS = {"shard-a": "2s", "shard-b": "100ms", "shard-c": "1s"}


def _run_folder(vm: VmEnv, out) -> Path:
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("run folder /work/")]
    return vm.work_dir / line.removeprefix("run folder /work/")


def _fields(root: Path) -> dict[str, object]:
    manifest = json.loads((root / "manifest.json").read_text())
    combined = json.loads((root / "combined-results.json").read_text())["runs"]
    return {
        "sims": [(s["sim"], s["status"], s["sim_dir"]) for s in manifest["simulations"]],
        "results": [(r["sim"], [(st["id"], sorted(st)) for st in r["steps"]]) for r in combined],
        "files": {
            s["sim"]: sorted(p.name for p in (root / s["sim_dir"]).iterdir())
            for s in manifest["simulations"]
        },
    }


@pytest.fixture(scope="module")
def runs(vm_session: VmEnv) -> dict[str, Path]:
    vm = vm_session
    folder = vm.project / "sims" / "sharding"
    folder.mkdir(parents=True, exist_ok=True)
    for name, wait in SIMS.items():
        (folder / f"{name}.toml").write_text(SIM.format(name=name, wait=wait))
    builtin = ("--patchbay-version", "builtin")
    found: dict[str, Path] = {}
    started = time.monotonic()
    out = vm.invoke("sim.run", *builtin, "--file", "sims/sharding", "--jobs", "2")
    TIMINGS["sim.run 3 small sims --jobs 2 (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    found["whole"] = _run_folder(vm, out)
    for k in (1, 2):
        started = time.monotonic()
        out = vm.invoke("sim.run", *builtin, "--file", "sims/sharding", "--shard", f"{k}/2")
        TIMINGS[f"sim.run shard {k}/2 (s)"] = round(time.monotonic() - started, 1)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"shard {k}/2: " in out.stderr and "balanced by the durations of" in out.stderr
        found[f"shard{k}"] = _run_folder(vm, out)
    return found


def test_jobs_ran_sims_side_by_side_in_the_guest(runs) -> None:
    whole = runs["whole"]
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["concurrency"] == {"jobs": 2, "ran_concurrently": True}
    assert all(s["status"] == "ok" for s in manifest["simulations"])
    sim = json.loads((whole / "shard-a" / "sim.json").read_text())
    assert sim["concurrency"]["jobs"] == 2 and sim["concurrency"]["alongside"]


def test_shards_split_the_sims_and_say_so(runs) -> None:
    shares = []
    for k in (1, 2):
        manifest = json.loads((runs[f"shard{k}"] / "manifest.json").read_text())
        shard = manifest["shard"]
        assert (shard["index"], shard["total"], shard["basis"]) == (k, 2, "durations")
        assert shard["durations_from"] == [runs["whole"].name]
        assert [s["sim"] for s in manifest["simulations"]] == shard["sims"]
        shares.append(shard["sims"])
    # The longest (shard-a, 2 s) alone; the two shorter ones together.
    assert shares == [["shard-a"], ["shard-b", "shard-c"]]


def test_merged_shards_are_the_unsharded_run(runs, vm: VmEnv) -> None:
    out = vm.cli("merge", str(runs["shard2"]), str(runs["shard1"]), "-o", "merged",
                 "--junit", "merged.xml", "--report", "merged.html")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    merged = (vm.project / "merged" / "latest").resolve()
    assert _fields(merged) == _fields(runs["whole"])
    assert 'tests="3"' in (vm.project / "merged.xml").read_text()
    assert "shard-c" in (vm.project / "merged.html").read_text()
