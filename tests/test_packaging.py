"""The package as users get it: a wheel built from this checkout in a clean venv, and a
vendored copy (tasks.py, patchbay_vm_tasks/, cloud-init/) with only the dependencies,
each driven from a consumer project in another folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from vmfixtures import REPO, hold_port, vm_env

README_TASKS = "from patchbay_vm_tasks.tasks import namespace\n\nns = namespace()\n"
CONSUMER_CONFIG = "vm:\n  name: consumer-vm\n  ssh_port: {port}\n  mem_mb: 1536\n"


@dataclass
class Consumer:
    project: Path
    bin: Path  # the venv's bin/

    def run(
        self, *argv: str, timeout: float = 120, cwd: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess:
        """argv[0] from the consumer's venv, run in the project (or `cwd`)."""
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=cwd or self.project,
            env={**_base_env(self.project), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _base_env(project: Path) -> dict[str, str]:
    # The test VM's settings, less those the consumer's invoke.yaml must decide.
    env = vm_env(project)
    for key in ("QEMU_VM_NAME", "QEMU_VM_MEM_MB", "QEMU_VM_SSH_PORT"):
        env.pop(key, None)
    return env


def _dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _make_venv(path: Path, *pip_args: str) -> Path:
    venv.create(path, with_pip=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", *pip_args]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    return path / "bin"


def _consumer(root: Path, port: int) -> Path:
    root.mkdir(parents=True)
    root.chmod(0o755)
    (root / "tasks.py").write_text(README_TASKS)
    (root / "invoke.yaml").write_text(CONSUMER_CONFIG.format(port=port))
    (root / "sub").mkdir()
    return root


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("patchbay_vm_tasks-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Consumer:
    root = tmp_path_factory.mktemp("installed")
    bin_dir = _make_venv(root / "venv", str(wheel))
    return Consumer(_consumer(root / "consumer", 2298), bin_dir)


@pytest.fixture(scope="module")
def vendored(tmp_path_factory: pytest.TempPathFactory) -> Consumer:
    root = tmp_path_factory.mktemp("vendored")
    bin_dir = _make_venv(root / "venv", *_dependencies())
    project = _consumer(root / "consumer", 2297)
    # What the README tells a vendoring user to copy.
    shutil.copy(REPO / "tasks.py", project / "tasks.py")
    shutil.copytree(
        REPO / "patchbay_vm_tasks",
        project / "patchbay_vm_tasks",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(REPO / "cloud-init", project / "cloud-init")
    return Consumer(project, bin_dir)


def test_wheel_carries_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "patchbay_vm_tasks").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sources, "no sources found"
    missing = sorted(sources - names)
    assert not missing, f"left out of the wheel: {missing}"
    for template in ("user-data", "meta-data", "network-config"):
        assert f"patchbay_vm_tasks/cloud-init/{template}.yaml" in names


def test_version_is_single_sourced(wheel: Path) -> None:
    ns: dict = {}
    exec((REPO / "patchbay_vm_tasks" / "__init__.py").read_text(), ns)
    assert f"patchbay_vm_tasks-{ns['__version__']}-" in wheel.name


@pytest.mark.parametrize("kind", ["installed", "vendored"])
def test_consumer_project_lists_tasks_and_honours_its_config(kind: str, request) -> None:
    consumer: Consumer = request.getfixturevalue(kind)
    port = 2298 if kind == "installed" else 2297
    listed = consumer.run("invoke", "--list")
    assert listed.returncode == 0, listed.stderr
    for name in ("vm.up", "vm.down", "vm.status", "sim.run", "test.run"):
        assert name in listed.stdout
    # From a subfolder too: Invoke finds tasks.py upwards; the state stays in the project.
    for cwd in (consumer.project, consumer.project / "sub"):
        status = consumer.run("invoke", "vm.status", "--json", cwd=cwd)
        assert status.returncode == 3, status.stderr  # not running
        info = json.loads(status.stdout)
        assert info["name"] == "consumer-vm"
        assert info["state_dir"] == str(consumer.project / ".qemu-vm" / "consumer-vm")
        assert info["settings"]["mem_mb"] == 1536 and info["settings"]["ssh_port"] == port


@pytest.mark.parametrize("kind", ["installed", "vendored"])
def test_patchbay_vm_command_works_from_any_folder(kind: str, request) -> None:
    consumer: Consumer = request.getfixturevalue(kind)
    if kind == "installed":
        out = consumer.run("patchbay-vm", "--help")
        assert out.returncode == 0, out.stderr
        assert "usage: patchbay-vm" in out.stdout
    out = consumer.run("python", "-m", "patchbay_vm_tasks", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: patchbay-vm" in out.stdout
    # The Rust spelling reads the project's invoke.yaml too (installed: from a subfolder;
    # a vendored package is importable from the project's top only).
    where = consumer.project / "sub" if kind == "installed" else consumer.project
    out = consumer.run("python", "-m", "patchbay_vm_tasks", "status", "--json", cwd=where)
    assert out.returncode == 3, out.stderr
    info = json.loads(out.stdout)
    assert info["name"] == "consumer-vm"
    assert info["state_dir"] == str(consumer.project / ".qemu-vm" / "consumer-vm")
    assert info["settings"]["mem_mb"] == 1536


@pytest.mark.vm
def test_installed_wheel_boots_and_comes_back_on_the_same_port(installed: Consumer) -> None:
    probe = hold_port(0)  # a port that is free now, whatever else this machine runs
    assert probe is not None
    port = probe.getsockname()[1]
    probe.close()
    env = {"QEMU_VM_SSH_PORT": str(port), "QEMU_VM_NAME": "consumer-boot"}
    try:
        up = installed.run("invoke", "vm.up", timeout=900, **env)
        assert up.returncode == 0, up.stderr
        out = installed.run("invoke", "vm.ssh", "--", "cat", "/etc/hostname", **env)
        assert out.returncode == 0, out.stderr
        down = installed.run("invoke", "vm.down", **env)
        assert down.returncode == 0, down.stderr
        # At once, with the explicit port: the last session's TIME_WAIT sockets must not
        # make the port look busy.
        again = installed.run("invoke", "vm.up", timeout=900, **env)
        assert again.returncode == 0, again.stderr
        info = json.loads(installed.run("invoke", "vm.status", "--json", **env).stdout)
        assert info["ssh_port"] == port
    finally:
        installed.run("invoke", "vm.down", **env)


@pytest.mark.parametrize("kind", ["installed", "vendored"])
def test_every_data_file_is_found_where_the_package_is(kind: str, request) -> None:
    # The package's data (packagedata.ALL), as the installed or vendored copy finds it,
    # run from another folder: a folder moved without its data fails here.
    consumer: Consumer = request.getfixturevalue(kind)
    code = (
        "from patchbay_vm_tasks import packagedata as d\n"
        "for rel in d.ALL:\n"
        "    p = d.path(rel)\n"
        "    assert p.exists() and (p.is_file() or any(p.iterdir())), rel\n"
        "print(d.path())\n"
    )
    # A vendored copy is importable from the project's folder (Invoke puts it on the path).
    cwd = consumer.project / "sub" if kind == "installed" else consumer.project
    out = consumer.run("python", "-c", code, cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert str(REPO) not in out.stdout  # its own copy, not this checkout


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("patchbay_vm_tasks-*.tar.gz")
    return found


def test_sdist_holds_what_its_tests_need(sdist: Path) -> None:
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "tests/conftest.py",
        "tests/vmfixtures.py",
        "tests/fixtures/fake-qemu",
        "tests/fixtures/testcrate/Cargo.toml",
        "sims/iperf-baseline.toml",
        "recipes/setup-debian.sh",
        "recipes/github-actions.yml",
        "docs/how-it-works.md",
        "CONTRIBUTING.md",
        "cloud-init/user-data.yaml",
        "tasks.py",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "patchbay_vm_tasks/py.typed",
    ):
        assert needed in names, needed
    assert not [n for n in names if "__pycache__" in n or n.startswith("benchmarks/results/")]


def test_wheel_says_what_it_is(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(meta_name).decode()
    fields = [line.split(": ", 1) for line in meta.split("\n\n", 1)[0].splitlines() if ": " in line]
    values: dict[str, list[str]] = {}
    for key, value in fields:
        values.setdefault(key, []).append(value)
    assert values["License-Expression"] == ["MIT OR Apache-2.0"]
    assert sorted(values["License-File"]) == ["LICENSE-APACHE", "LICENSE-MIT"]
    assert "Typing :: Typed" in values["Classifier"]
    assert "Operating System :: MacOS" in values["Classifier"]
    assert values["Keywords"] and values["Author"]
    requires = " ".join(values["Requires-Dist"])
    for dep in ("invoke", "fabric", "paramiko", "cryptography", "pycdlib", "rich"):
        assert dep in requires, dep
    assert "patchbay_vm_tasks/py.typed" in names
    assert {n.rsplit("/", 1)[-1] for n in names if "/licenses/" in n} >= {
        "LICENSE-MIT",
        "LICENSE-APACHE",
    }
