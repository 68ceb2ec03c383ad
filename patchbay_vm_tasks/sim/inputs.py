"""Sim file arguments (each file parsed once: `SimFiles`), their guest paths, the guest
runner's command lines and the results summary."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import files
from ..errors import UsageError
from ..settings import GUEST_APP, GUEST_TARGET, GUEST_WORK
from ..simcore import model, reader, tomlfiles
from ..simcore.limits import shorten
from ..simcore.model import SimError
from . import workdir
from .runner import GUEST_RUNNER


def show_path(path: Path) -> str:
    """A path as the user would type it: relative to the cwd when it lies below it."""
    return reader.show_path(path)


class SimFiles(Sequence[Path]):
    """The sims of one invocation (the expanded `--file` list, resolved), read once.

    Every file they read (themselves, extends, `[sim] binaries`, topologies) is parsed
    the first time it is read and never again (`tomlfiles.TomlFiles`), and what is made
    of a sim is kept: its binaries (for `binaries.py` and staging), the sim as a run reads
    it (the builtin runner's checks) and the files that reading read (staging). Errors
    are kept too, and raised as `SimError` where each caller asks, so each caller keeps
    its own message and exit code. A sequence of the sims' paths.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self.files = tomlfiles.TomlFiles()
        self._binaries: dict[Path, dict[str, model.Binary] | SimError] = {}
        # (path, names) -> (the sim or its error, the files reading it read)
        self._loaded: dict[tuple[Path, frozenset[str]], tuple[model.Sim | SimError, list]] = {}

    def __getitem__(self, i):  # type: ignore[override]  (Sequence's int and slice forms)
        return self.paths[i]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __repr__(self) -> str:
        return f"SimFiles({self.paths!r})"

    def toml(self, path: Path) -> dict[str, Any]:
        """The file's TOML; an error names file, line and column."""
        return self.files.read(path)

    def binaries(self, path: Path) -> dict[str, model.Binary]:
        """reader.binaries_of(path), worked out once."""
        if path not in self._binaries:
            try:
                self._binaries[path] = reader.binaries_of(path, files=self.files)
            except SimError as err:
                self._binaries[path] = err
        return _result(self._binaries[path])

    def _load(self, path: Path, names: Iterable[str]) -> tuple[model.Sim | SimError, list]:
        key = (path, frozenset(names))
        if key not in self._loaded:
            with tomlfiles.recording_reads() as reads:
                try:
                    sim: model.Sim | SimError = reader.load_sim(
                        path, strict=False, extra_binaries=tuple(sorted(key[1])), files=self.files
                    )
                except SimError as err:
                    sim = err
            self._loaded[key] = (sim, reads)
        return self._loaded[key]

    def load(self, path: Path, extra_binaries: Iterable[str] = ()) -> model.Sim:
        """reader.load_sim(path, strict=False, extra_binaries=...), worked out once."""
        return _result(self._load(path, extra_binaries)[0])

    def reads(self, path: Path) -> list[Path]:
        """The files (resolved) the sim's reading as a run reads, in order (for a sim the
        reader refuses, those read up to the error)."""
        for (loaded, _names), (_sim, reads) in self._loaded.items():
            if loaded == path:
                return list(reads)  # the names given change no read, only the checks
        return list(self._load(path, ())[1])


def _result(value: Any) -> Any:
    if isinstance(value, SimError):
        raise value
    return value


def sim_files(sims: SimFiles | Iterable[Path]) -> SimFiles:
    """`sims` as SimFiles: the invocation's own, or a new one for a plain list of paths."""
    return sims if isinstance(sims, SimFiles) else SimFiles(sims)


def _resolve(path: Path, shown: str) -> Path:
    try:
        return tomlfiles.resolve(path, shown)
    except SimError as err:
        raise UsageError(str(err)) from None


def _inside(path: Path, workspace: Path, shown: str) -> Path:
    real = _resolve(path, shown)
    if not real.is_relative_to(_resolve(workspace, str(workspace))):
        raise UsageError(
            f"sim {shown} lies outside the workspace {workspace} (the guest only sees the "
            f"workspace as {GUEST_APP}); move or copy it into the project"
        )
    return real


def read_sims(args: list[str], workspace: Path | None) -> SimFiles:
    """Turn --file values (files or folders of *.toml) into the invocation's SimFiles.

    Relative values are taken from the cwd. Each sim must lie inside the workspace
    after symlinks are resolved (unless workspace is None: host-only use such as
    sim.check), and must parse as TOML. Duplicates are dropped.
    """
    if not args:
        raise UsageError("no sim given: pass --file SIM.toml or --file DIR (repeatable)")
    out: list[Path] = []
    for arg in args:
        shown = shorten(repr(arg)) if len(arg) > 80 or not arg.isprintable() else arg
        try:
            path = tomlfiles.expand_user(Path(arg), f"sim path {shown}")
        except SimError as err:
            raise UsageError(f"{err}; check the --file value") from None
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, ValueError) as exc:  # a name too long, a NUL
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"sim path {shown}: {why}; check the --file value") from None
        if not exists:
            raise UsageError(f"sim path {shown} does not exist; check the --file value")
        if is_dir:
            # Non-recursive, sorted; dotfiles are editor leftovers, not sims.
            found = sorted(
                p
                for p in path.glob("*.toml")
                if tomlfiles.is_file(p) and not p.name.startswith(".")
            )
            if not found:
                raise UsageError(
                    f"sim folder {shown} has no *.toml file; pass a sim file or folder"
                )
            candidates = [(p, show_path(p)) for p in found]
        else:
            candidates = [(path, shown)]
        for candidate, where in candidates:
            real = (
                _resolve(candidate, where)
                if workspace is None
                else _inside(candidate, workspace, where)
            )
            if real not in out:
                out.append(real)
    sims = SimFiles(out)
    for sim in sims:
        try:
            sims.toml(sim)
        except SimError as err:
            raise UsageError(str(err)) from None
    return sims


def sim_plan(path: Path, strict: bool = True, sims: SimFiles | None = None) -> str:
    """The expanded plan of one sim as the builtin runner reads it (`sim.check`).

    strict: unknown keys are errors (the Rust runner ignores them silently). sims: the
    invocation's files, so that the sim is not parsed again."""
    try:
        files = sims.files if sims is not None else None
        return reader.plan_text(reader.load_sim(path, strict=strict, files=files))
    except SimError as err:
        raise UsageError(str(err)) from None


def refuse_broken(paths: SimFiles | Iterable[Path], binary_names: Iterable[str]) -> None:
    """Read each sim as the builtin runner will, in a run (unknown keys only warned about
    there); what it would refuse is a UsageError now. binary_names: `--binary` overrides,
    which may supply a `${binary.X}` that no sim declares."""
    sims = sim_files(paths)
    for path in sims:
        try:
            sims.load(path, binary_names)
        except SimError as err:
            raise UsageError(str(err)) from None


def sim_inputs(paths: SimFiles | Iterable[Path], workspace: Path) -> list[Path]:
    """Every file the sims read: themselves, their `[[extends]]` and `[sim] binaries`
    files and topology files (as the reader finds them), those inside the workspace.
    With no shared folders (QEMU_VM_FS=none) these are what /app gets a copy of.
    A sim the reader refuses still runs (the runner reports it): the files read up to
    that point are sent."""
    sims = sim_files(paths)
    root = workspace.resolve()
    found = [p.resolve() for p in sims]
    for path in sims:
        found += sims.reads(path)
    out: list[Path] = []
    for path in found:
        if path.is_relative_to(root) and path.is_file() and path not in out:
            out.append(path)
    return out


def check_sims(args: list[str]) -> SimFiles:
    """The sims `sim.check` reads: files or folders as for sim.run, anywhere on the host."""
    return read_sims(args, None)


def guest_sim_path(path: Path, workspace: Path) -> str:
    """Where a workspace file appears in the guest: /app/<relative posix path>."""
    try:
        rel = path.resolve().relative_to(workspace.resolve())
    except ValueError:
        raise UsageError(
            f"{path} lies outside the workspace {workspace}; move it into the project"
        ) from None
    return f"{GUEST_APP}/{rel.as_posix()}" if rel.parts else GUEST_APP


# ── the guest runner's command lines ─────────────────────────────────────────


def runner_argv(
    command: str, args: Sequence[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """The one shape of every guest runner command line (SPEC 6.6), to be run as root:
    `env K=V... /work/.patchbay-bin/patchbay COMMAND --work-dir /work ARGS...`."""
    return [
        "env",
        *[f"{k}={v}" for k, v in (env or {}).items()],
        GUEST_RUNNER,
        command,
        "--work-dir",
        GUEST_WORK,
        *args,
    ]


def guest_run_argv(
    sims_guest: list[str],
    binary_args: list[str],
    verbose: bool,
    env: Mapping[str, str],
    *,
    timeout: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    builtin: bool = False,
    jobs: int = 1,
) -> list[str]:
    """`run`: the sims (guest paths) with their binaries (SPEC 6.6).

    RUST_LOG is taken from RUST_LOG, else NETSIM_RUST_LOG; NETSIM_RUST_LOG is passed on too.
    extra_env: what the host tells the runner (run id, accelerator, QEMU version).
    builtin: our runner, which also watches its stdin so that a host that goes away
    (Ctrl-C, a lost connection) stops it: over SSH without a pty no signal arrives.
    jobs: sims at once (`--jobs N`, the builtin runner's; 1 passes nothing).
    """
    variables = {"NETSIM_IN_VM": "1", "NETSIM_TARGET_DIR": GUEST_TARGET}
    rust_log = env.get("RUST_LOG") or env.get("NETSIM_RUST_LOG")
    if rust_log:
        variables["RUST_LOG"] = rust_log
    if env.get("NETSIM_RUST_LOG"):
        variables["NETSIM_RUST_LOG"] = env["NETSIM_RUST_LOG"]
    variables.update(extra_env or {})
    args: list[str] = []
    for item in binary_args:
        args += ["--binary", item]
    if verbose:
        args.append("-v")
    if timeout:
        args += ["--timeout", timeout]
    if jobs > 1:
        args += ["--jobs", str(jobs)]
    if builtin:
        args.append("--watch-stdin")
    return runner_argv("run", [*args, *sims_guest], variables)


def guest_inspect_argv(sim_guest: str, extra_env: Mapping[str, str]) -> list[str]:
    """`inspect`: build one sim's lab (its guest path) and keep it up."""
    return runner_argv("inspect", [sim_guest], extra_env)


def guest_run_in_argv(node: str, cmd: Sequence[str], extra_env: Mapping[str, str]) -> list[str]:
    """`run-in`: one command in one node of the lab `inspect` keeps up."""
    return runner_argv("run-in", [node, "--", *cmd], extra_env)


def guest_command_line(argv: list[str]) -> str:
    """argv quoted for the guest's shell (SSH hands the remote side one string)."""
    return shlex.join(argv)


# ── results ──────────────────────────────────────────────────────────────────


def _read_json(folder: Path, *names: str) -> Any:
    # The guest wrote it: no link followed, size and nesting limited (files.py); a
    # half-written or broken results file must not fail the task.
    return files.read_json(folder, list(names))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _seconds(value: Any) -> float | None:
    """The runner's duration: an integer is microseconds, a float is seconds (SIM-FORMAT)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value / 1_000_000
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+", text):
        return int(text) / 1_000_000
    return _num(text)


def _mbit_s(nbytes: float | None, secs: float | None) -> float | None:
    if nbytes is None or not secs or secs <= 0:
        return None
    return nbytes * 8 / secs / 1_000_000


def _rows(sim: str, steps: Any) -> list[dict]:
    rows = []
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, dict):
            continue
        secs = _seconds(step.get("duration"))
        down = _num(step.get("down_bytes"))
        up = _num(step.get("up_bytes"))
        rows.append(
            {
                "sim": sim,
                "step": str(step.get("id") or "?"),
                "duration_s": secs,
                "down_bytes": down,
                "up_bytes": up,
                "down_mbit_s": _mbit_s(down, secs),
                "up_mbit_s": _mbit_s(up, secs),
                "latency_ms": _num(step.get("latency_ms")),
            }
        )
    return rows


def summarize_results(work_dir: Path) -> list[dict] | None:
    """Step results of the newest run in work_dir, or None when there are none.

    Reads combined-results.json ({"runs": [{"sim", "steps"}]}) when present, else each
    <sim>/results.json ({"sim", "steps"}). Each row: sim, step, duration_s, down_bytes,
    up_bytes, down_mbit_s, up_mbit_s, latency_ms (None where unknown).
    """
    run = workdir.latest_run(work_dir) or work_dir
    # The run's own files first; a top-level combined file may be from an older run.
    rows = _combined_rows(run) or _per_sim_rows(run) or _combined_rows(work_dir)
    return rows or None


def _combined_rows(folder: Path) -> list[dict]:
    data = _read_json(folder, "combined-results.json")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        return []
    rows: list[dict] = []
    for entry in data["runs"]:
        if isinstance(entry, dict):
            rows += _rows(str(entry.get("sim") or entry.get("sim_dir") or "?"), entry.get("steps"))
    return rows


def _per_sim_rows(run: Path) -> list[dict]:
    rows: list[dict] = []
    try:
        sims = sorted(e.name for e in os.scandir(run) if e.is_dir(follow_symlinks=False))
    except OSError:
        return rows
    for name in sims:
        data = _read_json(run, name, "results.json")
        if isinstance(data, dict):
            rows += _rows(str(data.get("sim") or name), data.get("steps"))
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(rows: list[dict] | None) -> str:
    """A plain-text table of summarize_results() rows."""
    if not rows:
        return "no results found"
    header = ["sim", "step", "duration s", "down Mbit/s", "up Mbit/s", "latency ms"]
    table = [header] + [
        [
            str(r.get("sim", "?")),
            str(r.get("step", "?")),
            _fmt(r.get("duration_s"), 3),
            _fmt(r.get("down_mbit_s"), 1),
            _fmt(r.get("up_mbit_s"), 1),
            _fmt(r.get("latency_ms"), 1),
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row: list[str]) -> str:
        # Names left-aligned, numbers right-aligned so the decimals line up.
        cells = [
            row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in table[1:]])
