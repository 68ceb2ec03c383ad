"""A sim file is read once per invocation on the host.

One `sim.run` reads its sims for four things: the `--file` check, the binaries they
declare (sim/binaries.py), the builtin runner's checks (inputs.refuse_broken) and, with no
shared folders, what to copy into the guest (sim/staging.py). The task reads the
expanded `--file` list once into `inputs.SimFiles` and hands that down; here the real
task body runs with the VM, SSH and the guest command faked, and every file the sims
read (the sims, a shared extends file, `[sim] binaries`, a topology) is parsed once.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke import Config, Context

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.sim import guestrun, inputs, runner, staging
from patchbay_vm_tasks.simcore import tomlfiles
from patchbay_vm_tasks.vm import lifecycle, sync

# The module (the package's `sim` is the task collection of the same name).
simtasks = importlib.import_module("patchbay_vm_tasks.tasks.sim")
MUSL = runner.musl_target_for(settings.host_arch())

FILES = {
    "sims/a.toml": """
[[extends]]
file = "base.toml"

[sim]
name = "a"
topology = "t"
binaries = "bins.toml"

[[step]]
device = "d"
cmd = ["${binary.tool}", "${binary.shared}", "${binary.over}"]
""",
    "sims/b.toml": """
[[extends]]
file = "base.toml"

[sim]
name = "b"

[[router]]
name = "r"

[device.d.eth0]
gateway = "r"

[[step]]
device = "d"
cmd = ["${binary.tool}"]
""",
    "sims/base.toml": '[[binary]]\nname = "tool"\npath = "target:examples/tool"\n',
    "sims/bins.toml": '[[binary]]\nname = "shared"\npath = "/usr/bin/true"\n',
    "sims/topos/t.toml": '[[router]]\nname = "r"\n\n[device.d.eth0]\ngateway = "r"\n',
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "p"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    built = root / "target" / MUSL / "release" / "examples" / "tool"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"tool")
    (root / "bin").mkdir()
    (root / "bin" / "over").write_bytes(b"over")
    for name in [n for n in os.environ if n.startswith("QEMU_VM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("QEMU_VM_TARGET_DIR", str(root / "target"))
    monkeypatch.chdir(root)
    return root


def test_one_sim_run_parses_each_file_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: Counter[str] = Counter()
    parse = tomlfiles._parse

    def counting(path: Path, shown: str) -> dict:
        parsed[Path(path).resolve().relative_to(project).as_posix()] += 1
        return parse(path, shown)

    monkeypatch.setattr(tomlfiles, "_parse", counting)
    # The machine and the guest, faked: no shared folders, so the sims are staged too.
    ran: list[list[str]] = []
    copied: list[str] = []
    vm = SimpleNamespace(conn=object(), record={}, close=lambda: None)
    monkeypatch.setattr(lifecycle, "up", lambda *a, **k: vm)
    monkeypatch.setattr(sync, "copies_files", lambda record: True)
    monkeypatch.setattr(simtasks, "_host_facts", lambda *a: {})
    monkeypatch.setattr(staging, "stage", lambda conn, s, paths: copied.extend(paths))
    monkeypatch.setattr(staging, "guest_runs", lambda conn: set())
    monkeypatch.setattr(staging, "bring_runs_home_after", lambda *a: None)
    monkeypatch.setattr(
        guestrun, "run_interruptible", lambda c, argv, *a, **k: ran.append(argv) or 0
    )

    ctx = Context(Config(overrides={"vm": {"project_dir": str(project)}}))
    simtasks.run(
        ctx,
        file=["sims/a.toml", "sims/b.toml"],
        binary=["over:path:bin/over"],
        patchbay_version="builtin",  # so that the builtin runner's checks read them too
    )

    assert parsed == {
        "sims/a.toml": 1,
        "sims/b.toml": 1,
        "sims/base.toml": 1,
        "sims/bins.toml": 1,
        "sims/topos/t.toml": 1,
    }
    # What was read once served every reader: the staging (a path named twice is
    # copied once) ...
    assert list(dict.fromkeys(copied)) == [
        inputs.GUEST_RUNNER,
        "/app/sims/a.toml",
        "/app/sims/b.toml",
        "/app/sims/base.toml",
        "/app/sims/bins.toml",
        "/app/sims/topos/t.toml",
        "/work/binaries/over",
        f"/target/{MUSL}/release/examples/tool",
    ]
    # ... and the guest command (the override is known to the builtin runner's checks).
    (argv,) = ran
    assert argv[argv.index("run") :] == [
        "run",
        "--work-dir",
        "/work",
        "--binary",
        "over:path:/work/binaries/over",
        "--watch-stdin",
        "/app/sims/a.toml",
        "/app/sims/b.toml",
    ]


def test_a_sim_refused_by_the_builtin_checks_is_still_read_once(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error is kept with what was read: asking again raises it again, reading nothing.
    (project / "sims" / "a.toml").write_text(
        FILES["sims/a.toml"].replace("binary.over", "binary.x")
    )
    parsed: Counter[str] = Counter()
    parse = tomlfiles._parse

    def counting(path: Path, shown: str) -> dict:
        parsed[Path(path).name] += 1
        return parse(path, shown)

    monkeypatch.setattr(tomlfiles, "_parse", counting)
    sims = inputs.read_sims(["sims"], project)
    for _ in range(2):
        with pytest.raises(inputs.UsageError, match=r"sims/a\.toml.*binary\.x"):
            inputs.refuse_broken(sims, ["over"])
    assert inputs.sim_inputs(sims, project)  # the files read up to the error still go
    assert set(parsed.values()) == {1}
