"""`sim.run --shard K/N`: a deterministic share of the given sims, for CI jobs side by side.

Every shard job is given the same sims and works out the same split by itself, so the N
shares never overlap and together hold every sim:

- The sims are taken in the runner's order (sorted by their path in the guest).
- With the durations of the last run of those sims (the newest run folder in the work
  dir that ran each one: `runtime_ms` of its manifest), the longest sim goes first to the
  shard with the least work so far (ties: the lower shard), and so on down; a sim with no
  duration counts as the median of the others. Shard runs are never the source: a shard
  run in the same work dir must not move the next shard's split. In CI, every shard job
  restores the same earlier (merged) run, so they all see the same durations.
- Without any duration, sims are dealt by name, round robin.

The shard is recorded in the run folder's manifest.json (`shard`: index, total, basis,
where the durations came from, this shard's sims and the whole plan), which is what
`sim.merge` checks when it puts the shards back together. A shard that gets no sim (more
shards than sims) still writes a run folder, with no sims, so that a merge sees every
shard.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import files
from ..errors import UsageError
from ..simcore.steps import combined_markdown
from . import runfolders, workdir
from .inputs import SimFiles, guest_sim_path

_SHARD = re.compile(r"([0-9]{1,4})/([0-9]{1,4})")
MAX_SHARDS = 1000
# Run folders looked at, newest first, for the durations of the last run of each sim.
MAX_RUNS_SCANNED = 100


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    total: int

    @property
    def text(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(value: str | None) -> Shard | None:
    """`--shard K/N` with 1 <= K <= N <= MAX_SHARDS; UsageError for anything else."""
    if value is None:
        return None
    text = str(value).strip()
    m = _SHARD.fullmatch(text)
    if not m:
        raise UsageError(f"--shard {value!r}: expected K/N, e.g. 1/2 (shard K of N)")
    index, total = int(m[1]), int(m[2])
    if not 1 <= total <= MAX_SHARDS:
        raise UsageError(f"--shard {text}: N must be from 1 to {MAX_SHARDS}")
    if not 1 <= index <= total:
        raise UsageError(f"--shard {text}: K must be from 1 to N ({total}); shards count from 1")
    return Shard(index, total)


def sim_name(sims: SimFiles, path: Path) -> str:
    """The sim's name as the runners use it: `[sim] name`, else the file's stem."""
    table = sims.toml(path).get("sim")
    name = table.get("name") if isinstance(table, dict) else None
    return name if isinstance(name, str) and name else path.stem


@dataclass
class Plan:
    """How the sims of one `sim.run` are split, and this shard's share."""

    shard: Shard
    paths: list[Path]  # every sim, in the runner's order
    names: list[str]  # their names, in the same order
    mine: list[Path]  # this shard's sims, in the runner's order
    basis: str  # "durations" or "name"
    durations_ms: dict[str, int] = field(default_factory=dict)  # the ones known
    durations_from: list[str] = field(default_factory=list)  # the run folders read

    @property
    def my_names(self) -> list[str]:
        return [self.names[self.paths.index(p)] for p in self.mine]

    def manifest(self) -> dict[str, Any]:
        """manifest.json `shard`."""
        data: dict[str, Any] = {
            "index": self.shard.index,
            "total": self.shard.total,
            "basis": self.basis,
            "sims": self.my_names,
            "plan": self.names,
        }
        if self.basis == "durations":
            data["durations_from"] = self.durations_from
            data["expected_ms"] = sum(self.expected(p) for p in self.mine)
        return data

    def expected(self, path: Path) -> int:
        """The duration a sim is counted with: its last one, else the median of the rest."""
        name = self.names[self.paths.index(path)]
        if name in self.durations_ms:
            return self.durations_ms[name]
        known = list(self.durations_ms.values())
        return int(statistics.median(known)) if known else 0

    def describe(self) -> str:
        how = (
            f"balanced by the durations of {', '.join(self.durations_from)}"
            if self.basis == "durations"
            else "dealt by name (no earlier run of these sims in the work dir)"
        )
        return f"shard {self.shard.text}: {len(self.mine)} of {len(self.paths)} sim(s), {how}"


def runner_order(paths: list[Path], workspace: Path) -> list[Path]:
    """The sims as the runner sorts them: by their path in the guest (/app/...)."""
    return sorted(paths, key=lambda p: PurePosixPath(guest_sim_path(p, workspace)))


def last_durations(work_dir: Path, names: set[str]) -> tuple[dict[str, int], list[str]]:
    """({sim name: runtime_ms}, the run folders they came from): for each sim, the newest
    run folder of the work dir that ran it to an end (ok or error), shard runs left out."""
    found: dict[str, int] = {}
    used: list[str] = []
    for folder in reversed(workdir.run_dirs(work_dir)[-MAX_RUNS_SCANNED:]):
        manifest = files.read_json(work_dir, [folder.name, "manifest.json"])
        if not isinstance(manifest, dict) or "shard" in manifest:
            continue
        entries = manifest.get("simulations")
        took_one = False
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            name, ms = entry.get("sim"), entry.get("runtime_ms")
            if (
                isinstance(name, str)
                and name in names
                and name not in found
                and entry.get("status") in ("ok", "error")
                and isinstance(ms, int)
                and not isinstance(ms, bool)
                and ms >= 0
            ):
                found[name] = ms
                took_one = True
        if took_one:
            used.append(folder.name)
        if len(found) == len(names):
            break
    return found, used


def split(
    paths: list[Path], names: list[str], total: int, durations: dict[str, int]
) -> list[list[Path]]:
    """The N shares of `paths` (each in the given order). Longest first onto the least
    loaded shard when there are durations; round robin by name when there are none."""
    shares: list[list[Path]] = [[] for _ in range(total)]
    name_of = dict(zip(paths, names, strict=True))
    if durations:
        fallback = int(statistics.median(durations.values()))
        cost = {p: durations.get(name_of[p], fallback) for p in paths}
        load = [0] * total
        for p in sorted(paths, key=lambda p: (-cost[p], name_of[p], str(p))):
            k = min(range(total), key=lambda i: (load[i], i))
            shares[k].append(p)
            load[k] += cost[p]
    else:
        for i, p in enumerate(sorted(paths, key=lambda p: (name_of[p], str(p)))):
            shares[i % total].append(p)
    order = {p: i for i, p in enumerate(paths)}
    return [sorted(share, key=order.__getitem__) for share in shares]


def plan(sims: SimFiles, shard: Shard, work_dir: Path, workspace: Path) -> Plan:
    """This shard's share of `sims` (see the module's docstring)."""
    paths = runner_order(list(sims), workspace)
    names = [sim_name(sims, p) for p in paths]
    durations, used = last_durations(work_dir, set(names))
    shares = split(paths, names, shard.total, durations)
    return Plan(
        shard=shard,
        paths=paths,
        names=names,
        mine=shares[shard.index - 1],
        basis="durations" if durations else "name",
        durations_ms=durations,
        durations_from=used,
    )


def share_of(sims: SimFiles, mine: list[Path]) -> SimFiles:
    """A SimFiles of some of `sims`, sharing what was read already (nothing is parsed
    again)."""
    part = SimFiles(mine)
    part.files = sims.files
    return part


def record(work_dir: Path, folder: str, shard_plan: Plan) -> bool:
    """Add `shard` to the manifest.json of the run folder the runner made; False when it
    has no readable manifest (the runner did not get that far)."""
    manifest = files.read_json(work_dir, [folder, "manifest.json"])
    if not isinstance(manifest, dict):
        return False
    manifest["shard"] = shard_plan.manifest()
    # A folder of ours again (the guest could have put a link there), then written whole.
    runfolders.write_json(files.real_dir(work_dir, [folder]) / "manifest.json", manifest)
    return True


def write_empty_run(work_dir: Path, shard_plan: Plan) -> Path:
    """The run folder of a shard that has no sims: nothing runs, but the merge sees the
    shard. The layout of any run folder, with no simulations."""
    now = runfolders.timestamp()
    root = runfolders.new_run_dir(work_dir)
    common = {"run": root.name, "started_at": now, "status": "done", "simulations": []}
    runfolders.write_json(
        root / "progress.json",
        {**common, "updated_at": now, "total": 0, "completed": 0, "ok": 0, "error": 0,
         "current_sim": None},
    )  # fmt: skip
    runfolders.write_json(root / "combined-results.json", {"runs": []})
    runfolders.write_text(root / "combined-results.md", combined_markdown([]))
    runfolders.write_json(
        root / "manifest.json",
        {**common, "ended_at": now, "runtime_ms": 0, "success": True,
         "runner": {"name": "none", "version": None}, "environment": {},
         "shard": shard_plan.manifest()},
    )  # fmt: skip
    runfolders.point_latest(work_dir, root.name)
    return root


def run_folder_names(work_dir: Path) -> set[str]:
    return {p.name for p in workdir.run_dirs(work_dir)}


def record_new_runs(work_dir: Path, before: set[str], shard_plan: Plan) -> list[str]:
    """record() into every run folder made since `before` (one, or one per --repeat try);
    returns the folders recorded."""
    done = []
    for folder in sorted(run_folder_names(work_dir) - before, key=workdir.run_order):
        if record(work_dir, folder, shard_plan):
            done.append(folder)
    return done
