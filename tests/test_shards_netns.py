"""`--shard K/N` and `sim.merge` end to end on this host (root, network namespaces): the
shares the host works out, the builtin runner run on each as the guest would, each shard
recorded, the shards merged, and the merged run against an unsharded run of the same
files: the same sims, statuses, result fields and files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from test_simrunner_jobs import _sims, pytestmark  # noqa: F401 (the same marks)
from test_simrunner_netns import runner

from patchbay_vm_tasks.sim import inputs, merge, shards


def _run_share(work: Path, paths: list[Path], jobs: int = 1) -> subprocess.CompletedProcess:
    args = ["--jobs", str(jobs)] if jobs > 1 else []
    return runner("run", "--work-dir", str(work), *args, *map(str, paths))


def _fields(root: Path) -> dict[str, object]:
    """What must be the same in a merged and an unsharded run: sims in order, statuses,
    and per sim its steps' ids and result fields."""
    manifest = json.loads((root / "manifest.json").read_text())
    combined = json.loads((root / "combined-results.json").read_text())["runs"]
    return {
        "sims": [(s["sim"], s["status"], s["sim_dir"]) for s in manifest["simulations"]],
        "results": [(r["sim"], [(st["id"], sorted(st)) for st in r["steps"]]) for r in combined],
        "files": {
            s["sim"]: sorted(p.name for p in (root / s["sim_dir"]).iterdir())
            for s in manifest["simulations"]
        },
        "results_json": {
            s["sim"]: [sorted(st) for st in json.loads(
                (root / s["sim_dir"] / "results.json").read_text())["steps"]]
            for s in manifest["simulations"]
        },
    }  # fmt: skip


def test_two_shards_merged_are_the_unsharded_run(tmp_path: Path) -> None:
    folder = tmp_path / "sims"
    folder.mkdir()
    _sims(folder, {"m-a": "100ms", "m-b": "1s", "m-c": "100ms", "m-d": "500ms", "m-e": "100ms"})
    sims = inputs.read_sims([str(folder)], tmp_path)
    work = tmp_path / "work"
    whole = _run_share(work, list(sims), jobs=2)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    unsharded = (work / "latest").resolve()

    shares = []
    for k in (1, 2):
        plan = shards.plan(sims, shards.Shard(k, 2), work, tmp_path)
        assert plan.basis == "durations" and plan.durations_from == [unsharded.name]
        before = shards.run_folder_names(work)
        out = _run_share(work, plan.mine)
        assert out.returncode == 0, out.stdout + out.stderr
        (made,) = shards.record_new_runs(work, before, plan)
        shares.append((plan, work / made))
    assert sorted(shares[0][0].my_names + shares[1][0].my_names) == ["m-a", "m-b", "m-c", "m-d",
                                                                    "m-e"]  # fmt: skip
    assert {len(p.mine) for p, _ in shares} <= {2, 3}
    merged = merge.merge([str(f) for _, f in reversed(shares)], tmp_path / "out")
    assert merged.success and not merged.missing_sims
    assert _fields(merged.path) == _fields(unsharded)
    manifest = json.loads((merged.path / "manifest.json").read_text())
    assert sorted(f["shard"]["index"] for f in manifest["merged"]["from"]) == [1, 2]
    assert re.fullmatch(r"sim-\d{6}-\d{6}", merged.path.name)
