"""Sim arguments, guest paths, the guest command line and the results summary."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.sim import inputs

# The compatibility corpus's sims/ folder (the corpus_dir fixture finds it).
CORPUS_SIMS = [
    "iperf-1to1-public.toml",
    "iperf-1to1-udp.toml",
    "iroh-1to1-nat-switch.toml",
    "iroh-1to1-nat.toml",
    "iroh-1to1-public.toml",
    "iroh-1to10-public.toml",
]

SIM = '[sim]\nname = "s"\n'


def write(path: Path, text: str = SIM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _paths(args: list[str], workspace: Path | None) -> list[Path]:
    """The resolved sims of --file values, as read_sims finds them."""
    return inputs.read_sims(args, workspace).paths


# ── read_sims ────────────────────────────────────────────────────────────────


def test_corpus_folder_expands_sorted(monkeypatch: pytest.MonkeyPatch, corpus_dir: Path) -> None:
    monkeypatch.chdir(corpus_dir)
    sims = _paths(["sims"], corpus_dir)
    assert [p.name for p in sims] == CORPUS_SIMS
    assert all(p.is_absolute() for p in sims)


def test_files_and_folders_mix_without_duplicates(
    monkeypatch: pytest.MonkeyPatch, corpus_dir: Path
) -> None:
    monkeypatch.chdir(corpus_dir)
    sims = _paths(
        ["ui-fixtures/ping-e2e.toml", "ui-fixtures", str(corpus_dir / "sims/iroh-1to1-nat.toml")],
        corpus_dir,
    )
    assert [p.relative_to(corpus_dir).as_posix() for p in sims] == [
        "ui-fixtures/ping-e2e.toml",
        "ui-fixtures/iperf-e2e.toml",
        "sims/iroh-1to1-nat.toml",
    ]


def test_folder_is_not_recursive_and_skips_dotfiles(tmp_path: Path) -> None:
    write(tmp_path / "sims" / "b.toml")
    write(tmp_path / "sims" / "a.toml")
    write(tmp_path / "sims" / ".#a.toml", "not toml [")
    write(tmp_path / "sims" / "notes.txt", "x")
    write(tmp_path / "sims" / "deeper" / "c.toml")
    sims = _paths([str(tmp_path / "sims")], tmp_path)
    assert [p.name for p in sims] == ["a.toml", "b.toml"]


def _outside_symlink(tmp_path: Path) -> str:
    ws = tmp_path / "ws"
    write(tmp_path / "elsewhere.toml")
    (ws / "sims").mkdir(parents=True)
    (ws / "sims" / "link.toml").symlink_to(tmp_path / "elsewhere.toml")
    return str(ws / "sims" / "link.toml")


@pytest.mark.parametrize(
    ("make_arg", "message"),
    [
        (lambda t: str(t / "ws" / "nope.toml"), "does not exist; check the --file value"),
        (lambda t: str(write(t / "elsewhere" / "sim.toml")), "lies outside the workspace"),
        (_outside_symlink, "lies outside the workspace"),
        (
            lambda t: str((t / "ws" / "empty").mkdir(parents=True) or t / "ws" / "empty"),
            "no *.toml",
        ),
    ],
    ids=["missing", "outside", "symlink-outside", "empty-folder"],
)
def test_expand_errors(tmp_path: Path, make_arg, message: str) -> None:
    (tmp_path / "ws").mkdir(exist_ok=True)
    arg = make_arg(tmp_path)
    with pytest.raises(UsageError) as err:
        _paths([arg], tmp_path / "ws")
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_no_sims_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no sim given: pass --file"):
        _paths([], tmp_path)


def test_symlink_inside_workspace_is_fine(tmp_path: Path) -> None:
    real = write(tmp_path / "sims" / "real.toml")
    (tmp_path / "alias.toml").symlink_to(real)
    assert _paths([str(tmp_path / "alias.toml")], tmp_path) == [real]


@pytest.mark.parametrize(
    ("text", "where", "at"),
    [
        ('[sim]\nname = "x"\n\n[[step]]\ncmd = [1, 2]]\n', "sims/bad.toml:5:", "(line 5, column"),
        ('[sim]\nname = "x"\nname = "y"\n', "sims/bad.toml:3:", "(line 3, column"),
        ('[sim]\nname = "x"\n\n[[step]]\ncmd = [1, 2\n', "sims/bad.toml:", "(at the end of"),
    ],
    ids=["syntax", "duplicate-key", "unclosed"],
)
def test_toml_error_reports_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, where: str, at: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sims" / "ok.toml")
    write(tmp_path / "sims" / "bad.toml", text)
    with pytest.raises(UsageError) as err:
        _paths(["sims"], tmp_path)
    msg = str(err.value)
    assert msg.startswith(where)
    assert f"invalid TOML {at}" in msg
    assert msg.endswith("; fix the file")
    # tomllib's own position text is replaced, not repeated.
    assert "(at line" not in msg
    assert "(at end of document)" not in msg
    assert err.value.exit_code == 2


def test_not_utf8_is_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bin.toml").write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(UsageError):
        _paths([str(tmp_path / "bin.toml")], tmp_path)


# ── guest paths and command ──────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("rel", "guest"),
    [
        ("sim.toml", "/app/sim.toml"),
        ("sims/iroh-1to1-nat.toml", "/app/sims/iroh-1to1-nat.toml"),
        ("a b/c d.toml", "/app/a b/c d.toml"),
        (".", "/app"),
    ],
)
def test_guest_sim_path(tmp_path: Path, rel: str, guest: str) -> None:
    assert inputs.guest_sim_path(tmp_path / rel, tmp_path) == guest


def test_guest_sim_path_outside(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="lies outside the workspace"):
        inputs.guest_sim_path(tmp_path.parent / "x.toml", tmp_path)


def test_guest_paths_of_corpus(corpus_dir: Path) -> None:
    sims = _paths([str(corpus_dir / "sims")], corpus_dir)
    assert [inputs.guest_sim_path(p, corpus_dir) for p in sims] == [
        f"/app/sims/{name}" for name in CORPUS_SIMS
    ]


RUNNER = "/work/.patchbay-bin/patchbay"


@pytest.mark.parametrize(
    ("env", "verbose", "binaries", "expected_env", "tail"),
    [
        ({}, False, [], [], []),
        ({"RUST_LOG": "debug"}, True, [], ["RUST_LOG=debug"], ["-v"]),
        ({"NETSIM_RUST_LOG": "trace"}, False, [], ["RUST_LOG=trace", "NETSIM_RUST_LOG=trace"], []),
        (
            {"RUST_LOG": "info,iroh=debug", "NETSIM_RUST_LOG": "trace", "HOME": "/root"},
            False,
            ["relay:path:/work/binaries/relay", "transfer:path:/target/x/release/examples/t"],
            ["RUST_LOG=info,iroh=debug", "NETSIM_RUST_LOG=trace"],
            [],
        ),
        ({"RUST_LOG": ""}, False, [], [], []),
    ],
    ids=["plain", "rust-log-verbose", "netsim-rust-log", "both-and-binaries", "empty"],
)
def test_guest_run_argv(env, verbose, binaries, expected_env, tail) -> None:
    sims = ["/app/sims/a.toml", "/app/sims/b.toml"]
    argv = inputs.guest_run_argv(sims, binaries, verbose, env)
    bin_args = [x for b in binaries for x in ("--binary", b)]
    assert argv == [
        "env",
        "NETSIM_IN_VM=1",
        "NETSIM_TARGET_DIR=/target",
        *expected_env,
        RUNNER,
        "run",
        "--work-dir",
        "/work",
        *bin_args,
        *tail,
        *sims,
    ]


def test_guest_run_argv_with_host_facts_timeout_and_builtin() -> None:
    argv = inputs.guest_run_argv(
        ["/app/s.toml"],
        ["t:path:/work/binaries/t"],
        True,
        {},
        timeout="90s",
        extra_env={"PATCHBAY_RUN_ID": "r1", "PATCHBAY_VM_ACCEL": "tcg"},
        builtin=True,
    )
    assert argv == [
        "env",
        "NETSIM_IN_VM=1",
        "NETSIM_TARGET_DIR=/target",
        "PATCHBAY_RUN_ID=r1",
        "PATCHBAY_VM_ACCEL=tcg",
        RUNNER,
        "run",
        "--work-dir",
        "/work",
        "--binary",
        "t:path:/work/binaries/t",
        "-v",
        "--timeout",
        "90s",
        "--watch-stdin",
        "/app/s.toml",
    ]


def test_inspect_and_run_in_have_the_run_command_shape() -> None:
    # sim.inspect and sim.exec: the same builder, so the same env/runner/--work-dir head.
    facts = {"PATCHBAY_RUN_ID": "r1", "PATCHBAY_VM_FS": "9p"}
    assert inputs.guest_inspect_argv("/app/sims/a.toml", facts) == [
        "env",
        "PATCHBAY_RUN_ID=r1",
        "PATCHBAY_VM_FS=9p",
        RUNNER,
        "inspect",
        "--work-dir",
        "/work",
        "/app/sims/a.toml",
    ]
    assert inputs.guest_run_in_argv(
        "dev-1", ["ping", "-c1", "--", "x"], {"PATCHBAY_RUN_ID": "r2"}
    ) == [
        "env",
        "PATCHBAY_RUN_ID=r2",
        RUNNER,
        "run-in",
        "--work-dir",
        "/work",
        "dev-1",
        "--",
        "ping",
        "-c1",
        "--",
        "x",
    ]


def test_the_task_module_builds_no_runner_command_itself() -> None:
    # One builder (inputs.runner_argv): tasks/sim.py names neither the runner nor /work.
    source = (Path(inputs.__file__).parents[1] / "tasks" / "sim.py").read_text()
    assert "GUEST_RUNNER" not in source
    assert '"--work-dir"' not in source
    assert '"/work"' not in source


def test_guest_command_line_survives_a_shell() -> None:
    argv = inputs.guest_run_argv(["/app/a b.toml"], [], False, {"RUST_LOG": "a=b c;d"})
    line = inputs.guest_command_line(argv)
    out = subprocess.run(
        ["sh", "-c", f'printf "%s\\n" {line.removeprefix("env ")}'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines() == argv[1:]
    assert shlex.split(line) == argv


# ── results ──────────────────────────────────────────────────────────────────


def results(sim: str, steps: list[dict]) -> str:
    return json.dumps({"sim": sim, "steps": steps})


def make_run(work: Path, name: str, sims: dict[str, list[dict]]) -> Path:
    run = work / name
    for sim, steps in sims.items():
        write(run / sim / "results.json", results(sim, steps))
    return run


IPERF = {"id": "iperf-baseline", "duration": "10.0", "down_bytes": "1250000000"}
PING = {"id": "ping-check", "latency_ms": "100.4"}


def test_summary_uses_latest_link(tmp_path: Path) -> None:
    make_run(tmp_path, "sim-250101-120000", {"old": [IPERF]})
    new = make_run(tmp_path, "sim-250101-110000", {"iperf": [IPERF], "ping": [PING]})
    (tmp_path / "latest").symlink_to(new.name)
    rows = inputs.summarize_results(tmp_path)
    assert [(r["sim"], r["step"]) for r in rows] == [
        ("iperf", "iperf-baseline"),
        ("ping", "ping-check"),
    ]
    assert rows[0]["duration_s"] == 10.0
    assert rows[0]["down_mbit_s"] == pytest.approx(1000.0)
    assert rows[0]["up_mbit_s"] is None
    assert rows[1]["latency_ms"] == pytest.approx(100.4)
    assert rows[1]["down_mbit_s"] is None


def test_summary_newest_sim_dir_without_link(tmp_path: Path) -> None:
    make_run(tmp_path, "sim-250101-110000", {"old": [IPERF]})
    make_run(tmp_path, "sim-250102-090000", {"new": [PING]})
    assert [r["sim"] for r in inputs.summarize_results(tmp_path)] == ["new"]


def test_summary_prefers_combined_results(tmp_path: Path) -> None:
    run = make_run(tmp_path, "sim-250101-110000", {"per-sim": [IPERF]})
    combined = {
        "runs": [
            {"run": run.name, "sim_dir": "a", "sim": "from-combined", "steps": [IPERF, PING]},
            {"run": run.name, "sim_dir": "b", "steps": [{"id": "x"}]},
        ]
    }
    (run / "combined-results.json").write_text(json.dumps(combined))
    rows = inputs.summarize_results(tmp_path)
    assert [(r["sim"], r["step"]) for r in rows] == [
        ("from-combined", "iperf-baseline"),
        ("from-combined", "ping-check"),
        ("b", "x"),
    ]


def test_summary_in_work_dir_itself(tmp_path: Path) -> None:
    write(tmp_path / "s1" / "results.json", results("s1", [PING]))
    assert inputs.summarize_results(tmp_path)[0]["sim"] == "s1"


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # An integer duration is microseconds, a float is seconds (the runner's rule).
        ({"id": "a", "duration": "2000000", "down_bytes": "1000000"}, (2.0, 4.0, None)),
        ({"id": "a", "duration": 2000000, "down_bytes": 1000000}, (2.0, 4.0, None)),
        ({"id": "a", "duration": 2.5, "up_bytes": "312500"}, (2.5, None, 1.0)),
        ({"id": "a", "duration": "n/a", "down_bytes": "5"}, (None, None, None)),
        ({"id": "a", "duration": "0", "down_bytes": "5"}, (0.0, None, None)),
        ({"id": "a"}, (None, None, None)),
        ({"down_bytes": None, "latency_ms": True}, (None, None, None)),
    ],
)
def test_summary_tolerates_partial_fields(tmp_path: Path, step: dict, expected: tuple) -> None:
    write(tmp_path / "s" / "results.json", results("s", [step]))
    (row,) = inputs.summarize_results(tmp_path)
    got = (row["duration_s"], row["down_mbit_s"], row["up_mbit_s"])
    assert got == pytest.approx(expected)
    assert row["step"] == step.get("id", "?")


@pytest.mark.parametrize(
    "content",
    ["", "{not json", "[1, 2]", '{"sim": "s", "steps": "nope"}', '{"steps": [1, "x"]}'],
)
def test_summary_broken_files_give_none(tmp_path: Path, content: str) -> None:
    write(tmp_path / "sim-250101-110000" / "s" / "results.json", content)
    assert inputs.summarize_results(tmp_path) is None


def test_summary_nothing_there(tmp_path: Path) -> None:
    assert inputs.summarize_results(tmp_path) is None
    assert inputs.summarize_results(tmp_path / "missing") is None
    assert inputs.format_summary(None) == "no results found"


def test_format_summary_table(tmp_path: Path) -> None:
    make_run(tmp_path, "sim-250101-110000", {"iperf": [IPERF], "ping": [PING]})
    text = inputs.format_summary(inputs.summarize_results(tmp_path))
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "sim"
    for column in ("step", "duration s", "down Mbit/s", "up Mbit/s", "latency ms"):
        assert column in lines[0]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["iperf", "iperf-baseline", "10.000", "1000.0", "-", "-"]
    assert lines[3].split() == ["ping", "ping-check", "-", "-", "-", "100.4"]
    # Columns line up: every line is as wide as the header row's columns allow.
    assert len({len(line.rstrip()) for line in lines[:2]}) == 1
