"""Host side of `test.run`: build the Rust test binaries with cargo and stage them for the guest.

The flow (SPEC 7): `start_build()` runs `cargo test --no-run` while the VM boots,
`.result()` gives the test executables cargo reported, and `stage_test_binaries()` copies
them into the work dir, which the guest sees as `/work`.
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import TaskError, UsageError

# cargo's own exit code for failed builds and tests; used when cargo died of a signal.
CARGO_FAILURE_EXIT = 101

_ARCH_BY_MACHINE = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "arm64": "aarch64",
    "aarch64": "aarch64",
}


def default_target(machine: str | None = None) -> str:
    """The musl target for a guest architecture (`test.run` passes the guest's,
    QEMU_VM_ARCH: amd64 or arm64), else the host's.

    musl binaries are static, so they run in the guest whatever C library the host has.
    `machine` defaults to `platform.machine()`; an architecture we have no guest image for
    is a UsageError asking for an explicit `--target`.
    """
    raw = platform.machine() if machine is None else machine
    arch = _ARCH_BY_MACHINE.get(raw.lower())
    if arch is None:
        raise UsageError(
            f"no default Rust target for host architecture {raw!r}; pass --target explicitly"
        )
    return f"{arch}-unknown-linux-musl"


@dataclass(frozen=True)
class TestBuild:
    """What to ask `cargo test --no-run` for; mirrors the cargo flags of `test.run`."""

    __test__ = False  # not a pytest test class, despite the name

    target: str
    packages: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    jobs: int | None = None
    features: tuple[str, ...] = ()
    release: bool = False
    lib: bool = False
    no_fail_fast: bool = False

    def __post_init__(self) -> None:
        # Invoke hands repeatable flags over as lists; keep the frozen object hashable.
        for name in ("packages", "tests", "features"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"TestBuild.{name} must be a sequence of strings, not a string")
            object.__setattr__(self, name, tuple(value or ()))
        if not self.target:
            raise UsageError("--target must not be empty")


def test_build_argv(b: TestBuild, cargo: str = "cargo") -> list[str]:
    """The cargo command line that builds, but does not run, the test binaries.

    `json-render-diagnostics` makes cargo print the compiler's messages rendered on stderr,
    for the user, and only machine-readable JSON on stdout, for us. Arguments after `--` on
    the task's command line are not cargo's (SPEC 9.16): they go to the binaries at run time.
    """
    argv = [
        cargo,
        "test",
        "--no-run",
        "--target",
        b.target,
        "--message-format",
        "json-render-diagnostics",
    ]
    for package in b.packages:
        argv += ["-p", package]
    for test in b.tests:
        argv += ["--test", test]
    if b.jobs is not None:
        argv += ["-j", str(b.jobs)]
    if b.features:
        argv += ["--features", ",".join(b.features)]
    if b.release:
        argv.append("--release")
    if b.lib:
        argv.append("--lib")
    if b.no_fail_fast:
        argv.append("--no-fail-fast")
    return argv


test_build_argv.__test__ = False  # type: ignore[attr-defined]  # for pytest: not a test


@dataclass(frozen=True)
class TestExecutable:
    """One test binary cargo built: the lib's or a bin's unit tests, or a `tests/*.rs` file."""

    __test__ = False

    path: Path
    name: str  # cargo target name, e.g. `net` for tests/net.rs
    package: str
    kind: str  # first cargo target kind: lib, bin, test, bench, example, proc-macro, ...

    @property
    def label(self) -> str:
        """A name for PASS/FAIL lines; the target name alone repeats across packages."""
        return f"{self.package}::{self.name} ({self.kind})"


def _package_name(package_id: str) -> str:
    # Cargo >= 1.77: `path+file:///dir/name#0.1.0` or `registry+https://...#name@1.0.0`;
    # older cargo: `name 0.1.0 (path+file:///dir/name)`.
    if "#" in package_id:
        url, fragment = package_id.rsplit("#", 1)
        if "@" in fragment:
            return fragment.split("@", 1)[0]
        return url.rstrip("/").rsplit("/", 1)[-1]
    return package_id.split(" ", 1)[0]


def parse_test_executables(lines: Iterable[str]) -> list[TestExecutable]:
    """Test executables from cargo's JSON messages, in cargo's order, each path once.

    Kept: `compiler-artifact` messages whose `profile.test` is true and that have an
    `executable` (SPEC 7.2). That leaves out build scripts and bins (not test profile),
    plain libs (no executable) and anything on stdout that is not a JSON object.
    """
    found: list[TestExecutable] = []
    seen: set[Path] = set()
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(msg, dict) or msg.get("reason") != "compiler-artifact":
            continue
        profile = msg.get("profile") or {}
        executable = msg.get("executable")
        if profile.get("test") is not True or not isinstance(executable, str) or not executable:
            continue
        path = Path(executable)
        if path in seen:
            continue
        seen.add(path)
        target = msg.get("target") or {}
        kinds = target.get("kind") or ["?"]
        found.append(
            TestExecutable(
                path=path,
                name=str(target.get("name", path.name)),
                package=_package_name(str(msg.get("package_id", ""))),
                kind=str(kinds[0]),
            )
        )
    return found


RunFn = Callable[..., subprocess.CompletedProcess]


def installed_targets(run: RunFn = subprocess.run, cwd: Path | None = None) -> set[str] | None:
    """Targets rustup has installed for the toolchain that applies in `cwd`.

    Run in the project dir so that a `rust-toolchain.toml` there picks the toolchain.
    None when rustup is absent or cannot answer (e.g. a linked custom toolchain); then
    `check_target` looks at the sysroot instead.
    """
    try:
        proc = run(
            ["rustup", "target", "list", "--installed"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except (FileNotFoundError, PermissionError):
        return None
    if proc.returncode != 0:
        return None
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def _sysroot_has_target(target: str, run: RunFn, cwd: Path | None) -> bool | None:
    """Whether rustc's sysroot holds the standard library for `target`; None if unknown."""
    try:
        proc = run(
            ["rustc", "--print", "sysroot"], cwd=cwd, capture_output=True, text=True, check=False
        )
    except (FileNotFoundError, PermissionError):
        return None
    sysroot = proc.stdout.strip()
    if proc.returncode != 0 or not sysroot:
        return None
    return (Path(sysroot) / "lib" / "rustlib" / target).is_dir()


def missing_target_message(target: str, rustup: bool = True) -> str:
    """What to tell the user when the standard library for `target` is not installed."""
    install = f"rustup target add {target}"
    how = (
        f"Install it with:\n    {install}"
        if rustup
        else f"Install the standard library for it (with rustup: `{install}`)."
    )
    msg = f"The Rust target {target} is not installed. {how}"
    if target.endswith("-musl"):
        gnu = target.removesuffix("-musl") + "-gnu"
        msg += (
            f"\nOr pass --target {gnu}, which works where the host's and the guest's C"
            " libraries are compatible (a Linux host whose glibc is not newer than the"
            " guest's)."
        )
    return msg


def check_target(
    target: str,
    installed: set[str] | None,
    run: RunFn = subprocess.run,
    cwd: Path | None = None,
) -> None:
    """Raise UsageError, naming the command that fixes it, when `target` is not installed.

    `installed` comes from `installed_targets()`; when it is None (no rustup), the sysroot
    is checked. When even that cannot be told, cargo's own error will have to do.
    """
    if installed is not None:
        if target not in installed:
            raise UsageError(missing_target_message(target, rustup=True))
        return
    if _sysroot_has_target(target, run, cwd) is False:
        raise UsageError(missing_target_message(target, rustup=False))


class CargoFailed(TaskError):
    """`cargo test --no-run` failed; carries cargo's exit code so the task ends with it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BuildJob:
    """A running `cargo test --no-run`, so the caller can boot the VM meanwhile.

    `result()` waits and returns the executables or raises CargoFailed; `cancel()` stops
    cargo (e.g. when the VM could not be booted). As a context manager it cancels on the
    way out while cargo is still running, so a failed boot does not wait for the build.
    """

    def __init__(self, argv: list[str], proc: subprocess.Popen[str]) -> None:
        self.argv = argv
        self._proc = proc
        self._threads: list[threading.Thread] = []
        self._lines: list[str] = []
        self._cancelled = False

    def done(self) -> bool:
        return self._proc.poll() is not None and not any(t.is_alive() for t in self._threads)

    def cancel(self) -> None:
        self._cancelled = True
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for t in self._threads:
            t.join()

    def result(self, timeout: float | None = None) -> list[TestExecutable]:
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"{' '.join(self.argv[:3])} still running") from e
        for t in self._threads:
            t.join()
        if self._cancelled:
            raise CargoFailed("cargo test --no-run was cancelled", CARGO_FAILURE_EXIT)
        if code != 0:
            # Negative: killed by a signal; cargo's own failure code is the best stand-in.
            exit_code = code if code > 0 else CARGO_FAILURE_EXIT
            raise CargoFailed(
                f"cargo test --no-run failed (exit {code}); cargo's messages are above.\n"
                f"command: {shlex.join(self.argv)}",
                exit_code,
            )
        return parse_test_executables(self._lines)

    def __enter__(self) -> BuildJob:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.done():
            self.cancel()


def _read_lines(stream: IO[str], sink: Callable[[str], Any]) -> None:
    with stream:
        for line in stream:
            sink(line)


def start_build(
    b: TestBuild,
    cwd: Path,
    stderr: IO[str] | None = None,
    cargo: str = "cargo",
    popen: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
) -> BuildJob:
    """Start `cargo test --no-run` in `cwd` and return at once.

    cargo's stderr (progress, rendered warnings and errors) reaches the user live: by
    default cargo inherits our stderr, which keeps its colours and progress bar when that
    is a terminal; pass a text stream to have the lines copied there instead. stdout, the
    JSON, is collected by a reader thread so that a full pipe never stalls cargo.
    """
    argv = test_build_argv(b, cargo=cargo)
    try:
        proc = popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None if stderr is None else subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except FileNotFoundError as e:
        raise TaskError(f"{cargo} not found; install Rust (https://rustup.rs)") from e
    job = BuildJob(argv, proc)
    assert proc.stdout is not None
    readers = [threading.Thread(target=_read_lines, args=(proc.stdout, job._lines.append))]
    if stderr is not None:
        assert proc.stderr is not None

        def copy(line: str) -> None:
            stderr.write(line)
            stderr.flush()

        readers.append(threading.Thread(target=_read_lines, args=(proc.stderr, copy)))
    for t in readers:
        t.daemon = True  # never keep a Ctrl-C'd interpreter alive
        t.start()
    job._threads.extend(readers)
    return job


def build_tests(b: TestBuild, cwd: Path, stderr: IO[str] | None = None) -> list[TestExecutable]:
    """Build the test binaries and wait; see `start_build` for the parallel form."""
    return start_build(b, cwd, stderr=stderr).result()
