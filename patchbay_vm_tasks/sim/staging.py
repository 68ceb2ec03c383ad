"""A sim.run without shared folders (QEMU_VM_FS=none): what it copies into the guest
(the runner, the sims and what they read, the binaries) and how its run folders come
home (vm/sync.py does the copying)."""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import TaskError
from ..settings import GUEST_TARGET, GUEST_WORK
from ..simcore import targetpaths
from ..simcore.model import BinaryMode, SimError
from ..ui import say, warn
from ..vm import guest
from ..vm.sync import (
    Copied,
    SyncError,
    claim,
    make_link,
    open_sftp,
    pull,
    quietly,
    roots_of,
    split_guest_paths,
    stage,
)
from .inputs import SimFiles, guest_sim_path, sim_files, sim_inputs
from .runner import GUEST_RUNNER, musl_target_for
from .workdir import RUN_DIR, runs_to_prune


def binary_arg_paths(binary_args: Iterable[str]) -> list[str]:
    """The guest files that runner `--binary NAME:path:FILE` values name."""
    out = []
    for arg in binary_args:
        _name, _, rest = arg.partition(":")
        mode, _, value = rest.partition(":")
        if mode == BinaryMode.PATH and value.startswith("/"):
            out.append(value)
    return out


def new_runs(before: set[str], after: set[str], latest: str | None) -> list[str]:
    """The run folders a runner made in the guest (and the one `latest` names)."""
    runs = set(after) - set(before)
    if latest and latest in after:
        runs.add(latest)
    return sorted(runs)


def guest_runs(conn: Any) -> set[str]:
    """The run folders in the guest's /work."""
    try:
        names = open_sftp(conn).listdir(GUEST_WORK)
    except OSError as e:
        raise SyncError(f"cannot list the guest's {GUEST_WORK}: {e}") from None
    return {n for n in names if RUN_DIR.fullmatch(n)}


def bring_runs_home(conn: Any, settings: Any, before: set[str]) -> Copied:
    """Pull the run folders a sim.run made in the guest into the host work dir and point
    the host's `latest` at the guest's. Guest runs beyond `keep_runs` are removed there,
    as the host prunes its own. Raises SyncError naming what did not come."""
    sftp = open_sftp(conn)
    after = guest_runs(conn)
    try:
        latest = sftp.readlink(f"{GUEST_WORK}/latest")
    except OSError:
        latest = None
    runs = new_runs(before, after, latest)
    total = Copied()
    if not runs:
        say("no run folder came back from the guest (the runner made none)")
        return total
    claim(conn, settings.ssh_user, [f"{GUEST_WORK}/{r}" for r in runs])
    failures = []
    for run in runs:
        try:
            home = settings.work_dir / run
            total.add(pull(conn, f"{GUEST_WORK}/{run}", home, root=settings.work_dir))
        except SyncError as e:
            failures.append(str(e))
    # `latest` is made only as a link to a run folder of ours, whatever the guest's says.
    latest = latest.rstrip("/") if latest else None
    if latest and RUN_DIR.fullmatch(latest) and runs_dir_is_real(settings.work_dir, latest):
        try:
            make_link(latest, settings.work_dir / "latest")
        except OSError as e:  # Windows without the symlink privilege
            warn(f"cannot point {settings.work_dir / 'latest'} at {latest}: {e.strerror or e}")
    say(f"copied from the guest: {total.describe()} ({', '.join(runs)})")
    old = [r for r in runs_to_prune(list(after), settings.keep_runs, latest) if r not in runs]
    if old:
        guest.run_argv(
            conn,
            ["rm", "-rf", "--", *[f"{GUEST_WORK}/{r}" for r in old]],
            sudo=True,
            hide=True,
            in_stream=False,
        )
    failures += total.failed
    if failures:
        shown = "\n  ".join(failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        raise SyncError(
            f"{len(failures)} result file(s) did not come back from the guest "
            f"(they stay in its {GUEST_WORK}; `vm.ssh -- ls {GUEST_WORK}`):\n  {shown}{more}"
        )
    return total


def runs_dir_is_real(work_dir: Path, name: str) -> bool:
    """work_dir/name is a folder, not a link to one."""
    try:
        return stat.S_ISDIR((work_dir / name).lstat().st_mode)
    except OSError:
        return False


def stage_sim_run(
    conn: Any, settings: Any, sims: SimFiles | Iterable[Path], binary_args: Iterable[str]
) -> set[str]:
    """Copy what a sim.run's guest command names: the runner, the sims and the files
    they read (to /app), the binaries (/work/binaries, /target). Returns the guest's run
    folders before the run, for `bring_runs_home_after`."""
    sims = sim_files(sims)
    needed = [GUEST_RUNNER]
    needed += [
        guest_sim_path(p, settings.project_dir) for p in sim_inputs(sims, settings.project_dir)
    ]
    needed += binary_arg_paths(binary_args)
    needed += sim_binary_paths(sims, roots_of(settings), musl_target_for(settings.arch))
    stage(conn, settings, needed)
    return guest_runs(conn)


def sim_binary_paths(
    sims: SimFiles | Iterable[Path], roots: Mapping[str, Path], target: str | None = None
) -> list[str]:
    """Guest paths of the sims' own `path` binaries (`/app/...`, `/work/...`,
    `target:...`) whose host file exists; the runner resolves those itself, a `target:`
    path as targetpaths.resolve says (target: the guest's musl triple; None: look in
    release/ only)."""
    sims = sim_files(sims)
    out = []
    for sim in sims:
        try:
            declared = sims.binaries(sim).values()
        except SimError:
            continue
        for b in declared:
            if b.mode != BinaryMode.PATH or not b.path:
                continue
            path = _guest_path(b.path, roots, target)
            try:
                ((root, (rel,)),) = split_guest_paths([path], roots).items()
            except TaskError:
                continue  # not in a folder we copy to
            if (roots[root] / rel).is_file():
                out.append(path)
    return out


def _guest_path(value: str, roots: Mapping[str, Path], target: str | None) -> str:
    """A sim binary's path in the guest: a `target:` path where the host's copy of the
    guest's /target holds it."""
    if not targetpaths.is_target_path(value):
        return value
    host = roots.get(GUEST_TARGET)
    rel = targetpaths.resolve(
        value, target or "", lambda rel: host is not None and (host / rel).is_file()
    )
    return f"{GUEST_TARGET}/{rel}"


def bring_runs_home_after(conn: Any, settings: Any, before: set[str]) -> TaskError | None:
    """bring_runs_home, with a failure said rather than raised (and returned)."""
    return quietly(
        "results did not all come back from the guest",
        lambda: bring_runs_home(conn, settings, before),
    )
