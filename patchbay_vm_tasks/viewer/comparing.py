"""The viewer's compare view and its `--repeat` groups, as plain data for the API and the
report: `GET /api/groups` (the work dir's invocations, the tries of a `--repeat` taken
together) and `GET /api/compare?base=INV&head=INV` (`sim.compare`'s comparison of two).

Run folders are read through `sim.rundata` (no link followed, size and nesting limits);
`base` and `head` name a run folder of the work dir (one of the list's folders), never a
path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sim import compare, repeat, rundata, workdir


def group_api(group: rundata.Group) -> dict[str, Any]:
    sims = compare.sim_sides(group)
    return {
        "group": group.label,
        "folders": group.folders(),
        "tries": group.tries,
        "sims": sorted(sims),
        "passes": sum(s.passes for s in sims.values()),
        "runs": sum(s.tries for s in sims.values()),
    }


def groups(base: Path) -> list[dict[str, Any]]:
    """The work dir's invocations, newest first; a `--repeat` is one entry with its tries'
    folders in order."""
    return [group_api(g) for g in reversed(rundata.work_dir_groups(base))]


def _find(all_groups: list[rundata.Group], name: str) -> rundata.Group | None:
    for group in all_groups:
        if name == group.label or name in group.folders():
            return group
    return None


def comparison(base: Path, base_name: str | None, head_name: str | None) -> tuple[int, dict]:
    """(HTTP status, body): the comparison of two invocations of the work dir, by folder
    or group name; head defaults to the latest, base to the newest earlier run of the
    same sims. 404 with an error when one is not there."""
    all_groups = rundata.work_dir_groups(base)
    if head_name:
        head = _find(all_groups, head_name)
    else:
        latest = workdir.latest_run(base)
        head = _find(all_groups, latest.name) if latest else None
    if head is None:
        return 404, {"error": f"no run {head_name or 'latest'} to compare"}
    older = _find(all_groups, base_name) if base_name else rundata.earlier_group(base, head)
    if older is None:
        why = f"no run {base_name}" if base_name else "no earlier run of the same sims"
        return 404, {"error": why, "head": head.label}
    return 200, compare.compare(older, head).as_dict()


def group_summary(base: Path, name: str) -> dict | None:
    """`sim.run --repeat`'s summary of one group as data (None when there is no such group)."""
    found = _find(rundata.work_dir_groups(base), name)
    return repeat.summary_data(found) if found else None
