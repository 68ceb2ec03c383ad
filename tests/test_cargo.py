"""Host side of test.run: cargo argv, JSON parsing, target checks, staging, a real build."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks.errors import TaskError, UsageError
from patchbay_vm_tasks.rusttest import cargo
from patchbay_vm_tasks.rusttest.cargo import (
    CargoFailed,
    TestBuild,
    TestExecutable,
    build_tests,
    check_target,
    default_target,
    installed_targets,
    parse_test_executables,
    start_build,
)
from patchbay_vm_tasks.rusttest.staging import stage_test_binaries
from patchbay_vm_tasks.rusttest.testrun import guest_test_argv

FIXTURES = Path(__file__).parent / "fixtures"
MESSAGES = FIXTURES / "cargo-messages"
TESTCRATE = FIXTURES / "testcrate"
HOST_GNU = "x86_64-unknown-linux-gnu"
MUSL = "x86_64-unknown-linux-musl"


# --- default target -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "x86_64-unknown-linux-musl"),
        ("AMD64", "x86_64-unknown-linux-musl"),  # Windows
        ("arm64", "aarch64-unknown-linux-musl"),  # macOS
        ("aarch64", "aarch64-unknown-linux-musl"),  # Linux
        ("ARM64", "aarch64-unknown-linux-musl"),
    ],
)
def test_default_target(machine: str, expected: str) -> None:
    assert default_target(machine) == expected


def test_default_target_unknown_arch_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="riscv64.*--target") as e:
        default_target("riscv64")
    assert e.value.exit_code == 2


def test_default_target_uses_the_host() -> None:
    assert default_target().endswith("-unknown-linux-musl")


# --- cargo argv -----------------------------------------------------------------------

BASE = ["cargo", "test", "--no-run", "--target", MUSL]
BASE += ["--message-format", "json-render-diagnostics"]


@pytest.mark.parametrize(
    ("build", "extra"),
    [
        (TestBuild(MUSL), []),
        (TestBuild(MUSL, packages=("a", "b")), ["-p", "a", "-p", "b"]),
        (TestBuild(MUSL, tests=("net", "sim")), ["--test", "net", "--test", "sim"]),
        (TestBuild(MUSL, jobs=4), ["-j", "4"]),
        (TestBuild(MUSL, features=("x", "y z")), ["--features", "x,y z"]),
        (TestBuild(MUSL, release=True), ["--release"]),
        (TestBuild(MUSL, lib=True), ["--lib"]),
        (TestBuild(MUSL, no_fail_fast=True), ["--no-fail-fast"]),
        (
            TestBuild(
                MUSL,
                packages=("p",),
                tests=("t",),
                jobs=2,
                features=("f",),
                release=True,
                lib=True,
                no_fail_fast=True,
            ),
            ["-p", "p", "--test", "t", "-j", "2", "--features", "f"]
            + ["--release", "--lib", "--no-fail-fast"],
        ),
    ],
)
def test_build_argv(build: TestBuild, extra: list[str]) -> None:
    argv = cargo.test_build_argv(build)
    assert argv == BASE + extra
    assert "--" not in argv  # args after the task's `--` are the binaries' (SPEC 9.16)


def test_build_accepts_lists_from_invoke_and_stays_hashable() -> None:
    b = TestBuild(MUSL, packages=["a"], tests=["t"], features=["f"])  # type: ignore[arg-type]
    assert (b.packages, b.tests, b.features) == (("a",), ("t",), ("f",))
    assert hash(b) == hash(TestBuild(MUSL, packages=("a",), tests=("t",), features=("f",)))


def test_build_rejects_a_bare_string_and_an_empty_target() -> None:
    with pytest.raises(TypeError):
        TestBuild(MUSL, packages="abc")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        TestBuild("")


# --- parsing cargo's JSON -------------------------------------------------------------


def _load(name: str) -> list[str]:
    return (MESSAGES / name).read_text().splitlines()


def _summary(exes: list[TestExecutable]) -> list[tuple[str, str, str, str]]:
    # The file name without cargo's hash, which changes with the toolchain.
    return [(e.package, e.name, e.kind, e.path.name.rsplit("-", 1)[0]) for e in exes]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        (
            "plain.jsonl",
            [
                ("testcrate", "testcrate", "lib", "testcrate"),
                ("testcrate", "helper", "bin", "helper"),
                ("testcrate", "net", "test", "net"),
            ],
        ),
        (
            "features-failing.jsonl",
            [
                ("testcrate", "testcrate", "lib", "testcrate"),
                ("testcrate", "helper", "bin", "helper"),
                ("testcrate", "net", "test", "net"),
            ],
        ),
        # `--test net` on a fresh tree: only the integration test binary.
        ("test-net-fresh.jsonl", [("testcrate", "net", "test", "net")]),
    ],
)
def test_parse_captured_cargo_output(fixture: str, expected: list[tuple[str, ...]]) -> None:
    lines = _load(fixture)
    exes = parse_test_executables(lines)
    assert sorted(_summary(exes)) == sorted(expected)
    # The fixtures do contain what must be skipped: a build script and non-test artifacts.
    msgs = [json.loads(line) for line in lines]
    artifacts = [m for m in msgs if m["reason"] == "compiler-artifact"]
    assert any(m["target"]["kind"] == ["custom-build"] for m in artifacts)
    assert any(m["executable"] and not m["profile"]["test"] for m in artifacts)  # the bin
    assert len(artifacts) > len(exes)
    for e in exes:
        assert e.path.is_absolute()
        assert e.path.parent.name == "deps"  # the bin's non-test copy lives one level up
        assert "build-script" not in e.name


def test_parse_keeps_cargo_order_and_matches_executable_paths() -> None:
    lines = _load("plain.jsonl")
    expected = [
        json.loads(line)["executable"]
        for line in lines
        if json.loads(line).get("profile", {}).get("test") and json.loads(line)["executable"]
    ]
    assert [str(e.path) for e in parse_test_executables(lines)] == expected


def test_parse_features_build_has_other_hashes() -> None:
    plain = {e.path for e in parse_test_executables(_load("plain.jsonl"))}
    failing = {e.path for e in parse_test_executables(_load("features-failing.jsonl"))}
    assert plain.isdisjoint(failing)


def _artifact(executable: str | None, test: bool = True, **target: object) -> str:
    return json.dumps(
        {
            "reason": "compiler-artifact",
            "package_id": "path+file:///src/pkg#0.1.0",
            "target": {"kind": ["test"], "name": "t", **target},
            "profile": {"test": test},
            "executable": executable,
        }
    )


def test_parse_skips_noise_and_duplicates() -> None:
    lines = [
        "",
        "   Compiling something (not JSON)",
        "{not json either",
        "[1, 2]",
        json.dumps({"reason": "compiler-message", "message": {"rendered": "warning"}}),
        json.dumps({"reason": "build-finished", "success": True}),
        _artifact("/t/deps/a-1"),
        _artifact("/t/deps/a-1"),  # the same binary reported twice
        _artifact(None),  # a test-profile lib without an executable
        _artifact("/t/deps/b-2", test=False),
        _artifact("/t/deps/c-3", name="c", kind=["bench"]),
        _artifact("/t/deps/d-4", name="d", kind=["example"]) + "\r\n",
    ]
    exes = parse_test_executables(lines)
    assert [(str(e.path), e.name, e.kind, e.package) for e in exes] == [
        ("/t/deps/a-1", "t", "test", "pkg"),
        ("/t/deps/c-3", "c", "bench", "pkg"),
        ("/t/deps/d-4", "d", "example", "pkg"),
    ]


@pytest.mark.parametrize(
    ("package_id", "name"),
    [
        ("path+file:///work/main/tests/fixtures/testcrate#0.1.0", "testcrate"),
        ("path+file:///src/dir#other-name@0.2.0", "other-name"),
        ("registry+https://github.com/rust-lang/crates.io-index#serde@1.0.200", "serde"),
        ("testcrate 0.1.0 (path+file:///src/testcrate)", "testcrate"),  # cargo < 1.77
    ],
)
def test_package_name_from_package_id(package_id: str, name: str) -> None:
    assert cargo._package_name(package_id) == name


def test_label_names_package_target_and_kind() -> None:
    exe = TestExecutable(Path("/t/deps/net-1"), "net", "testcrate", "test")
    assert exe.label == "testcrate::net (test)"


# --- target checks --------------------------------------------------------------------


class FakeRun:
    """Stands in for subprocess.run: canned answers by argv[0], records the calls."""

    def __init__(self, answers: dict[str, tuple[int, str] | type[BaseException]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        answer = self.answers[argv[0]]
        if isinstance(answer, type):
            raise answer(argv[0])
        code, out = answer
        return subprocess.CompletedProcess(argv, code, stdout=out, stderr="")


RUSTUP_LIST = "x86_64-unknown-linux-gnu\nx86_64-unknown-linux-musl\n\n"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((0, RUSTUP_LIST), {"x86_64-unknown-linux-gnu", "x86_64-unknown-linux-musl"}),
        ((0, ""), set()),
        ((1, "error: toolchain 'custom' does not support components"), None),
        (FileNotFoundError, None),
    ],
)
def test_installed_targets(answer: object, expected: set[str] | None) -> None:
    run = FakeRun({"rustup": answer})  # type: ignore[dict-item]
    assert installed_targets(run=run, cwd=Path("/proj")) == expected
    assert run.calls == [["rustup", "target", "list", "--installed"]]


def test_check_target_trusts_the_installed_set_and_asks_nothing_else() -> None:
    run = FakeRun({})  # any command run would fail the lookup with KeyError
    check_target(MUSL, {HOST_GNU, MUSL}, run=run)
    with pytest.raises(UsageError, match=f"rustup target add {MUSL}"):
        check_target(MUSL, {HOST_GNU}, run=run)  # the same set without it: refused
    assert run.calls == []


@pytest.mark.parametrize(
    ("target", "gnu_hint"),
    [
        (MUSL, "--target x86_64-unknown-linux-gnu"),
        ("aarch64-unknown-linux-musl", "--target aarch64-unknown-linux-gnu"),
        ("aarch64-unknown-linux-gnu", None),
    ],
)
def test_check_target_missing_names_the_fix(target: str, gnu_hint: str | None) -> None:
    with pytest.raises(UsageError) as e:
        check_target(target, {HOST_GNU})
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert f"\n    rustup target add {target}\n" in msg + "\n"
    if gnu_hint:
        assert gnu_hint in msg
        assert "C libraries are compatible" in msg
    else:
        assert "--target" not in msg


def test_check_target_without_rustup_looks_in_the_sysroot(tmp_path: Path) -> None:
    (tmp_path / "lib" / "rustlib" / HOST_GNU).mkdir(parents=True)
    run = FakeRun({"rustc": (0, f"{tmp_path}\n")})
    check_target(HOST_GNU, None, run=run)
    assert run.calls == [["rustc", "--print", "sysroot"]]
    with pytest.raises(UsageError, match=f"rustup target add {MUSL}") as e:
        check_target(MUSL, None, run=run)
    assert f"--target {HOST_GNU}" in str(e.value)


@pytest.mark.parametrize("answer", [FileNotFoundError, (1, ""), (0, "")])
def test_check_target_gives_up_quietly_when_nothing_can_tell(answer: object) -> None:
    # cargo will report a missing target itself; we must not block a working setup.
    run = FakeRun({"rustc": answer})  # type: ignore[dict-item]
    check_target(MUSL, None, run=run)
    assert run.calls == [["rustc", "--print", "sysroot"]]  # it asked, and got no answer


def test_check_target_against_this_hosts_toolchain() -> None:
    """The real rustup (or, without it, rustc's sysroot): the host's own target is there,
    a target no toolchain has is refused with the command that would add it."""
    installed = installed_targets(cwd=TESTCRATE)
    assert installed is None or HOST_GNU in installed
    check_target(HOST_GNU, installed, cwd=TESTCRATE)
    nowhere = "x86_64-unknown-nosuchos-musl"
    with pytest.raises(UsageError, match=f"rustup target add {nowhere}"):
        check_target(nowhere, installed, cwd=TESTCRATE)


# --- running cargo (a fake one) -------------------------------------------------------


def _fake_cargo(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-cargo"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_start_build_streams_stderr_and_collects_json(tmp_path: Path) -> None:
    body = f"""
sys.stderr.write("   Compiling testcrate\\n")
sys.stdout.write(open({str(MESSAGES / "plain.jsonl")!r}).read())
sys.stdout.write("not json\\n")
sys.stderr.write("    Finished\\n")
"""
    err = io.StringIO()
    job = start_build(TestBuild(HOST_GNU), tmp_path, stderr=err, cargo=_fake_cargo(tmp_path, body))
    exes = job.result(timeout=30)
    assert [e.name for e in exes] == ["testcrate", "helper", "net"]
    assert err.getvalue() == "   Compiling testcrate\n    Finished\n"
    assert job.done()


@pytest.mark.parametrize(("code", "exit_code"), [(3, 3), (101, 101)])
def test_start_build_failure_carries_cargos_exit_code(
    tmp_path: Path, code: int, exit_code: int
) -> None:
    body = f"sys.stderr.write('error: could not compile\\n'); sys.exit({code})"
    err = io.StringIO()
    job = start_build(TestBuild(HOST_GNU), tmp_path, stderr=err, cargo=_fake_cargo(tmp_path, body))
    with pytest.raises(CargoFailed, match=r"cargo test --no-run failed \(exit") as e:
        job.result(timeout=30)
    assert e.value.exit_code == exit_code
    assert isinstance(e.value, TaskError)
    assert "could not compile" in err.getvalue()


def test_cargo_killed_by_a_signal_fails_with_101(tmp_path: Path) -> None:
    body = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    job = start_build(TestBuild(HOST_GNU), tmp_path, cargo=_fake_cargo(tmp_path, body))
    with pytest.raises(CargoFailed) as e:
        job.result(timeout=30)
    assert e.value.exit_code == 101


def test_cancel_stops_a_running_build(tmp_path: Path) -> None:
    started, finished = tmp_path / "started", tmp_path / "finished"
    body = (
        f"open({str(started)!r}, 'w').close(); time.sleep(60); open({str(finished)!r}, 'w').close()"
    )
    fake = _fake_cargo(tmp_path, body)
    with pytest.raises(RuntimeError), start_build(TestBuild(HOST_GNU), tmp_path, cargo=fake) as job:
        deadline = time.monotonic() + 60  # liveness only
        while not started.exists():  # then cargo is running, inside its sleep
            assert not job.done() and time.monotonic() < deadline, "the fake cargo never started"
            time.sleep(0.01)
        raise RuntimeError("the VM did not boot")  # leaving the block cancels the build
    assert job.done()
    assert not finished.exists()  # stopped, not waited out: it never got past its sleep
    with pytest.raises(CargoFailed, match="cancelled"):
        job.result()


def test_result_timeout_leaves_the_build_running(tmp_path: Path) -> None:
    job = start_build(TestBuild(HOST_GNU), tmp_path, cargo=_fake_cargo(tmp_path, "time.sleep(60)"))
    with pytest.raises(TimeoutError):
        job.result(timeout=0.1)
    assert not job.done()
    job.cancel()


def test_missing_cargo_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        start_build(TestBuild(HOST_GNU), tmp_path, cargo=str(tmp_path / "no-such-cargo"))


# --- staging --------------------------------------------------------------------------


def _exe(path: Path, content: bytes, name: str = "t") -> TestExecutable:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(0o700)
    return TestExecutable(path, name, "pkg", "test")


def test_stage_copies_with_exec_bits_into_a_world_writable_dir(tmp_path: Path) -> None:
    exes = [
        _exe(tmp_path / "target/a/deps/net-1111", b"net"),
        _exe(tmp_path / "target/a/deps/pkg-2222", b"lib"),
    ]
    work = tmp_path / "work"
    guest = stage_test_binaries(exes, work)
    dest = work / "binaries" / "tests"
    assert guest == ["/work/binaries/tests/net-1111", "/work/binaries/tests/pkg-2222"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777
    for exe in exes:
        staged = dest / exe.path.name
        assert staged.read_bytes() == exe.path.read_bytes()
        assert stat.S_IMODE(staged.stat().st_mode) == 0o755
    assert sorted(p.name for p in dest.iterdir()) == ["net-1111", "pkg-2222"]  # no temp files


def test_stage_disambiguates_same_file_names(tmp_path: Path) -> None:
    exes = [
        _exe(tmp_path / "one/deps/net-1111", b"first"),
        _exe(tmp_path / "two/deps/net-1111", b"second"),
        _exe(tmp_path / "three/deps/net-1111", b"third"),
        _exe(tmp_path / "one/deps/net-1111-2", b"fourth"),  # looks like a disambiguated one
    ]
    guest = stage_test_binaries(exes, tmp_path / "work")
    names = [g.rsplit("/", 1)[1] for g in guest]
    assert names == ["net-1111", "net-1111-2", "net-1111-3", "net-1111-2-2"]
    assert len(set(names)) == len(names)
    dest = tmp_path / "work" / "binaries" / "tests"
    assert [(dest / n).read_bytes() for n in names] == [b"first", b"second", b"third", b"fourth"]


def test_stage_again_replaces_rebuilt_binaries(tmp_path: Path) -> None:
    src = tmp_path / "deps" / "net-1111"
    exe = _exe(src, b"old build")
    work = tmp_path / "work"
    stage_test_binaries([exe], work)
    staged = work / "binaries" / "tests" / "net-1111"
    inode = staged.stat().st_ino

    stage_test_binaries([exe], work)  # unchanged: not copied again
    assert staged.stat().st_ino == inode

    src.write_bytes(b"new build, same name")  # cargo rebuilds in place, name unchanged
    os.utime(src, ns=(0, src.stat().st_mtime_ns + 1_000_000_000))
    stage_test_binaries([exe], work)
    assert staged.read_bytes() == b"new build, same name"
    assert staged.stat().st_ino != inode  # replaced by rename, not overwritten


def test_stage_nothing_still_prepares_the_dir(tmp_path: Path) -> None:
    assert stage_test_binaries([], tmp_path / "work") == []
    assert (tmp_path / "work" / "binaries" / "tests").is_dir()


def test_stage_missing_binary_raises_and_leaves_no_temp(tmp_path: Path) -> None:
    missing = TestExecutable(tmp_path / "deps" / "gone-1", "gone", "pkg", "test")
    with pytest.raises(FileNotFoundError):
        stage_test_binaries([missing], tmp_path / "work")
    assert list((tmp_path / "work" / "binaries" / "tests").iterdir()) == []


# --- the real thing: cargo on the fixture crate ---------------------------------------


def test_build_stage_and_run_the_fixture_crate(tmp_path: Path) -> None:
    exes = build_tests(TestBuild(HOST_GNU, tests=("net",)), TESTCRATE)
    assert [(e.package, e.name, e.kind) for e in exes] == [("testcrate", "net", "test")]
    assert exes[0].path.is_file()

    work = tmp_path / "work"
    (guest_path,) = stage_test_binaries(exes, work)
    local_dir = work / "binaries" / "tests"
    local_path = local_dir / guest_path.rsplit("/", 1)[1]
    # The guest's command line, pointed at the local copy and folder.
    argv = guest_test_argv(
        str(local_path),
        "passing",
        ["--test-threads=1", "--nocapture"],
        {"RUST_BACKTRACE": "1"},
        cwd=str(local_dir),
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test passing ... " in proc.stdout
    assert "1 passed; 0 failed" in proc.stdout
    assert "2 filtered out" in proc.stdout  # netns_veth and filtered_out_example
    assert "--test-threads=1" in proc.stdout  # the test prints the args it was given


def test_build_with_an_unknown_feature_fails_with_cargos_code() -> None:
    err = io.StringIO()
    with pytest.raises(CargoFailed) as e:
        build_tests(TestBuild(HOST_GNU, features=("no-such-feature",)), TESTCRATE, stderr=err)
    assert e.value.exit_code == 101
    assert "no-such-feature" in err.getvalue()


def test_stage_removes_binaries_of_an_earlier_build_but_not_test_output(tmp_path: Path) -> None:
    work = tmp_path / "work"
    old = [_exe(tmp_path / "deps/net-1111", b"old net"), _exe(tmp_path / "deps/lib-2222", b"lib")]
    stage_test_binaries(old, work)
    dest = work / "binaries" / "tests"
    (dest / "output-of-a-test.txt").write_text("keep me")
    new = [_exe(tmp_path / "deps/net-3333", b"new net"), old[1]]
    stage_test_binaries(new, work)
    assert sorted(p.name for p in dest.iterdir()) == [
        "lib-2222",
        "net-3333",
        "output-of-a-test.txt",
    ]
    stage_test_binaries([], work)
    assert sorted(p.name for p in dest.iterdir()) == ["output-of-a-test.txt"]
