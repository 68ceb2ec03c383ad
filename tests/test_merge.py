"""`sim.merge` (sim/merge.py, `patchbay-vm merge`): shard runs written by hand as the
runner and `sim.run --shard` write them, merged into one run folder; what is refused
(exit 2), what is missing (exit 1), and that nothing in a shard's folder leads the copy
out of it. No VM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_viewer_fixture import write_invocation

from patchbay_vm_tasks.sim import merge
from patchbay_vm_tasks.viewer import runs

PLAN = ["ping-a", "iperf-b", "ping-c"]


def _shard(work: Path, inv: str, sims: list[tuple[str, str]], index: int, total: int = 2,
           plan: list[str] | None = None) -> Path:  # fmt: skip
    folder = write_invocation(work, inv, sims)
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["shard"] = {"index": index, "total": total, "basis": "name",
                     "sims": [s for s, _ in sims], "plan": plan or PLAN}  # fmt: skip
    data["ended_at"] = data["started_at"].replace(":00Z", ":30Z")
    data["runtime_ms"] = 30_000 + index
    path.write_text(json.dumps(data))
    return folder


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    one = _shard(tmp_path / "s1", "sim-260301-120000", [("ping-a", "ping"), ("ping-c", "ping")], 1)
    two = _shard(tmp_path / "s2", "sim-260301-120005", [("iperf-b", "iperf")], 2)
    return one, two


def test_two_shards_make_one_run(tmp_path: Path, two) -> None:
    one, second = two
    merged = merge.merge([str(second), str(one)], tmp_path / "out")  # any order
    root = merged.path
    assert root.parent == tmp_path / "out" and root.name.startswith("sim-")
    assert (tmp_path / "out" / "latest").resolve() == root.resolve()
    manifest = json.loads((root / "manifest.json").read_text())
    # The plan's order, as an unsharded run would have it.
    assert [s["sim"] for s in manifest["simulations"]] == PLAN
    assert [s["sim_dir"] for s in manifest["simulations"]] == PLAN
    assert manifest["success"] is True and manifest["status"] == "done"
    assert manifest["run"] == root.name
    assert manifest["started_at"] == "2026-03-01T12:00:00Z"
    assert manifest["runtime_ms"] == 30_002  # the longest shard: they ran side by side
    assert [f["shard"]["index"] for f in manifest["merged"]["from"]] == [2, 1]
    assert manifest["merged"]["shards"] == 2 and manifest["merged"]["missing_shards"] == []
    combined = json.loads((root / "combined-results.json").read_text())["runs"]
    assert [(c["run"], c["sim"]) for c in combined] == [(root.name, s) for s in PLAN]
    assert combined[1]["steps"][0]["down_bytes"]  # the fields as the shard wrote them
    progress = json.loads((root / "progress.json").read_text())
    assert (progress["total"], progress["ok"], progress["status"]) == (3, 3, "done")
    for sim in PLAN:  # each sim's folder, copied whole
        src = (one if sim != "iperf-b" else second) / sim
        assert sorted(p.name for p in (root / sim).iterdir()) == sorted(
            p.name for p in src.iterdir()
        )
        assert (root / sim / "sim.json").read_bytes() == (src / "sim.json").read_bytes()
    assert "| ping-a |" in (root / "combined-results.md").read_text()
    # The viewer reads it as any run.
    listed = [r for r in runs.discover_runs(tmp_path / "out") if r.invocation == root.name]
    assert sorted(r.label for r in listed) == sorted(PLAN)


def test_a_missing_shard_is_said_and_fails(tmp_path: Path, two) -> None:
    one, _ = two
    merged = merge.merge([str(one)], tmp_path / "out")
    assert merged.missing_shards == [2] and merged.missing_sims == ["iperf-b"]
    assert not merged.success
    manifest = json.loads((merged.path / "manifest.json").read_text())
    assert manifest["success"] is False
    assert manifest["merged"]["missing_sims"] == ["iperf-b"]
    assert "missing shard(s): 2" in merge.describe(merged)


def test_a_work_dir_stands_for_its_latest_run(tmp_path: Path, two) -> None:
    one, second = two
    merged = merge.merge([str(one.parent), str(second.parent)], tmp_path / "out")
    assert len(merged.simulations) == 3
    assert any("its latest run, sim-260301-120000" in line for line in merge.describe(merged))


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("nothing", "no run here (no manifest.json, no sim-YYMMDD-HHMMSS folder)"),
        ("missing", "no such folder"),
        ("twice", "the same run as"),
        ("same-index", "shard 1 given twice"),
        ("other-n", "shards of different splits"),
        ("other-plan", "shards of different plans"),
        ("both", "sim ping-a is in both"),
        ("mixed", "not a shard run, the others are"),
        ("running", "the run has not ended"),
    ],
)
def test_folders_that_are_no_one_run_are_refused(tmp_path: Path, two, case: str, why: str) -> None:
    one, second = two
    extra = {
        "nothing": lambda: [str(tmp_path)],
        "missing": lambda: [str(tmp_path / "nope")],
        "twice": lambda: [str(one), str(one.parent)],
        "same-index": lambda: [str(one), str(_shard(tmp_path / "s3", "sim-260301-120009",
                                                    [("iperf-b", "iperf")], 1))],
        "other-n": lambda: [str(one), str(_shard(tmp_path / "s3", "sim-260301-120009",
                                                 [("iperf-b", "iperf")], 2, total=3))],
        "other-plan": lambda: [str(one), str(_shard(tmp_path / "s3", "sim-260301-120009",
                                                    [("iperf-b", "iperf")], 2, plan=["x"]))],
        "both": lambda: [str(one), str(_shard(tmp_path / "s3", "sim-260301-120009",
                                              [("ping-a", "ping")], 2))],
        "mixed": lambda: [str(one), str(write_invocation(tmp_path / "s3", "sim-260301-120009",
                                                         [("iperf-b", "iperf")]))],
        "running": lambda: [str(_running(tmp_path))],
    }[case]()  # fmt: skip
    with pytest.raises(merge.MergeError) as e:
        merge.merge(extra, tmp_path / "out")
    assert why in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written


def _running(tmp_path: Path) -> Path:
    folder = write_invocation(tmp_path / "s4", "sim-260301-120010", [("ping-a", "ping")])
    data = json.loads((folder / "manifest.json").read_text())
    data["status"] = "running"
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_a_taken_folder_name_is_renamed(tmp_path: Path) -> None:
    a = write_invocation(tmp_path / "a", "sim-260301-120000", [("ping-x", "ping")])
    b = write_invocation(tmp_path / "b", "sim-260301-120001", [("ping-y", "ping")])
    # Two sims whose folders have the same name (a runner names them by a sanitized name).
    (b / "ping-y").rename(b / "ping-x")
    for name in ("manifest.json", "progress.json"):
        data = json.loads((b / name).read_text())
        data["simulations"][0]["sim_dir"] = "ping-x"
        (b / name).write_text(json.dumps(data))
    combined = json.loads((b / "combined-results.json").read_text())
    combined["runs"][0]["sim_dir"] = "ping-x"
    (b / "combined-results.json").write_text(json.dumps(combined))
    merged = merge.merge([str(a), str(b)], tmp_path / "out")
    entries = {s["sim"]: s["sim_dir"] for s in merged.simulations}
    assert entries == {"ping-x": "ping-x", "ping-y": "ping-x-1"}
    assert json.loads((merged.path / "ping-x-1" / "sim.json").read_text())["sim_dir"] == "ping-x-1"
    runs_ = json.loads((merged.path / "combined-results.json").read_text())["runs"]
    assert {(r["sim"], r["sim_dir"]) for r in runs_} == {
        ("ping-x", "ping-x"),
        ("ping-y", "ping-x-1"),
    }
    assert merged.renamed == {"sim-260301-120001/ping-x": "ping-x-1"}


def test_no_link_in_a_shard_is_followed(tmp_path: Path, two) -> None:
    one, second = two
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    os.symlink(outside / "secret.txt", one / "ping-a" / "device.a.leak.stdout.log")
    os.symlink(outside, one / "ping-a" / "files-link")
    os.mkfifo(one / "ping-a" / "fifo.log")
    # A sim whose folder is a link: its entry is kept, nothing is copied from it.
    (one / "ping-c").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", one / "ping-c")
    merged = merge.merge([str(one), str(second)], tmp_path / "out")
    copied = [p for p in merged.path.rglob("*")]
    assert not any(p.is_symlink() for p in copied)
    assert all("SECRET" not in p.read_text() for p in copied if p.is_file())
    assert not (merged.path / "ping-a" / "fifo.log").exists()
    assert not (merged.path / "ping-c").exists()
    assert [s["sim"] for s in merged.simulations] == PLAN


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patchbay_vm_tasks", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_patchbay_vm_merge_writes_junit_and_report(tmp_path: Path, two) -> None:
    one, second = two
    out = _cli("merge", str(one), str(second), "-o", "merged", "--junit", "sims.xml",
               "--report", "report.html", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "merged 3 sim(s) of sim-260301-120000 (shard 1/2), sim-260301-120005 (shard 2/2)" in (
        out.stderr
    )
    assert "ping-a" in out.stdout and "iperf-b" in out.stdout  # the summary table
    xml = (tmp_path / "sims.xml").read_text()
    assert 'tests="3"' in xml and 'failures="0"' in xml
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert "iperf-b" in (tmp_path / "report.html").read_text()


def test_patchbay_vm_merge_bad_input_and_failures(tmp_path: Path, two) -> None:
    one, _ = two
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _cli("merge", str(empty), "-o", "merged", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: --from {empty}: no run here (no manifest.json, no sim-YYMMDD-HHMMSS folder)"
    ], out.stderr
    out = _cli("merge", str(one), cwd=tmp_path)
    assert out.returncode == 2 and "-o DIR" in out.stderr
    out = _cli("merge", str(one), "-o", "merged", cwd=tmp_path)  # shard 2 is missing
    assert out.returncode == 1, out.stdout + out.stderr
    assert "shard(s) 2 missing" in out.stderr.splitlines()[-1]
    assert (tmp_path / "merged" / "latest" / "manifest.json").is_file()  # written all the same
