"""QEMU_VM_FS=none, as on QEMU for Windows (no 9p, no vhost-user): a VM of its own with
no shared folders; sim.run and test.run copy in over the kept SSH connection (SFTP) and
bring results back into the host work dir."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from vmfixtures import LONG_SIM, TIMINGS, VmEnv, make_project, vm_env

pytestmark = pytest.mark.vm

NAME = "fsnone"
GNU = "x86_64-unknown-linux-gnu"  # the musl target cannot be installed on this machine
COPIED_IN = re.compile(r"copied to the guest: (\d+) file\(s\), ([\d.]+) MB in ([\d.]+) s")
COPIED_OUT = re.compile(r"copied from the guest: (\d+) file\(s\), ([\d.]+) MB in ([\d.]+) s")

FAILING_SIM = """
[sim]
name = "fails-late"
topology = "home-to-dc"

[[step]]
action = "run"
id = "ok"
device = "client"
cmd = ["true"]

[[step]]
action = "run"
id = "bad"
device = "client"
cmd = ["sh", "-c", "exit 7"]
"""


@pytest.fixture(scope="module")
def fsnone(tmp_path_factory: pytest.TempPathFactory):
    project = make_project(tmp_path_factory.mktemp("fsnone"), crate=True)
    env = VmEnv(
        project,
        vm_env(project, name=NAME, QEMU_VM_FS="none"),  # its SSH port: a free one
    )
    started = time.monotonic()
    env.cold_up = env.invoke("vm.up")
    TIMINGS["fs none: cold vm.up (s)"] = round(time.monotonic() - started, 1)
    try:
        assert env.cold_up.returncode == 0, env.cold_up.stdout + env.cold_up.stderr
        yield env
    finally:
        env.invoke("vm.down", timeout=180)


def _copied(pattern: re.Pattern, text: str) -> tuple[int, float, float]:
    m = pattern.search(text)
    assert m, text
    return int(m[1]), float(m[2]), float(m[3])


def test_boots_without_shares(fsnone: VmEnv) -> None:
    out = fsnone.cold_up.stdout + fsnone.cold_up.stderr
    assert out.count("files are copied to and from the guest, not shared") == 1
    record = json.loads((fsnone.state_dir / "runtime.json").read_text())
    assert f", none, ssh port {record['ssh_port']}" in out
    assert record["fs_mode"] == "none"
    argv = " ".join(record["qemu_argv"])
    for shared in ("-virtfs", "vhost-user-fs", "memory-backend-memfd", "virtiofs"):
        assert shared not in argv
    assert fsnone.status()["fs_mode"] == "none"
    text = fsnone.invoke("vm.status").stdout
    assert "fs mode:   none" in text and "not shared" in text
    check = fsnone.invoke(
        "vm.ssh", "--", "sh", "-c",
        "for d in /app /target /work; do mountpoint -q $d && echo mounted $d;"
        " stat -c '%n %U' $d; done; grep -c x-patchbay-vm /etc/fstab || true",
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "mounted" not in check.stdout
    for folder in ("/app", "/target", "/work"):
        assert f"{folder} dev" in check.stdout
    assert check.stdout.strip().endswith("0")


def test_warm_up_needs_no_mounts(fsnone: VmEnv) -> None:
    started = time.monotonic()
    out = fsnone.invoke("vm.up")
    TIMINGS["fs none: warm vm.up (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stderr
    assert "is running" in out.stdout
    assert "not shared" not in out.stderr  # said once, at boot


def test_sim_run_copies_in_and_results_come_home(fsnone: VmEnv) -> None:
    started = time.monotonic()
    out = fsnone.invoke(
        "sim.run", "--file", "sims/iperf-baseline.toml", "--patchbay-version", "builtin"
    )
    TIMINGS["fs none: sim.run iperf-baseline builtin, first (s)"] = round(
        time.monotonic() - started, 1
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The runner, the sim and its topology file.
    files, mb, secs = _copied(COPIED_IN, out.stderr)
    assert files == 3, out.stderr
    TIMINGS["fs none: first push files/MB/s"] = f"{files}/{mb}/{secs}"
    files, mb, secs = _copied(COPIED_OUT, out.stderr)
    assert files >= 5, out.stderr
    TIMINGS["fs none: pull files/MB/s"] = f"{files}/{mb}/{secs}"
    latest = fsnone.work_dir / "latest"
    assert latest.is_symlink() and latest.resolve().is_dir()
    sim = json.loads((latest / "iperf-baseline" / "sim.json").read_text())
    assert sim["status"] == "ok"
    (step,) = json.loads((latest / "iperf-baseline" / "results.json").read_text())["steps"]
    assert int(step["down_bytes"]) > 0
    # The summary, read from the host work dir as with shares.
    assert "iperf-baseline  download" in out.stdout

    # A second run sends nothing (nothing changed) and brings a new run folder home.
    first = latest.resolve().name
    time.sleep(1.1)  # run folders are named by the second
    started = time.monotonic()
    again = fsnone.invoke(
        "sim.run", "--file", "sims/iperf-baseline.toml", "--patchbay-version", "builtin"
    )
    TIMINGS["fs none: sim.run iperf-baseline builtin, again (s)"] = round(
        time.monotonic() - started, 1
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert _copied(COPIED_IN, again.stderr)[0] == 0, again.stderr
    assert "3 unchanged" in again.stderr
    assert latest.resolve().name != first
    assert (fsnone.work_dir / first / "iperf-baseline" / "sim.json").is_file()

    # An edited sim: only it goes again.
    sim_file = fsnone.project / "sims" / "iperf-baseline.toml"
    sim_file.write_text(sim_file.read_text() + "\n# edited\n")
    third = fsnone.invoke(
        "sim.run", "--file", "sims/iperf-baseline.toml", "--patchbay-version", "builtin"
    )
    assert third.returncode == 0, third.stdout + third.stderr
    assert _copied(COPIED_IN, third.stderr)[0] == 1, third.stderr


def test_failed_sim_results_still_come_home(fsnone: VmEnv) -> None:
    (fsnone.project / "sims" / "fails-late.toml").write_text(FAILING_SIM)
    out = fsnone.invoke(
        "sim.run", "--file", "sims/fails-late.toml", "--patchbay-version", "builtin"
    )
    assert out.returncode != 0, out.stdout + out.stderr
    assert _copied(COPIED_OUT, out.stderr)[0] > 0, out.stderr
    sim = json.loads((fsnone.work_dir / "latest" / "fails-late" / "sim.json").read_text())
    assert sim["status"] != "ok"


def test_test_run_copies_the_binaries(fsnone: VmEnv) -> None:
    started = time.monotonic()
    out = fsnone.invoke("test.run", "--target", GNU, "--no-fail-fast")
    TIMINGS["fs none: test.run build+run (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    files, mb, secs = _copied(COPIED_IN, out.stderr)
    assert files >= 2, out.stderr  # the lib's unit tests and tests/net.rs
    TIMINGS["fs none: test binaries pushed files/MB/s"] = f"{files}/{mb}/{secs}"
    assert "PASS testcrate::net (test)" in out.stdout
    assert "test netns_veth ... ok" in out.stdout
    assert re.search(r"^\d+ passed, 0 failed$", out.stdout, re.M)
    listing = fsnone.invoke("vm.ssh", "--", "stat", "-c", "%a", "/work/binaries/tests")
    assert listing.stdout.strip() == "777"
    again = fsnone.invoke("test.run", "--target", GNU, "--no-fail-fast")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _copied(COPIED_IN, again.stderr)[0] == 0, again.stderr


def test_ctrl_c_still_brings_the_results_home(fsnone: VmEnv) -> None:
    (fsnone.project / "sims" / "long.toml").write_text(LONG_SIM)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "sim.run", "--patchbay-version", "builtin",
         "--file", "sims/long.toml"],
        cwd=fsnone.project, env=fsnone.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:  # the runner streams its steps
            seen.append(line)
            if "step 0 sleeper spawn a ok" in line or time.monotonic() > deadline:
                break
        assert any("sleeper spawn a ok" in line for line in seen), seen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "cleaned up in the guest" in err
    assert _copied(COPIED_OUT, err)[0] > 0, err
    run = fsnone.work_dir / "latest"
    assert json.loads((run / "progress.json").read_text())["interrupted"] is True
    assert (run / "long" / "events.jsonl").is_file()


def test_down_and_up_resume_with_the_copied_files_in_place(fsnone: VmEnv) -> None:
    # No shares: nothing to unmount, so a guest without them is saved too, and the
    # copies it holds are still there after the resume (nothing is sent again).
    down = fsnone.invoke("vm.down")
    assert down.returncode == 0 and "saved (" in down.stdout, down.stdout + down.stderr
    started = time.monotonic()
    up = fsnone.invoke("vm.up")
    TIMINGS["fs none: cold vm.up resuming (s)"] = round(time.monotonic() - started, 1)
    assert up.returncode == 0 and f"VM {NAME} resumed after" in up.stderr, up.stderr
    out = fsnone.invoke(
        "sim.run", "--file", "sims/iperf-baseline.toml", "--patchbay-version", "builtin"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert _copied(COPIED_IN, out.stderr)[0] == 0, out.stderr
    assert _copied(COPIED_OUT, out.stderr)[0] >= 5, out.stderr
