"""Binaries for sim.run: `--binary` overrides and the `[[binary]]` entries sims declare.

Overrides are staged into <work>/binaries/ (guest /work/binaries/); sim entries that need
a build are built on the host into the cargo target dir (guest /target) (SPEC 6.3, 6.4).
The modes are simcore's `BinaryMode`; where a `target:` path and a build lie in the
target dir is simcore's `targetpaths`, the rule the guest runner follows too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import stat
import subprocess
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..downloads import download
from ..errors import TaskError, UsageError
from ..files import copy_executable
from ..settings import GUEST_TARGET, GUEST_WORK
from ..simcore import model, reader, targetpaths
from ..simcore.model import OVERRIDE_MODES, BinaryMode, SimError
from .inputs import SimFiles, show_path, sim_files
from .runner import HTTP_TIMEOUT, extract_member, run_checked

# Overrides are staged in <work>/binaries/, which the guest sees here.
BINARIES_DIRNAME = "binaries"
GUEST_BINARIES = f"{GUEST_WORK}/{BINARIES_DIRNAME}"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OVERRIDE_HELP = "use NAME:MODE:VALUE with MODE path, fetch or build"

Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class BinarySpec:
    """One binary: a `--binary` override or a sim's `[[binary]]` entry.

    value: the file, URL or project dir ("" if none).
    """

    name: str
    mode: BinaryMode
    value: str = ""
    example: str | None = None
    bin: str | None = None
    features: tuple[str, ...] = ()
    all_features: bool = False
    repo: str | None = None
    commit: str | None = None
    # The file that declared it, for messages; not part of what the entry means.
    origin: str = field(default="", compare=False)


# ── overrides ────────────────────────────────────────────────────────────────


def _check_name(name: str, where: str) -> None:
    # The name becomes a file name under <work>/binaries/.
    if not _NAME_RE.match(name):
        raise UsageError(
            f"{where}: binary name {name!r} may only hold letters, digits, '.', '_' and '-'"
        )


def parse_override(text: str) -> BinarySpec:
    """Parse `--binary NAME:MODE:VALUE`; only the first two ':' split, so URLs keep theirs."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"--binary {text!r}: empty name; {_OVERRIDE_HELP}")
    mode, sep2, value = rest.partition(":")
    mode, value = mode.strip(), value.strip()
    if not sep or not mode:
        raise UsageError(f"--binary {text!r}: missing mode; {_OVERRIDE_HELP}")
    if mode not in OVERRIDE_MODES:
        raise UsageError(f"--binary {text!r}: unknown mode {mode!r}; {_OVERRIDE_HELP}")
    if not sep2 or not value:
        raise UsageError(f"--binary {text!r}: missing value; {_OVERRIDE_HELP}")
    _check_name(name, f"--binary {text!r}")
    return BinarySpec(name=name, mode=BinaryMode(mode), value=value, origin="--binary")


def parse_overrides(texts: list[str]) -> dict[str, BinarySpec]:
    """Parse every `--binary`; the same name twice is an error."""
    out: dict[str, BinarySpec] = {}
    for text in texts:
        spec = parse_override(text)
        if spec.name in out:
            raise UsageError(
                f"--binary {spec.name} is given twice; keep one --binary {spec.name}:MODE:VALUE"
            )
        out[spec.name] = spec
    return out


def runner_arg(name: str, guest_path: str) -> str:
    """The runner's `--binary` value for a file in the guest: NAME:path:GUEST_PATH."""
    return f"{name}:{BinaryMode.PATH}:{guest_path}"


def merge(
    sim_specs: Mapping[str, BinarySpec], overrides: Mapping[str, BinarySpec]
) -> dict[str, BinarySpec]:
    """All binaries of a run: a user's override replaces the sim entry of the same name."""
    return {**sim_specs, **overrides}


# ── sim-declared entries ─────────────────────────────────────────────────────


def _usage(err: SimError) -> UsageError:
    # The reader's message (file: key: what) is already the user's message.
    return UsageError(str(err))


def infer_mode(entry: Mapping[str, Any], source: Path | str | None = None) -> BinaryMode:
    """Mode of a `[[binary]]` entry: explicit, else path -> path, url -> fetch,
    repo/example/bin -> build."""
    where = show_path(Path(source)) if source else "<sim>"
    key = f"binary.{entry.get('name', '?')}"
    try:
        return reader.infer_binary_mode(dict(entry), where, key)
    except SimError as err:
        raise _usage(err) from None


def spec_from_binary(binary: model.Binary) -> BinarySpec:
    """The host's BinarySpec of a `[[binary]]` entry the reader parsed."""
    _check_name(binary.name, f"{show_path(Path(binary.origin))}: binary.{binary.name}")
    return BinarySpec(
        name=binary.name,
        mode=binary.mode,
        value=binary.path or binary.url or "",
        example=binary.example,
        bin=binary.bin,
        features=binary.features,
        all_features=binary.all_features,
        repo=binary.repo,
        commit=binary.commit,
        origin=binary.origin,
    )


def sim_binaries(sim_file: Path, sims: SimFiles | None = None) -> dict[str, BinarySpec]:
    """The binaries one sim sees: extends (recursively), `[sim] binaries`, then its own.
    sims: the invocation's sims, which read each file once."""
    try:
        found = (sims or SimFiles([sim_file])).binaries(sim_file)
    except SimError as err:
        raise _usage(err) from None
    return {name: spec_from_binary(b) for name, b in found.items()}


def collect_sim_binaries(
    sims: SimFiles | Iterable[Path], overridden: Collection[str] = ()
) -> dict[str, BinarySpec]:
    """The binaries all sims declare. The same name declared differently by two sims is an
    error, unless `overridden` holds it (a `--binary` replaces both anyway)."""
    sims = sim_files(sims)
    result: dict[str, BinarySpec] = {}
    first_sim: dict[str, Path] = {}
    for sim in sims:
        for name, spec in sim_binaries(sim, sims).items():
            if name in overridden:
                continue
            if name in result and result[name] != spec:
                raise UsageError(
                    f"binary {name!r} is declared differently by {show_path(first_sim[name])} "
                    f"and {show_path(sim)}; make them match or pass --binary {name}:MODE:VALUE"
                )
            result.setdefault(name, spec)
            first_sim.setdefault(name, sim)
    return result


# ── host builds of sim entries ───────────────────────────────────────────────


def build_entries(
    sim_specs: Mapping[str, BinarySpec], overrides: Collection[str] = ()
) -> list[BinarySpec]:
    """Sim entries to build on the host (mode build, no url), by name, skipping overridden.

    A build entry's `path`, if any, is its cargo project dir (as in the Rust tool).
    """
    out = []
    for name in sorted(sim_specs):
        spec = sim_specs[name]
        if name in overrides or spec.mode != BinaryMode.BUILD:
            continue
        if spec.repo:
            raise UsageError(
                f"binary {name!r} ({show_path(Path(spec.origin))}) is built from {spec.repo}, "
                f"which sim.run cannot build; build it and pass --binary {name}:path:FILE"
            )
        if spec.value.startswith(("http://", "https://")):
            continue  # a URL is fetched by the runner itself
        out.append(spec)
    return out


def build_dir(spec: BinarySpec, workspace: Path) -> Path:
    """The cargo project a build entry is built in: its path, else the workspace."""
    if not spec.value:
        return workspace
    path = Path(spec.value).expanduser()
    return path if path.is_absolute() else workspace / path


def artifact(spec: BinarySpec, kind: str | None = None) -> tuple[str, str]:
    """(kind, name) of the cargo target to build: example/bin as declared, else the
    entry's own name as `kind` (default example)."""
    if spec.example:
        return "example", spec.example
    if spec.bin:
        return "bin", spec.bin
    return kind or "example", spec.name


def cargo_build_argv(
    spec: BinarySpec,
    target: str,
    workspace: Path,
    *,
    target_dir: Path | None = None,
    kind: str | None = None,
) -> list[str]:
    """`cargo build --release --target <musl> --example|--bin NAME` for a build entry."""
    what, name = artifact(spec, kind)
    argv = [
        "cargo",
        "build",
        "--release",
        "--manifest-path",
        str(build_dir(spec, workspace) / "Cargo.toml"),
    ]
    if target_dir is not None:
        argv += ["--target-dir", str(target_dir)]
    argv += ["--target", target]
    if spec.all_features:
        argv.append("--all-features")
    elif spec.features:
        argv += ["--features", ",".join(spec.features)]
    argv += [f"--{what}", name]
    return argv


def guest_target_path(spec: BinarySpec, target: str, kind: str | None = None) -> str:
    """Where the built entry is in the guest: /target/<musl>/release/[examples/]NAME."""
    return f"{GUEST_TARGET}/{targetpaths.release_path(target, *artifact(spec, kind))}"


def cargo_metadata_argv(project: Path) -> list[str]:
    return [
        "cargo",
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--manifest-path",
        str(project / "Cargo.toml"),
    ]


def choose_kind(metadata: Mapping[str, Any], name: str) -> str | None:
    """'example' if the project has an example NAME, else 'bin' if a bin NAME, else None."""
    kinds: set[str] = set()
    for pkg in metadata.get("packages", []):
        for tgt in pkg.get("targets", []):
            if tgt.get("name") == name:
                kinds.update(tgt.get("kind", []))
    for kind in ("example", "bin"):
        if kind in kinds:
            return kind
    return None


def cargo_metadata(project: Path, run: Runner = subprocess.run) -> dict[str, Any]:
    proc = run_checked(
        run,
        cargo_metadata_argv(project),
        f"reading the cargo project {project}",
        capture_output=True,
        text=True,
    )
    try:
        return json.loads(proc.stdout)
    except ValueError as exc:
        raise TaskError(f"cargo metadata for {project} printed no JSON") from exc


def _project_dir(path: Path, name: str) -> Path:
    if not (path / "Cargo.toml").is_file():
        raise UsageError(
            f"binary {name!r}: {path} is not a cargo project (no Cargo.toml); "
            "give the folder that holds it"
        )
    return path


def _cargo_build(
    spec: BinarySpec, target: str, workspace: Path, target_dir: Path, kind: str | None, run: Runner
) -> Path:
    """Build one entry with cargo into target_dir; the built file."""
    argv = cargo_build_argv(spec, target, workspace, target_dir=target_dir, kind=kind)
    run_checked(run, argv, f"building {spec.name}")
    built = target_dir / targetpaths.release_path(target, *artifact(spec, kind))
    if not built.is_file():
        raise TaskError(f"cargo built {spec.name} but {built} is missing")
    return built


def build_sim_binaries(
    entries: list[BinarySpec],
    target: str,
    target_dir: Path,
    workspace: Path,
    run: Runner = subprocess.run,
) -> list[str]:
    """Build build_entries() on the host into target_dir; return runner `--binary` values
    NAME:path:/target/<musl>/release/[examples/]NAME."""
    out = []
    for spec in entries:
        project = _project_dir(build_dir(spec, workspace), spec.name)
        kind = None
        if not spec.example and not spec.bin:
            kind = choose_kind(cargo_metadata(project, run), spec.name)
            if kind is None:
                raise UsageError(
                    f"binary {spec.name!r} ({show_path(Path(spec.origin))}): {project} has no "
                    f"example or bin named {spec.name}; set example = or bin = in the entry"
                )
        _cargo_build(spec, target, workspace, target_dir, kind, run)
        out.append(runner_arg(spec.name, guest_target_path(spec, target, kind)))
    return out


# ── staging overrides ────────────────────────────────────────────────────────


def _user_path(value: str, workspace: Path) -> Path:
    # As typed in a shell: from the cwd; the workspace is tried second for task
    # runners that start elsewhere.
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    alt = workspace / path
    return alt if alt.exists() else path


def resolve_target_path(value: str, target_dir: Path, target: str) -> Path:
    """`target:REST` in the host's cargo target dir (targetpaths.resolve: the shortcuts
    `target:examples/NAME` and `target:bin/NAME` look in <target>/release/, then release/)."""
    return target_dir / targetpaths.resolve(value, target, lambda rel: (target_dir / rel).exists())


def fetch_cache_path(url: str) -> Path:
    """Where a `fetch` download is kept: in the user's cache dir, by URL, shared by the
    projects. Not in the work dir: the guest writes there, and could swap the cached
    file for a link to any file of the host, which staging would then copy in."""
    import platformdirs

    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    base = Path(urlsplit(url).path).name or "download"
    return Path(platformdirs.user_cache_dir("patchbay")) / "fetch" / digest / base


def _is_tarball(url: str) -> bool:
    path = urlsplit(url).path
    return path.endswith((".tar.gz", ".tgz"))


def _stage_copy(src: Path, dest: Path) -> None:
    """copy_executable, keeping src's mtime; skipped when dest already has src's size and
    mtime, so an unchanged binary is not rewritten (nor copied again to a guest without
    shared folders, QEMU_VM_FS=none)."""
    st = src.stat()
    with contextlib.suppress(OSError):
        dst = dest.lstat()  # the guest may have put a link there: replaced, not read
        same = (dst.st_size, dst.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        if same and stat.S_ISREG(dst.st_mode) and dst.st_mode & 0o111:
            return
    copy_executable(src, dest, keep_times=True)


def stage_override(
    spec: BinarySpec,
    work_dir: Path,
    target: str,
    target_dir: Path,
    workspace: Path,
    run: Runner = subprocess.run,
) -> str:
    """Put an override's binary at <work>/binaries/NAME (mode 0755) and return the runner's
    `--binary` value NAME:path:/work/binaries/NAME."""
    dest = work_dir / BINARIES_DIRNAME / spec.name
    flag = f"--binary {spec.name}:{spec.mode}:{spec.value}"
    if spec.mode == BinaryMode.PATH:
        if targetpaths.is_target_path(spec.value):
            src = resolve_target_path(spec.value, target_dir, target)
        else:
            src = _user_path(spec.value, workspace)
        if not src.exists():
            raise UsageError(f"{flag}: {src} does not exist; build it first or fix the path")
        if src.is_dir():
            raise UsageError(f"{flag}: {src} is a directory; give the binary file inside it")
        _stage_copy(src, dest)
    elif spec.mode == BinaryMode.FETCH:
        if urlsplit(spec.value).scheme not in ("http", "https"):
            raise UsageError(f"{flag}: fetch needs an http:// or https:// URL")
        cached = fetch_cache_path(spec.value)
        if not cached.is_file():
            download(spec.value, cached, timeout=HTTP_TIMEOUT)
        if _is_tarball(spec.value):
            extract_member(cached, None, dest)
        else:
            _stage_copy(cached, dest)
    elif spec.mode == BinaryMode.BUILD:
        project = _user_path(spec.value, workspace)
        if not project.is_dir():
            raise UsageError(f"{flag}: {project} is not a directory; give a cargo project folder")
        project = _project_dir(project.resolve(), spec.name)
        meta = cargo_metadata(project, run)
        kind = choose_kind(meta, spec.name)
        if kind is None:
            raise UsageError(
                f"{flag}: {project} has no example or bin named {spec.name}; "
                "name the override after one"
            )
        out_dir = Path(meta.get("target_directory") or project / "target")
        local = BinarySpec(name=spec.name, mode=BinaryMode.BUILD, value=str(project))
        _stage_copy(_cargo_build(local, target, project, out_dir, kind, run), dest)
    else:
        raise UsageError(f"{flag}: unknown mode {spec.mode!r}; {_OVERRIDE_HELP}")
    return runner_arg(spec.name, f"{GUEST_BINARIES}/{spec.name}")


def prepare_binary_args(
    override_texts: list[str],
    sims: SimFiles | Iterable[Path],
    work_dir: Path,
    target: str,
    target_dir: Path,
    workspace: Path,
    run: Runner = subprocess.run,
) -> list[str]:
    """Everything sim.run passes as `--binary`: host builds of sim entries, then the
    staged overrides (which win over sim entries of the same name)."""
    overrides = parse_overrides(override_texts)
    sim_specs = collect_sim_binaries(sims, overridden=overrides.keys())
    args = build_sim_binaries(
        build_entries(sim_specs, overrides.keys()), target, target_dir, workspace, run
    )
    for spec in overrides.values():
        args.append(stage_override(spec, work_dir, target, target_dir, workspace, run))
    return args
