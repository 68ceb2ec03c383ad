"""What a run folder says about its sims, read safely: status, runtime and each step's
metrics, for `sim.compare`, the `--repeat` summary and the viewer's compare view.

A run folder (`sim-YYMMDD-HHMMSS[-N]`, RUNNER-FACTS 5) holds `progress.json` /
`manifest.json` (`simulations[]`), `combined-results.json`, and per sim `sim.json` and
`results.json`. The guest wrote all of it, and a folder given on the command line may be
a CI artifact from anywhere: every file is read through `files` (no link followed below
the folder, regular files only, size and nesting limits), names from the files are used
only when they are one plain path segment, and whatever is missing or broken reads as
unknown, never as an error.

`sim.run --repeat N` runs the runner N times; each try's run folder gets a `repeat.json`
(`{"group", "try", "tries"}`, written by the host), and the tries of one group are read
together as one invocation (`Group`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..errors import UsageError
from . import workdir

REPEAT_FILE = "repeat.json"
# Files of which at least one makes a folder a run folder.
RUN_MARKERS = ("manifest.json", "progress.json", "combined-results.json")
# The step fields the runner's `[step.results]` tables name (SIM-FORMAT), read as numbers;
# a field another runner adds is read too when it holds a number.
RESULT_FIELDS = ("duration", "up_bytes", "down_bytes", "latency_ms")
# A result field of another runner becomes a metric when its name is this plain.
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
# At most this many sims and steps a sim are read from one folder (a planted file with a
# million entries must not cost minutes).
MAX_SIMS = 1000
MAX_STEPS = 1000


def number(value: Any) -> float | None:
    """A finite number from a JSON value: numbers and numeric strings (the Rust runner
    writes captures as strings); None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        result = float(value)
    else:
        try:
            result = float(str(value).strip())
        except ValueError:
            return None
    return result if result == result and abs(result) != float("inf") else None


def seconds(value: Any) -> float | None:
    """The runner's duration: an integer is microseconds, a float is seconds (SIM-FORMAT)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value / 1_000_000
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+", text):
        return int(text) / 1_000_000
    return number(text)


def mbit_s(nbytes: float | None, secs: float | None) -> float | None:
    """Throughput in Mbit/s (10^6 bits a second) from bytes and seconds."""
    if nbytes is None or not secs or secs <= 0:
        return None
    return nbytes * 8 / secs / 1_000_000


def step_metrics(step: dict[str, Any]) -> dict[str, float | None]:
    """One `results.json` step as metrics: duration_s, down_bytes, up_bytes, down_mbit_s,
    up_mbit_s, latency_ms (None where unknown), and any other numeric field by its name."""
    secs = seconds(step.get("duration"))
    down = number(step.get("down_bytes"))
    up = number(step.get("up_bytes"))
    out: dict[str, float | None] = {
        "duration_s": secs,
        "down_bytes": down,
        "up_bytes": up,
        "down_mbit_s": mbit_s(down, secs),
        "up_mbit_s": mbit_s(up, secs),
        "latency_ms": number(step.get("latency_ms")),
    }
    for key, value in step.items():
        if key in RESULT_FIELDS or key == "id" or key in out:
            continue
        if isinstance(key, str) and _FIELD_NAME.fullmatch(key) and number(value) is not None:
            out[key] = number(value)
    return out


@dataclass
class SimTry:
    """One sim in one run folder."""

    sim: str
    status: str  # ok | error | pending | running | ... as the runner wrote it
    runtime_s: float | None = None
    error: str | None = None
    # step id -> metric -> value (steps in the runner's order; a repeated id gets `#2`)
    steps: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass
class RunData:
    """One run folder (one try of an invocation)."""

    name: str  # the folder's name
    where: str  # the folder, as shown to the user
    sims: dict[str, SimTry]
    repeat: dict[str, Any] | None = None  # repeat.json: group, try, tries

    @property
    def sim_names(self) -> frozenset[str]:
        return frozenset(self.sims)


@dataclass
class Group:
    """The tries of one invocation: one run folder, or the N of a `--repeat N`."""

    label: str
    runs: list[RunData]

    @property
    def tries(self) -> int:
        return len(self.runs)

    @property
    def sim_names(self) -> frozenset[str]:
        names: set[str] = set()
        for run in self.runs:
            names |= run.sim_names
        return frozenset(names)

    def folders(self) -> list[str]:
        return [run.name for run in self.runs]


def is_run_folder(base: Path, parts: tuple[str, ...] = ()) -> bool:
    """Whether base/parts holds one of a run folder's top files (reached without links)."""
    return any(files.is_regular(base, [*parts, name]) for name in RUN_MARKERS)


def _json(base: Path, parts: tuple[str, ...], *names: str) -> Any:
    try:
        return files.read_json(base, [*parts, *names])
    except OSError:  # a bad segment (RefusedFile): not readable
        return None


def _text(value: Any, limit: int = 500) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:limit]


def read_repeat(base: Path, parts: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """repeat.json of a run folder when it is well formed: {group: str, try: int, tries: int}."""
    data = _json(base, parts, REPEAT_FILE)
    if not isinstance(data, dict):
        return None
    group, try_no, tries = data.get("group"), data.get("try"), data.get("tries")
    if not (isinstance(group, str) and files.safe_segment(group) and len(group) <= 200):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (try_no, tries)):
        return None
    if not 1 <= try_no <= tries <= 1_000_000:
        return None
    return {"group": group, "try": try_no, "tries": tries}


def _steps(raw: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for step in (raw if isinstance(raw, list) else [])[:MAX_STEPS]:
        if not isinstance(step, dict):
            continue
        sid = _text(step.get("id"), 120) or "?"
        key, n = sid, 1
        while key in out:
            n += 1
            key = f"{sid}#{n}"
        out[key] = {k: v for k, v in step_metrics(step).items() if v is not None}
    return out


def read_run(base: Path, parts: tuple[str, ...] = (), where: str | None = None) -> RunData | None:
    """The sims of the run folder base/parts, or None when it is no run folder.

    Sims come from progress.json (else manifest.json) `simulations[]`, their status,
    runtime and error from each `sim.json` (else the entry), steps from each
    `results.json` (else the run's combined-results.json); a folder with only a
    combined-results.json lists its sims as ok."""
    if not is_run_folder(base, parts):
        return None
    # A folder given by path is named by what it is (`latest` is a link to one).
    name = parts[-1] if parts else (base.resolve().name or str(base))
    listing = None
    for top in ("progress.json", "manifest.json"):
        data = _json(base, parts, top)
        if isinstance(data, dict) and isinstance(data.get("simulations"), list):
            listing = data["simulations"]
            break
    combined = _json(base, parts, "combined-results.json")
    combined_steps: dict[str, Any] = {}
    combined_runs = combined.get("runs") if isinstance(combined, dict) else None
    for entry in (combined_runs if isinstance(combined_runs, list) else [])[:MAX_SIMS]:
        if isinstance(entry, dict):
            key = _text(entry.get("sim") or entry.get("sim_dir"), 200)
            if key and key not in combined_steps:
                combined_steps[key] = entry.get("steps")
    sims: dict[str, SimTry] = {}
    if listing is None:
        for key, raw in combined_steps.items():
            sims[key] = SimTry(key, "ok", steps=_steps(raw))
    for entry in (listing or [])[:MAX_SIMS]:
        if not isinstance(entry, dict):
            continue
        sim = _text(entry.get("sim") or entry.get("sim_dir"), 200)
        if not sim or sim in sims:
            continue
        status = _text(entry.get("status"), 40) or "pending"
        runtime = number(entry.get("runtime_ms"))
        error = _text(entry.get("error"))
        steps_raw = None
        sim_dir = entry.get("sim_dir")
        sim_dir = Path(sim_dir).name if isinstance(sim_dir, str) else None
        if sim_dir and files.safe_segment(sim_dir):
            sim_json = _json(base, parts, sim_dir, "sim.json")
            if isinstance(sim_json, dict):
                status = _text(sim_json.get("status"), 40) or status
                if sim_json.get("runtime_ms") is not None:
                    runtime = number(sim_json.get("runtime_ms"))
                err = sim_json.get("error")
                if isinstance(err, dict):
                    error = _text(err.get("message")) or error
            results = _json(base, parts, sim_dir, "results.json")
            if isinstance(results, dict):
                steps_raw = results.get("steps")
        if steps_raw is None:
            steps_raw = combined_steps.get(sim)
        sims[sim] = SimTry(
            sim,
            status,
            runtime_s=None if runtime is None else runtime / 1000,
            error=error,
            steps=_steps(steps_raw),
        )
    return RunData(name, where or str(base.joinpath(*parts)), sims, read_repeat(base, parts))


# ── groups of tries in a work dir ───────────────────────────────────────────────


def _group_key(name: str, repeat: dict[str, Any] | None) -> str:
    return repeat["group"] if repeat else name


def work_dir_groups(work_dir: Path) -> list[Group]:
    """The work dir's run folders as groups of tries, oldest first (by each group's first
    try). A folder without repeat.json is a group of its own."""
    by_key: dict[str, list[RunData]] = {}
    for path in workdir.run_dirs(work_dir):
        run = read_run(work_dir, (path.name,), str(path))
        if run is None:
            continue
        by_key.setdefault(_group_key(run.name, run.repeat), []).append(run)
    groups = [_group(key, tries) for key, tries in by_key.items()]
    return sorted(groups, key=lambda g: workdir.run_order(g.runs[0].name))


def _group(key: str, tries: list[RunData]) -> Group:
    tries = sorted(tries, key=lambda r: (r.repeat or {}).get("try", 0))
    return Group(key, tries)


def group_of(work_dir: Path, name: str) -> Group | None:
    """The group the run folder `name` of work_dir belongs to (its tries)."""
    for group in work_dir_groups(work_dir):
        if name in group.folders():
            return group
    return None


def latest_group(work_dir: Path) -> Group | None:
    """The group of the work dir's latest run folder (the `latest` link, else the newest)."""
    latest = workdir.latest_run(work_dir)
    return group_of(work_dir, latest.name) if latest else None


def folder_group(folder: Path, shown: str) -> Group | None:
    """A run folder given by path (a CI artifact, `.patchbay-work/latest`): the folder
    itself, and when its repeat.json names a group, the other tries of that group that
    lie beside it. None when it is no run folder."""
    run = read_run(folder, (), shown)
    if run is None:
        return None
    if run.repeat is None:
        return Group(run.name, [run])
    parent = folder.parent
    tries = [run]
    seen = {run.name, folder.resolve().name}
    for path in workdir.run_dirs(parent):
        if path.name in seen:
            continue
        repeat = read_repeat(parent, (path.name,))
        if repeat and repeat["group"] == run.repeat["group"]:
            other = read_run(parent, (path.name,), str(path))
            if other is not None:
                tries.append(other)
    return _group(run.repeat["group"], tries)


def earlier_group(work_dir: Path, head: Group) -> Group | None:
    """The newest group of work_dir that started before `head` and ran the same sims
    (None when there is none). A head from elsewhere is placed by its folder names."""
    head_names = set(head.folders())
    first = min(
        (r.name for r in head.runs if workdir.RUN_DIR.fullmatch(r.name)),
        key=workdir.run_order,
        default=None,
    )
    best = None
    for group in work_dir_groups(work_dir):
        if head_names & set(group.folders()):
            continue
        if first is not None and workdir.run_order(group.runs[0].name) >= workdir.run_order(first):
            continue
        if group.sim_names == head.sim_names:
            best = group  # oldest first: the last that fits is the newest
    return best


# ── BASE and HEAD from the command line ─────────────────────────────────────────


def resolve_group(value: str | None, work_dir: Path, flag: str) -> Group:
    """A --base/--head value: `latest` (or none: the work dir's latest invocation), a run
    folder anywhere (its tries beside it join it), a work dir (its latest invocation),
    or the name of a run folder of work_dir. UsageError for anything else."""
    if value is None or value == "latest":
        group = latest_group(work_dir)
        if group is None:
            raise UsageError(
                f"no runs in {work_dir}: run sim.run first, or give {flag} DIR (a run folder)"
            )
        return group
    path, shown = Path(value).expanduser(), value
    try:
        is_dir = path.is_dir()
        if not is_dir and not path.exists() and workdir.RUN_DIR.fullmatch(value):
            path, is_dir = work_dir / value, (work_dir / value).is_dir()
            shown = str(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{flag} {value!r}: {getattr(e, 'strerror', None) or e}") from None
    if not is_dir:
        raise UsageError(f"{flag} {value}: no such folder (give a run folder or a work dir)")
    group = folder_group(path, shown)
    if group is None and workdir.run_dirs(path):
        group = latest_group(path)
    if group is None:
        raise UsageError(
            f"{flag} {value}: not a run folder (no manifest.json, progress.json or "
            "combined-results.json in it) nor a work dir holding one"
        )
    return group


def group_of_folders(work_dir: Path, folders: list[str]) -> Group:
    """The run folders `folders` of work_dir (the tries of one `--repeat`) as a group
    named by the first; folders that are no run folder (any more) are left out."""
    runs = [read_run(work_dir, (name,), str(work_dir / name)) for name in folders]
    return Group(folders[0] if folders else "(no run folder)", [r for r in runs if r])
