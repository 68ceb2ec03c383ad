"""Hostile sim files (issue 19, the sim-file half): every bad input ends in one `error:`
line and exit 2 through the real entry points (`patchbay-vm check`, i.e. `python -m
patchbay_vm_tasks check`, and `invoke sim.check`), never in a traceback, a hang or a
command of the sim's choosing; the bounds of simcore/limits.py hold and are generous for
real sims. The cases include what the fuzz test (test_reader_fuzz.py) found against the
reader before this change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks import cli
from patchbay_vm_tasks.simcore import addressing, limits, model, reader, topology
from patchbay_vm_tasks.simcore.durations import parse_duration
from patchbay_vm_tasks.simcore.model import SimError
from patchbay_vm_tasks.simcore.tomlfiles import read_limited
from patchbay_vm_tasks.simrunner import cli as runner_cli
from patchbay_vm_tasks.simrunner import lab as lab_mod

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable

INJECTION = "a\nnetns add zz\nnetns exec zz /usr/bin/touch /tmp/pwned"
INJECTION_TOML = INJECTION.replace("\n", "\\n")  # as the sim file spells it
TOPO = '[[router]]\nname = "dc"\n\n[device.server.eth0]\ngateway = "dc"\n'


def step(body: str) -> str:
    return TOPO + "\n[[step]]\n" + body + "\n"


def nested(depth: int) -> str:
    return "x = " + "[" * depth + "]" * depth + "\n"


def chain(n: int) -> dict[str, str]:
    """`[[extends]]` n files long: c0 extends c1 ... extends c(n-1)."""
    files = {f"c{i}.toml": f'[[extends]]\nfile = "c{i + 1}.toml"\n' for i in range(n - 1)}
    files[f"c{n - 1}.toml"] = ""
    files["s.toml"] = '[[extends]]\nfile = "c0.toml"\n' + TOPO
    return files


def diamond(levels: int) -> dict[str, str]:
    """Each file extends the next one twice: 2**levels reads without a limit."""
    files = {f"d{i}.toml": f'[[extends]]\nfile = "d{i + 1}.toml"\n' * 2 for i in range(levels)}
    files[f"d{levels}.toml"] = ""
    files["s.toml"] = '[[extends]]\nfile = "d0.toml"\n' + TOPO
    return files


def routers(n: int, upstream: bool = True) -> str:
    out = []
    for i in range(n):
        up = f'upstream = "r{i - 1}"\n' if upstream and i else ""
        out.append(f'[[router]]\nname = "r{i}"\n{up}')
    return "\n".join(out)


BIG_GROUP = (
    '[[step-group]]\nname = "g"\n'
    + '[[step-group.step]]\naction = "wait"\nduration = "1s"\n' * 500
    + TOPO
    + '[[step]]\nuse = "g"\n' * 30
)
GROUP_BLOWUP = (
    '[[step-group]]\nname = "g"\n[[step-group.step]]\naction = "gen-file"\nid = "f"\n'
    'content = "' + "${group.x}" * 20_000 + '"\n' + TOPO + '[[step]]\nuse = "g"\n'
    'vars = { x = "' + "y" * 100 + '" }\n'
)
MANY_CHECKS = (
    '[[router]]\nname = "dc"\n[device.f]\ncount = 1000\n[device.f.eth0]\ngateway = "dc"\n'
    '[[step]]\naction = "gen-file"\nid = "x"\ncontent = "1"\n'
    '[[step]]\naction = "assert"\nchecks = ['
    + ", ".join('"f.path == 1"' for _ in range(20))
    + "]\n"
)

# name: (files, the sim to read, fragments of the one error line). Each runs through
# `patchbay-vm check`. "found" marks what the fuzz test found against the old reader.
CASES: dict[str, tuple[dict[str, str], str, tuple[str, ...]]] = {
    # 1. injection through names
    "device-name-newline": (
        {"s.toml": f'[[router]]\nname = "dc"\n[device."{INJECTION_TOML}".eth0]\ngateway = "dc"\n'},
        "s.toml",
        ("s.toml: device: device name 'a\\nnetns add zz", "may hold only ASCII letters"),
    ),
    "device-name-shell": (
        {"s.toml": '[[router]]\nname = "dc"\n[device."x$(touch${IFS}pwned)".eth0]\ngateway="dc"\n'},
        "s.toml",
        ("device name 'x$(touch${IFS}pwned)' may hold only",),
    ),
    "router-name-newline (found)": (
        {"s.toml": '[[router]]\nname = "a\\nb"\n'},
        "s.toml",
        ("router[0].name: router name 'a\\nb' may hold only",),
    ),
    "interface-name-newline": (
        {"s.toml": '[[router]]\nname = "dc"\n[device.c."e\\nlink add x"]\ngateway = "dc"\n'},
        "s.toml",
        ("interface name 'e\\nlink add x' may hold only",),
    ),
    "interface-name-16-bytes": (
        {"s.toml": '[[router]]\nname = "dc"\n[device.c.abcdefghijklmnop]\ngateway = "dc"\n'},
        "s.toml",
        ("device.c.abcdefghijklmnop: interface name", "is 16 characters long; at most 15"),
    ),
    "interface-name-lo": (
        {"s.toml": '[[router]]\nname = "dc"\n[device.c.lo]\ngateway = "dc"\n'},
        "s.toml",
        ("device.c.lo: interface name 'lo' is taken (the loopback)",),
    ),
    "region-name-slash": (
        {"s.toml": '[[router]]\nname = "dc"\nregion = "eu/x"\n'},
        "s.toml",
        ("router.dc.region: region name 'eu/x' may hold only",),
    ),
    "region-table-name-space": (
        {"s.toml": '[region."e u"]\nlatencies = {}\n'},
        "s.toml",
        ("region: region name 'e u' may hold only",),
    ),
    "step-id-slash (silent log loss)": (
        {"s.toml": step('action = "run"\nid = "fetch/1"\ndevice = "server"\ncmd = ["true"]')},
        "s.toml",
        ("step[0].id: step id 'fetch/1' may hold only",),
    ),
    "step-id-dot": (
        {"s.toml": step('action = "gen-file"\nid = "a.b"\ncontent = "x"')},
        "s.toml",
        ("step[0].id: step id 'a.b' may hold only",),
    ),
    "sim-name-dotdot": (
        {"s.toml": '[sim]\nname = "../x"\n' + TOPO},
        "s.toml",
        ("sim.name: sim name '../x' may hold only",),
    ),
    "binary-name-space": (
        {"s.toml": '[[binary]]\nname = "a b"\npath = "x"\n'},
        "s.toml",
        ("binary[0].name: binary name 'a b' may hold only",),
    ),
    "topology-name-dotdot": (
        {"s.toml": '[sim]\ntopology = "../../etc/passwd"\n'},
        "s.toml",
        ("sim.topology: topology name '../../etc/passwd' may hold only",),
    ),
    "device-name-64": (
        {"s.toml": f'[[router]]\nname = "dc"\n[device.{"d" * 64}.eth0]\ngateway = "dc"\n'},
        "s.toml",
        ("is 64 characters long; at most 63",),
    ),
    "count-makes-long-name": (
        {
            "s.toml": f'[[router]]\nname = "dc"\n[device.{"d" * 60}]\ncount = 1000\n'
            f'[device.{"d" * 60}.eth0]\ngateway = "dc"\n'
        },
        "s.toml",
        ("count: makes the name", "-999', over 63 characters"),
    ),
    # 3. tracebacks: wrong types
    "action-list (found)": (
        {"s.toml": step('action = ["run"]\ndevice = "server"\ncmd = ["true"]')},
        "s.toml",
        ('step[0].action: must be a string such as "run", got a list',),
    ),
    "action-table (found)": (
        {"s.toml": step('action = { a = 1 }\ndevice = "server"\ncmd = ["true"]')},
        "s.toml",
        ("step[0].action: must be a string", "got a table"),
    ),
    "kind-list": (
        {
            "s.toml": '[[step-template]]\nname = "t"\nkind = ["run"]\ncmd = ["x"]\n'
            + step('use = "t"\ndevice = "server"')
        },
        "s.toml",
        ("step[0].action: must be a string", "got a list"),
    ),
    "ip_support-list (found)": (
        {"s.toml": '[[router]]\nname = "dc"\nip_support = ["v4-only"]\n'},
        "s.toml",
        ("router.dc.ip_support: unknown value ['v4-only']; use v4-only or dual-stack",),
    ),
    "ip_support-empty-list (found)": (
        {"s.toml": '[[router]]\nname = "dc"\nip_support = []\n'},
        "s.toml",
        ("router.dc.ip_support: unknown value []",),
    ),
    "parser-list": (
        {"s.toml": step('action = "run"\ndevice = "server"\ncmd = ["x"]\nparser = ["json"]')},
        "s.toml",
        ("step[0].parser: unknown parser ['json']",),
    ),
    "pipe-table": (
        {
            "s.toml": step(
                'action = "run"\ndevice = "server"\ncmd = ["x"]\n'
                '[step.captures.c]\npipe = { a = 1 }\nregex = "x"'
            )
        },
        "s.toml",
        ("step[0].captures.c.pipe: must be stdout or stderr",),
    ),
    "device-not-a-table (found)": (
        {"s.toml": '[[router]]\nname = "dc"\n[device]\na = ""\n'},
        "s.toml",
        ("device.a: must be a table of interfaces",),
    ),
    # 3. tracebacks: numbers too big for a float
    "duration-400-digits (found)": (
        {"s.toml": step(f'action = "wait"\nduration = "{"9" * 400}s"')},
        "s.toml",
        ("step[0].duration: duration '999", "is over the limit of 7 days"),
    ),
    "timeout-400-digits (found)": (
        {"s.toml": step(f'action = "wait"\nduration = "1s"\ntimeout = "{"9" * 400}ms"')},
        "s.toml",
        ("step[0].timeout: duration", "over the limit"),
    ),
    "region-latency-400-digits (found)": (
        {
            "s.toml": '[[router]]\nname = "dc"\n[region.eu]\nlatencies = { us = '
            + "9" * 400
            + " }\n"
        },
        "s.toml",
        ("region.eu.latencies.us: must be whole milliseconds 0..3600000, got 9999",),
    ),
    "rate-400-digits": (
        {"s.toml": TOPO + "impair = { rate_kbit = " + "9" * 400 + " }\n"},
        "s.toml",
        ("device.server.eth0.impair.rate_kbit: must be a whole number 0..100000000",),
    ),
    "latency-400-digits": (
        {"s.toml": TOPO + "impair = { latency_ms = " + "9" * 400 + " }\n"},
        "s.toml",
        ("impair.latency_ms: must be a whole number 0..3600000",),
    ),
    # 3. tracebacks: nesting
    "array-nested-500 (found)": (
        {"s.toml": nested(500)},
        "s.toml",
        ("s.toml: tables and arrays nest more than 32 deep",),
    ),
    "inline-tables-nested-500": (
        {"s.toml": "x = " + "{a=" * 500 + "1" + "}" * 500 + "\n"},
        "s.toml",
        ("nest more than 32 deep",),
    ),
    "dotted-key-40-deep": (
        {"s.toml": ".".join(["a"] * 40) + " = 1\n"},
        "s.toml",
        ("nest more than 32 deep",),
    ),
    "extends-chain-1500": (
        chain(1500),
        "s.toml",
        ("extends[0].file: [[extends]] nest more than 16 files deep",),
    ),
    "extends-diamond": (
        diamond(12),
        "s.toml",
        ("the sim reads more than 64 files; simplify its extends",),
    ),
    # 3. tracebacks: paths
    "extends-nosuchuser": (
        {"s.toml": '[[extends]]\nfile = "~nosuchuser/x.toml"\n'},
        "s.toml",
        ("extends[0].file: cannot expand ~nosuchuser: no such user",),
    ),
    "binaries-nosuchuser": (
        {"s.toml": '[sim]\nbinaries = "~nosuchuser/b.toml"\n'},
        "s.toml",
        ("sim.binaries: cannot expand ~nosuchuser",),
    ),
    "extends-4096-chars (found)": (
        {"s.toml": f'[[extends]]\nfile = "{"a" * 4096}.toml"\n'},
        "s.toml",
        ("extends[0].file: 'aaaa", "is not a usable file name (at most 1024)"),
    ),
    "extends-300-char-component": (
        {"s.toml": f'[[extends]]\nfile = "{"a" * 300}.toml"\n'},
        "s.toml",
        ("extends[0].file:", "not found"),
    ),
    "file-over-1-MiB": (
        {"s.toml": "# " + "x" * (1 << 20) + "\n"},
        "s.toml",
        ("s.toml: is 1048579 bytes; sim files are at most 1048576",),
    ),
    # 3/4. counts and sizes
    "count-10**9 (found)": (
        {
            "s.toml": '[[router]]\nname = "dc"\n[device.f]\ncount = 1000000000\n'
            '[device.f.eth0]\ngateway = "dc"\n'
        },
        "s.toml",
        ("device.f.count: 1000000000 is too many: a sim has at most 1024 devices",),
    ),
    "count-10**6": (
        {
            "s.toml": '[[router]]\nname = "dc"\n[device.f]\ncount = 1000000\n'
            '[device.f.eth0]\ngateway = "dc"\n'
        },
        "s.toml",
        ("device.f.count: 1000000 is too many",),
    ),
    "count-10**400": (
        {
            "s.toml": '[[router]]\nname = "dc"\n[device.f]\ncount = 1' + "0" * 400 + "\n"
            '[device.f.eth0]\ngateway = "dc"\n'
        },
        "s.toml",
        ("device.f.count: 1000", "is too many"),
    ),
    "routers-2000-chained": (
        {"s.toml": routers(2000)},
        "s.toml",
        ("s.toml: router: 2000 routers; at most 256",),
    ),
    "steps-group-expansion": (
        {"s.toml": BIG_GROUP},
        "s.toml",
        ("the sim expands to more than 10000 steps",),
    ),
    "group-var-blowup": (
        {"s.toml": GROUP_BLOWUP},
        "s.toml",
        ("step[0].vars: a string of group 'g' grows over 1048576 characters",),
    ),
    "assert-checks-times-count": (
        {"s.toml": MANY_CHECKS},
        "s.toml",
        ("step[1].checks: more than 10000 checks (count copies them)",),
    ),
    "regex-huge-repeat": (
        {
            "s.toml": step(
                'action = "run"\ndevice = "server"\ncmd = ["x"]\n'
                '[step.captures.c]\nregex = "a{99999999999}"'
            )
        },
        "s.toml",
        ("step[0].captures.c.regex: bad regex 'a{99999999999}'",),
    ),
    "regex-nested-3000": (
        {
            "s.toml": step(
                'action = "run"\ndevice = "server"\ncmd = ["x"]\n'
                f'[step.captures.c]\nregex = "{"(" * 3000}{")" * 3000}"'
            )
        },
        "s.toml",
        ("step[0].captures.c.regex: bad regex", "nested too deep"),
    ),
    # 5. silent loss: link conditions tc would be handed
    "loss-nan": (
        {"s.toml": TOPO + "impair = { loss_pct = nan }\n"},
        "s.toml",
        ("device.server.eth0.impair.loss_pct: must be a percentage 0..100, got nan",),
    ),
    "loss-inf": (
        {"s.toml": TOPO + "impair = { loss_pct = inf }\n"},
        "s.toml",
        ("impair.loss_pct: must be a percentage 0..100, got inf",),
    ),
    "loss-negative": (
        {"s.toml": TOPO + "impair = { loss_pct = -0.5 }\n"},
        "s.toml",
        ("impair.loss_pct: must be a percentage 0..100, got -0.5",),
    ),
    "loss-over-100": (
        {"s.toml": TOPO + "impair = { loss_pct = 100.5 }\n"},
        "s.toml",
        ("impair.loss_pct: must be a percentage 0..100, got 100.5",),
    ),
    "set-link-condition-nan": (
        {
            "s.toml": step(
                'action = "set-link-condition"\ndevice = "server"\n'
                "condition = { corrupt_pct = nan }"
            )
        },
        "s.toml",
        ("step[0].condition.corrupt_pct: must be a percentage 0..100, got nan",),
    ),
}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`patchbay-vm ARGV` (cli.main, what `python -m patchbay_vm_tasks` runs), in this
    process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0), capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sim_one_line_exit_2(
    case: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, sim, fragments = CASES[case]
    for name, text in files.items():
        (in_tmp / name).write_text(text)
    t0 = time.monotonic()
    code, err = check_in_process(["check", sim], capsys)
    assert code == 2, err[-2000:]
    line = one_error_line(err)
    for fragment in fragments:
        assert fragment in line, line
    assert len(line) < 2500
    assert time.monotonic() - t0 < 10  # no hang: the bounds hold before the work


def test_device_name_injection_never_reaches_the_batch(tmp_path: Path) -> None:
    """The repro of the issue: passes sim.check no more, and were such a topology built
    (not through the reader), lab.py refuses the batch instead of writing it."""
    (tmp_path / "s.toml").write_text(CASES["device-name-newline"][0]["s.toml"])
    with pytest.raises(SimError, match="device name"):
        reader.load_sim(tmp_path / "s.toml", strict=True)
    topo = model.Topology(
        routers=(model.Router("dc"),),
        devices=(model.Device(INJECTION, (model.Interface("eth0", "dc"),), "eth0"),),
    )
    plan = addressing.plan_lab(topo, "pbt")
    from patchbay_vm_tasks.simcore import netconfig

    batch = netconfig.root_batch(plan)
    assert any("\n" in line for line in batch)  # what the old lab wrote to ip -batch
    with pytest.raises(lab_mod.LabError, match="control character"):
        lab_mod._lines(batch)


def test_lab_build_refuses_before_running_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr(lab_mod.subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(lab_mod.subprocess, "Popen", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(lab_mod.Lab, "_existing_namespaces", lambda self: [])
    topo = model.Topology(
        routers=(model.Router("dc"),),
        devices=(model.Device(INJECTION, (model.Interface("eth0", "dc"),), "eth0"),),
    )
    lab = lab_mod.Lab(topo, "pbt", lambda kind, fields: None)
    with pytest.raises(lab_mod.LabError, match="refused to write a batch line"):
        lab.build()
    assert ran == []


def test_inspect_exports_are_quoted_and_checked() -> None:
    lines = runner_cli.export_lines(
        {"NETSIM_IP_A": "10.0.0.2"}, {"a": "pbi12-a", "r-1": "pbi12-r-1"}
    )
    assert lines == [
        "export NETSIM_IP_A=10.0.0.2",
        "export NETSIM_NS_A=pbi12-a",
        "export NETSIM_NS_R_1=pbi12-r-1",
    ]
    assert runner_cli.export_lines({"NETSIM_IP_A": "$(x) y"}, {}) == ["export NETSIM_IP_A='$(x) y'"]
    with pytest.raises(ValueError, match="not fit for a shell"):
        runner_cli.export_lines({}, {"x$(touch${IFS}pwned)": "pbi-x"})
    with pytest.raises(ValueError, match="not fit for a shell"):
        runner_cli.export_lines({"NETSIM_IP_A;touch x": "1"}, {})


def test_step_logs_are_made_before_the_process(tmp_path: Path) -> None:
    """A log that cannot be made fails the step (the Rust runner's silent loss: a `/` in
    a step id lost both logs and the sim said ok)."""
    from patchbay_vm_tasks.simrunner import execute

    sim = model.Sim("s", "s.toml", model.Topology((), ()), None, {}, [], [])
    run = execute.SimRun(sim, tmp_path, execute.Options())
    try:
        bad = model.Step(0, model.Action.RUN, "o", id="fetch/1", device="d")
        with pytest.raises(execute.StepError, match="cannot name the logs"):
            run.open_logs("d", bad)
        good = model.Step(0, model.Action.RUN, "o", id="fetch-1", device="d")
        logs, files = run.open_logs("d", good)
        for f in files.values():
            f.close()
        assert sorted(p.name for p in logs.values()) == [
            "device.d.fetch-1.stderr.log",
            "device.d.fetch-1.stdout.log",
        ]
        assert all(p.is_file() for p in logs.values())
    finally:
        run.events.close()


# ── the real entry points, as processes ──────────────────────────────────────────────


def run_cmd(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_VM_", "INVOKE_"))}
    return subprocess.run(
        [PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_invoke_sim_check_refuses_the_injection(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\nns = namespace()\n"
    )
    (tmp_path / "s.toml").write_text(CASES["device-name-newline"][0]["s.toml"])
    out = run_cmd(tmp_path, "-m", "invoke", "sim.check", "--file", "s.toml")
    assert out.returncode == 2, out.stdout + out.stderr
    line = one_error_line(out.stderr)
    assert "device name 'a\\nnetns add zz\\nnetns exec zz" in line
    assert "netns exec" not in out.stdout


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [
        ("~nosuchuser/x.toml", "sim path ~nosuchuser/x.toml: cannot expand ~nosuchuser"),
        ("b" * 4096 + ".toml", "File name too long; check the --file value"),
        ("/dev/zero", "/dev/zero: cannot read it: not a regular file"),
        ("fifo.toml", "fifo.toml: cannot read it: not a regular file"),
        ("a\nb.toml", "sim path 'a\\nb.toml' does not exist"),
    ],
    ids=["nosuchuser", "4096-chars", "dev-zero", "fifo", "newline"],
)
def test_patchbay_vm_check_bad_paths(tmp_path: Path, arg: str, fragment: str) -> None:
    os.mkfifo(tmp_path / "fifo.toml")
    out = run_cmd(tmp_path, "-m", "patchbay_vm_tasks", "check", arg, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert fragment in one_error_line(out.stderr)


def test_patchbay_vm_run_timeout_400_digits(tmp_path: Path) -> None:
    """Refused before anything boots (the duration is over the limit, not an overflow)."""
    (tmp_path / "tasks.py").write_text(
        "from patchbay_vm_tasks.tasks import namespace\nns = namespace()\n"
    )
    (tmp_path / "s.toml").write_text(TOPO)
    out = run_cmd(
        tmp_path, "-m", "patchbay_vm_tasks", "run", "s.toml", "--timeout", "9" * 400 + "s"
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "is over the limit of 7 days" in one_error_line(out.stderr)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--timeout", "9" * 400 + "s", "s.toml"], "is over the limit of 7 days"),
        (["run", "fifo.toml"], "sim input is not a file or a folder: fifo.toml"),
        (["run", "9" * 400], "File name too long"),
        (["run", "deep.toml"], "tables and arrays nest more than 32 deep"),
        (["run-in", "NODE"], "run-in: no command given"),
        (["inspect", "a", "b"], "unrecognized arguments: b"),
    ],
    ids=["timeout", "fifo", "long-name", "nesting", "run-in-no-command", "inspect-two-args"],
)
def test_builtin_runner_bad_input_exits_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    """The guest's runner (`python -m patchbay_vm_tasks.simrunner`): exit 2 and a usage
    error, nothing run, no traceback."""
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "s.toml").write_text(TOPO)
    (tmp_path / "deep.toml").write_text(nested(500))
    out = run_cmd(tmp_path, "-m", "patchbay_vm_tasks.simrunner", *args, timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".patchbay-work").exists()


# ── the pieces ───────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10080m", 604800.0), ("604800s", 604800.0), ("604800000ms", 604800.0), ("0007s", 7.0)],
)
def test_durations_up_to_a_week(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["10081m", "604801s", "604800001ms", "9" * 400 + "s", "9" * 5000 + "m"]
)
def test_durations_over_a_week(text: str) -> None:
    with pytest.raises(ValueError, match="over the limit of 7 days"):
        parse_duration(text)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "f.toml"
    os.mkfifo(fifo)
    box: dict[str, BaseException] = {}

    def read() -> None:
        try:
            read_limited(fifo, "f.toml")
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box["e"] = e

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(box.get("e"), SimError) and "not a regular file" in str(box["e"])


def test_file_of_exactly_the_limit_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"#" * (limits.MAX_FILE_BYTES - 1) + b"\n")
    assert read_limited(path, "s.toml") == path.read_bytes()


def test_upstream_walks_are_linear() -> None:
    """The cycle check and the build order, each router walked once: 50,000 chained
    routers (far past MAX_ROUTERS, which the reader enforces first) in well under a
    second each; the old walk was cubic (2,000 routers: 10 s)."""
    n = 50_000
    chain_ = [model.Router(f"r{i}", upstream=f"r{i - 1}" if i else None) for i in range(n)]
    by_name = {r.name: r for r in chain_}
    t0 = time.process_time()
    topology._refuse_cycles(list(reversed(chain_)), by_name, "s.toml")
    order = addressing.build_order(tuple(reversed(chain_)))
    assert time.process_time() - t0 < 3
    assert [r.name for r in order[:3]] == ["r0", "r1", "r2"]
    looped = [*chain_[:-1], model.Router(f"r{n - 1}", upstream=f"r{n - 1}")]
    loop_by_name = {r.name: r for r in looped}
    with pytest.raises(SimError, match=f"upstream cycle: r{n - 1} -> r{n - 1}"):
        topology._refuse_cycles(looped, loop_by_name, "s.toml")


def test_limits_leave_room_for_real_sims(tmp_path: Path) -> None:
    """256 chained routers, 1,024 devices, names of 63 and interfaces of 15 characters
    read (and fast)."""
    devs = "".join(
        f'[device.d{i}]\ncount = 256\n[device.d{i}.eth0]\ngateway = "r0"\n' for i in range(4)
    )
    long_dev = "x" * 63
    text = (
        routers(256)
        + devs.replace("count = 256", "count = 255", 1)
        + f'[device.{long_dev}.{"e" * 15}]\ngateway = "r0"\n'
    )
    (tmp_path / "s.toml").write_text(text)
    t0 = time.process_time()
    sim = reader.load_sim(tmp_path / "s.toml", strict=True)
    assert time.process_time() - t0 < 5
    assert len(sim.topology.routers) == 256 and len(sim.topology.devices) == 1024


def test_sim_error_is_one_line() -> None:
    err = SimError("a\nb.toml", "device.x\ny", "bad\r\nname \u2028" + "z" * 5000)
    text = str(err)
    assert "\n" not in text and "\r" not in text and "\u2028" not in text
    assert text.startswith("a\\nb.toml: device.x\\ny: bad\\r\\nname \\u2028")
    assert len(text) < 2700
