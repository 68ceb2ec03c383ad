"""The viewer's compare view and --repeat groups (issue 21): the API answers, the report's
--baseline, and the page in Debian's headless chromium (browser-marked tests)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from test_repeat import six_tries
from test_viewer_fixture import write_invocation

from patchbay_vm_tasks.sim import rundata
from patchbay_vm_tasks.viewer import report
from patchbay_vm_tasks.viewer import server as viewer_server
from patchbay_vm_tasks.viewer.api import Api

BASE = "sim-260301-120000"
HEAD = "sim-260301-130000"


def slower(inv_dir: Path, sim: str = "iperf-e2e", down: str = "131072000") -> None:
    """Half the bytes in the same time: half the throughput."""
    for path in (inv_dir / sim / "results.json",):
        data = json.loads(path.read_text())
        data["steps"][0]["down_bytes"] = down
        path.write_text(json.dumps(data))
    combined = json.loads((inv_dir / "combined-results.json").read_text())
    for entry in combined["runs"]:
        if entry["sim"] == sim:
            entry["steps"][0]["down_bytes"] = down
    (inv_dir / "combined-results.json").write_text(json.dumps(combined))


def make_work(root: Path) -> Path:
    """Two runs of the same two sims (the second slower), a run of one other sim, and
    a --repeat of six tries of `flaky` (2 fail); `latest` is the slower run."""
    work = root / "work"
    write_invocation(work, BASE, [("ping-e2e", "ping"), ("iperf-e2e", "iperf")])
    slower(write_invocation(work, HEAD, [("ping-e2e", "ping"), ("iperf-e2e", "iperf")]))
    write_invocation(work, "sim-260301-140000", [("other", "ping")])
    six_tries(work)
    os.symlink(HEAD, work / "latest")
    return work


def get(api: Api, target: str) -> tuple[int, object]:
    res = api.handle(target)
    return res.status, json.loads(res.body)


def test_groups_list_a_repeat_once(tmp_path: Path) -> None:
    api = Api(make_work(tmp_path))
    status, groups = get(api, "/api/groups")
    assert status == 200
    labels = [g["group"] for g in groups]
    assert labels == ["sim-260305-100001", "sim-260301-140000", HEAD, BASE]  # newest first
    rep = groups[0]
    assert rep["tries"] == 6 and len(rep["folders"]) == 6
    assert (rep["passes"], rep["runs"]) == (4, 6) and rep["sims"] == ["flaky"]


def test_compare_api_defaults_and_picks(tmp_path: Path) -> None:
    api = Api(make_work(tmp_path))
    status, data = get(api, "/api/compare")
    assert status == 200
    assert data["head"]["label"] == HEAD and data["base"]["label"] == BASE  # same sims
    rows = {(r["sim"], r["step"], r["metric"]): r for s in data["sims"] for r in s["rows"]}
    assert rows[("iperf-e2e", "iperf-client", "down_mbit_s")]["change_pct"] == pytest.approx(-50)
    status, data = get(api, f"/api/compare?base={HEAD}&head=sim-260301-140000")
    assert status == 200
    assert data["only_in_base"] == ["ping-e2e", "iperf-e2e"] and data["only_in_head"] == ["other"]
    status, data = get(api, "/api/compare?base=sim-260305-100003&head=sim-260305-100001")
    assert data["base"]["tries"] == 6 and data["medians"]  # a try stands for its group
    status, data = get(api, "/api/compare?base=../../etc&head=" + HEAD)
    assert status == 404 and "no run ../../etc" in data["error"]
    status, data = get(api, "/api/compare?head=sim-260301-140000")
    assert status == 404 and data["error"] == "no earlier run of the same sims"


def test_group_summary_api(tmp_path: Path) -> None:
    api = Api(make_work(tmp_path))
    status, data = get(api, "/api/groups/sim-260305-100001/summary")
    assert status == 200 and data["tries"] == 6
    (sim,) = data["sims"]
    assert (sim["passes"], sim["failures"]) == (4, 2)
    assert get(api, "/api/groups/nope/summary")[0] == 404
    assert get(api, "/api/groups/%2e%2e/summary")[0] == 404


def test_report_with_a_baseline(tmp_path: Path) -> None:
    work = make_work(tmp_path)
    base = rundata.resolve_group(BASE, work, "--baseline")
    data = report.report_data(work, "latest", base)
    assert data["compare"]["base"]["label"] == BASE and data["compare"]["head"]["label"] == HEAD
    assert "groups" not in data  # a run of its own
    page = report.render_report(data)
    assert "compare with the baseline" in page  # the page's own script offers it
    # A try of a --repeat brings its group along, with the summary.
    data = report.report_data(work, "sim-260305-100002")
    assert sorted(data["progress"]) == [f"sim-260305-1000{k:02d}" for k in range(1, 7)]
    assert data["groupSummary"]["sim-260305-100001"]["sims"][0]["passes"] == 4
    assert "compare" not in data


def test_report_baseline_flag(tmp_path: Path) -> None:
    from test_bad_input import assert_usage_error, patchbay_vm

    work = make_work(tmp_path)
    out = patchbay_vm(tmp_path, "report", "-o", "r.html", "--work-dir", str(work),
                      "--baseline", str(work / BASE))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"compare": {"base"' in (tmp_path / "r.html").read_text()
    out = patchbay_vm(tmp_path, "report", "-o", "r.html", "--work-dir", str(work),
                      "--baseline", str(tmp_path))  # fmt: skip
    assert_usage_error(out, "--baseline")


# ── in the browser ─────────────────────────────────────────────────────────────

browser = pytest.mark.browser


@pytest.fixture(scope="module")
def cmp_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work(tmp_path_factory.mktemp("viewer-compare"))


@pytest.fixture(scope="module")
def cmp_url(cmp_work: Path) -> Iterator[str]:
    srv = viewer_server.serve_in_thread(cmp_work, "127.0.0.1:0")
    yield srv.url
    srv.shutdown()
    srv.server_close()


def _browser():
    import test_viewer_browser as tvb

    if not (tvb.CHROMIUM.exists() and tvb.DRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver")
    return tvb


@pytest.fixture(scope="module")
def cmp_driver() -> Iterator[object]:
    tvb = _browser()
    gen = tvb.driver.__wrapped__()  # the browser module's own fixture body
    d = next(gen)
    yield d
    next(gen, None)


@browser
def test_compare_view_deep_link_and_pickers(cmp_driver, cmp_url, tmp_path) -> None:
    tvb = _browser()
    d = cmp_driver
    tvb.open_page(d, cmp_url, f"#view=compare&base={BASE}&head={HEAD}")
    row = tvb.wait(d, lambda d: tvb.css(d, 'table.compare tr[data-metric="down_mbit_s"]'))[0]
    assert "iperf-e2e" in row.text and "iperf-client" in row.text and "-50.0%" in row.text
    assert "worse" in row.get_attribute("class")
    assert "1048.5" in row.text and "524.3" in row.text  # Mbit/s on both sides
    head_text = tvb.text_of(d, ".run-head")
    assert f"{BASE} (1 try)" in head_text and f"{HEAD} (1 try)" in head_text
    tvb.shot(d, tmp_path, "compare", copy=True)
    # Picking another head in the page changes the link, and the view follows it.
    from selenium.webdriver.support.ui import Select

    Select(tvb.css(d, "#cmp-head")[0]).select_by_value("sim-260301-140000")
    tvb.wait(d, lambda d: "only in head: other" in tvb.text_of(d, "#main"))
    assert "head=sim-260301-140000" in d.current_url
    # The picker's link opens the default comparison: latest against its earlier run.
    tvb.open_page(d, cmp_url, "#")
    tvb.css(d, "a.compare-link")[0].click()
    tvb.wait(d, lambda d: tvb.css(d, 'table.compare tr[data-metric="down_mbit_s"]'))
    assert f"{BASE} (1 try) → {HEAD} (1 try)" in tvb.text_of(d, ".run-head")


@browser
def test_repeat_tries_shown_together_with_their_pass_rate(cmp_driver, cmp_url, tmp_path) -> None:
    tvb = _browser()
    d = cmp_driver
    tvb.open_page(d, cmp_url, "#group=" + quote("sim-260305-100001"))
    grp = tvb.wait(d, lambda d: tvb.css(d, '.repeat-group[data-group="sim-260305-100001"]'))[0]
    sections = [
        e.get_attribute("data-inv") for e in grp.find_elements("css selector", "section.inv")
    ]
    assert sections == [f"sim-260305-1000{k:02d}" for k in range(1, 7)]  # first try first
    assert "6 tries" in grp.text and "4/6 ok" in grp.text and "try 3/6" in grp.text
    row = tvb.wait(d, lambda d: tvb.css(d, 'table.repeat-summary tr[data-sim="flaky"]'))[0]
    assert row.text.split()[:5] == ["flaky", "6", "4", "2", "67%"]
    tvb.shot(d, tmp_path, "repeat-group", copy=True)


@browser
def test_report_compare_view_from_disk(cmp_driver, cmp_work, tmp_path) -> None:
    tvb = _browser()
    d = cmp_driver
    base = rundata.resolve_group(BASE, cmp_work, "--baseline")
    page = report.write_report(cmp_work, tmp_path / "report.html", "latest", base)
    d.get("about:blank")
    d.get(page.as_uri() + "#view=compare")
    tvb.wait(d, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
    row = tvb.wait(d, lambda d: tvb.css(d, 'table.compare tr[data-metric="down_mbit_s"]'))[0]
    assert "-50.0%" in row.text
    assert not tvb.css(d, "#cmp-base")  # nothing to pick in a file
