"""`invoke sim.check` and `patchbay-vm check`: read sims on the host, print their plans,
exit 2 with one `error:` line on the first broken sim. No VM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from patchbay_vm_tasks import cli

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable

GOOD = """[sim]
name = "good"

[[router]]
name = "dc"

[device.server.eth0]
gateway = "dc"

[device.client.eth0]
gateway = "dc"
impair  = "mobile"

[[step]]
action = "run"
device = "client"
cmd    = ["ping", "-c", "1", "$NETSIM_IP_server"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "sims").mkdir(parents=True)
    (root / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\nns = namespace()\n"
    )
    return root


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_VM_", "INVOKE_"))}
    return subprocess.run(
        [PYTHON, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )


def test_corpus_passes_and_prints_plans(project: Path, corpus_dir: Path) -> None:
    out = run(
        project,
        "-m",
        "invoke",
        "sim.check",
        "--file",
        str(corpus_dir / "sims"),
        "--file",
        str(corpus_dir / "ui-fixtures"),
    )
    assert out.returncode == 0, out.stderr
    for name in ("iperf-1to1-public-baseline", "iroh-1to1-nat-switch", "ping-e2e", "iperf-e2e"):
        assert f"sim {name}  (" in out.stdout
    assert out.stdout.count("\nsteps (") == 8
    assert "steps (21):" in out.stdout and "  fetcher-9  default_via=eth0" in out.stdout
    assert "8 sim(s) read without error" in out.stderr


def test_broken_sim_exits_2_with_one_error_line(project: Path) -> None:
    (project / "sims" / "a-good.toml").write_text(GOOD)
    (project / "sims" / "b-bad.toml").write_text(
        GOOD.replace('gateway = "dc"\nimpair', 'gatway = "dc"\nimpair')
    )
    out = run(project, "-m", "invoke", "sim.check", "--file", "sims")
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert errors == [
        "error: sims/b-bad.toml: device.client.eth0.gatway: unknown key 'gatway' in an "
        "interface; did you mean 'gateway'?"
    ]
    assert "sim good  (sims/a-good.toml)" in out.stdout  # the good one was read first
    assert "impair=mobile-4g (25ms ±8ms loss 0.5%)" in out.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('device = "client"', 'device = "dc"'), "step[0].device: 'dc' is a router"),
        ('[sim]\nname = "x\n', "sims/s.toml:2:"),
        (GOOD.replace('name = "dc"', 'name = "dc"\nip_support = "v6-only"'), "not supported"),
    ],
    ids=["router-target", "toml", "v6-only"],
)
def test_broken_sims_name_file_and_key(project: Path, text: str, message: str) -> None:
    (project / "sims" / "s.toml").write_text(text)
    out = run(project, "-m", "invoke", "sim.check", "--file", "sims/s.toml")
    assert out.returncode == 2
    assert out.stderr.startswith("error: sims/s.toml") and message in out.stderr


def test_missing_sim_and_no_sim(project: Path) -> None:
    out = run(project, "-m", "invoke", "sim.check", "--file", "sims/nope.toml")
    assert out.returncode == 2 and "sims/nope.toml does not exist" in out.stderr
    out = run(project, "-m", "invoke", "sim.check")
    assert out.returncode == 2 and "give at least one sim" in out.stderr


def test_patchbay_vm_check(project: Path, corpus_dir: Path) -> None:
    (project / "sims" / "good.toml").write_text(GOOD)
    out = run(
        project,
        "-m",
        "patchbay_vm_tasks",
        "check",
        "sims/good.toml",
        str(corpus_dir / "sims" / "iroh-1to1-nat.toml"),
    )
    assert out.returncode == 0, out.stderr
    assert "sim good  (sims/good.toml)" in out.stdout
    assert "  0  gen-certs  id=relay-cert @relay" in out.stdout
    bad = run(project, "-m", "patchbay_vm_tasks", "check", "sims/nope.toml")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_translate_check() -> None:
    assert cli.translate(["check", "a.toml", "sims"]) == (
        ["sim.check", "--file", "a.toml", "--file", "sims"],
        None,
    )
    assert cli.translate(["check", "--help"]) == (["--help", "sim.check"], None)
    assert "check SIM..." in cli.USAGE
