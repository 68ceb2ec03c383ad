"""sim.compare (issue 21, item 1): thresholds, the comparison, reading run folders safely,
choosing BASE and HEAD, the task's output and exit codes. No VM: run folders are written
by hand after RUNNER-FACTS 5 (test_viewer_fixture)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_bad_input import assert_usage_error, patchbay_vm
from test_viewer_fixture import INV_FAIL, INV_OK, SECRET, make_workdir, write_invocation

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.sim import compare, rundata
from patchbay_vm_tasks.sim.compare import Threshold, ThresholdError, parse_threshold
from patchbay_vm_tasks.sim.rundata import Group, RunData, SimTry

# ── thresholds ─────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "text, name, percent",
    [
        ("throughput=-10%", "throughput", -10.0),
        ("latency=+20%", "latency", 20.0),
        ("duration=+50%", "duration", 50.0),
        ("runtime=+12.5%", "runtime", 12.5),
        (" pass_rate=-1% ", "pass_rate", -1.0),
        ("down_throughput=-5%", "down_throughput", -5.0),
    ],
)
def test_thresholds_parse(text: str, name: str, percent: float) -> None:
    t = parse_threshold(text)
    assert (t.name, t.percent) == (name, percent)


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus=-10%", "unknown metric 'bogus'"),
        ("speed=+5%", "unknown metric 'speed'"),
        ("throughput=10%", "expected METRIC=-N% or METRIC=+N%"),  # no sign: which way?
        ("throughput=-10", "expected METRIC=-N%"),
        ("throughput", "expected METRIC=-N%"),
        ("throughput=-%", "expected METRIC=-N%"),
        ("throughput=-1e3%", "expected METRIC=-N%"),
        ("THROUGHPUT=-10%", "expected METRIC=-N%"),
        ("throughput=-0%", "bigger than 0%"),
        ("", "expected METRIC=-N%"),
    ],
)
def test_bad_thresholds(text: str, message: str) -> None:
    with pytest.raises(ThresholdError, match=message.replace("%", "%").replace("+", r"\+")):
        parse_threshold(text)


@pytest.mark.parametrize(
    "threshold, base, head, crossed",
    [
        ("throughput=-10%", 100.0, 90.0, True),  # exactly at the line counts
        ("throughput=-10%", 100.0, 90.1, False),
        ("throughput=-10%", 100.0, 150.0, False),  # better is never a crossing
        ("latency=+20%", 10.0, 12.0, True),
        ("latency=+20%", 10.0, 11.9, False),
        ("latency=+20%", 10.0, 5.0, False),
        ("latency=+20%", 0.0, 1.0, True),  # from 0: any rise in the watched direction
        ("throughput=-10%", 0.0, 1.0, False),
        ("throughput=-10%", 0.0, 0.0, False),
    ],
)
def test_crossing(threshold: str, base: float, head: float, crossed: bool) -> None:
    t = parse_threshold(threshold)
    assert t.crossed_by(compare.change_pct(base, head), base, head) is crossed


# ── the comparison, from data ──────────────────────────────────────────────────


def sim_try(name: str, ok: bool = True, runtime: float | None = 10.0, **steps) -> SimTry:
    return SimTry(name, "ok" if ok else "error", runtime, None if ok else "boom", dict(steps))


def group(label: str, *tries: dict[str, SimTry]) -> Group:
    runs = [RunData(f"{label}-{i}", f"/w/{label}-{i}", dict(t)) for i, t in enumerate(tries)]
    return Group(label, runs)


def iperf(mbit: float, ok: bool = True) -> SimTry:
    # 5 s of transfer: bytes for the given Mbit/s
    down = mbit * 1e6 / 8 * 5
    metrics = {"duration_s": 5.0, "down_bytes": down, "down_mbit_s": mbit}
    return sim_try("iperf", ok, 12.0, xfer=metrics if ok else {})


def row(c: compare.Comparison, sim: str, step: str | None, metric: str) -> compare.Row:
    (found,) = [r for r in c.rows if (r.sim, r.step, r.metric) == (sim, step, metric)]
    return found


def test_one_try_each_side() -> None:
    c = compare.compare(group("b", {"iperf": iperf(800)}), group("h", {"iperf": iperf(600)}))
    r = row(c, "iperf", "xfer", "down_mbit_s")
    assert (r.base.median, r.head.median) == (800, 600)
    assert r.change == -200 and r.pct == pytest.approx(-25.0)
    assert not c.medians and not c.crossings
    text = compare.format_text(c)
    assert "down Mbit/s" in text and "-25.0%" in text and "medians" not in text
    assert "pass rate" not in text  # one try a side: the status says it


def test_throughput_threshold_names_sim_and_step() -> None:
    c = compare.compare(
        group("b", {"iperf": iperf(800)}),
        group("h", {"iperf": iperf(600)}),
        [parse_threshold("throughput=-10%"), parse_threshold("latency=+20%")],
    )
    assert [x.threshold.text for x in c.crossings] == ["throughput=-10%"]
    (crossing,) = c.crossings
    assert crossing.row.step == "xfer" and crossing.row.metric == "down_mbit_s"
    line = crossing.text()
    assert line == "throughput=-10% crossed by iperf step xfer: down Mbit/s 800.0 -> 600.0 (-25.0%)"
    assert "THRESHOLD " + line in compare.format_text(c)


def test_medians_over_tries_and_counts() -> None:
    base = group("b", *[{"iperf": iperf(v)} for v in (100, 900, 110)])  # median 110
    head = group("h", *[{"iperf": iperf(v)} for v in (105, 104, 1, 103, 106)])  # median 104
    c = compare.compare(base, head, [parse_threshold("throughput=-10%")])
    r = row(c, "iperf", "xfer", "down_mbit_s")
    assert (r.base.median, r.base.n, r.head.median, r.head.n) == (110, 3, 104, 5)
    assert (r.head.min, r.head.max) == (1, 106)
    assert not c.crossings  # -5.5%: the one slow try does not decide it
    text = compare.format_text(c)
    assert "medians over the tries (3 in base, 5 in head)" in text
    assert "110.0 (3)" in text and "104.0 (5)" in text


def test_failed_tries_count_in_the_status_and_pass_rate() -> None:
    base = group("b", *[{"iperf": iperf(100)} for _ in range(3)])
    head = group("h", {"iperf": iperf(100)}, {"iperf": iperf(0, ok=False)}, {"iperf": iperf(100)})
    c = compare.compare(base, head, [parse_threshold("pass_rate=-10%")])
    b, h = c.sims["iperf"]
    assert (b.status(), h.status()) == ("3/3 ok", "2/3 ok")
    assert row(c, "iperf", None, "pass_rate").head.median == pytest.approx(200 / 3)
    assert row(c, "iperf", "xfer", "down_mbit_s").head.n == 2  # only the tries that had it
    assert [x.threshold.name for x in c.crossings] == ["pass_rate"]


def test_value_missing_in_head_crosses_its_threshold() -> None:
    c = compare.compare(
        group("b", {"iperf": iperf(100)}),
        group("h", {"iperf": iperf(0, ok=False)}),
        [parse_threshold("throughput=-10%")],
    )
    (crossing,) = c.crossings
    assert crossing.why == "missing in head"
    assert "100.0 -> -" in crossing.text()


def test_sims_on_one_side_only_are_listed() -> None:
    c = compare.compare(
        group("b", {"iperf": iperf(100), "old": sim_try("old")}),
        group("h", {"iperf": iperf(100), "new": sim_try("new")}),
        [parse_threshold("runtime=+1%")],
    )
    assert c.only_in("base") == ["old"] and c.only_in("head") == ["new"]
    text = compare.format_text(c)
    assert "only in base: old" in text and "only in head: new" in text
    data = c.as_dict()
    assert data["only_in_base"] == ["old"] and data["only_in_head"] == ["new"]
    assert {s["sim"]: s["in"] for s in data["sims"]} == {
        "iperf": "both",
        "new": "head",
        "old": "base",
    }
    assert not c.crossings


def test_every_results_value_is_compared() -> None:
    metrics = {
        "duration_s": 1.0,
        "latency_ms": 20.0,
        "up_bytes": 10.0,
        "up_mbit_s": 8e-5,
        "rtt_p99": 7.0,
    }
    grown = {**metrics, "latency_ms": 30.0, "rtt_p99": 9.0}
    c = compare.compare(
        group("b", {"s": sim_try("s", step=metrics)}),
        group("h", {"s": sim_try("s", step=grown)}),
        [parse_threshold("latency=+20%")],
    )
    order = [r.metric for r in c.rows if r.step == "step"]
    assert order == ["duration_s", "up_mbit_s", "latency_ms", "up_bytes", "rtt_p99"]
    assert row(c, "s", "step", "rtt_p99").pct == pytest.approx(28.571, abs=0.01)
    assert [x.row.metric for x in c.crossings] == ["latency_ms"]


def test_json_is_plain_data() -> None:
    c = compare.compare(group("b", {"iperf": iperf(800)}), group("h", {"iperf": iperf(600)}),
                        [parse_threshold("throughput=-10%")])  # fmt: skip
    data = json.loads(json.dumps(c.as_dict()))
    assert data["base"]["tries"] == 1 and data["head"]["label"] == "h"
    (sim,) = data["sims"]
    assert sim["base"]["status"] == "ok"
    r = next(r for r in sim["rows"] if r["metric"] == "down_mbit_s")
    assert r["base"]["median"] == 800 and r["change_pct"] == pytest.approx(-25)
    assert data["thresholds_crossed"][0]["threshold"] == "throughput=-10%"


# ── reading run folders ────────────────────────────────────────────────────────


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return make_workdir(tmp_path)


def test_read_run_from_the_fixture(work: Path) -> None:
    run = rundata.read_run(work, (INV_OK,))
    assert run is not None and set(run.sims) == {"ping-e2e", "iperf-e2e"}
    iperf_sim = run.sims["iperf-e2e"]
    assert iperf_sim.passed and iperf_sim.runtime_s == pytest.approx(4.21)
    step = iperf_sim.steps["iperf-client"]
    assert step["down_mbit_s"] == pytest.approx(262144000 * 8 / 2.000135 / 1e6)
    assert run.sims["ping-e2e"].steps["ping-check"] == {"latency_ms": pytest.approx(100.512)}
    failed = rundata.read_run(work, (INV_FAIL,)).sims["broken-e2e"]
    assert not failed.passed and "exited with code 2" in failed.error and not failed.steps


def test_links_and_junk_in_a_run_folder_are_not_followed(work: Path, tmp_path: Path) -> None:
    inv = work / INV_OK
    outside = tmp_path / "outside"
    (outside / "results.json").write_text(json.dumps({"steps": [{"id": SECRET, "duration": 1}]}))
    res = inv / "iperf-e2e" / "results.json"
    res.unlink()
    res.symlink_to(outside / "results.json")
    (inv / "combined-results.json").unlink()
    os.mkfifo(inv / "ping-e2e" / "sim.json.tmp")
    (inv / "ping-e2e" / "sim.json").unlink()
    (inv / "ping-e2e" / "sim.json").symlink_to(inv / "ping-e2e" / "sim.json.tmp")
    (inv / "manifest.json").write_text("[" * 100000)
    run = rundata.read_run(work, (INV_OK,))
    assert run is not None
    assert run.sims["iperf-e2e"].steps == {}  # the link was not read
    assert SECRET not in json.dumps(compare.compare(Group("x", [run]), Group("y", [run])).as_dict())
    assert run.sims["ping-e2e"].passed  # the progress entry, the link to a FIFO skipped


def test_a_planted_sim_dir_cannot_lead_out(work: Path) -> None:
    progress = json.loads((work / INV_OK / "progress.json").read_text())
    progress["simulations"][0]["sim_dir"] = "../../outside"
    progress["simulations"][1]["sim_dir"] = ".."
    (work / INV_OK / "progress.json").write_text(json.dumps(progress))
    run = rundata.read_run(work, (INV_OK,))
    # Only the last segment is ever used ("outside", ".." refused): nothing outside is read.
    assert run.sims["ping-e2e"].steps.get("ping-check")  # from combined-results.json


def make_repeat(work: Path, group_name: str, stamps: list[str], fail: set[int]) -> list[str]:
    """Tries of a --repeat: run folders with repeat.json; `fail` holds failing try numbers."""
    names = []
    for k, stamp in enumerate(stamps, 1):
        name = f"sim-{stamp}"
        write_invocation(work, name, [("iperf-e2e", "fail" if k in fail else "iperf")])
        (work / name / "repeat.json").write_text(
            json.dumps({"group": group_name, "try": k, "tries": len(stamps)})
        )
        names.append(name)
    return names


def test_tries_of_a_repeat_are_one_group(work: Path) -> None:
    stamps = ["260302-100000", "260302-100010", "260302-100020"]
    names = make_repeat(work, "sim-260302-100000", stamps, fail={2})
    groups = rundata.work_dir_groups(work)
    assert [g.label for g in groups] == [INV_OK, INV_FAIL, "sim-260302-100000"]
    g = rundata.group_of(work, names[1])
    assert g.folders() == names and g.tries == 3
    side = compare.sim_sides(g)["iperf-e2e"]
    assert (side.tries, side.passes) == (3, 2)
    # A try given by path brings the others beside it along.
    assert rundata.folder_group(work / names[2], "x").folders() == names


def test_earlier_group_ran_the_same_sims(work: Path) -> None:
    write_invocation(work, "sim-260301-140000", [("ping-e2e", "ping"), ("iperf-e2e", "iperf")])
    write_invocation(work, "sim-260301-150000", [("ping-e2e", "ping")])
    write_invocation(work, "sim-260301-160000", [("ping-e2e", "ping"), ("iperf-e2e", "iperf")])
    head = rundata.group_of(work, "sim-260301-160000")
    assert rundata.earlier_group(work, head).label == "sim-260301-140000"
    older = rundata.group_of(work, "sim-260301-140000")
    assert rundata.earlier_group(work, older).label == INV_OK
    assert rundata.earlier_group(work, rundata.group_of(work, INV_OK)) is None


def test_resolve_group(work: Path, tmp_path: Path) -> None:
    assert rundata.resolve_group(None, work, "--head").label == INV_FAIL  # latest
    assert rundata.resolve_group(INV_OK, work, "--base").folders() == [INV_OK]  # by name
    artifact = tmp_path / "artifact"
    shutil.copytree(work / INV_OK, artifact / "sim-run")
    got = rundata.resolve_group(str(artifact / "sim-run"), work, "--base")
    assert got.tries == 1 and "ping-e2e" in got.sim_names
    assert rundata.resolve_group(str(work / "latest"), tmp_path, "--head").folders() == [INV_FAIL]
    assert rundata.resolve_group(str(work), tmp_path, "--head").label == INV_FAIL  # a work dir
    for bad, message in [
        (str(tmp_path / "outside"), "not a run folder"),
        (str(tmp_path / "nope"), "no such folder"),
        ("sim-990101-000000", "no such folder"),
    ]:
        with pytest.raises(UsageError, match=message):
            rundata.resolve_group(bad, work, "--base")
    with pytest.raises(UsageError, match="no runs in"):
        rundata.resolve_group(None, tmp_path / "outside", "--head")


# ── the task ───────────────────────────────────────────────────────────────────


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    """A project whose work dir has two runs of iperf-e2e, the second slower."""
    work = tmp_path / ".patchbay-work"
    write_invocation(work, "sim-260301-120000", [("iperf-e2e", "iperf")])
    head = write_invocation(work, "sim-260301-130000", [("iperf-e2e", "iperf")])
    data = json.loads((head / "iperf-e2e" / "results.json").read_text())
    data["steps"][0]["down_bytes"] = "131072000"  # half as much in the same time
    (head / "iperf-e2e" / "results.json").write_text(json.dumps(data))
    os.symlink("sim-260301-130000", work / "latest")
    return tmp_path


def test_compare_task_defaults_and_threshold(two_runs: Path) -> None:
    out = patchbay_vm(two_runs, "compare")
    assert out.returncode == 0, out.stderr
    assert "base: " in out.stdout and "sim-260301-120000" in out.stdout
    assert "-50.0%" in out.stdout
    out = patchbay_vm(two_runs, "compare", "--threshold", "throughput=-10%")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "THRESHOLD throughput=-10% crossed by iperf-e2e step iperf-client" in out.stdout
    assert "crossed throughput=-10%" in out.stderr
    out = patchbay_vm(two_runs, "compare", "--threshold", "throughput=-60%", "--threshold",
                      "latency=+20%")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_compare_json_and_invoke_spelling(two_runs: Path) -> None:
    import subprocess
    import sys

    (two_runs / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\nns = namespace()\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "sim.compare", "--base", "sim-260301-120000",
         "--head", ".patchbay-work/sim-260301-130000", "--json", "--threshold", "throughput=-10%"],
        cwd=two_runs, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["thresholds_crossed"][0]["step"] == "iperf-client"
    assert data["base"]["folders"] == ["sim-260301-120000"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "speed=-10%"], "unknown metric 'speed'"),
        (["--threshold", "throughput=10"], "expected METRIC=-N% or METRIC=+N%"),
        (["/"], "--base /: not a run folder"),
        (["sim-260301-120000", "no/such/dir"], "--head no/such/dir: no such folder"),
        (["a", "b", "c"], "BASE and HEAD at most"),
    ],
)
def test_compare_bad_input_is_exit_2(two_runs: Path, args: list[str], message: str) -> None:
    assert_usage_error(patchbay_vm(two_runs, "compare", *args), message)


def test_compare_with_no_earlier_run(tmp_path: Path) -> None:
    work = tmp_path / ".patchbay-work"
    write_invocation(work, "sim-260301-120000", [("iperf-e2e", "iperf")])
    assert_usage_error(patchbay_vm(tmp_path, "compare"), "no earlier run of the same sims")
    assert_usage_error(patchbay_vm(tmp_path / ".patchbay-work" / "sim-260301-120000", "compare"),
                       "no runs in")  # fmt: skip


def test_threshold_type() -> None:
    assert Threshold("latency", 20.0).metrics == ("latency_ms",)
    with pytest.raises(ThresholdError):
        compare.parse_thresholds(["latency=+20%", "nope"])
