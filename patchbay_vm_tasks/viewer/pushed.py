"""What the results server works out about a pushed run from its folder: the CI facts of
its `run.json`, what it holds (sim runs or the labs of Rust tests), its status and
summary, and its comparison with a base run (`sim.compare` for sims, pass and fail per
lab for labs).

All of it is read from a folder written from an upload, so as untrusted input: through
`files`/`rundata`/`runs` (no link followed, size and nesting limits), every string cut
to a length, a PR URL kept only when it is http(s), and nothing in a comparison that
says where the server keeps its files.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from .. import files
from ..sim import compare, rundata
from . import runs, testdir

RUN_JSON = "run.json"
MAX_RUN_JSON = 1024 * 1024
# A stored run's labs are looked for as deep as `sim.serve --testdir` looks.
LAB_DEPTH = testdir.MAX_DEPTH
LAB_FOLDERS = testdir.MAX_FOLDERS
# Names listed in a summary at most (failed sims, failed labs).
MAX_NAMED = 20
# The branch a run is compared against when its run.json names none: the first of these
# that the project has runs of.
DEFAULT_BASES = ("main", "master")

# metric -> 1 when higher is better, -1 when lower is (the viewer's compare view agrees).
BETTER = {
    "pass_rate": 1,
    "runtime_s": -1,
    "duration_s": -1,
    "down_mbit_s": 1,
    "up_mbit_s": 1,
    "latency_ms": -1,
    "down_bytes": 1,
    "up_bytes": 1,
}
# A change smaller than this (percent) is neither better nor worse.
NOISE_PCT = 1.0

LAB_PASSED = ("success", "ok", "passed")
LAB_FAILED = ("failed", "error")


def _text(value: Any, limit: int) -> str | None:
    if isinstance(value, str) and value.strip():
        return "".join(c for c in value if c.isprintable())[:limit] or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)[:limit]
    return None


def _pr(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 < value < 10**12:
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()):
        return int(value.strip()) or None
    return None


def _url(value: Any) -> str | None:
    text = _text(value, 500)
    if text and re.match(r"https?://[^\s\"'<>]+\Z", text):
        return text
    return None


def read_manifest(tree: Path) -> tuple[dict[str, Any], str | None]:
    """(run.json's fields, a note when it is missing or not readable). Fields: branch,
    commit, pr, pr_url, title, created_at, base_branch (ours: the branch to compare
    with) and thresholds (ours: sim.compare's METRIC=±N% texts); None where not given."""
    empty: dict[str, Any] = dict.fromkeys(
        ("branch", "commit", "pr", "pr_url", "title", "created_at", "base_branch")
    ) | {"thresholds": []}
    if not files.is_regular(tree, [RUN_JSON]):
        return empty, "no run.json in the archive"
    try:
        raw = files.read_limited(tree, [RUN_JSON], MAX_RUN_JSON)
        data = files.loads_json(raw.decode("utf-8"))
    except (OSError, ValueError) as e:
        return empty, f"run.json is not readable JSON ({str(e)[:200]})"
    if not isinstance(data, dict):
        return empty, "run.json is not a JSON object"
    title = _text(data.get("title"), 300)
    thresholds, note = [], None
    raw = data.get("thresholds")
    for item in (raw if isinstance(raw, list) else [])[:20]:
        try:
            thresholds.append(compare.parse_threshold(str(item)[:100]).text)
        except compare.ThresholdError as e:
            note = f"run.json: {e}"
    return {
        "branch": _text(data.get("branch"), 200),
        "commit": _text(data.get("commit"), 64),
        "pr": _pr(data.get("pr")),
        "pr_url": _url(data.get("pr_url")),
        "title": title,
        "created_at": _text(data.get("created_at"), 40),
        "base_branch": _text(data.get("base_branch"), 200),
        "thresholds": thresholds,
    }, note


def folder_size(tree: Path) -> tuple[int, int]:
    """(bytes in regular files, how many) below tree; links and the like are not counted
    (and not followed)."""
    total = count = 0
    stack = [tree]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                count += 1
    return total, count


def labs(tree: Path) -> list[runs.RunInfo]:
    """The labs (folders holding events.jsonl) anywhere below tree."""
    return runs.discover_runs(tree, (), LAB_DEPTH, LAB_FOLDERS)


def sim_group(tree: Path) -> rundata.Group | None:
    """The sim runs of a stored run: its latest invocation with the tries beside it."""
    return rundata.latest_group(tree)


def describe(tree: Path) -> tuple[str, str, dict[str, Any]]:
    """(kind, status, summary) of a stored run's folder. kind: sims (a sim.run
    invocation), labs (Rust tests' labs, a testdir) or empty; status: ok, error, running,
    done (labs that say neither passed nor failed) or unknown."""
    group = sim_group(tree)
    if group is not None:
        sides = compare.sim_sides(group)
        failed = sorted(n for n, s in sides.items() if s.passes < s.tries)
        pending = any(
            sim.status in ("pending", "running") for run in group.runs for sim in run.sims.values()
        )
        status = "error" if failed else "running" if pending else "ok" if sides else "unknown"
        return (
            "sims",
            status,
            {
                "invocation": group.label,
                "folders": group.folders(),
                "tries": group.tries,
                "sims": len(sides),
                "passed": len(sides) - len(failed),
                "failed": len(failed),
                "failed_names": failed[:MAX_NAMED],
                "names": sorted(sides)[:200],
            },
        )
    found = labs(tree)
    if found:
        states = [(r.name, (r.status or "").lower()) for r in found]
        failed = sorted(n for n, s in states if s in LAB_FAILED)
        passed = sum(s in LAB_PASSED for _, s in states)
        running = sum(s == "running" for _, s in states)
        if failed:
            status = "error"
        elif running:
            status = "running"
        elif passed == len(states):
            status = "ok"
        else:
            status = "done"
        return (
            "labs",
            status,
            {
                "labs": len(states),
                "passed": passed,
                "failed": len(failed),
                "running": running,
                "failed_names": failed[:MAX_NAMED],
            },
        )
    return "empty", "unknown", {}


# ── the comparison with a base run ──────────────────────────────────────────────


def row_class(row: dict[str, Any]) -> str:
    """worse, better or "" for one row of sim.compare's comparison (as the viewer colours
    it: a change of at least NOISE_PCT percent in a metric with a known direction)."""
    better = BETTER.get(row["metric"])
    pct = row.get("change_pct")
    if better is None or row.get("base") is None or row.get("head") is None:
        return ""
    if pct is None:  # base 0
        change = row.get("change") or 0
        return "" if change == 0 else "better" if change * better > 0 else "worse"
    if abs(pct) < NOISE_PCT:
        return ""
    return "better" if pct * better > 0 else "worse"


def compare_sims(
    base: rundata.Group, head: rundata.Group, thresholds: list[compare.Threshold]
) -> dict[str, Any]:
    """sim.compare of two stored runs, each row marked worse/better and crossed when a
    threshold of the server's says so; where the files lie is left out."""
    result = compare.compare(base, head, thresholds).as_dict()
    for side in ("base", "head"):
        result[side].pop("where", None)
    crossed = {
        (c["sim"], c["step"], c["metric"]): c["threshold"] for c in result["thresholds_crossed"]
    }
    worse = better = 0
    for sim in result["sims"]:
        for row in sim["rows"]:
            row["class"] = row_class(row)
            row["crossed"] = crossed.get((row["sim"], row["step"], row["metric"]))
            worse += row["class"] == "worse"
            better += row["class"] == "better"
    newly_failed = [
        s["sim"]
        for s in result["sims"]
        if s["in"] == "both" and s["head"]["failures"] > s["base"]["failures"]
    ]
    result["kind"] = "sims"
    result["worse"], result["better"] = worse, better
    result["newly_failed"] = newly_failed
    result["crossed"] = [
        f"{c['threshold']} crossed by {c['sim']}{' step ' + c['step'] if c['step'] else ''}: "
        f"{compare.METRIC_LABELS.get(c['metric'], (c['metric'], 3))[0]} ({c['why']})"
        for c in result["thresholds_crossed"]
    ]
    return result


def _lab_outcome(status: str | None) -> str:
    s = (status or "").lower()
    return "passed" if s in LAB_PASSED else "failed" if s in LAB_FAILED else s or "unknown"


def compare_labs(base: list[runs.RunInfo], head: list[runs.RunInfo]) -> dict[str, Any]:
    """Lab by lab (by its path in the testdir): passed or failed on each side."""
    b = {r.name: _lab_outcome(r.status) for r in base}
    h = {r.name: _lab_outcome(r.status) for r in head}
    rows = []
    worse = better = 0
    for name in sorted(set(b) | set(h)):
        bs, hs = b.get(name), h.get(name)
        cls = ""
        if bs is not None and hs is not None and bs != hs:
            if hs == "failed":
                cls = "worse"
            elif bs == "failed" and hs == "passed":
                cls = "better"
        elif bs is None and hs == "failed":
            cls = "worse"
        worse += cls == "worse"
        better += cls == "better"
        rows.append({"lab": name, "base": bs, "head": hs, "class": cls})
    return {
        "kind": "labs",
        "rows": rows[:5000],
        "worse": worse,
        "better": better,
        "newly_failed": [r["lab"] for r in rows if r["class"] == "worse"][:MAX_NAMED],
        "only_in_base": sorted(set(b) - set(h))[:MAX_NAMED],
        "only_in_head": sorted(set(h) - set(b))[:MAX_NAMED],
        "crossed": [],
    }


def comparison(
    base_tree: Path, head_tree: Path, kind: str, thresholds: list[compare.Threshold]
) -> dict[str, Any] | None:
    """The comparison of two stored runs of one kind, or None when there is nothing to
    compare."""
    if kind == "sims":
        bg, hg = sim_group(base_tree), sim_group(head_tree)
        if bg is None or hg is None:
            return None
        return compare_sims(bg, hg, thresholds)
    if kind == "labs":
        return compare_labs(labs(base_tree), labs(head_tree))
    return None


def comparison_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the run list shows of a comparison: counts and the crossed thresholds."""
    return {
        key: result.get(key)
        for key in (
            "kind",
            "worse",
            "better",
            "newly_failed",
            "crossed",
            "base_branch",
            "base_commit",
        )
        if key in result
    }


def normalise_layout(tree: Path) -> str | None:
    """An archive of one invocation's contents (`tar -C .patchbay-work/latest .`: its
    manifest.json at the top, a folder per sim) is put into a folder of the invocation's
    name, as `sim.push` sends it, so that it reads as a sim run (combined view, compare).
    run.json stays at the top. The folder's name, or None when nothing was moved."""
    from ..sim import workdir

    top = ("manifest.json", "progress.json")
    if not any(files.is_regular(tree, [name]) for name in top) or workdir.run_dirs(tree):
        return None
    manifest = files.read_json(tree, ["manifest.json"])
    name = manifest.get("run") if isinstance(manifest, dict) else None
    if not (isinstance(name, str) and workdir.RUN_DIR.fullmatch(name)):
        name = "sim-" + time.strftime("%y%m%d-%H%M%S", time.gmtime())
    entries = [e for e in os.listdir(tree) if e != RUN_JSON]
    while name in entries:
        name += "-1"
    os.mkdir(tree / name, 0o755)
    for entry in entries:
        os.rename(tree / entry, tree / name / entry)
    return name
