"""`sim.run`: stage sims and binaries, run the patchbay runner in the guest."""

from __future__ import annotations

import os
import time

from invoke import Collection, Context, Exit, task

from .. import binaries, guest, lifecycle, runner, settings, simfiles
from ..errors import UsageError
from ..ui import say
from .common import task_errors


@task(
    iterable=["file", "binary"],
    help={
        "file": "A sim TOML file, or a folder of them (all *.toml, sorted). Repeatable.",
        "work_dir": "Host folder shared as /work, where results land (default .patchbay-work).",
        "binary": "NAME:MODE:VALUE, MODE one of path, fetch, build; stages a binary for the "
        "sims, replacing a sim's own entry of that name. Repeatable.",
        "patchbay_version": "Runner to use: latest, vX.Y.Z, git:REF or path:FILE (default latest).",
        "verbose": "Pass -v to the runner.",
        "recreate": "Boot a fresh VM first (needed when --work-dir differs from the running VM's).",
    },
)
def run(
    c: Context,
    file: list[str],
    work_dir: str | None = None,
    binary: list[str] | None = None,
    patchbay_version: str = "latest",
    verbose: bool = False,
    recreate: bool = False,
) -> None:
    """Run sims in the VM with the patchbay runner; results land in the work dir."""
    with task_errors():
        s = settings.from_context(c, work_dir=work_dir)
        if not file:
            raise UsageError("give at least one sim: --file sims/NAME.toml (or a folder)")
        # Everything that can be wrong with the input is found before anything boots.
        sims = simfiles.expand_sim_args(file, s.project_dir)
        target = runner.musl_target_for(s.arch)
        binary_args = binaries.prepare_binary_args(
            list(binary or []), sims, s.work_dir, target, s.target_dir, s.project_dir
        )
        runner_file = runner.resolve_runner(patchbay_version, s.work_dir, s.arch)
        runner.install_runner(runner_file, s.work_dir)

        vm = lifecycle.up(s, recreate=recreate)
        try:
            argv = simfiles.guest_run_argv(
                [simfiles.guest_sim_path(p, s.project_dir) for p in sims],
                binary_args,
                verbose,
                os.environ,
            )
            started = time.monotonic()
            result = guest.run_argv(vm.conn, argv, sudo=True, in_stream=False)
            took = time.monotonic() - started
        finally:
            vm.close()
        say(f"runner exited with {result.exited} after {took:.1f} s; results in {s.work_dir}")
        print(simfiles.format_summary(simfiles.summarize_results(s.work_dir)))
    if result.exited:
        raise Exit(code=result.exited)


sim = Collection("sim", run)
