"""Resolve `--patchbay-version` to a runner binary on the host (SPEC 6.1, 6.2, 9.4).

Also holds the safe tar extraction and the checked command run that the binary
overrides (binaries.py) share.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .. import __version__, files
from ..downloads import HttpError, Unreachable, check_due, download, get, stamp_for
from ..errors import EXIT_UNAVAILABLE, TaskError, UsageError
from ..files import copy_executable, executable_beside
from ..settings import GUEST_WORK
from ..ui import say, warn
from . import builtin

DEFAULT_RELEASE_URL = "https://github.com/n0-computer/patchbay/releases"
DEFAULT_GIT_URL = "https://github.com/n0-computer/patchbay"
RUNNER_NAME = "patchbay"
CACHE_DIRNAME = ".patchbay-cache"
BIN_DIRNAME = ".patchbay-bin"
# Where install_runner puts it, as the guest sees it.
GUEST_RUNNER = f"{GUEST_WORK}/{BIN_DIRNAME}/{RUNNER_NAME}"
# (connect, read) seconds: a dead server fails fast, a slow download is not cut.
HTTP_TIMEOUT = (15, 120)

_TAG_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$")
# What a tag taken from a redirect URL may look like before it becomes a folder name.
_SAFE_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_VERSION_HELP = "use latest, vX.Y.Z (or X.Y.Z), git:REF, path:FILE or builtin"


class RunnerUnavailable(TaskError):
    """A runner that was asked for by name (a tag, a git ref) could not be obtained."""

    exit_code = EXIT_UNAVAILABLE


class RunnerKind(enum.StrEnum):
    LATEST = "latest"
    TAG = "tag"
    GIT = "git"
    PATH = "path"
    BUILTIN = "builtin"


@dataclass(frozen=True)
class RunnerSource:
    """Where the runner comes from, as `--patchbay-version` says."""

    kind: RunnerKind
    value: str


@dataclass(frozen=True)
class ResolvedRunner:
    """The runner to stage: a host file (Rust runner) or, with path None, the builtin one."""

    kind: RunnerKind
    path: Path | None
    label: str  # for messages: "builtin 0.2.0", "v0.10.0", "git:main", "path:./patchbay"

    @property
    def is_builtin(self) -> bool:
        return self.path is None


def parse_version(text: str) -> RunnerSource:
    """Parse a `--patchbay-version` value; bad input raises UsageError."""
    raw = text.strip()
    if not raw:
        raise UsageError(f"--patchbay-version is empty: {_VERSION_HELP}")
    if raw == "latest":
        return RunnerSource(RunnerKind.LATEST, "latest")
    if raw == "builtin":
        return RunnerSource(RunnerKind.BUILTIN, "")
    if _TAG_RE.match(raw):
        return RunnerSource(RunnerKind.TAG, raw if raw.startswith("v") else "v" + raw)
    if raw.startswith("git:"):
        ref = raw[len("git:") :]
        # A leading '-' would be read by git as an option.
        if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
            raise UsageError(
                f"--patchbay-version {raw!r}: git:REF needs a branch, tag or commit "
                "(no spaces, not starting with '-'), e.g. git:main"
            )
        return RunnerSource(RunnerKind.GIT, ref)
    if raw.startswith("path:"):
        path = raw[len("path:") :]
        if not path:
            raise UsageError("--patchbay-version path: needs a file, e.g. path:./patchbay")
        return RunnerSource(RunnerKind.PATH, path)
    raise UsageError(f"unknown --patchbay-version {raw!r}: {_VERSION_HELP}")


def normalize_arch(arch: str) -> str:
    """Map host/guest arch spellings to the Rust triple's first part."""
    table = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
    try:
        return table[arch.lower()]
    except KeyError:
        raise UsageError(
            f"unsupported guest arch {arch!r}: patchbay runs on x86_64 or aarch64"
        ) from None


def musl_target_for(arch: str) -> str:
    return f"{normalize_arch(arch)}-unknown-linux-musl"


def asset_name(arch: str) -> str:
    """Release asset of the runner for a guest arch."""
    return f"patchbay-{normalize_arch(arch)}-unknown-linux-musl.tar.gz"


def release_base_url(base_url: str | None = None) -> str:
    base = base_url or os.environ.get("PATCHBAY_RELEASE_URL") or DEFAULT_RELEASE_URL
    return base.rstrip("/")


def release_asset_url(base_url: str, tag: str, arch: str) -> str:
    return f"{base_url.rstrip('/')}/download/{tag}/{asset_name(arch)}"


# ── archives ─────────────────────────────────────────────────────────────────


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member is unsafe to have in an archive we unpack, or None."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    if member.issym() or member.islnk():
        return "is a link"
    if member.isdev():  # character, block device or fifo
        return "is a device or fifo"
    if not (member.isfile() or member.isdir()):
        return "is not a regular file or folder"
    return None


def extract_member(tar_path: Path, name_wanted: str | None, dest: Path) -> Path:
    """Write one regular file of a .tar(.gz) to dest (a file path) and return dest.

    name_wanted: the file's base name at any folder depth, or None for the first regular
    file. The whole archive is checked first; a member with an absolute path, a '..',
    a link or a device makes it hostile and nothing is written at all. Only dest is ever
    written (through a temp file), so no member can land outside it.
    """
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            members = tf.getmembers()
            for member in members:
                problem = _member_problem(member)
                if problem:
                    raise TaskError(
                        f"refusing archive {tar_path}: member {member.name!r} {problem}; "
                        "it may have been tampered with, download it again from a trusted source"
                    )
            chosen = next(
                (
                    m
                    for m in members
                    if m.isfile()
                    and (name_wanted is None or m.name.rstrip("/").split("/")[-1] == name_wanted)
                ),
                None,
            )
            if chosen is None:
                what = f"file named {name_wanted!r}" if name_wanted else "regular file"
                raise TaskError(f"archive {tar_path} has no {what}; check the URL or release")
            src = tf.extractfile(chosen)
            if src is None:  # cannot happen for a regular file, but keep mypy and us honest
                raise TaskError(f"cannot read {chosen.name!r} from {tar_path}")
            with src, executable_beside(dest) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TaskError(f"cannot unpack {tar_path}: {exc}; download it again") from exc
    return dest


# ── releases ─────────────────────────────────────────────────────────────────


def _cache_root(work_dir: Path) -> Path:
    return work_dir / CACHE_DIRNAME


def cached_runner_path(work_dir: Path, tag: str) -> Path:
    return _cache_root(work_dir) / tag / RUNNER_NAME


def resolve_latest_tag(base_url: str, *, timeout: tuple[float, float] = HTTP_TIMEOUT) -> str:
    """Ask the release server which tag `latest` is now (GitHub redirects to .../tag/vX.Y.Z)."""
    url = f"{base_url.rstrip('/')}/latest"
    failed = f"cannot ask {url} for the latest release"
    with get(url, timeout, stream=True, failed=failed) as resp:
        if resp.status_code >= 400:
            raise TaskError(f"{failed}: HTTP {resp.status_code}")
        final = resp.url
    match = re.search(r"/tag/([^/?#]+)/?(?:[?#].*)?$", final)
    tag = unquote(match.group(1)) if match else ""
    if not _SAFE_TAG_RE.match(tag):
        raise TaskError(
            f"{url} did not lead to a release tag (ended at {final}); "
            "pin a version with --patchbay-version vX.Y.Z or path:FILE"
        )
    return tag


def fetch_release(tag: str, work_dir: Path, arch: str, base_url: str) -> Path:
    """The runner of a release tag, from the cache or downloaded and unpacked into it.

    A tag names one fixed release, so a cached copy is reused without asking the server.
    """
    dest = cached_runner_path(work_dir, tag)
    if files.is_regular(work_dir, [CACHE_DIRNAME, tag, RUNNER_NAME]):
        return dest
    # The cache is in the work dir, which the guest writes: a link there is replaced by a
    # folder of ours, never written through; a link at dest is replaced by the download.
    files.real_dir(work_dir, [CACHE_DIRNAME, tag])
    url = release_asset_url(base_url, tag, arch)
    archive = dest.parent / asset_name(arch)
    try:
        download(url, archive, timeout=HTTP_TIMEOUT)
        extract_member(archive, RUNNER_NAME, dest)
    except HttpError as exc:
        if exc.status == 404:
            raise TaskError(
                f"{url} was not found (HTTP 404): release {tag} does not exist or has no "
                f"{asset_name(arch)}; pick another --patchbay-version"
            ) from exc
        raise
    finally:
        archive.unlink(missing_ok=True)
        if not dest.exists():
            # Leave no empty tag folder behind: it would look like a cached release.
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
    return dest


def _version_key(tag: str) -> tuple:
    m = _TAG_RE.match(tag)
    if not m:
        return (0, ())
    # A release sorts after its own pre-releases.
    return (1, (int(m[1]), int(m[2]), int(m[3]), m[4] is None, m[4] or ""))


def newest_cached_runner(work_dir: Path) -> tuple[str, Path] | None:
    """The cached release runner with the highest version (then the newest file)."""
    root = _cache_root(work_dir)
    try:
        names = [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return None
    found = []
    for name in names:
        if name == "git-src" or not files.safe_segment(name):
            continue
        try:
            with files.opened(work_dir, [CACHE_DIRNAME, name, RUNNER_NAME]) as (_fd, st):
                found.append((name, root / name / RUNNER_NAME, st.st_mtime))
        except OSError:
            continue  # none there, or a link or a FIFO the guest put there
    if not found:
        return None
    tag, path, _mtime = max(found, key=lambda item: (_version_key(item[0]), item[2]))
    return tag, path


def builtin_runner() -> ResolvedRunner:
    return ResolvedRunner(RunnerKind.BUILTIN, None, f"builtin {__version__}")


def _latest_stamp(work_dir: Path, base_url: str) -> Path:
    """When `latest` was last asked for, holding the tag it was then."""
    return stamp_for(_cache_root(work_dir), f"{base_url}/latest")


def _resolve_latest(
    work_dir: Path, arch: str, base_url: str, refresh: bool = False
) -> ResolvedRunner:
    stamp = _latest_stamp(work_dir, base_url)
    if not check_due(stamp, refresh=refresh):
        # Asked within the day: the release it named, from the cache, no network.
        try:
            tag = files.read_limited(work_dir, [CACHE_DIRNAME, stamp.name], 256).decode().strip()
        except (OSError, ValueError):
            tag = ""
        path = cached_runner_path(work_dir, tag)
        if _SAFE_TAG_RE.match(tag) and files.is_regular(
            work_dir, [CACHE_DIRNAME, tag, RUNNER_NAME]
        ):
            say(f"using the cached patchbay runner {tag} (latest as of the last daily check)")
            return ResolvedRunner(RunnerKind.LATEST, path, tag)
    try:
        tag = resolve_latest_tag(base_url)
        path = fetch_release(tag, work_dir, arch, base_url)
        # The check is done: not again for a day.
        files.write_atomic(
            files.real_dir(work_dir, CACHE_DIRNAME) / stamp.name, f"{tag}\n".encode()
        )
        return ResolvedRunner(RunnerKind.LATEST, path, tag)
    except Unreachable as exc:
        cached = newest_cached_runner(work_dir)
        if cached is None:
            # As the image download falls back to the Debian build: the main job still runs.
            say(
                f"cannot reach the patchbay release server ({exc}) and no runner is cached; "
                f"using the builtin runner ({__version__}) instead"
            )
            return builtin_runner()
        tag, path = cached
        warn(
            f"cannot reach the patchbay release server ({exc}); using the cached runner "
            f"{tag} from {path}, which may not be the latest release. "
            "Pin a version with --patchbay-version to silence this."
        )
        return ResolvedRunner(RunnerKind.LATEST, path, tag)


# ── git builds ───────────────────────────────────────────────────────────────


def git_src_dir(work_dir: Path) -> Path:
    """The clone a `git:REF` runner is built in: in the user's cache dir, one per work dir,
    never in the work dir itself. The guest writes the work dir, and a clone there would
    let it plant a git hook, a `core.fsmonitor` command or a build.rs that the host then
    runs (git checkout, cargo build)."""
    import platformdirs

    key = hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("patchbay")) / "git-src" / key


def git_clone_argv(repo_url: str, src_dir: Path) -> list[str]:
    return ["git", "clone", "--no-checkout", repo_url, str(src_dir)]


def git_fetch_argvs(repo_url: str, src_dir: Path) -> list[list[str]]:
    """Point origin at repo_url (it may have changed) and fetch branches and tags."""
    return [
        ["git", "-C", str(src_dir), "remote", "set-url", "origin", repo_url],
        ["git", "-C", str(src_dir), "fetch", "--force", "--tags", "--prune", "origin"],
    ]


def git_ref_candidates(ref: str) -> list[str]:
    """Names to try for REF: the remote branch first (a local branch would be stale)."""
    return [f"origin/{ref}", ref]


def git_verify_argv(src_dir: Path, candidate: str) -> list[str]:
    return [
        "git",
        "-C",
        str(src_dir),
        "rev-parse",
        "--verify",
        "--quiet",
        f"{candidate}^{{commit}}",
    ]


def git_checkout_argv(src_dir: Path, candidate: str) -> list[str]:
    return ["git", "-C", str(src_dir), "checkout", "--force", "--detach", candidate]


def cargo_runner_build_argv(src_dir: Path, musl_target: str) -> list[str]:
    # --target-dir pinned so a CARGO_TARGET_DIR in the user's env cannot move the output.
    return [
        "cargo",
        "build",
        "--release",
        "--manifest-path",
        str(src_dir / "Cargo.toml"),
        "--target-dir",
        str(src_dir / "target"),
        "--target",
        musl_target,
        "--bin",
        RUNNER_NAME,
    ]


def git_built_runner_path(src_dir: Path, musl_target: str) -> Path:
    return src_dir / "target" / musl_target / "release" / RUNNER_NAME


Runner = Callable[..., subprocess.CompletedProcess]


def run_checked(run: Runner, argv: list[str], what: str, **kwargs: Any) -> Any:
    """run(argv, **kwargs); a missing program or a non-zero exit raises TaskError naming
    `what`, the exit code, the last line of captured stderr (if any) and the command."""
    try:
        proc = run(argv, **kwargs)
    except FileNotFoundError as exc:
        raise TaskError(f"{what}: {argv[0]} is not installed or not on PATH") from exc
    if proc.returncode != 0:
        detail = (getattr(proc, "stderr", None) or "").strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        raise TaskError(f"{what} failed (exit {proc.returncode}){tail}; ran {' '.join(argv)}")
    return proc


def build_from_git(
    ref: str,
    work_dir: Path,
    musl_target: str,
    *,
    repo_url: str | None = None,
    run: Runner = subprocess.run,
) -> Path:
    """Clone (once) the patchbay repo, check out REF and build the runner for musl."""
    url = repo_url or os.environ.get("PATCHBAY_GIT_URL") or DEFAULT_GIT_URL
    src = git_src_dir(work_dir)
    if not (src / ".git").exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        run_checked(run, git_clone_argv(url, src), f"cloning {url}")
    for argv in git_fetch_argvs(url, src):
        run_checked(run, argv, f"fetching {url}")
    for candidate in git_ref_candidates(ref):
        if run(git_verify_argv(src, candidate)).returncode == 0:
            run_checked(run, git_checkout_argv(src, candidate), f"checking out {candidate}")
            break
    else:
        raise UsageError(
            f"git ref {ref!r} is not a branch, tag or commit of {url}; "
            "pass an existing one, e.g. --patchbay-version git:main"
        )
    run_checked(run, cargo_runner_build_argv(src, musl_target), "building patchbay")
    built = git_built_runner_path(src, musl_target)
    if not built.is_file():
        raise TaskError(f"cargo reported success but {built} is missing")
    return built


# ── top level ────────────────────────────────────────────────────────────────


def _user_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"--patchbay-version path:{value}: no such file; give a patchbay binary")
    if path.is_dir():
        raise UsageError(
            f"--patchbay-version path:{value} is a directory; give the patchbay binary inside it"
        )
    return path


def resolve_runner(
    version: str,
    work_dir: Path,
    arch: str,
    base_url: str | None = None,
    musl_target: str | None = None,
    *,
    repo_url: str | None = None,
    run: Runner = subprocess.run,
    refresh: bool = False,
) -> ResolvedRunner:
    """The runner that `--patchbay-version` asks for; pass it to install_runner().

    musl_target defaults to the arch's musl triple. `latest` is asked for online at
    most once a day (`refresh`: now), a cached copy is used in between. A runner named
    by tag or git ref that cannot be obtained raises RunnerUnavailable (exit 69);
    `latest` that cannot be reached falls back to a cached release, else to the builtin
    runner.
    """
    source = parse_version(version)
    target = musl_target or musl_target_for(arch)
    base = release_base_url(base_url)
    if source.kind is RunnerKind.BUILTIN:
        return builtin_runner()
    if source.kind is RunnerKind.PATH:
        return ResolvedRunner(source.kind, _user_file(source.value), f"path:{source.value}")
    if source.kind is RunnerKind.GIT:
        try:
            built = build_from_git(source.value, work_dir, target, repo_url=repo_url, run=run)
        except UsageError:
            raise
        except TaskError as exc:
            raise RunnerUnavailable(f"cannot build patchbay git:{source.value}: {exc}") from exc
        return ResolvedRunner(source.kind, built, f"git:{source.value}")
    normalize_arch(arch)  # bad arch is a usage error before any network traffic
    if source.kind is RunnerKind.LATEST:
        return _resolve_latest(work_dir, arch, base, refresh)
    try:
        return ResolvedRunner(
            source.kind, fetch_release(source.value, work_dir, arch, base), source.value
        )
    except Unreachable as exc:
        raise RunnerUnavailable(
            f"cannot download patchbay {source.value} ({exc}); pass --patchbay-version "
            "path:FILE with a patchbay binary, builtin for the builtin runner, or set "
            "PATCHBAY_RELEASE_URL to a reachable mirror"
        ) from exc
    except TaskError as exc:
        raise RunnerUnavailable(str(exc)) from exc


def install_runner(resolved: ResolvedRunner, work_dir: Path) -> Path:
    """Stage the runner as <work>/.patchbay-bin/patchbay (guest /work/.patchbay-bin/patchbay).

    Always through a temp file created exclusively and a rename: a runner still running
    from an earlier or concurrent sim.run keeps its file. `.patchbay-bin` is made a folder
    of ours first: a link the guest put there (or at `patchbay`) is replaced, never written
    through. A runner from the work dir's cache is read without following links.
    """
    try:
        dest = files.real_dir(work_dir, BIN_DIRNAME) / RUNNER_NAME
        if resolved.path is None:
            return _install_builtin(work_dir, dest)
        inside = _parts_in(resolved.path, work_dir)
        if inside is None:
            return copy_executable(resolved.path, dest)  # the user's own file, or our build
        with files.opened(work_dir, inside) as (fd, st):
            return files.copy_fd_executable(fd, st, dest)
    except files.RefusedFile as exc:
        raise TaskError(
            f"cannot stage the runner from {resolved.path}: {exc.strerror}; "
            "the work dir is written by the guest, remove it and run again"
        ) from None


def _install_builtin(work_dir: Path, dest: Path) -> Path:
    """The builtin runner at dest; the same bytes already there are kept as they are
    (their mtime too), so copying to a guest without shares sees nothing new to send."""
    data = builtin.zipapp_bytes()
    try:
        with files.opened(work_dir, [BIN_DIRNAME, RUNNER_NAME]) as (fd, st):
            executable = stat.S_IMODE(st.st_mode) & 0o111 == 0o111
            same_size = executable and st.st_size == len(data)
            if same_size and b"".join(files.FileStream(os.dup(fd), 0, len(data))) == data:
                return dest
    except OSError:
        pass  # not there, or not a regular file: written anew
    return files.write_atomic(dest, data, 0o755)


def _parts_in(path: Path, work_dir: Path) -> list[str] | None:
    """path's segments below work_dir when it lies there (as written, links not
    resolved: a link the guest planted must not decide), else None."""
    absolute = Path(os.path.abspath(path))
    for root in {Path(os.path.abspath(work_dir)), work_dir.resolve()}:
        if absolute.is_relative_to(root) and absolute != root:
            return list(absolute.relative_to(root).parts)
    return None
