"""The vm.* tasks that need no booted VM, through the real `invoke` command line in a
scratch project: config registered with Invoke, the project dir from a subfolder,
status of a stopped VM, list/destroy, ssh-config, bad images refused at once; and the
pure parts of vm.cp, the guest proxy, test.run --timeout."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import invoke
import pytest

from patchbay_vm_tasks import cli, settings
from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.tasks import namespace
from patchbay_vm_tasks.vm import guest, guestcopy

# The module (the package's `test` attribute is the collection of the same name).
test_tasks = importlib.import_module("patchbay_vm_tasks.tasks.test")

REPO = Path(__file__).resolve().parents[1]


def project(tmp_path: Path, config: str | None = None) -> Path:
    root = tmp_path / "proj"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(REPO / "tasks.py", root / "tasks.py")
    if config:
        (root / "invoke.yaml").write_text(config)
    return root


def run(cwd: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_VM_", "INVOKE_"))}
    # This checkout's code, however the package is installed in the venv.
    path = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=cwd,
        env={**clean, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --- Invoke conventions -----------------------------------------------------------


def test_defaults_are_registered_with_invoke() -> None:
    assert namespace().configuration()["vm"] == settings.config_defaults()
    from patchbay_vm_tasks.tasks import vm

    # A tasks.py that takes only one collection gets them too.
    assert vm.configuration()["vm"]["mem_mb"] == 4096


def test_registered_defaults_do_not_make_the_port_explicit(tmp_path) -> None:
    config = settings.config_defaults()
    config.pop("project_dir")
    s = settings.resolve(config=config, env={}, project_dir=tmp_path)
    assert s.ssh_port == 2222 and not s.ssh_port_explicit
    config["ssh_port"] = 2400
    assert settings.resolve(config=config, env={}, project_dir=tmp_path).ssh_port_explicit


def test_status_from_a_subfolder_uses_the_project_and_its_config(tmp_path) -> None:
    root = project(tmp_path, "vm:\n  name: cfgvm\n  ssh_port: 2400\n  mem_mb: 1024\n")
    out = run(root / "sub" / "deeper", "vm.status", "--json")
    assert out.returncode == 3, out.stderr  # not running
    info = json.loads(out.stdout)
    assert info["running"] is False
    assert info["state_dir"] == str(root.resolve() / ".qemu-vm" / "cfgvm")
    asked = info["settings"]
    assert asked["name"] == "cfgvm" and asked["mem_mb"] == 1024 and asked["cpus"] == 4
    assert asked["ssh_port"] == 2400 and asked["ssh_port_explicit"] is True
    assert asked["arch"] == settings.host_arch()
    assert asked["image_url"] == settings.default_image_url(settings.host_arch())
    assert info["mounts"][2]["host"] == str(root.resolve() / ".patchbay-work")
    # The environment beats invoke.yaml; Invoke's own INVOKE_VM_* works as config.
    env_out = run(root / "sub", "vm.status", "--json", QEMU_VM_MEM_MB="2048", INVOKE_VM_CPUS="2")
    asked = json.loads(env_out.stdout)["settings"]
    assert (asked["mem_mb"], asked["cpus"]) == (2048, 2)
    text = run(root / "sub", "vm.status")
    assert "would use: 4 CPUs" in text.stdout and "ssh port 2400" in text.stdout
    assert ", 1024 MB, " in text.stdout


def test_state_lands_in_the_project_dir_from_a_subfolder(tmp_path) -> None:
    root = project(tmp_path)
    out = run(root / "sub", "vm.down", QEMU_VM_NAME="subvm")
    assert out.returncode == 0, out.stderr
    assert "VM subvm is not running" in out.stdout
    assert (root / ".qemu-vm" / "subvm").is_dir()
    assert not (root / "sub" / ".qemu-vm").exists()


def test_project_dir_setting_wins(tmp_path) -> None:
    root = project(tmp_path, f"vm:\n  project_dir: {tmp_path / 'elsewhere'}\n")
    info = json.loads(run(root, "vm.status", "--json").stdout)
    assert info["state_dir"] == str(tmp_path / "elsewhere" / ".qemu-vm" / "patchbay-vm")


def test_without_a_tasks_file_the_project_is_the_current_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = invoke.Context()
    assert settings.project_dir_of(c) == Path.cwd()


# --- bad images are refused before anything boots --------------------------------


def processes_naming(path: Path) -> list[str]:
    """Command lines of the running processes that hold `path` (a VM's state dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmd:
            found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_up_with_a_file_that_is_not_a_disk_image_exits_2_before_anything_boots(tmp_path) -> None:
    root = project(tmp_path)
    out = run(root, "vm.up", QEMU_VM_NAME="badimg", QEMU_VM_IMAGE_URL="/etc/hostname")
    assert out.returncode == 2, out.stderr
    assert "/etc/hostname is not a usable disk image" in out.stderr
    assert "no partition table and no filesystem" in out.stderr
    # Refused before anything of a VM was made (run()'s timeout guards against a hang).
    state = root / ".qemu-vm" / "badimg"
    made = ("qemu.pid", "disk.qcow2", "seed.iso", "serial.log", "runtime.json")
    assert [name for name in made if (state / name).exists()] == []
    assert processes_naming(state) == []


# --- list, destroy, ssh-config with a stand-in for a running QEMU ------------------


@pytest.fixture
def fake_running_vm(tmp_path):
    """A process whose command line names the state dir (all `running_pid` checks),
    with the runtime record a booted VM leaves."""
    root = project(tmp_path)
    state = root / ".qemu-vm" / "runvm"
    state.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(state)],
        stdin=subprocess.DEVNULL,
    )
    (state / "qemu.pid").write_text(f"{proc.pid}\n")
    (state / "runtime.json").write_text(
        json.dumps({"name": "runvm", "pid": proc.pid, "ssh_port": 2345, "ssh_user": "dev"})
    )
    (state / "known_hosts").write_text("[127.0.0.1]:2345 ssh-ed25519 AAAA\n")
    (state / "id_ed25519").write_text("key")
    stopped = root / ".qemu-vm" / "oldvm"
    stopped.mkdir()
    (stopped / "ssh-port").write_text("2299\n")
    (stopped / "disk.qcow2").write_bytes(b"x" * 1000)
    try:
        yield root, proc
    finally:
        proc.kill()
        proc.wait()


def test_list_shows_each_vm_with_its_state(fake_running_vm) -> None:
    root, proc = fake_running_vm
    vms = json.loads(run(root / "sub", "vm.list", "--json").stdout)
    assert [(v["name"], v["state"], v["ssh_port"]) for v in vms] == [
        ("oldvm", "stopped", None),
        ("runvm", "running", 2345),
    ]
    assert vms[0]["last_ssh_port"] == 2299 and vms[1]["pid"] == proc.pid
    table = run(root, "vm.list").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "PORT", "STATE", "DIR"]
    assert table[2].split()[:3] == ["runvm", "running", "2345"]


def test_list_without_vms(tmp_path) -> None:
    out = run(project(tmp_path), "vm.list")
    assert out.returncode == 0 and "no VMs in this project" in out.stdout


def test_destroy_stops_a_running_vm_and_removes_its_state(fake_running_vm) -> None:
    root, proc = fake_running_vm
    out = run(root, "vm.destroy", "--name", "runvm")
    assert out.returncode == 0, out.stderr
    assert "VM runvm: stopped it (killed)" in out.stdout
    assert f"removed {root.resolve() / '.qemu-vm' / 'runvm'}" in out.stdout
    assert proc.wait(timeout=10) is not None
    assert not (root / ".qemu-vm" / "runvm").exists()
    out = run(root, "vm.destroy", QEMU_VM_NAME="oldvm")
    assert "VM oldvm: removed" in out.stdout and "(2 files, 0.0 MB)" in out.stdout
    assert run(root, "vm.destroy", "--name", "oldvm").stdout.startswith("VM oldvm has no state dir")


def test_cleanup_stops_the_virtiofsd_helpers_a_killed_vm_left(tmp_path) -> None:
    """QEMU gone (SIGKILL), its virtiofsd helpers still running: `vm.cleanup` stops each
    helper that is ours, whether the runtime record or only its PID file names it, and
    leaves alone a process that merely took over a PID a stale file names."""
    root = project(tmp_path)
    state = root / ".qemu-vm" / "deadvm"
    state.mkdir(parents=True)
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]

    def helper(tag: str) -> subprocess.Popen:  # its command line names the state dir
        socket_path = state / f"virtiofs-{tag}.sock"
        socket_path.write_text("")
        return subprocess.Popen([*sleep, f"--socket-path={socket_path}"], stdin=subprocess.DEVNULL)

    helpers = [helper("work"), helper("app")]
    stranger = subprocess.Popen(sleep, stdin=subprocess.DEVNULL)
    (state / "qemu.pid").write_text("999999999\n")  # above any pid_max: a QEMU no more
    record = {"name": "deadvm", "pid": 999999999, "ssh_port": 2345, "helpers": [helpers[0].pid]}
    (state / "runtime.json").write_text(json.dumps(record))
    (state / "virtiofsd-work.pid").write_text(f"{helpers[0].pid}\n")
    (state / "virtiofsd-app.pid").write_text(f"{helpers[1].pid}\n")
    (state / "virtiofsd-old.pid").write_text(f"{stranger.pid}\n")
    try:
        out = run(root, "vm.cleanup", QEMU_VM_NAME="deadvm")
        assert out.returncode == 0, out.stderr
        assert [h.wait(timeout=30) for h in helpers] == [-signal.SIGTERM] * 2
        assert stranger.poll() is None  # not ours: left running
        assert out.stdout.startswith("removed ") and "virtiofsd-app.pid" in out.stdout
        assert sorted(p.name for p in state.iterdir()) == [".lock"]
        again = run(root, "vm.cleanup", QEMU_VM_NAME="deadvm")
        assert "nothing stale" in again.stdout
    finally:
        for proc in (*helpers, stranger):
            proc.kill()
            proc.wait()


def test_ssh_config_of_a_running_vm_is_read_by_openssh(fake_running_vm, tmp_path) -> None:
    root, _proc = fake_running_vm
    out = run(root, "vm.ssh-config", QEMU_VM_NAME="runvm")
    assert out.returncode == 0, out.stderr
    state = root.resolve() / ".qemu-vm" / "runvm"
    assert out.stdout == (
        "Host runvm\n"
        "  HostName 127.0.0.1\n"
        "  Port 2345\n"
        "  User dev\n"
        f"  IdentityFile {state / 'id_ed25519'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {state / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n"
        "  LogLevel ERROR\n"
    )
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client to parse the block")
    config = tmp_path / "ssh_config"
    config.write_text(out.stdout)
    resolved = subprocess.run(
        ["ssh", "-G", "-F", str(config), "runvm"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for line in (
        "hostname 127.0.0.1",
        "port 2345",
        "user dev",
        "identitiesonly yes",
        "stricthostkeychecking true",
        f"userknownhostsfile {state / 'known_hosts'}",
    ):
        assert line in resolved


def test_ssh_config_quotes_paths_with_spaces() -> None:
    text = guestcopy.ssh_config_text(
        "v", 2222, "dev", Path("/my dir/id_ed25519"), Path("/my dir/known_hosts")
    )
    assert '  IdentityFile "/my dir/id_ed25519"\n' in text
    assert '  UserKnownHostsFile "/my dir/known_hosts"\n' in text


def test_ssh_config_and_cp_need_a_running_vm(tmp_path) -> None:
    root = project(tmp_path)
    out = run(root, "vm.ssh-config", QEMU_VM_NAME="nothere")
    assert out.returncode == 69 and "VM nothere is not running" in out.stderr
    (root / "f.txt").write_text("x")
    out = run(root, "vm.cp", "f.txt", "guest:/tmp/", QEMU_VM_NAME="nothere")
    assert out.returncode == 69 and "VM nothere is not running" in out.stderr


# --- vm.cp: which way, what is refused --------------------------------------------


def test_plan_copy_both_ways(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("a")
    put = guestcopy.plan_copy("a.txt", "guest:/tmp/")
    assert (put.direction, put.local, put.remote) == (
        guestcopy.Direction.TO_GUEST,
        Path("a.txt"),
        "/tmp/",
    )
    assert guestcopy.plan_copy("a.txt", "guest:~/x").remote == "x"  # SFTP starts at home
    assert guestcopy.plan_copy("a.txt", "guest:").remote == ""
    get = guestcopy.plan_copy("guest:/etc/os-release", "out/")
    assert (get.direction, get.remote) == (guestcopy.Direction.FROM_GUEST, "/etc/os-release")


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("a.txt", "b.txt", "exactly one of SRC and DST must be a guest path"),
        ("guest:/a", "guest:/b", "exactly one of SRC and DST must be a guest path"),
        ("missing.txt", "guest:/tmp/", "no file at missing.txt"),
        ("folder", "guest:/tmp/", "folder is a directory; vm.cp copies single files"),
        ("guest:", "here", "give the guest file to copy"),
    ],
)
def test_plan_copy_refusals(tmp_path, monkeypatch, src, dst, message) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("a")
    Path("folder").mkdir()
    with pytest.raises(UsageError) as e:
        guestcopy.plan_copy(src, dst)
    assert message in str(e.value) and e.value.exit_code == 2


# --- the host's proxy in the guest ------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {}),
        (
            {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": ".corp"},
            {"https_proxy": "http://proxy.corp:3128", "no_proxy": ".corp"},
        ),
        # The host's loopback is 10.0.2.2 from the guest (QEMU user network).
        ({"http_proxy": "http://127.0.0.1:3128"}, {"http_proxy": "http://10.0.2.2:3128"}),
        ({"http_proxy": "localhost:8080"}, {"http_proxy": "http://10.0.2.2:8080"}),
        ({"https_proxy": "http://u:p@[::1]:3128"}, {"https_proxy": "http://u:p@10.0.2.2:3128"}),
        ({"http_proxy": "x", "HTTP_PROXY": "y"}, {"http_proxy": "http://x"}),  # lower first
    ],
)
def test_guest_proxy_env(environ, expected) -> None:
    assert guest.guest_proxy_env(environ) == expected


def test_proxy_script_sets_apt_and_the_environment(tmp_path) -> None:
    script = guest.proxy_script({"http_proxy": "http://10.0.2.2:3128", "no_proxy": "a b"})
    assert "export http_proxy=http://10.0.2.2:3128 HTTP_PROXY=http://10.0.2.2:3128" in script
    assert "export no_proxy='a b' NO_PROXY='a b'" in script
    apt_conf = tmp_path / "apt.conf"
    shell = script.replace(guest.APT_PROXY_CONF, str(apt_conf)) + '\necho "$http_proxy"'
    out = subprocess.run(["sh", "-euc", shell], capture_output=True, text=True, check=True)
    assert out.stdout == "http://10.0.2.2:3128\n"
    assert apt_conf.read_text() == 'Acquire::http::Proxy "http://10.0.2.2:3128";\n'
    apt_conf.write_text("stale")
    nothing = guest.proxy_script({}).replace(guest.APT_PROXY_CONF, str(apt_conf))
    subprocess.run(["sh", "-euc", nothing + "\n" + nothing], check=True)
    assert not apt_conf.exists()


# --- test.run --timeout -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("300", ("300s", 300.0)),
        ("90s", ("90s", 90.0)),
        ("1.5m", ("90s", 90.0)),
        ("2h", ("7200s", 7200.0)),
        ("500ms", ("0.5s", 0.5)),
    ],
)
def test_parse_timeout(value, parsed) -> None:
    assert test_tasks.parse_timeout(value) == parsed


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--timeout: expected a duration"),
        ("0", "--timeout: must be more than zero"),
        ("-5", "--timeout: expected a duration"),
        ("5x", "--timeout: expected a duration"),
        ("1m30s", "--timeout: expected a duration"),
        ("9" * 400, "is over the limit of 7 days"),  # float() made it inf: once accepted
    ],
)
def test_parse_timeout_refuses(value, message) -> None:
    with pytest.raises(UsageError, match=message):
        test_tasks.parse_timeout(value)


def test_timeout_wrapper_kills_a_hung_binary_and_says_so() -> None:
    limit = test_tasks.parse_timeout("0.5")
    argv = test_tasks.with_timeout(["sleep", "30"], limit)
    assert argv == ["timeout", "--kill-after=5", "0.5s", "sleep", "30"]
    started = time.monotonic()
    # Locally, as it runs in the guest.
    result = guest.run_argv(invoke.Context(), argv, hide=True, in_stream=False)
    elapsed = time.monotonic() - started
    # Cut off by `timeout` (124: it sent SIGTERM), not run to its end (sleep exits 0).
    assert result.exited == 124
    assert test_tasks.timed_out(result.exited, elapsed, limit)
    quick = guest.run_argv(
        invoke.Context(),
        test_tasks.with_timeout(["sh", "-c", "exit 124"], limit),
        hide=True,
        in_stream=False,
    )
    assert not test_tasks.timed_out(quick.exited, 0.01, limit)  # exit 124 of its own
    assert test_tasks.with_timeout(["x"], None) == ["x"]


@pytest.mark.parametrize(
    ("argv", "invoke_argv", "remainder"),
    [
        (["ssh-config"], ["vm.ssh-config"], None),
        (["cp", "a.txt", "guest:/tmp/"], ["vm.cp", "a.txt", "guest:/tmp/"], None),
        (["list", "--json"], ["vm.list", "--json"], None),
        (["destroy", "--name", "old"], ["vm.destroy", "--name", "old"], None),
        (["up", "--refresh"], ["vm.up", "--refresh"], None),
        (
            ["test", "net", "--timeout", "5m", "--", "-q"],
            ["test.run", "--filter", "net", "--timeout", "5m"],
            ["-q"],
        ),
    ],
)
def test_patchbay_vm_commands(argv, invoke_argv, remainder) -> None:
    assert cli.translate(argv) == (invoke_argv, remainder)
