"""Copy this file (and `pip install patchbay-vm-tasks`) into your project to get
`invoke vm.up`, `invoke sim.run --file sims/x.toml`, `invoke test.run`, ..."""

from pathlib import Path

from invoke import Collection, task

from patchbay_vm_tasks.tasks import namespace

ns = namespace()


# This repository's own benchmarks (issue 9), not part of the importable namespace;
# absent from a copy of this file elsewhere.
if (Path(__file__).resolve().parent / "benchmarks" / "vm_speed.py").is_file():

    @task(
        help={
            "runs": "Samples per warm case (default 5).",
            "cold_runs": "Cold first boots of a new VM from its image's template (default 3), "
            "after one that makes the template.",
            "stage_mb": "MB staged into /work and read in the guest (default 200).",
            "label": "Name for the JSON file in benchmarks/results/ (e.g. before, after).",
            "fs": "fs modes to stage with, comma-separated (default 9p,virtiofs); the first "
            "also gets the boot, resume and command cases.",
            "port": "First SSH port of the benchmark VMs (default 2501).",
            "keep": "Leave the benchmark VMs running.",
        }
    )
    def run(
        c, runs=5, cold_runs=3, stage_mb=200, label="", fs="9p,virtiofs", port=2501, keep=False
    ):
        """Time cold and warm ups, guest commands, staging; the Rust protocol beside them."""
        from benchmarks import vm_speed

        vm_speed.run(runs, cold_runs, stage_mb, label, None, port, tuple(fs.split(",")), keep)

    ns.add_collection(Collection("bench", run))
