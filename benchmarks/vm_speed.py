"""How fast the VM tasks are on this machine (issue 9): boots, warm commands, staging.

Run through the project's own task, `invoke bench.run` (see `--help`), or directly:
    .venv/bin/python -m benchmarks.vm_speed [--runs 5] [--cold-runs 3] [--label before]

Each case runs several times; the table shows the median and the spread (min-max),
the JSON file (benchmarks/results/) every sample. The VMs live in a scratch project
of their own (named `speed-*`, SSH ports 2501/2502 unless told), so a developer's
VM is never touched. Beside our tasks, the Rust tool's protocol is replayed in the
same run (a new OpenSSH process per guest command, ten for a warm `up`), so every
ratio is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchbay_vm_tasks.vm import openssh
from patchbay_vm_tasks.vm.state import StateDir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COLD_TCG = "cold vm.up, new VM (image cached), QEMU_VM_ACCEL=tcg"
# The Rust tool spends about ten handshakes on a warm `up` (SPEC 9.10).
RUST_WARM_UP_COMMANDS = 10
GUEST_READ = r"""
import sys, time
t = time.monotonic(); n = 0
with open(sys.argv[1], 'rb', buffering=0) as f:
    while chunk := f.read(1 << 20):
        n += len(chunk)
print(n, time.monotonic() - t)
"""
GUEST_WRITE = r"""
import os, sys, time
block = os.urandom(1 << 20); t = time.monotonic()
with open(sys.argv[1], 'wb', buffering=0) as f:
    for _ in range(int(sys.argv[2])):
        f.write(block)
    os.fsync(f.fileno())
print(time.monotonic() - t)
"""


@dataclass
class Case:
    name: str
    samples: list[float] = field(default_factory=list)
    unit: str = "s"
    note: str = ""

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {
            "case": self.name,
            "unit": self.unit,
            "runs": len(s),
            "median": round(statistics.median(s), 3) if s else None,
            "min": round(min(s), 3) if s else None,
            "max": round(max(s), 3) if s else None,
            "samples": [round(x, 3) for x in s],
            "note": self.note,
        }


@dataclass
class BenchVm:
    """One VM of the benchmark's scratch project, driven through the real command line."""

    project: Path
    name: str
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_VM_")}
        # Only what makes it ours; memory and CPUs stay the defaults a user gets.
        env.update(
            QEMU_VM_NAME=self.name,
            QEMU_VM_SSH_PORT=str(self.port),
            QEMU_VM_IMAGE_URL=os.environ.get("QEMU_VM_IMAGE_URL", "debian:trixie"),
            NO_COLOR="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def state(self) -> Path:
        return self.project / ".qemu-vm" / self.name

    @property
    def work(self) -> Path:
        return self.project / ".patchbay-work"

    def invoke(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.project,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"invoke {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    def ssh_argv(self, *command: str) -> list[str]:
        """A plain OpenSSH call, as the Rust tool makes one per guest command."""
        return [
            "ssh", "-i", str(self.state / "id_ed25519"), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.state / 'known_hosts'}", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", "dev@127.0.0.1", *command,
        ]  # fmt: skip

    def connection(self):
        from patchbay_vm_tasks import settings
        from patchbay_vm_tasks.vm import lifecycle

        s = settings.resolve(env=self.env, project_dir=self.project)
        return lifecycle.require_running(s)


def timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def scratch_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\n\nns = namespace()\n"
    )
    return root


def image_cache(root: Path) -> Path:
    """An image cache for the benchmark: the user's built images linked in, no templates,
    so that the first new VM measures making one."""
    from patchbay_vm_tasks import settings

    real = settings.resolve(env=dict(os.environ), project_dir=Path.cwd()).image_cache_dir
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for build in real.glob("debian-*"):
        if (build / "build.json").exists():
            (root / build.name).symlink_to(build)
    return root


def bench_boots_and_commands(vm: BenchVm, runs: int, cold_runs: int, log) -> list[Case]:
    # The templates are the benchmark's own (see image_cache): the first new VM boots
    # to the gate and saves one; the others start from it.
    making = Case("cold vm.up, new VM making the image's template")
    cold = Case("cold vm.up, new VM (image cached)")
    # The accelerator on auto (the default, as above) against TCG asked for: what the
    # choice costs (issue 18: a test boot, or a remembered verdict). Interleaved.
    cold_tcg = Case(COLD_TCG)
    runs_of = [(making, {})] + [(c, e) for _ in range(cold_runs) for c, e in
                                ((cold, {}), (cold_tcg, {"QEMU_VM_ACCEL": "tcg"}))]  # fmt: skip
    for i, (case, env) in enumerate(runs_of if cold_runs else []):
        vm.invoke("vm.destroy")
        out = None

        def up(env: dict = env) -> None:
            nonlocal out
            out = vm.invoke("vm.up", **env)

        case.samples.append(timed(up))
        if ("from its image's template" in out.stderr) != (case is not making):
            case.note = "unexpected start: " + out.stderr.strip().splitlines()[-1]
        accel_line = [x for x in out.stderr.splitlines() if x.startswith("accel ")]
        if accel_line and case is cold:
            cold.note = accel_line[0]
        log(f"  {case.name} {i}: {case.samples[-1]:.1f} s")
    if not cold_runs:
        vm.invoke("vm.up")
    warm = Case("warm vm.up")
    ssh_proc = Case("vm.ssh -- true (process)")
    ssh_new = Case("vm.ssh -- true (process, new connection)")
    rust_true = Case("rust: ssh true (one process)")
    rust_warm = Case(f"rust: warm up ({RUST_WARM_UP_COMMANDS} ssh processes)")
    kept = Case("guest command on a kept connection")
    argv = vm.ssh_argv("true")

    def rust_up() -> None:
        for _ in range(RUST_WARM_UP_COMMANDS):
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)

    for _ in range(runs):
        warm.samples.append(timed(lambda: vm.invoke("vm.up")))
        # The first call of a series makes the kept connection; the rest use it.
        openssh.stop_master(StateDir(vm.state))
        ssh_new.samples.append(timed(lambda: vm.invoke("vm.ssh", "--", "true")))
        ssh_proc.samples.append(timed(lambda: vm.invoke("vm.ssh", "--", "true")))
        rust_true.samples.append(
            timed(lambda: subprocess.run(argv, check=True, stdin=subprocess.DEVNULL))
        )
        rust_warm.samples.append(timed(rust_up))
    log(f"  warm up median {statistics.median(warm.samples):.2f} s")
    handle = vm.connection()
    try:
        for _ in range(runs):
            kept.samples.append(timed(lambda: handle.conn.run("true", hide=True)))
    finally:
        handle.close()
    overhead = bench_sim_run_overhead(vm, runs)
    log(f"  sim.run overhead median {statistics.median(overhead.samples):.2f} s")
    save, resume = Case("vm.down saving the guest"), Case("cold vm.up, resuming a saved VM")
    for i in range(cold_runs or 1):
        save.samples.append(timed(lambda: vm.invoke("vm.down")))
        started = time.monotonic()
        out = vm.invoke("vm.up")
        resume.samples.append(time.monotonic() - started)
        if "resumed after" not in out.stderr:
            resume.note = "did not resume: " + out.stderr.strip().splitlines()[-1]
        log(f"  resume {i + 1}: {resume.samples[-1]:.1f} s")
    cases = [making, cold, cold_tcg, resume, save, warm, ssh_proc, ssh_new, kept, overhead]
    return cases + [rust_true, rust_warm]


# A sim with one short step: what sim.run adds around the runner shows, not the lab.
OVERHEAD_SIM = """[sim]
name = "overhead"

[[router]]
name = "dc"

[device.a.eth0]
gateway = "dc"

[[step]]
action = "run"
device = "a"
cmd = ["true"]
"""


def bench_sim_run_overhead(vm: BenchVm, runs: int) -> Case:
    """`sim.run` on a warm VM, minus the runner's own time (its 'after N s' line)."""
    case = Case("sim.run overhead (whole task minus the runner)")
    sim = vm.project / "sims" / "overhead.toml"
    sim.parent.mkdir(exist_ok=True)
    sim.write_text(OVERHEAD_SIM)
    args = ("sim.run", "--file", "sims/overhead.toml", "--patchbay-version", "builtin")
    vm.invoke(*args)  # the runner staged and unpacked once, as on any later run
    for _ in range(runs):
        started = time.monotonic()
        out = vm.invoke(*args)
        whole = time.monotonic() - started
        runner = float(out.stderr.split("after ")[-1].split(" s;")[0])
        case.samples.append(whole - runner)
    return case


def bench_staging(vm: BenchVm, mode: str, size_mb: int, runs: int, source: Path, log) -> list[Case]:
    """Copy `size_mb` into the work dir on the host, then read it in the guest (caches
    dropped first) and write as much from the guest."""
    stage = Case(f"stage {size_mb} MB into /work + read in guest ({mode})")
    read = Case(f"guest read /work ({mode})", unit="MB/s")
    write = Case(f"guest write /work ({mode})", unit="MB/s")
    handle = vm.connection()
    try:
        conn = handle.conn
        for _ in range(runs):
            target = vm.work / "bench-stage.bin"
            target.unlink(missing_ok=True)
            conn.run("sudo sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'", hide=True)
            started = time.monotonic()
            shutil.copyfile(source, target)
            out = conn.run(
                f"python3 -c {shlex.quote(GUEST_READ)} /work/bench-stage.bin", hide=True
            ).stdout.split()
            stage.samples.append(time.monotonic() - started)
            nbytes, seconds = int(out[0]), float(out[1])
            assert nbytes == size_mb << 20, out
            read.samples.append(nbytes / 1e6 / seconds)
            out = conn.run(
                f"python3 -c {shlex.quote(GUEST_WRITE)} /work/bench-write.bin {size_mb}",
                hide=True,
            ).stdout.split()
            write.samples.append((size_mb << 20) / 1e6 / float(out[0]))
        conn.run("rm -f /work/bench-stage.bin /work/bench-write.bin", hide=True)
    finally:
        handle.close()
    log(f"  {mode}: read {statistics.median(read.samples):.0f} MB/s")
    return [stage, read, write]


def format_table(cases: list[Case]) -> str:
    rows = [("case", "median", "min-max", "runs")]
    for c in cases:
        s = c.summary()
        if not s["runs"]:
            continue
        rows.append(
            (
                c.name,
                f"{s['median']:.2f} {c.unit}",
                f"{s['min']:.2f}-{s['max']:.2f}",
                str(s["runs"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(cases: list[Case]) -> dict[str, float]:
    med = {c.name: statistics.median(c.samples) for c in cases if c.samples}
    out = {}
    pairs = [
        ("cold vm.up, resuming a saved VM", "cold vm.up, new VM (image cached)"),
        ("cold vm.up, new VM (image cached)", "cold vm.up, new VM making the image's template"),
        ("cold vm.up, new VM (image cached)", COLD_TCG),
        ("warm vm.up", f"rust: warm up ({RUST_WARM_UP_COMMANDS} ssh processes)"),
        ("vm.ssh -- true (process)", "rust: ssh true (one process)"),
        ("vm.ssh -- true (process, new connection)", "rust: ssh true (one process)"),
        ("guest command on a kept connection", "rust: ssh true (one process)"),
    ]
    for ours, rust in pairs:
        if ours in med and rust in med:
            out[f"{ours} / {rust}"] = round(med[ours] / med[rust], 2)
    reads = {c.name: statistics.median(c.samples) for c in cases if c.name.startswith("guest read")}
    if "guest read /work (virtiofs)" in reads and "guest read /work (9p)" in reads:
        out["virtiofs read / 9p read"] = round(
            reads["guest read /work (virtiofs)"] / reads["guest read /work (9p)"], 2
        )
    return out


def run(
    runs: int = 5,
    cold_runs: int = 3,
    stage_mb: int = 200,
    label: str = "",
    scratch: Path | None = None,
    port: int = 2501,
    fs_modes: tuple[str, ...] = ("9p", "virtiofs"),
    keep: bool = False,
) -> Path:
    """Run every case; print the table; write the JSON file and return its path."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    scratch = scratch or Path(os.environ.get("TMPDIR", "/tmp")) / "patchbay-vm-bench"
    project = scratch_project(scratch / "project")
    cache = image_cache(scratch / "image-cache")
    source = scratch / f"stage-{stage_mb}mb.bin"
    if not source.exists() or source.stat().st_size != stage_mb << 20:
        with open(source, "wb") as f:
            for _ in range(stage_mb):
                f.write(os.urandom(1 << 20))
    cases: list[Case] = []
    vms = []
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    path = RESULTS / f"vm-speed-{stamp}{'-' + label if label else ''}.json"
    try:
        for index, mode in enumerate(fs_modes):
            extra = {"QEMU_VM_FS": mode, "QEMU_VM_IMAGE_CACHE": str(cache)}
            vm = BenchVm(project, f"speed-{mode}", port + index, extra)
            vms.append(vm)
            log(f"{vm.name}:")
            if index == 0:
                cases += bench_boots_and_commands(vm, runs, cold_runs, log)
            else:
                vm.invoke("vm.destroy")
                boot = Case(f"cold vm.up, new VM ({mode})")
                boot.samples.append(timed(lambda vm=vm: vm.invoke("vm.up")))
                cases.append(boot)
            cases += bench_staging(vm, mode, stage_mb, max(1, runs // 2), source, log)
            if not keep:
                vm.invoke("vm.down", check=False)
    finally:
        if not keep:
            for vm in vms:
                vm.invoke("vm.down", check=False)
        # What was measured is kept, also when a later case failed.
        result = {
            "label": label,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "cases": [c.summary() for c in cases],
            "ratios": ratios(cases),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(cases)
    print(table)
    for name, value in result["ratios"].items():
        print(f"{name}: {value}")
    print(f"written: {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cold-runs", type=int, default=3)
    p.add_argument("--stage-mb", type=int, default=200)
    p.add_argument("--label", default="")
    p.add_argument("--port", type=int, default=2501)
    p.add_argument("--fs", default="9p,virtiofs", help="fs modes to stage with, in order")
    p.add_argument("--keep", action="store_true", help="leave the VMs running")
    a = p.parse_args(argv)
    run(a.runs, a.cold_runs, a.stage_mb, a.label, None, a.port, tuple(a.fs.split(",")), a.keep)


if __name__ == "__main__":
    main()
