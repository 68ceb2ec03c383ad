"""`sim.run --shard K/N` on the host (sim/shards.py): the flag, the split (by name, by the
last run's durations, never by a shard run's), what the manifest records, and the run
folder of a shard with no sims. No VM: bad input is refused before anything boots."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_viewer_fixture import write_invocation
from vmfixtures import make_project, vm_env

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.sim import inputs, shards

SIM = """[sim]
name = "{name}"
[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"
[[step]]
action = "run"
device = "a"
cmd = ["true"]
"""


def _sims(root: Path, names: list[str]) -> inputs.SimFiles:
    (root / "sims").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "sims" / f"{name}.toml").write_text(SIM.format(name=name))
    return inputs.read_sims([str(root / "sims")], root)


def _manifest(work: Path, inv: str, runtimes: dict[str, int], **extra: object) -> None:
    write_invocation(work, inv, [(name, "ping") for name in runtimes])
    path = work / inv / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["simulations"]:
        entry["runtime_ms"] = runtimes[entry["sim"]]
    data.update(extra)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("3/2", "K must be from 1 to N (2)"),
        ("0/2", "K must be from 1 to N (2)"),
        ("1/0", "N must be from 1 to"),
        ("2", "expected K/N"),
        ("a/b", "expected K/N"),
        ("1/2/3", "expected K/N"),
        ("-1/2", "expected K/N"),
        ("１/2", "expected K/N"),  # a fullwidth digit
    ],
)
def test_bad_shards_are_refused(value: str, why: str) -> None:
    with pytest.raises(UsageError, match=re.escape(why)):
        shards.parse_shard(value)


def test_good_shard() -> None:
    assert shards.parse_shard("2/3") == shards.Shard(2, 3)
    assert shards.parse_shard(None) is None
    assert shards.parse_shard(" 1/1 ").text == "1/1"


def test_by_name_the_shards_cover_every_sim_once(tmp_path: Path) -> None:
    names = [f"sim{i:02}" for i in range(7)]
    sims = _sims(tmp_path, names)
    plans = [shards.plan(sims, shards.Shard(k, 3), tmp_path / "work", tmp_path) for k in (1, 2, 3)]
    assert all(p.basis == "name" for p in plans)
    mine = [p.my_names for p in plans]
    assert sorted(n for share in mine for n in share) == names
    assert mine == [["sim00", "sim03", "sim06"], ["sim01", "sim04"], ["sim02", "sim05"]]
    # The same every time (every CI job works it out by itself).
    again = shards.plan(sims, shards.Shard(1, 3), tmp_path / "work", tmp_path)
    assert again.mine == plans[0].mine
    assert plans[0].manifest() == {
        "index": 1, "total": 3, "basis": "name", "sims": mine[0], "plan": names,
    }  # fmt: skip


def test_balanced_by_the_last_durations(tmp_path: Path) -> None:
    sims = _sims(tmp_path, ["a", "b", "c", "d", "e"])
    work = tmp_path / "work"
    _manifest(work, "sim-260101-100000", {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    # The newer run of each sim wins: a 40 s, b 30 s, c 20 s, d 10 s; e only in the old one.
    _manifest(work, "sim-260102-100000", {"a": 40_000, "b": 30_000, "c": 20_000, "d": 10_000})
    one, two = (shards.plan(sims, shards.Shard(k, 2), work, tmp_path) for k in (1, 2))
    assert one.basis == two.basis == "durations"
    assert one.durations_from == ["sim-260102-100000", "sim-260101-100000"]
    # Longest first onto the least loaded: a(40) -> 1, b(30) -> 2, c(20) -> 2, d(10) -> 1,
    # e(1) -> 1 (50 against 50, the lower shard).
    assert one.my_names == ["a", "d", "e"] and two.my_names == ["b", "c"]
    assert one.manifest()["expected_ms"] == 50_001 and two.manifest()["expected_ms"] == 50_000
    assert "balanced by the durations of sim-260102-100000" in one.describe()


def test_a_sim_never_run_counts_as_the_median(tmp_path: Path) -> None:
    sims = _sims(tmp_path, ["a", "b", "c", "new"])
    work = tmp_path / "work"
    _manifest(work, "sim-260102-100000", {"a": 9_000, "b": 5_000, "c": 1_000})
    plan = shards.plan(sims, shards.Shard(1, 2), work, tmp_path)
    assert plan.expected(tmp_path / "sims" / "new.toml") == 5_000
    shares = [shards.plan(sims, shards.Shard(k, 2), work, tmp_path).my_names for k in (1, 2)]
    assert shares == [["a", "c"], ["b", "new"]]


def test_shard_runs_never_move_the_split(tmp_path: Path) -> None:
    # Shard 1 ran in this work dir already: shard 2 must still see the split shard 1 saw.
    sims = _sims(tmp_path, ["a", "b", "c"])
    work = tmp_path / "work"
    _manifest(work, "sim-260102-100000", {"a": 3_000, "b": 2_000, "c": 1_000})
    first = shards.plan(sims, shards.Shard(1, 2), work, tmp_path)
    _manifest(work, "sim-260103-100000", {"a": 1, "c": 99_000}, shard=first.manifest())
    second = shards.plan(sims, shards.Shard(2, 2), work, tmp_path)
    assert second.durations_from == ["sim-260102-100000"]
    assert sorted(first.my_names + second.my_names) == ["a", "b", "c"]


def test_more_shards_than_sims_leaves_some_empty(tmp_path: Path) -> None:
    sims = _sims(tmp_path, ["a", "b"])
    plans = [shards.plan(sims, shards.Shard(k, 3), tmp_path / "w", tmp_path) for k in (1, 2, 3)]
    assert [p.my_names for p in plans] == [["a"], ["b"], []]
    folder = shards.write_empty_run(tmp_path / "w", plans[2])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["simulations"] == [] and manifest["success"] is True
    assert manifest["shard"]["index"] == 3 and manifest["shard"]["sims"] == []
    assert json.loads((folder / "progress.json").read_text())["total"] == 0
    assert (tmp_path / "w" / "latest").resolve() == folder.resolve()


def test_runner_order_is_the_guest_paths(tmp_path: Path) -> None:
    # The runner sorts its sims by path: a/x.toml before a-b/x.toml, as Path sorts.
    for folder in ("a", "a-b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.toml").write_text(SIM.format(name=f"x-{folder}"))
    paths = [tmp_path / "a-b" / "x.toml", tmp_path / "a" / "x.toml"]
    assert shards.runner_order(paths, tmp_path) == paths[::-1]


def test_record_adds_the_shard_to_the_manifest(tmp_path: Path) -> None:
    sims = _sims(tmp_path, ["a", "b"])
    work = tmp_path / "work"
    before = shards.run_folder_names(work)
    write_invocation(work, "sim-260104-100000", [("a", "ping")])
    plan = shards.plan(sims, shards.Shard(1, 2), work, tmp_path)
    assert shards.record_new_runs(work, before, plan) == ["sim-260104-100000"]
    data = json.loads((work / "sim-260104-100000" / "manifest.json").read_text())
    assert data["shard"]["index"] == 1 and data["shard"]["plan"] == ["a", "b"]
    assert data["simulations"][0]["sim"] == "a"  # the rest as the runner wrote it


def test_a_share_reads_no_sim_again(tmp_path: Path) -> None:
    sims = _sims(tmp_path, ["a", "b"])
    part = shards.share_of(sims, [sims[0]])
    assert list(part) == [sims[0]] and part.files is sims.files


def _invoke(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project, env=vm_env(project, name="never-booted"),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--shard", "3/2"], "--shard 3/2: K must be from 1 to N (2); shards count from 1"),
        (["--shard", "0/2"], "--shard 0/2: K must be from 1 to N (2); shards count from 1"),
        (["--shard", "1/"], "--shard '1/': expected K/N, e.g. 1/2 (shard K of N)"),
        (["--jobs", "0"], "--jobs: expected a number of sims at once from 1 to 64, got '0'"),
        (["--jobs", "many"], "--jobs: expected a number of sims at once from 1 to 64, got 'many'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_boots_nothing(
    tmp_path: Path, args: list[str], why: str
) -> None:
    project = make_project(tmp_path / "p")
    out = _invoke(project, "sim.run", "--file", "sims/iperf-baseline.toml", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {why}"]
    assert not (project / ".qemu-vm").exists()


def test_jobs_with_a_rust_runner_is_refused(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    fake = project / "fake-patchbay"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    out = _invoke(project, "sim.run", "--file", "sims/iperf-baseline.toml", "--jobs", "2",
                  "--patchbay-version", f"path:{fake}")  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--jobs 2 needs the builtin runner" in out.stderr
    assert not (project / ".qemu-vm").exists()


def test_an_empty_shard_writes_its_run_without_a_vm(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    out = _invoke(project, "sim.run", "--file", "sims/iperf-baseline.toml", "--shard", "2/2",
                  "--junit", "shard.xml")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "shard 2/2: 0 of 1 sim(s), dealt by name" in out.stderr
    latest = project / ".patchbay-work" / "latest"
    assert json.loads((latest / "manifest.json").read_text())["shard"]["total"] == 2
    assert 'tests="0"' in (project / "shard.xml").read_text()
    assert not (project / ".qemu-vm").exists()
