"""The VM that `vm`-marked tests share: booted once per session in a scratch project,
driven through the real command lines (`invoke ...`, `patchbay-vm ...`)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VM_NAME = "pbtest"
# A QEMU whose "KVM" stalls or dies, on any machine (its docstring).
FAKE_QEMU = REPO / "tests" / "fixtures" / "fake-qemu"
TIMINGS: dict[str, float] = {}

# A sim that runs for minutes (a process outliving its spawn, then a long wait): for
# Ctrl-C and timeout tests.
LONG_SIM = """
[sim]
name = "long"

[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"

[[step]]
action = "spawn"
id = "sleeper"
device = "a"
cmd = ["sleep", "300"]

[[step]]
action = "wait"
duration = "2m"
"""


@dataclass
class VmEnv:
    project: Path
    env: dict[str, str]
    cold_up: subprocess.CompletedProcess | None = None
    extra: dict = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.project / ".qemu-vm" / self.env["QEMU_VM_NAME"]

    @property
    def work_dir(self) -> Path:
        return self.project / ".patchbay-work"

    def invoke(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        """`invoke ARGS` in the project, as a user would type it."""
        return self._run([sys.executable, "-m", "invoke", *args], timeout, env)

    def cli(self, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
        """`patchbay-vm ARGS` in the project."""
        return self._run([sys.executable, "-m", "patchbay_vm_tasks", *args], timeout, env)

    def _run(self, argv: list[str], timeout: float, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            cwd=self.project,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def status(self) -> dict:
        out = self.invoke("vm.status", "--json")
        return json.loads(out.stdout)


def vm_env(project: Path, name: str = VM_NAME, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU_VM_")}
    env.update(
        QEMU_VM_NAME=name,
        QEMU_VM_CPUS="2",
        QEMU_VM_MEM_MB="2048",
        QEMU_VM_DISK_GB="8",
        # The official image cannot be downloaded here; build the guest from the mirror.
        QEMU_VM_IMAGE_URL="debian:trixie",
        # What a test needs, whatever this machine's accelerator: TCG runs everywhere,
        # and templates are bound to it. The shared VM's cold boot asks for "auto".
        QEMU_VM_ACCEL="tcg",
        NO_COLOR="1",
        COLUMNS="200",
    )
    env.update(overrides)
    return env


def make_project(root: Path, crate: bool = False) -> Path:
    """A scratch project: the repository's tasks.py and sample sims; with `crate`, also
    the fixture Cargo project at its top, so `test.run` has tests to build."""
    root.mkdir(parents=True, exist_ok=True)
    # pytest makes its folders 0700; a project dir is normally readable by others, and
    # the guest user (uid 1000) only sees what the host's permissions allow.
    root.chmod(0o755)
    shutil.copy(REPO / "tasks.py", root / "tasks.py")
    shutil.copytree(REPO / "sims", root / "sims", dirs_exist_ok=True)
    if crate:
        shutil.copytree(
            REPO / "tests" / "fixtures" / "testcrate",
            root,
            ignore=shutil.ignore_patterns("target"),
            dirs_exist_ok=True,
        )
    return root


@contextlib.contextmanager
def serving(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) answering with `handler`, in a thread,
    for the servers this machine cannot reach; its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def hold_port(port: int, reuse: bool = False) -> socket.socket | None:
    """A socket listening on 127.0.0.1:port (0: a free one), or None when it is taken.
    `reuse`: SO_REUSEADDR, as QEMU's listener and our probe have, so that TIME_WAIT
    sockets left by another session do not stop it (a listener still blocks them)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
        return s
    except OSError:
        s.close()
        return None


# The SSH port a VM asks for unless told otherwise (settings' default).
DEFAULT_SSH_PORT = 2222


@contextlib.contextmanager
def port_kept_busy(port: int = DEFAULT_SSH_PORT) -> Iterator[None]:
    """`port` on 127.0.0.1 is in use for the whole block, so a VM started meanwhile
    must fall back from it: held here when it is free; when another process holds it,
    it is busy already, and a thread takes it over the moment that process lets go."""
    held: list[socket.socket] = []
    stop = threading.Event()

    def take() -> bool:
        s = hold_port(port, reuse=True)
        if s is not None:
            held.append(s)
        return s is not None

    def take_when_let_go() -> None:
        while not stop.is_set() and not take():
            stop.wait(0.005)

    watcher = None
    if not take():
        watcher = threading.Thread(target=take_when_let_go, daemon=True)
        watcher.start()
    try:
        yield
    finally:
        stop.set()
        if watcher is not None:
            watcher.join()
        for s in held:
            s.close()


@pytest.fixture(scope="session")
def vm_session(tmp_path_factory: pytest.TempPathFactory):
    """Boot the shared VM once. The default SSH port is kept busy meanwhile, so the
    cold boot also shows the free-port fallback (SPEC 9.8)."""
    project = make_project(tmp_path_factory.mktemp("project"), crate=True)
    env = VmEnv(project, vm_env(project, QEMU_VM_ACCEL="auto"))  # the real choice, per machine
    with port_kept_busy(DEFAULT_SSH_PORT):
        started = time.monotonic()
        env.cold_up = env.invoke("vm.up")
        TIMINGS["cold vm.up (s)"] = round(time.monotonic() - started, 1)
    # The default port was in use all through the cold boot (by us, or by another
    # process and then us): the fallback was exercised either way.
    env.extra["port_was_held"] = True
    assert env.cold_up.returncode == 0, env.cold_up.stderr
    yield env
    env.invoke("vm.down", timeout=120)


@pytest.fixture
def vm(vm_session: VmEnv) -> VmEnv:
    """The shared VM, running (tests that stop it leave it to be booted again here)."""
    if not vm_session.status()["running"]:
        out = vm_session.invoke("vm.up")
        assert out.returncode == 0, out.stderr
    return vm_session


# The arm64 tree is built under qemu-user (minutes, on about one core) while the
# rest of the suite runs: started when the session has arm64 tests, awaited by them
# (at once when the image cache has it).
ARM64_MODULE = "test_vm_arm64.py"
ARM64_SUITE = "trixie"


@dataclass
class Arm64Build:
    cache: Path
    log: Path
    proc: subprocess.Popen
    started: float

    def wait(self) -> Path:
        """The build's folder in `cache`, once mmdebstrap is done."""
        code = self.proc.wait()
        log = self.log.read_text(errors="replace")
        assert code == 0, f"the arm64 debian:{ARM64_SUITE} build failed:\n{log[-3000:]}"
        from patchbay_vm_tasks.vm import images

        build = images._build_dir(ARM64_SUITE, "arm64", self.cache)
        if "built debian:" in log:  # else it was in the cache already
            record = json.loads((build / "build.json").read_text())
            TIMINGS.setdefault("arm64 build, beside the suite (s)", record["seconds"])
        return build


ARM64: dict[str, Arm64Build] = {}


def start_arm64_build() -> Arm64Build:
    """`images.build_debian_image` for arm64, in a process of its own, into the user's
    image cache, as the shared x86_64 VM's image: built once per recipe (a fresh
    machine builds it beside the suite), then reused."""
    # Imported here: the guest runs the host's netns tests with this plugin loaded,
    # and its python has not got the package's dependencies.
    from patchbay_vm_tasks import settings

    cache = settings.resolve(env=vm_env(Path.cwd()), project_dir=Path.cwd()).image_cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f".arm64-{ARM64_SUITE}-build.log"
    code = (
        "import sys, pathlib; from patchbay_vm_tasks.vm import images; "
        "images.build_debian_image(sys.argv[1], 'arm64', sys.argv[2], pathlib.Path(sys.argv[3]))"
    )
    mirror = "http://deb.debian.org/debian"  # the settings' default
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, ARM64_SUITE, mirror, str(cache)],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,  # so that an interrupted session stops all of it
        )  # fmt: skip
    return Arm64Build(cache, log, proc, time.monotonic())


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path.name == ARM64_MODULE for item in session.items):
        ARM64["build"] = start_arm64_build()


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = ARM64.pop("build", None)
    if build and build.proc.poll() is None:
        os.killpg(build.proc.pid, signal.SIGTERM)
        build.proc.wait()


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("VM timings (this machine)")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v}")


def pytest_collection_modifyitems(items: list) -> None:
    # Tests that stop or restart the shared VM run last, so the others share one boot;
    # the arm64 ones after them, giving their image's build the whole suite's time.
    items.sort(
        key=lambda item: (
            item.path.name == ARM64_MODULE,
            item.get_closest_marker("restarts_vm") is not None,
        )
    )
