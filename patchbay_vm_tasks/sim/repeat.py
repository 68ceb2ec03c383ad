"""`sim.run --repeat N`: the tries of one invocation, and what they say together.

Each try is one run of the runner with all the sims, so it keeps its own run folder
(`sim-YYMMDD-HHMMSS[-N]`, as any run); the host then writes `repeat.json` into it,
`{"group": <the first try's folder>, "try": k, "tries": N}`, by which `rundata`, the
viewer, the report and `sim.compare` take the N folders as one invocation. The summary
gives per sim its tries, passes, failures and pass rate, and per step the metrics' min,
median and max over the tries that have them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import files
from ..errors import UsageError
from . import compare, workdir
from .rundata import REPEAT_FILE, Group

# ASCII digits only (str.isdigit takes `²`, which int() then refuses).
_COUNT = re.compile(r"[0-9]{1,6}")
MAX_REPEAT = 1000


def parse_repeat(value: str | int | None) -> int:
    """--repeat N: 1 to MAX_REPEAT; UsageError for anything else (0 included)."""
    if value is None:
        return 1
    text = str(value).strip()
    if not _COUNT.fullmatch(text) or not 1 <= int(text) <= MAX_REPEAT:
        raise UsageError(
            f"--repeat: expected a number of tries from 1 to {MAX_REPEAT}, got {value!r}"
        )
    return int(text)


def new_run_folders(work_dir: Path, before: set[str]) -> list[str]:
    """The run folders of work_dir not in `before`, oldest first."""
    return [p.name for p in workdir.run_dirs(work_dir) if p.name not in before]


def run_folder_names(work_dir: Path) -> set[str]:
    return {p.name for p in workdir.run_dirs(work_dir)}


def mark_try(work_dir: Path, folder: str, group: str, try_no: int, tries: int) -> Path:
    """Write repeat.json into the run folder work_dir/folder. The folder is the guest's:
    a link put in its place is replaced by a folder first (never written through), and
    the file is created anew and renamed into place."""
    real = files.real_dir(work_dir, folder)
    data = {"group": group, "try": try_no, "tries": tries}
    return files.write_atomic(real / REPEAT_FILE, (json.dumps(data) + "\n").encode())


# ── the summary ────────────────────────────────────────────────────────────────


def _pct(rate: float) -> str:
    return f"{rate * 100:.0f}%"


def summary_data(group: Group, missing: int = 0) -> dict:
    """The summary as data (for --json and tests): per sim tries, passes, failures,
    pass_rate, runtime and step metrics as {n, min, median, max}. missing: tries that
    left no run folder (the runner failed before making one)."""
    sims = []
    for name, side in compare.sim_sides(group).items():
        runtime = compare.Stat.of(side.runtime)
        steps = {
            step: {k: compare.Stat.of(metrics[k]).as_dict() for k in compare.metric_order(metrics)}
            for step, metrics in side.steps.items()
        }
        sims.append(
            {
                "sim": name,
                **side.as_dict(),
                "runtime_s": runtime.as_dict() if runtime else None,
                "steps": steps,
            }
        )
    return {
        "group": group.label,
        "tries": group.tries + missing,
        "folders": group.folders(),
        "sims": sims,
    }


def format_summary(group: Group, missing: int = 0) -> str:
    """Per sim: tries, passed, failed, pass rate, runtime min/median/max; then per step
    each metric's n, min, median and max."""
    sides = compare.sim_sides(group)
    lines = [f"{group.tries + missing} tries of {group.label}: " + ", ".join(group.folders())]
    if missing:
        lines.append(f"{missing} try(s) left no run folder (the runner failed before a sim ran)")
    if not sides:
        lines.append("no sims found in the tries' run folders")
        return "\n".join(lines)
    head = ["sim", "tries", "passed", "failed", "pass rate", "runtime s min", "median", "max"]
    rows = [head]
    for name, side in sides.items():
        rt = compare.Stat.of(side.runtime)
        tries = side.tries + missing
        rows.append(
            [
                name,
                str(tries),
                str(side.passes),
                str(tries - side.passes),
                _pct(side.passes / tries if tries else 0.0),
                *(
                    compare.fmt_value("runtime_s", getattr(rt, k) if rt else None)
                    for k in ("min", "median", "max")
                ),
            ]
        )
    lines += compare.text_table(rows, 1)
    metric_rows = [["sim", "step", "metric", "n", "min", "median", "max"]]
    for name, side in sides.items():
        for step, metrics in side.steps.items():
            for key in compare.metric_order(metrics):
                st = compare.Stat.of(metrics[key])
                if st is None:
                    continue
                label = compare.METRIC_LABELS.get(key, (key, 3))[0]
                metric_rows.append(
                    [
                        name,
                        step,
                        label,
                        str(st.n),
                        *(compare.fmt_value(key, v) for v in (st.min, st.median, st.max)),
                    ]
                )
    if len(metric_rows) > 1:
        lines.append("")
        lines += compare.text_table(metric_rows, 3)
    return "\n".join(lines)


def overall_code(codes: list[int]) -> int:
    """The task's exit code after its tries: 130 when one was interrupted, the runner's
    own code when it failed otherwise than a sim failing (not 0 or 1), 1 when any try
    failed, else 0."""
    if 130 in codes:
        return 130
    other = [c for c in codes if c not in (0, 1)]
    if other:
        return other[0]
    return 1 if any(codes) else 0
