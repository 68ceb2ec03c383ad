"""Bad flags and settings (issue 19): one clear line and exit 2, never a traceback.

Each case runs the `patchbay-vm` command for real (python -m patchbay_vm_tasks) in an
empty project, or resolves the settings, and checks the message and the exit code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_viewer_fixture import make_workdir

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.errors import EXIT_USAGE, UsageError
from patchbay_vm_tasks.viewer import server as viewer_server


def patchbay_vm(cwd: Path, *args: str, env: dict[str, str] | None = None):
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_VM_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "patchbay_vm_tasks", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def assert_usage_error(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode == EXIT_USAGE, (out.returncode, out.stdout, out.stderr)
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "bind",
    ["127.0.0.1:70000", "127.0.0.1:" + "9" * 20, "127.0.0.1:²", "127.0.0.1:-1", "127.0.0.1:"],
)
def test_serve_bind_with_a_bad_port(project: Path, bind: str) -> None:
    out = patchbay_vm(project, "serve", "--bind", bind)
    assert_usage_error(out, f"--bind {bind!r}")


def test_parse_bind_refuses_what_socket_cannot_take() -> None:
    for bad in ("a\x00b:80", "[]:80", "ho st:80", "hôst:80"):
        with pytest.raises(ValueError, match="--bind wants HOST:PORT"):
            viewer_server.parse_bind(bad)
    assert viewer_server.parse_bind("127.0.0.1:65535") == ("127.0.0.1", 65535)
    assert viewer_server.parse_bind("127.0.0.1:0") == ("127.0.0.1", 0)


def test_report_to_a_folder_or_an_unwritable_path(project: Path) -> None:
    (project / "out").mkdir()
    work = make_workdir(project / "w")
    rel = str(work.relative_to(project))
    (project / "a-file").write_text("x")
    out = patchbay_vm(project, "report", "-o", "out", "--work-dir", rel)
    assert_usage_error(out, "--output out: cannot write the report there: Is a directory")
    out = patchbay_vm(project, "report", "-o", "a-file/r.html", "--work-dir", rel)
    assert_usage_error(out, "--output a-file/r.html: cannot write the report there")
    long = "x" * 300 + ".html"
    out = patchbay_vm(project, "report", "-o", long, "--work-dir", rel)
    assert_usage_error(out, "cannot write the report there: File name too long")
    assert sorted(p.name for p in project.iterdir()) == ["a-file", "out", "w"]
    good = patchbay_vm(project, "report", "-o", "r.html", "--work-dir", rel)
    assert good.returncode == 0 and (project / "r.html").stat().st_size > 1000


@pytest.mark.parametrize("jobs", ["²", "٣", "0", "-1", "1_0", " 4", "9999999"])
def test_test_jobs_must_be_ascii_digits(project: Path, jobs: str) -> None:
    out = patchbay_vm(project, "test", "--jobs", jobs)
    assert_usage_error(out, f"--jobs: expected a positive number, got {jobs!r}")


def test_junit_naming_a_folder_is_refused_before_anything_starts(project: Path) -> None:
    (project / "out").mkdir()
    out = patchbay_vm(project, "test", "--junit", "out")
    assert_usage_error(out, "--junit 'out': give a file name, not a folder")


# ------------------------------------------------------------------- settings


def resolve(tmp_path: Path, **env: str) -> settings.VmSettings:
    return settings.resolve(env=env, project_dir=tmp_path)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("QEMU_VM_IMAGE_CACHE", "~nosuchuser/images", "QEMU_VM_IMAGE_CACHE: cannot expand"),
        ("QEMU_VM_FIRMWARE", "~nosuchuser/code.fd", "QEMU_VM_FIRMWARE: cannot expand"),
        ("QEMU_VM_WORK_DIR", "a\x00b", "QEMU_VM_WORK_DIR: 'a\\x00b' is not a usable path"),
        ("QEMU_VM_BOOT_TIMEOUT", "nan", "QEMU_VM_BOOT_TIMEOUT: expected a duration such as"),
        ("QEMU_VM_BOOT_TIMEOUT", "inf", "expected a duration such as 300, 500ms, 90s"),
        ("QEMU_VM_BOOT_TIMEOUT", "-inf", "expected a duration such as"),
        ("QEMU_VM_BOOT_TIMEOUT", "1e400", "expected a duration such as"),
        ("QEMU_VM_BOOT_TIMEOUT", "1_0", "expected a duration such as"),
        ("QEMU_VM_BOOT_TIMEOUT", "٣", "expected a duration such as"),
        ("QEMU_VM_BOOT_TIMEOUT", "9" * 400, "is over the limit of 7 days"),
        ("QEMU_VM_BOOT_TIMEOUT", "0", "QEMU_VM_BOOT_TIMEOUT: must be more than zero"),
        ("QEMU_VM_BOOT_TIMEOUT", "8d", "'8d' is over the limit of 7 days"),
        ("QEMU_VM_CPUS", "٣", "QEMU_VM_CPUS: '٣' is not a valid int"),
        ("QEMU_VM_CPUS", "1_0", "'1_0' is not a valid int"),
        ("QEMU_VM_MEM_MB", "9" * 400, "is not a valid int"),
        ("QEMU_VM_NAME", "²", "QEMU_VM_NAME: '²' may hold only"),
        ("QEMU_VM_NAME", "a٠", "QEMU_VM_NAME: 'a٠' may hold only"),
        ("QEMU_VM_NAME", "a" * 300, "63 characters at most"),
        ("QEMU_VM_NAME", "a" * 64, "63 characters at most"),
        ("QEMU_VM_NAME", "-x", "may hold only"),
        ("QEMU_VM_NAME", ".x", "may hold only"),
        ("QEMU_VM_NAME", "a/b", "may hold only"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tmp_path, var, value, message) -> None:
    with pytest.raises(UsageError) as e:
        resolve(tmp_path, **{var: value})
    assert message in str(e.value)
    assert e.value.exit_code == EXIT_USAGE


def test_good_edge_settings_still_pass(tmp_path: Path) -> None:
    assert resolve(tmp_path, QEMU_VM_NAME="a" * 63).name == "a" * 63
    assert resolve(tmp_path, QEMU_VM_NAME="dev-1.x_y").name == "dev-1.x_y"
    assert resolve(tmp_path, QEMU_VM_BOOT_TIMEOUT="2.5m").boot_timeout == 150.0
    assert resolve(tmp_path, QEMU_VM_BOOT_TIMEOUT=" 30 ").boot_timeout == 30.0
    assert resolve(tmp_path, QEMU_VM_CPUS="2").cpus == 2
    config = settings.resolve(config={"boot_timeout": 45, "cpus": 3}, env={}, project_dir=tmp_path)
    assert (config.boot_timeout, config.cpus) == (45.0, 3)
    with pytest.raises(UsageError, match="not a valid int"):
        settings.resolve(config={"cpus": True}, env={}, project_dir=tmp_path)
    with pytest.raises(UsageError, match="not a finite number"):
        settings.resolve(config={"boot_timeout": float("nan")}, env={}, project_dir=tmp_path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QEMU_VM_IMAGE_CACHE": "~nosuchuser/x"}, "QEMU_VM_IMAGE_CACHE: cannot expand"),
        ({"QEMU_VM_FIRMWARE": "~nosuchuser/x.fd"}, "QEMU_VM_FIRMWARE: cannot expand"),
        ({"QEMU_VM_BOOT_TIMEOUT": "nan"}, "QEMU_VM_BOOT_TIMEOUT: expected a duration"),
        ({"QEMU_VM_NAME": "²"}, "QEMU_VM_NAME: '²' may hold only"),
    ],
)
def test_bad_settings_through_the_command(project: Path, env, message) -> None:
    assert_usage_error(patchbay_vm(project, "status", env=env), message)


def test_a_command_line_invoke_cannot_parse_is_exit_2(project: Path) -> None:
    assert_usage_error(patchbay_vm(project, "status", "--bogus"), "No idea what '--bogus' is")
    out = patchbay_vm(project, "test", "--jobs")
    assert_usage_error(out, "--jobs: expected a positive number, got ''")
