"""sim.run against the shared guest, with a stand-in runner that checks the contract
from the inside and does real namespace + iperf3 work as root."""

from __future__ import annotations

import io
import json
import tarfile
import time

import pytest
from vmfixtures import REPO, TIMINGS, VmEnv

pytestmark = pytest.mark.vm

RUNNER = REPO / "tests" / "fixtures" / "contract-runner.sh"
ASSET = "patchbay-x86_64-unknown-linux-musl.tar.gz"


def _sims(vm: VmEnv) -> None:
    d = vm.project / "sims" / "contract"
    d.mkdir(parents=True, exist_ok=True)
    (d / "one.toml").write_text('[sim]\nname = "one"\n')
    (d / "two.toml").write_text(
        '[sim]\nname = "two"\n\n[[binary]]\nname = "helper"\npath = "tools/helper"\n'
    )
    tools = vm.project / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "helper").write_text("#!/bin/sh\necho helper\n")


def test_sim_run_with_a_path_runner(vm: VmEnv) -> None:
    _sims(vm)
    started = time.monotonic()
    out = vm.invoke(
        "sim.run",
        "--file", "sims/contract",
        "--binary", "helper:path:tools/helper",
        "--patchbay-version", f"path:{RUNNER}",
        "--verbose",
        RUST_LOG="debug",
    )  # fmt: skip
    TIMINGS["sim.run, warm VM, whole task (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        "contract ok: sims=[ /app/sims/contract/one.toml /app/sims/contract/two.toml ] "
        "binaries=[ helper:path:/work/binaries/helper ] verbose=1 rust_log=debug"
    ) in out.stdout
    # The host reads what the runner wrote in /work, and the summary shows it.
    results = json.loads((vm.work_dir / "latest" / "contract" / "results.json").read_text())
    assert results["steps"][0]["down_bytes"] > 1_000_000
    assert "contract" in out.stdout and "iperf" in out.stdout
    assert f"results in {vm.work_dir}" in out.stderr
    assert (vm.work_dir / "binaries" / "helper").stat().st_mode & 0o111
    assert (vm.work_dir / ".patchbay-bin" / "patchbay").read_bytes() == RUNNER.read_bytes()
    # How much the task adds to the runner's own time, for the closing note.
    runner_took = float(out.stderr.split("after ")[-1].split(" s;")[0])
    TIMINGS["sim.run overhead beyond the runner (s)"] = round(
        TIMINGS["sim.run, warm VM, whole task (s)"] - runner_took, 1
    )


def test_sim_run_passes_the_runner_exit_code(vm: VmEnv) -> None:
    sim = vm.project / "sims" / "fails.toml"
    sim.write_text('# contract-runner: exit 3\n[sim]\nname = "fails"\n')
    out = vm.invoke("sim.run", "--file", "sims/fails.toml", "--patchbay-version", f"path:{RUNNER}")
    assert out.returncode == 3, out.stderr
    assert "exiting 3" in out.stderr


def test_sample_sim_through_the_rust_spelling(vm: VmEnv) -> None:
    out = vm.cli("run", "sims/iperf-baseline.toml", "--patchbay-version", f"path:{RUNNER}")
    assert out.returncode == 0, out.stderr
    assert "/app/sims/iperf-baseline.toml" in out.stdout


def _release(runner: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("patchbay-x86_64-unknown-linux-musl/patchbay")
        info.size, info.mode = len(runner), 0o755
        tf.addfile(info, io.BytesIO(runner))
    return buf.getvalue()


def test_release_download_latest_and_pinned(vm: VmEnv, http_server) -> None:
    # A local server stands in for GitHub releases, which this machine cannot reach.
    base, routes = http_server
    tarball = _release(RUNNER.read_bytes())
    routes["/r/latest"] = (302, {"Location": "/r/tag/v0.1.0"}, b"")
    routes["/r/tag/v0.1.0"] = b"release page"
    routes[f"/r/download/v0.1.0/{ASSET}"] = tarball
    routes[f"/r/download/v0.2.0/{ASSET}"] = tarball
    (vm.project / "sims" / "one.toml").write_text('[sim]\nname = "one"\n')
    for version, tag in (("latest", "v0.1.0"), ("0.2.0", "v0.2.0")):
        out = vm.invoke(
            "sim.run", "--file", "sims/one.toml", "--patchbay-version", version,
            PATCHBAY_RELEASE_URL=f"{base}/r",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "contract ok" in out.stdout
        assert f"/r/download/{tag}/{ASSET}" in routes.requests
        assert (vm.work_dir / ".patchbay-cache" / tag / "patchbay").exists()


def test_fetched_binary_override(vm: VmEnv, http_server) -> None:
    # fetch mode: a .tar.gz from a URL (a local server stands in), first file extracted.
    base, routes = http_server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"#!/bin/sh\necho fetched helper\n"
        info = tarfile.TarInfo("pkg/helper")
        info.size, info.mode = len(data), 0o755
        tf.addfile(info, io.BytesIO(data))
    routes["/dl/helper.tar.gz"] = buf.getvalue()
    (vm.project / "sims" / "one.toml").write_text('[sim]\nname = "one"\n')
    out = vm.invoke(
        "sim.run", "--file", "sims/one.toml",
        "--binary", f"helper:fetch:{base}/dl/helper.tar.gz",
        "--patchbay-version", f"path:{RUNNER}",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "binaries=[ helper:path:/work/binaries/helper ]" in out.stdout
    staged = vm.work_dir / "binaries" / "helper"
    assert staged.read_bytes() == data and staged.stat().st_mode & 0o111
    guest = vm.invoke("vm.ssh", "--", "/work/binaries/helper")
    assert guest.stdout.strip() == "fetched helper"
