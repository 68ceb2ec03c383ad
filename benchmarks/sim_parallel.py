"""Wall time of a suite of sims (issue 21): one job with `--jobs 1`, `2` and `4`, and as
two shards (`--shard 1/2`, `--shard 2/2`) against one job.

    .venv/bin/python -m benchmarks.sim_parallel [--rounds 2] [--label NAME] [--keep]

The suite is this repository's own sims (sims/) plus the corpus's sims that run here
(../shared/sims-from-patchbay: sims/iperf-1to1-*.toml and ui-fixtures/, read where it
lies and copied into the scratch project, since the guest only sees the workspace; its
iroh sims need binaries built from GitHub, out of reach on this machine). Everything runs
with the builtin runner in one VM of its own (`bench-par`, SSH port 2503 unless told; 2
vCPUs), booted before the first case. Cases alternate round by round, so a slow minute of
the machine does not land on one case. Two shards are timed one after the other in the one
VM; on CI they run on two machines at once, so their wall time is the longer shard's
(plus each job's own boot, which is not counted here, and the merge, which is).

The table gives the median wall time of each case (sim.run from start to exit, SSH and
runner start included), and the median down throughput of each iperf sim in each case:
sims side by side share the guest's CPUs, which under emulation is what moves the bytes.
The JSON file in benchmarks/results/ holds every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CORPUS = Path(os.environ.get("PATCHBAY_SIM_CORPUS", REPO.parent / "shared" / "sims-from-patchbay"))
# The corpus's sims that need no binaries built from elsewhere.
CORPUS_SIMS = ["sims/iperf-1to1-public.toml", "sims/iperf-1to1-udp.toml", "ui-fixtures"]
JOBS = (1, 2, 4)


def scratch_project(root: Path) -> tuple[Path, list[str]]:
    """A project with this repository's sims and the corpus's runnable ones; the --file
    values that name them all."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\n\nns = namespace()\n"
    )
    shutil.copytree(REPO / "sims", root / "sims", dirs_exist_ok=True)
    if not CORPUS.is_dir():
        raise SystemExit(f"sim corpus not found at {CORPUS} (set PATCHBAY_SIM_CORPUS)")
    shutil.copytree(CORPUS, root / "corpus", dirs_exist_ok=True)
    return root, ["sims", *(f"corpus/{s}" for s in CORPUS_SIMS)]


class Bench:
    def __init__(self, project: Path, name: str, port: int) -> None:
        self.project = project
        env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_VM_")}
        env.update(
            QEMU_VM_NAME=name,
            QEMU_VM_SSH_PORT=str(port),
            QEMU_VM_CPUS="2",
            QEMU_VM_MEM_MB="2048",
            QEMU_VM_IMAGE_URL=os.environ.get("QEMU_VM_IMAGE_URL", "debian:trixie"),
            NO_COLOR="1",
        )
        self.env = env

    def invoke(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.project, env=self.env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return out, time.monotonic() - started

    @property
    def work(self) -> Path:
        return self.project / ".patchbay-work"


def run_folder(bench: Bench, out: subprocess.CompletedProcess) -> Path:
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("run folder /work/")]
    return bench.work / line.removeprefix("run folder /work/")


def throughputs(folder: Path) -> dict[str, float]:
    """Down Mbit/s of each sim's first step that moved bytes."""
    found = {}
    combined = json.loads((folder / "combined-results.json").read_text())["runs"]
    for entry in combined:
        for step in entry["steps"]:
            secs = step.get("duration")
            secs = secs / 1e6 if isinstance(secs, int) else float(secs) if secs else None
            down = float(step["down_bytes"]) if step.get("down_bytes") else None
            if secs and down:
                found[entry["sim"]] = round(down * 8 / secs / 1e6, 1)
                break
    return found


def one_round(bench: Bench, files: list[str], log) -> dict[str, Any]:
    """Every case once: {case: {"wall_s", "mbit_s", ...}}."""
    args = ["--patchbay-version", "builtin", *[x for f in files for x in ("--file", f)]]
    cases: dict[str, Any] = {}
    for jobs in JOBS:
        out, took = bench.invoke("sim.run", *args, "--jobs", str(jobs))
        if out.returncode != 0:
            raise RuntimeError(f"--jobs {jobs} failed:\n{out.stdout}\n{out.stderr}")
        folder = run_folder(bench, out)
        manifest = json.loads((folder / "manifest.json").read_text())
        cases[f"--jobs {jobs}"] = {
            "wall_s": round(took, 1),
            "mbit_s": throughputs(folder),
            "sims": len(manifest["simulations"]),
            "sim_s_sum": round(sum(s["runtime_ms"] for s in manifest["simulations"]) / 1000, 1),
        }
        log(f"  --jobs {jobs}: {took:.1f} s")
    shards = []
    for k in (1, 2):
        out, took = bench.invoke("sim.run", *args, "--shard", f"{k}/2")
        if out.returncode != 0:
            raise RuntimeError(f"--shard {k}/2 failed:\n{out.stdout}\n{out.stderr}")
        shards.append((run_folder(bench, out), took))
        log(f"  --shard {k}/2: {took:.1f} s")
    started = time.monotonic()
    merged = subprocess.run(
        [sys.executable, "-m", "patchbay_vm_tasks", "merge", *(str(f) for f, _ in shards),
         "-o", str(bench.project / "merged")],
        cwd=bench.project, env=bench.env, capture_output=True, text=True,
    )  # fmt: skip
    merge_s = time.monotonic() - started
    if merged.returncode != 0:
        raise RuntimeError(f"merge failed:\n{merged.stderr}")
    basis = [json.loads((f / "manifest.json").read_text())["shard"] for f, _ in shards]
    cases["2 shards"] = {
        "wall_s": round(max(t for _, t in shards) + merge_s, 1),
        "shard_s": [round(t, 1) for _, t in shards],
        "merge_s": round(merge_s, 2),
        "basis": [b["basis"] for b in basis],
        "sims_per_shard": [b["sims"] for b in basis],
        "mbit_s": {k: v for f, _ in shards for k, v in throughputs(f).items()},
    }
    return cases


def table(rounds: list[dict[str, Any]]) -> str:
    names = list(rounds[0])
    base = statistics.median(r["--jobs 1"]["wall_s"] for r in rounds)
    sims = sorted({s for r in rounds for c in r.values() for s in c["mbit_s"]})
    head = ["case", "wall s (median)", "vs --jobs 1", *(f"{s} Mbit/s" for s in sims)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        wall = statistics.median(r[name]["wall_s"] for r in rounds)
        cells = [name, f"{wall:.1f}", f"{base / wall:.2f}x"]
        for s in sims:
            vals = [r[name]["mbit_s"][s] for r in rounds if s in r[name]["mbit_s"]]
            cells.append(f"{statistics.median(vals):.0f}" if vals else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--label", default="")
    p.add_argument("--port", type=int, default=2503)
    p.add_argument("--keep", action="store_true", help="leave the benchmark VM running")
    args = p.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-par-"))
    project, files = scratch_project(root / "project")
    bench = Bench(project, "bench-par", args.port)
    out, took = bench.invoke("vm.up")
    if out.returncode != 0:
        raise SystemExit(f"vm.up failed:\n{out.stderr}")
    log(f"vm.up: {took:.1f} s")
    status_out, _ = bench.invoke("vm.status", "--json")
    status = json.loads(status_out.stdout or "{}")
    rounds = []
    try:
        # One run first: it makes the shards' split "by durations", as on CI after the
        # first merged run, and warms the guest's caches for every case alike.
        bench.invoke("sim.run", "--patchbay-version", "builtin",
                     *[x for f in files for x in ("--file", f)])  # fmt: skip
        for n in range(args.rounds):
            log(f"round {n + 1}/{args.rounds}")
            rounds.append(one_round(bench, files, log))
    finally:
        if not args.keep:
            bench.invoke("vm.destroy")
            shutil.rmtree(root, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    out_file = RESULTS / f"sim-parallel-{stamp}{'-' + args.label if args.label else ''}.json"
    data = {
        "when": stamp,
        "files": files,
        "host_cpus": os.cpu_count(),
        "guest_cpus": 2,
        "accel": status.get("accel"),
        "rounds": rounds,
    }
    out_file.write_text(json.dumps(data, indent=2) + "\n")
    print(table(rounds))
    print(f"\nsamples: {out_file}")


if __name__ == "__main__":
    main()
