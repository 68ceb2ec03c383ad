"""`sim.*`: run sims in the guest (`run`), keep a sim's lab up to look at (`inspect`,
`exec`)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from invoke import Collection, Context, Exit

from .. import durations, settings
from ..errors import UsageError
from ..ui import say
from ..viewer import DEFAULT_BIND
from ..vm import lifecycle, qemu
from . import view
from .common import check_output_path, emit, remainder, task, task_errors, write_junit_file
from .merge import merge
from .push import push

if TYPE_CHECKING:
    from ..sim import runner, shards
    from ..vm.record import VmRecord

# The sim modules are imported inside the tasks: loading them costs every task (a warm
# `vm.up` too) time at start-up, Invoke imports this file to list the tasks.

VERSION_HELP = (
    "Runner: latest, vX.Y.Z, git:REF, path:FILE or builtin (our own, needs nothing from "
    "the network). Default: PATCHBAY_VERSION, else vm.patchbay_version, else latest."
)


@task(
    iterable=["file", "binary"],
    help={
        "file": "A sim TOML file, or a folder of them (all *.toml, sorted). Repeatable.",
        "work_dir": "Host folder shared as /work, where results land (default .patchbay-work).",
        "binary": "NAME:MODE:VALUE, MODE one of path, fetch, build; stages a binary for the "
        "sims, replacing a sim's own entry of that name. Repeatable.",
        "patchbay_version": VERSION_HELP,
        "verbose": "Stream every node's output, prefixed with its device (runner -v).",
        "recreate": "Boot a fresh VM first (needed when --work-dir differs from the running VM's).",
        "timeout": "Time limit per sim, e.g. 300, 90s, 1.5m or 1h (default 10m); a sim over "
        "it fails.",
        "open": "Serve the results viewer while the run goes on (and after it, until Ctrl-C) "
        "and open it in the browser.",
        "bind": "HOST:PORT of the viewer with --open (default 127.0.0.1:7421).",
        "junit": "Also write a JUnit XML file: a testcase per sim, failures with their step.",
        "refresh": "Ask for a newer `latest` runner and base image now (else once a day).",
        "jobs": "Run up to N sims at once in the guest, each in its own lab (default 1; "
        "builtin runner). Sims that move data disturb each other: the manifest and each "
        "sim.json say which ran side by side.",
        "shard": "K/N: run only shard K of N of the given sims (a deterministic share, "
        "balanced by the last run's durations), for N CI jobs; sim.merge puts them together.",
        "repeat": "Run the sims N times (default 1), each try in a run folder of its own; "
        "the summary gives each sim's pass rate and its metrics' min/median/max; exit 1 "
        "when any try failed.",
    },
)
def run(
    c: Context,
    file: list[str] | None = None,
    work_dir: str | None = None,
    binary: list[str] | None = None,
    patchbay_version: str | None = None,
    verbose: bool = False,
    recreate: bool = False,
    timeout: str | None = None,
    open: bool = False,
    bind: str = DEFAULT_BIND,
    junit: str | None = None,
    refresh: bool = False,
    shard: str | None = None,  # before jobs: -s is shard's, and -h stays help's
    jobs: str | None = None,
    repeat: str | None = None,
) -> None:
    """Run sims in the VM with the patchbay runner; results land in the work dir."""
    from .. import files
    from ..sim import binaries, guestrun, inputs, runner, shards, staging, workdir
    from ..sim import repeat as repeat_mod
    from ..vm import sync

    with task_errors():
        s = settings.from_context(c, work_dir=work_dir)
        if not file:
            raise UsageError("give at least one sim: --file sims/NAME.toml (or a folder)")
        # The runner's own grammar (whole ms, s or m) from ours (300, 1.5m, 1h, ...).
        limit = (
            None if timeout is None else durations.for_runner(durations.parse(timeout, "--timeout"))
        )
        check_output_path(junit, "--junit")
        parallel = _jobs(jobs)
        one_shard = shards.parse_shard(shard)
        tries = repeat_mod.parse_repeat(repeat)
        # Everything that can be wrong with the input is found before anything boots.
        # The sims are read once, here; binaries, checks and staging take what was read.
        sims = inputs.read_sims(file, s.project_dir)
        plan = None
        if one_shard is not None:
            plan = shards.plan(sims, one_shard, s.work_dir, s.project_dir)
            say(plan.describe())
            if not plan.mine:
                _empty_shard(s.work_dir, plan, junit)
                return
            sims = shards.share_of(sims, plan.mine)
        target = runner.musl_target_for(s.arch)
        if binary:
            # Overrides land in the work dir, which the guest writes: a link it put at
            # either folder is replaced by a folder of ours first, never written through.
            files.real_dir(s.work_dir, binaries.BINARIES_DIRNAME)
        binary_args = binaries.prepare_binary_args(
            list(binary or []), sims, s.work_dir, target, s.target_dir, s.project_dir
        )
        chosen = _runner(s, patchbay_version, refresh)
        if parallel > 1 and not chosen.is_builtin:
            raise UsageError(
                f"--jobs {parallel} needs the builtin runner (--patchbay-version builtin): "
                f"the {chosen.label} runner runs its sims one after another"
            )
        if chosen.is_builtin:
            # What the guest would refuse, refused now, before anything boots.
            inputs.refuse_broken(sims, [arg.split(":", 1)[0] for arg in binary_args])
        run_id = guestrun.new_run_id()
        viewer = view.start_viewer(s.work_dir, bind, True) if open else None
        runs_seen = shards.run_folder_names(s.work_dir)
        vm = lifecycle.up(s, recreate=recreate, refresh=refresh)
        not_home = None
        try:
            argv = inputs.guest_run_argv(
                [inputs.guest_sim_path(p, s.project_dir) for p in sims],
                binary_args,
                verbose,
                os.environ,
                timeout=limit,
                extra_env=_host_facts(s, vm.record, run_id),
                builtin=chosen.is_builtin,
                jobs=parallel,
            )
            # No shared folders (QEMU_VM_FS=none): copy in, and the results back out.
            runs_before = (
                staging.stage_sim_run(vm.conn, s, sims, binary_args)
                if sync.copies_files(vm.record)
                else None
            )
            say(f"running {len(sims)} sim(s) with the {chosen.label} runner")
            if tries > 1:
                codes, folders, not_home = _run_tries(vm, s, argv, run_id, tries, runs_before)
                code = repeat_mod.overall_code(codes)
            else:
                started = time.monotonic()
                try:
                    code = guestrun.run_interruptible(vm.conn, argv, run_id)
                finally:
                    took = time.monotonic() - started
                    if runs_before is not None:
                        not_home = staging.bring_runs_home_after(vm.conn, s, runs_before)
        finally:
            vm.close()
        if plan is not None:
            for folder in shards.record_new_runs(s.work_dir, runs_seen, plan):
                say(f"shard {plan.shard.text} recorded in {folder}/manifest.json")
        if tries > 1:
            from ..sim import rundata

            group = rundata.group_of_folders(s.work_dir, folders)
            emit(repeat_mod.format_summary(group, missing=len(codes) - group.tries))
        else:
            say(f"runner exited with {code} after {took:.1f} s; results in {s.work_dir}")
            emit(inputs.format_summary(inputs.summarize_results(s.work_dir)))
        if junit and tries > 1:
            from ..viewer.junit import write_sim_repeat_junit  # xml: loaded only when asked

            written = write_junit_file(write_sim_repeat_junit, (s.work_dir, folders), Path(junit))
            say(f"JUnit report: {written}")
        elif junit:
            from ..viewer.junit import write_sim_junit  # xml: loaded only when asked

            say(f"JUnit report: {write_junit_file(write_sim_junit, s.work_dir, Path(junit))}")
        keep = max(s.keep_runs, tries) if s.keep_runs else 0  # never this run's own tries
        for old in workdir.prune_runs(s.work_dir, keep):
            say(f"removed old run {old.name} (keeping {s.keep_runs}; vm.keep_runs)")
        if not_home is not None and not code:
            raise not_home  # said already; the run itself passed, its results did not come
        if viewer is not None:
            view.serve_until_interrupted(viewer, interrupted=code == guestrun.EXIT_INTERRUPTED)
    if code:
        raise Exit(code=code)


def _jobs(value: str | None) -> int:
    """--jobs N: 1 to 64 sims at once; UsageError for anything else (0 included)."""
    if value is None:
        return 1
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= 64:
        raise UsageError(f"--jobs: expected a number of sims at once from 1 to 64, got {value!r}")
    return int(text)


def _empty_shard(work_dir: Path, plan: shards.Plan, junit: str | None) -> None:
    """A shard with no sims (more shards than sims): a run folder without sims, so that
    sim.merge sees every shard; no VM."""
    from ..sim import shards

    folder = shards.write_empty_run(work_dir, plan)
    say(f"no sims in shard {plan.shard.text}; wrote {folder} (a run of none) for sim.merge")
    if junit:
        from ..viewer.junit import write_sim_junit

        say(f"JUnit report: {write_junit_file(write_sim_junit, work_dir, Path(junit))}")


def _run_tries(vm, s, argv, run_id, tries, runs_before):  # type: ignore[no-untyped-def]
    """`sim.run --repeat N`: the runner N times, one after another, each try in its own
    run folder marked with repeat.json; stops early only when a try is interrupted or
    the runner itself fails (an exit code other than 0 or 1). Returns the exit codes,
    the run folders made (in order) and a failure to bring runs home, if any."""
    from ..sim import guestrun, staging
    from ..sim import repeat as repeat_mod

    codes: list[int] = []
    folders: list[str] = []
    not_home = None
    group = None
    for k in range(1, tries + 1):
        say(f"try {k}/{tries}")
        before = repeat_mod.run_folder_names(s.work_dir)
        started = time.monotonic()
        try:
            code = guestrun.run_interruptible(vm.conn, argv, run_id)
        finally:
            if runs_before is not None:
                not_home = staging.bring_runs_home_after(vm.conn, s, runs_before) or not_home
        if runs_before is not None and k < tries and code in (0, 1):
            runs_before = staging.guest_runs(vm.conn)  # the next try's are the new ones
        made = repeat_mod.new_run_folders(s.work_dir, before)
        codes.append(code)
        if made:
            folder = made[-1]
            group = group or folder
            repeat_mod.mark_try(s.work_dir, folder, group, k, tries)
            folders.append(folder)
        took = time.monotonic() - started
        verdict = "passed" if code == 0 else f"failed (runner exit {code})"
        where = made[-1] if made else "no run folder"
        say(f"try {k}/{tries} {verdict} after {took:.1f} s: {where}")
        if code == guestrun.EXIT_INTERRUPTED:
            say(f"interrupted in try {k}: no more tries")
            break
        if code not in (0, 1):
            say(f"stopping after try {k}: the runner did not finish its sims")
            break
    return codes, folders, not_home


@task(
    positional=["file"],
    help={
        "file": "The sim (or topology) TOML whose lab to build.",
        "work_dir": "Host folder shared as /work (default .patchbay-work).",
        "patchbay_version": VERSION_HELP,
    },
)
def inspect(
    c: Context,
    file: str,
    work_dir: str | None = None,
    patchbay_version: str | None = None,
) -> None:
    """Build a sim's topology in the guest and keep it up until Ctrl-C; print NETSIM_IP_*."""
    from ..sim import guestrun, inputs, staging
    from ..vm import sync

    with task_errors():
        if not file:
            raise UsageError("give the sim whose lab to build: sim.inspect --file sims/x.toml")
        s = settings.from_context(c, work_dir=work_dir)
        sims = inputs.read_sims([file], s.project_dir)
        (sim,) = sims
        chosen = _runner(s, patchbay_version)
        run_id = guestrun.new_run_id()
        vm = lifecycle.up(s)
        try:
            if sync.copies_files(vm.record):
                staging.stage_sim_run(vm.conn, s, sims, [])
            argv = inputs.guest_inspect_argv(
                inputs.guest_sim_path(sim, s.project_dir), _host_facts(s, vm.record, run_id)
            )
            say(f"building the lab of {sim.name} with the {chosen.label} runner; Ctrl-C ends it")
            say("run a command in one of its nodes with: invoke sim.exec NODE -- CMD ARGS")
            code = guestrun.run_interruptible(vm.conn, argv, run_id, what="the lab")
        finally:
            vm.close()
    if code:  # 130 after Ctrl-C, the usual end, once the guest has cleaned up
        raise Exit(code=code)


@task(
    positional=["node"],
    iterable=["cmd"],
    help={
        "node": "A device or router of the lab that `sim.inspect` keeps up.",
        "work_dir": "Host folder shared as /work (default .patchbay-work).",
        "cmd": "The command as a list, for a task of yours that calls this one "
        '(sim.exec(c, "client", cmd=["ping", "-c1", "server"])); on the command line it '
        "goes after --.",
    },
)
def exec(  # noqa: A001 (task name)
    c: Context, node: str, work_dir: str | None = None, cmd: list[str] | None = None
) -> None:
    """Run `-- CMD ARGS` as root in one node of the `sim.inspect` lab; exit code passed on."""
    from ..sim import guestrun, inputs, runner

    with task_errors():
        if not node:
            raise UsageError("give the node: invoke sim.exec NODE -- ping -c1 host")
        s = settings.from_context(c, work_dir=work_dir)
        cmd = remainder(cmd)
        if not cmd:
            raise UsageError("give the command after --: invoke sim.exec NODE -- ping -c1 host")
        if not (s.work_dir / runner.BIN_DIRNAME / runner.RUNNER_NAME).is_file():
            raise UsageError("no lab to run in: start one with `invoke sim.inspect --file SIM`")
        vm = lifecycle.require_running(s)
        try:
            run_id = guestrun.new_run_id()
            # The run id, so that Ctrl-C finds it.
            argv = inputs.guest_run_in_argv(node, cmd, {guestrun.RUN_ID_VAR: run_id})
            code = guestrun.run_interruptible(vm.conn, argv, run_id, what=node)
        finally:
            vm.close()
    if code:
        raise Exit(code=code)


def _runner(
    s: settings.VmSettings, flag: str | None, refresh: bool = False
) -> runner.ResolvedRunner:
    """Resolve and stage the runner (flag, else setting); the guest runs it from /work."""
    from ..sim import runner

    version = flag or s.patchbay_version
    chosen = runner.resolve_runner(version, s.work_dir, s.arch, refresh=refresh)
    runner.install_runner(chosen, s.work_dir)
    return chosen


def _host_facts(s: settings.VmSettings, record: VmRecord, run_id: str) -> dict[str, str]:
    """What only the host knows, for the run's manifest: numbers under TCG are not
    comparable with numbers under KVM or HVF."""
    from ..sim import guestrun

    return {
        guestrun.RUN_ID_VAR: run_id,
        "PATCHBAY_VM_ACCEL": str(record.accel or ""),
        "PATCHBAY_VM_QEMU_VERSION": qemu.version(s.qemu_bin),
        "PATCHBAY_VM_FS": str(record.fs_mode or ""),
    }


@task(
    iterable=["file"],
    help={"file": "A sim TOML file, or a folder of them (all *.toml, sorted). Repeatable."},
)
def check(c: Context, file: list[str] | None = None) -> None:
    """Read sims on the host as the builtin runner does and print their expanded plans.

    Each plan: routers, devices, binaries, one line a step. No VM. Unknown keys are
    errors here (a run only warns)."""
    from ..sim import inputs

    with task_errors():
        if not file:
            raise UsageError("give at least one sim: --file sims/NAME.toml (or a folder)")
        plans = []
        sims = inputs.check_sims(file)
        for path in sims:
            plans.append(inputs.sim_plan(path, sims=sims))
            emit(plans[-1] + "\n")
        say(f"{len(plans)} sim(s) read without error")


@task(
    auto_shortflags=False,  # -h is help's; --head and --base have none
    iterable=["threshold"],
    help={
        "base": "The run to compare against: a run folder (anywhere: a CI artifact), a work "
        "dir, or a sim-YYMMDD-HHMMSS of the work dir. Default: the newest earlier run of "
        "the same sims.",
        "head": "The run to compare: as --base; default latest.",
        "work_dir": "The work dir whose runs the defaults come from (default .patchbay-work).",
        "threshold": "METRIC=-N% or METRIC=+N% (the sign says which way is worse): exit 1 "
        "when a change crosses it, e.g. throughput=-10%, latency=+20%, duration=+50%. "
        "Metrics: throughput, down_throughput, up_throughput, latency, duration, runtime, "
        "pass_rate, down_bytes, up_bytes. Repeatable.",
        "json": "Print the comparison as JSON (for scripts).",
    },
)
def compare(
    c: Context,
    base: str | None = None,
    head: str | None = None,
    work_dir: str | None = None,
    threshold: list[str] | None = None,
    json: bool = False,
) -> None:
    """Compare two runs per sim and step, and exit 1 when a change crosses a --threshold.

    Status, duration, throughput, latency and every results value, side by side with the
    change and its percent; a --repeat's tries by their medians. No VM."""
    import json as json_mod

    from ..sim import compare as compare_mod
    from ..sim import rundata

    with task_errors():
        try:
            thresholds = compare_mod.parse_thresholds(threshold or [])
        except compare_mod.ThresholdError as e:
            raise UsageError(str(e)) from None
        s = settings.from_context(c, work_dir=work_dir)
        head_group = rundata.resolve_group(head, s.work_dir, "--head")
        if base is None:
            base_group = rundata.earlier_group(s.work_dir, head_group)
            if base_group is None:
                raise UsageError(
                    f"no earlier run of the same sims ({', '.join(sorted(head_group.sim_names))}) "
                    f"in {s.work_dir}: give --base DIR"
                )
        else:
            base_group = rundata.resolve_group(base, s.work_dir, "--base")
        result = compare_mod.compare(base_group, head_group, thresholds)
        if json:
            emit(json_mod.dumps(result.as_dict(), indent=2))
        else:
            emit(compare_mod.format_text(result))
    if result.crossings:
        names = sorted({x.threshold.text for x in result.crossings})
        raise Exit(f"error: {len(result.crossings)} change(s) crossed {', '.join(names)}", code=1)


sim = Collection("sim", run, check, inspect, exec, compare, merge, push, view.serve, view.report)
