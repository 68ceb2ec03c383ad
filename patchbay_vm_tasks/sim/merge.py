"""`sim.merge`: one run folder of several (the shards of `sim.run --shard K/N`, each from
its own CI job), in the layout of one run's folder (RUNNER-FACTS 5), so that everything
that reads a run reads it: the summary, `sim.serve`, `sim.report`, JUnit, `sim.compare`.

    <out>/sim-YYMMDD-HHMMSS/  progress.json manifest.json combined-results.json/.md
                              <sim>/ (copied from the shard that ran it)
    <out>/latest -> sim-YYMMDD-HHMMSS

The sims keep the order of the plan the shards share (the runner's order of an unsharded
run); their folders, `sim.json` and `results.json` are copied as they are (a folder name
taken by another shard's sim gets `-1`, `-2`, ... and the files naming it follow). The
manifest says where each part came from (`merged.from`), and which shards or sims of the
plan are missing. Shards of different splits (another N, another plan), a shard given
twice or a sim that ran in two of them are refused: a merge of those would not be one
run of the plan.

The folders given are untrusted (a downloaded artifact, a work dir the guest wrote):
every file is read through `files` (no link followed, regular files only, JSON with size
and nesting limits), names from the files are used only when they are one plain path
segment, and the copy is bounded in depth and in files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..errors import UsageError
from ..simcore.steps import combined_markdown
from . import runfolders, workdir

MARKERS = ("manifest.json", "progress.json")
# A sim folder holds a few dozen files two levels deep (certs/<id>/, files/<id>/).
MAX_COPY_DEPTH = 8
MAX_COPY_FILES = 100_000


class MergeError(UsageError):
    """Folders that do not make one run (exit 2)."""


@dataclass
class Source:
    """One run folder given to the merge."""

    given: str
    path: Path  # the run folder
    manifest: dict[str, Any]
    combined: list[dict[str, Any]]
    note: str = ""  # how it was found, when not given directly

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def shard(self) -> dict[str, Any] | None:
        shard = self.manifest.get("shard")
        return shard if isinstance(shard, dict) else None

    @property
    def simulations(self) -> list[dict[str, Any]]:
        sims = self.manifest.get("simulations")
        return [s for s in sims if isinstance(s, dict)] if isinstance(sims, list) else []


@dataclass
class Merged:
    path: Path
    sources: list[Source]
    simulations: list[dict[str, Any]]
    missing_sims: list[str] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [str(s.get("sim")) for s in self.simulations if s.get("status") != "ok"]

    @property
    def success(self) -> bool:
        return not self.failed and not self.missing_sims and not self.missing_shards


def _is_run_folder(path: Path) -> bool:
    return any(files.is_regular(path, [m]) for m in MARKERS)


def find_source(given: str) -> Source:
    """The run folder `given` names: a run folder itself, or a folder holding run
    folders (a work dir, a CI artifact), whose latest run is taken. MergeError when it is
    neither."""
    path = Path(given).expanduser()
    if not path.is_dir():
        raise MergeError(f"--from {given}: no such folder")
    note = ""
    if not _is_run_folder(path):
        latest = workdir.latest_run(path)
        if latest is None or not _is_run_folder(latest):
            raise MergeError(
                f"--from {given}: no run here (no manifest.json, no sim-YYMMDD-HHMMSS folder)"
            )
        note = f"{given}: its latest run, {latest.name}"
        path = latest
    manifest = files.read_json(path, ["manifest.json"])
    if not isinstance(manifest, dict):
        manifest = files.read_json(path, ["progress.json"])
    if not isinstance(manifest, dict) or not isinstance(manifest.get("simulations"), list):
        raise MergeError(f"--from {given}: its manifest.json cannot be read as a run's")
    if manifest.get("status") == "running":
        raise MergeError(f"--from {given}: the run has not ended (status running)")
    combined = files.read_json(path, ["combined-results.json"])
    runs = combined.get("runs") if isinstance(combined, dict) else None
    return Source(given, path, manifest, [r for r in runs or [] if isinstance(r, dict)], note=note)


def _check_shards(sources: list[Source]) -> tuple[list[str] | None, list[int]]:
    """(the shared plan, the missing shard numbers) of shard runs; MergeError when they
    are not shards of one split."""
    shards = [s.shard for s in sources if s.shard is not None]
    if not shards:
        return None, []
    if len(shards) != len(sources):
        plain = [s.given for s in sources if s.shard is None]
        raise MergeError(f"{', '.join(plain)}: not a shard run, the others are (sim.run --shard)")
    totals = {sh.get("total") for sh in shards}
    if len(totals) != 1:
        raise MergeError(f"shards of different splits: N = {sorted(map(str, totals))}")
    plans = {tuple(sh.get("plan") or []) for sh in shards}
    if len(plans) != 1:
        raise MergeError("shards of different plans (other sims given to each shard job)")
    seen: dict[Any, str] = {}
    for source in sources:
        index = source.shard.get("index") if source.shard else None
        if index in seen:
            raise MergeError(f"shard {index} given twice: {seen[index]} and {source.given}")
        seen[index] = source.given
    (total,) = totals
    missing = [k for k in range(1, total + 1) if k not in seen] if isinstance(total, int) else []
    (plan,) = plans
    return [str(x) for x in plan], missing


def _copy_tree(src: Path, parts: list[str], dest: Path, budget: list[int], depth: int = 0) -> None:
    """Copy the folder src/parts into dest (made by the caller): regular files and
    folders, never a link, within MAX_COPY_DEPTH and the files left in `budget`."""
    try:
        with os.scandir(src.joinpath(*parts)) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not files.safe_segment(entry.name):
            continue
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 < MAX_COPY_DEPTH:
                    os.mkdir(dest / entry.name)
                    _copy_tree(src, [*parts, entry.name], dest / entry.name, budget, depth + 1)
                continue
            if not entry.is_file(follow_symlinks=False) or budget[0] <= 0:
                continue
            fd, st = files.open_in(src, [*parts, entry.name])
        except OSError:
            continue  # gone, or not a regular file when opened: left out
        budget[0] -= 1
        stream = files.FileStream(fd, 0, st.st_size)
        try:
            files.write_chunks(dest / entry.name, stream, 0o644)
        finally:
            stream.close()


def _sim_dir(entry: dict[str, Any]) -> str | None:
    value = entry.get("sim_dir")
    name = Path(value).name if isinstance(value, str) else None
    return name if name and files.safe_segment(name) else None


def _order(sources: list[Source], plan: list[str] | None) -> list[tuple[Source, dict]]:
    """Every (source, simulation entry), in the plan's order (then the sources' own)."""
    pairs = [(src, entry) for src in sources for entry in src.simulations]
    if plan is None:
        return pairs
    rank = {name: i for i, name in enumerate(plan)}
    return sorted(pairs, key=lambda pe: rank.get(str(pe[1].get("sim")), len(rank)))


def merge(given: list[str], out: Path) -> Merged:
    """Merge the run folders `given` into a new run folder in `out` (made if missing)."""
    if not given:
        raise MergeError("give the runs to merge: --from DIR (repeatable)")
    sources = [find_source(g) for g in given]
    where: dict[Path, str] = {}
    for src in sources:
        real = src.path.resolve()
        if real in where:
            raise MergeError(f"{src.given}: the same run as {where[real]}")
        where[real] = src.given
    plan, missing_shards = _check_shards(sources)
    pairs = _order(sources, plan)
    ran_in: dict[str, str] = {}
    for src, entry in pairs:
        name = str(entry.get("sim"))
        if name in ran_in:
            raise MergeError(f"sim {name} is in both {ran_in[name]} and {src.given}")
        ran_in[name] = src.given
    if out.exists() and not out.is_dir():
        raise MergeError(f"-o {out}: not a folder (give the work dir to write the run into)")

    root = runfolders.new_run_dir(out)
    taken: set[str] = set()
    simulations: list[dict[str, Any]] = []
    combined: list[dict[str, Any]] = []
    renamed: dict[str, str] = {}
    budget = [MAX_COPY_FILES]
    for src, entry in pairs:
        entry = dict(entry)
        old = _sim_dir(entry)
        if old is not None and (src.path / old).is_dir() and not (src.path / old).is_symlink():
            new = old
            n = 0
            while new in taken:
                n += 1
                new = f"{old}-{n}"
            taken.add(new)
            os.mkdir(root / new)
            _copy_tree(src.path, [old], root / new, budget)
            if new != old:
                renamed[f"{src.name}/{old}"] = new
                sim_json = files.read_json(root, [new, "sim.json"])
                if isinstance(sim_json, dict):
                    sim_json["sim_dir"] = new
                    runfolders.write_json(root / new / "sim.json", sim_json)
            entry["sim_dir"] = new
            entry["sim_json"] = f"{new}/sim.json"
            for run in src.combined:
                if _sim_dir(run) == old:
                    combined.append({**run, "run": root.name, "sim_dir": new})
        simulations.append(entry)

    plan_names = plan or []
    missing_sims = [name for name in plan_names if name not in ran_in]
    merged = Merged(root, sources, simulations, missing_sims, missing_shards, renamed)
    _write_run_files(merged, combined, plan is not None)
    runfolders.point_latest(out, root.name)
    return merged


def _strings(sources: list[Source], key: str) -> list[str]:
    return [v for s in sources if isinstance(v := s.manifest.get(key), str)]


def _write_run_files(merged: Merged, combined: list[dict[str, Any]], sharded: bool) -> None:
    sources = merged.sources
    started, ended = _strings(sources, "started_at"), _strings(sources, "ended_at")
    runtimes = [
        ms
        for s in sources
        if isinstance(ms := s.manifest.get("runtime_ms"), int) and not isinstance(ms, bool)
    ]
    sims = merged.simulations
    ok = sum(1 for s in sims if s.get("status") == "ok")
    error = sum(1 for s in sims if s.get("status") == "error")
    name = merged.path.name
    first = sources[0].manifest
    interrupted = any(s.manifest.get("interrupted") for s in sources)
    total = (sources[0].shard or {}).get("total") if sharded else None
    common = {"run": name, "started_at": min(started) if started else None, "status": "done"}
    runfolders.write_json(
        merged.path / "progress.json",
        {**common, "updated_at": runfolders.timestamp(), "total": len(sims),
         "completed": ok + error, "ok": ok, "error": error, "current_sim": None,
         "simulations": sims},
    )  # fmt: skip
    runfolders.write_json(merged.path / "combined-results.json", {"runs": combined})
    runfolders.write_text(merged.path / "combined-results.md", combined_markdown(combined))
    manifest: dict[str, Any] = {
        **common,
        "ended_at": max(ended) if ended else None,
        # The shards ran side by side: the merged run took as long as its longest shard.
        "runtime_ms": max(runtimes) if runtimes else None,
        "success": merged.success and not interrupted,
        "runner": first.get("runner"),
        "environment": first.get("environment"),
        "simulations": sims,
        "merged": {
            "from": [
                {
                    "run": s.name,
                    "path": str(s.path),
                    "shard": s.shard,
                    "started_at": s.manifest.get("started_at"),
                    "ended_at": s.manifest.get("ended_at"),
                    "runtime_ms": s.manifest.get("runtime_ms"),
                    "success": s.manifest.get("success"),
                    "concurrency": s.manifest.get("concurrency"),
                }
                for s in sources
            ],
            "shards": total,
            "missing_shards": merged.missing_shards,
            "missing_sims": merged.missing_sims,
            "renamed": merged.renamed,
        },
    }
    if interrupted:
        manifest["interrupted"] = True
    runfolders.write_json(merged.path / "manifest.json", manifest)


def describe(merged: Merged) -> list[str]:
    """The lines the task says about a merge."""
    parts = ", ".join(
        s.name + (f" (shard {s.shard.get('index')}/{s.shard.get('total')})" if s.shard else "")
        for s in merged.sources
    )
    lines = [s.note for s in merged.sources if s.note]
    lines.append(f"merged {len(merged.simulations)} sim(s) of {parts} into {merged.path}")
    if merged.missing_shards:
        lines.append(f"missing shard(s): {', '.join(map(str, merged.missing_shards))}")
    if merged.missing_sims:
        lines.append(f"sims of the plan in no shard: {', '.join(merged.missing_sims)}")
    for old, new in merged.renamed.items():
        lines.append(f"{old} is {new} in the merged run (its name was taken)")
    return lines
