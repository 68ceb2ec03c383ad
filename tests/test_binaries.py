"""Binary overrides and sim-declared binaries: parsing, resolution, builds, staging."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from patchbay_vm_tasks.errors import TaskError, UsageError
from patchbay_vm_tasks.sim import binaries
from patchbay_vm_tasks.sim.binaries import BinarySpec

MUSL = "x86_64-unknown-linux-musl"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def staged(work: Path) -> list[str]:
    """What is in <work>/binaries (temp files included, to catch leftovers)."""
    folder = work / "binaries"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ── overrides ────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relay:path:./target/release/relay", ("relay", "path", "./target/release/relay")),
        ("relay:path:target:examples/relay", ("relay", "path", "target:examples/relay")),
        (
            "tool:fetch:https://example.com:8443/dl/tool.tar.gz",
            ("tool", "fetch", "https://example.com:8443/dl/tool.tar.gz"),
        ),
        ("transfer:build:../iroh", ("transfer", "build", "../iroh")),
        (" x.y_z-1 : path : /a b ", ("x.y_z-1", "path", "/a b")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, str, str]) -> None:
    spec = binaries.parse_override(text)
    assert (spec.name, spec.mode, spec.value) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty name"),
        (":path:/x", "empty name"),
        ("relay", "missing mode"),
        ("relay::/x", "missing mode"),
        ("relay:path", "missing value"),
        ("relay:path:", "missing value"),
        ("relay:copy:/x", "unknown mode 'copy'"),
        ("relay:target:x", "unknown mode 'target'"),
        ("../relay:path:/x", "binary name '../relay' may only hold"),
        ("a/b:path:/x", "binary name 'a/b' may only hold"),
    ],
)
def test_parse_override_rejects(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        binaries.parse_override(text)
    assert message in str(err.value)
    assert "NAME:MODE:VALUE" in str(err.value) or "may only hold" in str(err.value)
    assert err.value.exit_code == 2


def test_parse_overrides_rejects_duplicates() -> None:
    ok = binaries.parse_overrides(["a:path:/x", "b:fetch:http://h/b"])
    assert list(ok) == ["a", "b"]
    with pytest.raises(UsageError, match="--binary a is given twice"):
        binaries.parse_overrides(["a:path:/x", "a:path:/y"])


@pytest.mark.parametrize(
    ("entry", "mode"),
    [
        ({"name": "a", "path": "bin/a"}, "path"),
        ({"name": "a", "url": "https://h/a.tar.gz"}, "fetch"),
        ({"name": "a", "repo": "https://github.com/x/y"}, "build"),
        ({"name": "a", "example": "a"}, "build"),
        ({"name": "a", "bin": "a"}, "build"),
        ({"name": "a", "path": "p", "example": "a"}, "path"),
        ({"name": "a", "mode": "target", "example": "a"}, "target"),
        ({"name": "a", "mode": "build", "path": "crates/a"}, "build"),
    ],
)
def test_infer_mode(entry: dict, mode: str) -> None:
    assert binaries.infer_mode(entry) == mode


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "relay"}, "sims/x.toml: binary.relay: has no source"),
        ({"name": "relay", "path": ""}, "give it path, url, repo, example or bin"),
        ({"name": "relay", "mode": "copy"}, "sims/x.toml: binary.relay.mode: unknown mode 'copy'"),
    ],
)
def test_infer_mode_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: dict, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        binaries.infer_mode(entry, tmp_path / "sims" / "x.toml")
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_merge_overrides_win() -> None:
    sim = {
        "relay": BinarySpec("relay", "target", bin="iroh-relay"),
        "transfer": BinarySpec("transfer", "target", example="transfer"),
    }
    over = {
        "relay": BinarySpec("relay", "path", "/tmp/relay"),
        "extra": BinarySpec("extra", "fetch", "http://h/e"),
    }
    merged = binaries.merge(sim, over)
    assert merged == {
        "relay": over["relay"],
        "transfer": sim["transfer"],
        "extra": over["extra"],
    }
    assert sim["relay"].mode == "target"  # inputs untouched


# ── sim-declared entries ─────────────────────────────────────────────────────


def test_corpus_iroh_sims_get_binaries_from_iroh_defaults(corpus_dir: Path) -> None:
    iroh_sims = sorted((corpus_dir / "sims").glob("iroh-*.toml"))
    assert len(iroh_sims) == 4
    specs = binaries.collect_sim_binaries(iroh_sims)
    assert specs == {
        "transfer": BinarySpec("transfer", "target", example="transfer"),
        "relay": BinarySpec("relay", "target", bin="iroh-relay"),
    }
    assert specs["relay"].origin == str(corpus_dir / "iroh-defaults.toml")
    # mode = "target": the runner finds them in /target itself, nothing to build here.
    assert binaries.build_entries(specs) == []


def test_corpus_iperf_sims_declare_nothing(corpus_dir: Path) -> None:
    sims = sorted((corpus_dir / "sims").glob("iperf-*.toml")) + sorted(
        (corpus_dir / "ui-fixtures").glob("*.toml")
    )
    assert sims
    assert binaries.collect_sim_binaries(sims) == {}


def test_corpus_extends_from_a_copy_elsewhere(tmp_path: Path, corpus_dir: Path) -> None:
    # A sim of ours that extends the corpus file by absolute path.
    sim = write(
        tmp_path / "sims" / "mine.toml",
        f'[[extends]]\nfile = "{corpus_dir / "iroh-defaults.toml"}"\n\n'
        '[[binary]]\nname = "relay"\npath = "bin/relay"\n',
    )
    specs = binaries.sim_binaries(sim)
    assert specs["relay"] == BinarySpec("relay", "path", "bin/relay")  # own entry wins
    assert specs["transfer"].example == "transfer"


@pytest.mark.parametrize(
    ("layout", "ref"),
    [
        ("beside", "defaults.toml"),
        ("parent", "defaults.toml"),
        ("cwd", "shared/defaults.toml"),
        ("relative", "../defaults.toml"),
    ],
)
def test_extends_lookup_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, ref: str
) -> None:
    where = {
        "beside": tmp_path / "proj" / "sims" / "defaults.toml",
        "parent": tmp_path / "proj" / "defaults.toml",
        "cwd": tmp_path / "shared" / "defaults.toml",
        "relative": tmp_path / "proj" / "defaults.toml",
    }[layout]
    write(where, '[[binary]]\nname = "t"\nexample = "t"\n')
    sim = write(tmp_path / "proj" / "sims" / "s.toml", f'[[extends]]\nfile = "{ref}"\n')
    monkeypatch.chdir(tmp_path)
    spec = binaries.sim_binaries(sim)["t"]
    assert spec.mode == "build"
    assert spec.origin == str(where.resolve())


def test_extends_beside_wins_over_parent(tmp_path: Path) -> None:
    write(tmp_path / "sims" / "d.toml", '[[binary]]\nname = "t"\npath = "beside"\n')
    write(tmp_path / "d.toml", '[[binary]]\nname = "t"\npath = "parent"\n')
    sim = write(tmp_path / "sims" / "s.toml", '[[extends]]\nfile = "d.toml"\n')
    assert binaries.sim_binaries(sim)["t"].value == "beside"


def test_extends_recursive_ordered_and_sim_binaries_file(tmp_path: Path) -> None:
    write(
        tmp_path / "base.toml",
        '[[binary]]\nname = "a"\npath = "base-a"\n[[binary]]\nname = "b"\npath = "base-b"\n',
    )
    write(
        tmp_path / "mid.toml",
        '[[extends]]\nfile = "base.toml"\n[[binary]]\nname = "b"\npath = "mid-b"\n',
    )
    write(tmp_path / "later.toml", '[[binary]]\nname = "c"\npath = "later-c"\n')
    write(
        tmp_path / "bins.toml",
        '[[binary]]\nname = "c"\npath = "shared-c"\n[[binary]]\nname = "d"\nurl = "http://h/d"\n',
    )
    sim = write(
        tmp_path / "sims" / "s.toml",
        '[[extends]]\nfile = "mid.toml"\n[[extends]]\nfile = "later.toml"\n'
        '[sim]\nname = "s"\nbinaries = "bins.toml"\ntopology = "ignored"\n'
        '[[binary]]\nname = "d"\nexample = "d"\n',
    )
    specs = binaries.sim_binaries(sim)
    assert {n: (s.mode, s.value or s.example) for n, s in specs.items()} == {
        "a": ("path", "base-a"),
        "b": ("path", "mid-b"),  # the extending file wins over what it extends
        "c": ("path", "shared-c"),  # [sim] binaries after the extends
        "d": ("build", "d"),  # the sim's own entry wins over all
    }


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"sims/s.toml": '[[extends]]\nfile = "nope.toml"\n'},
            "sims/s.toml: extends[0].file: 'nope.toml' not found",
        ),
        (
            {"sims/s.toml": '[sim]\nbinaries = "nope.toml"\n'},
            "sims/s.toml: sim.binaries: 'nope.toml' not found",
        ),
        (
            {
                "sims/s.toml": '[[extends]]\nfile = "a.toml"\n',
                "a.toml": '[[extends]]\nfile = "b.toml"\n',
                "b.toml": '[[extends]]\nfile = "a.toml"\n',
            },
            "[[extends]] loop: sims/s.toml -> a.toml -> b.toml -> a.toml",
        ),
        ({"sims/s.toml": '[[extends]]\nfile = "s.toml"\n'}, "[[extends]] loop"),
        ({"sims/s.toml": "[[extends]]\nfiles = 1\n"}, 'has no file = "other.toml"'),
        (
            {"sims/s.toml": '[[extends]]\nfile = "d.toml"\n', "d.toml": "[[binary]]\nname = [\n"},
            "d.toml:",
        ),
        (
            {"sims/s.toml": "[[binary]]\npath = 'x'\n"},
            "sims/s.toml: binary[0]: a [[binary]] entry has no name",
        ),
        ({"sims/s.toml": "[[binary]]\nname = 'x'\n"}, "sims/s.toml: binary.x: has no source"),
        (
            {"sims/s.toml": "[[binary]]\nname = 'x'\nexample = 'x'\nfeatures = 'a'\n"},
            "features must be a list of strings",
        ),
        (
            {"sims/s.toml": "[[binary]]\nname = 'x'\nexample = 'x'\nall-features = 'yes'\n"},
            "all-features must be true or false",
        ),
        ({"sims/s.toml": "[binary]\nname = 'x'\n"}, "use [[binary]]"),
    ],
    ids=[
        "missing-extends",
        "missing-binaries-file",
        "cycle",
        "self-cycle",
        "extends-without-file",
        "toml-error-in-extended",
        "no-name",
        "no-source",
        "bad-features",
        "bad-all-features",
        "binary-not-array",
    ],
)
def test_sim_binaries_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], message: str
) -> None:
    for rel, text in files.items():
        write(tmp_path / rel, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        binaries.collect_sim_binaries([tmp_path / "sims" / "s.toml"])
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_toml_error_in_extended_file_names_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "d.toml", '[[binary]]\nname = "x"\nexample = "x" "y"\n')
    sim = write(tmp_path / "sims" / "s.toml", '[[extends]]\nfile = "../d.toml"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as err:
        binaries.collect_sim_binaries([sim])
    assert str(err.value).startswith("d.toml:3:")
    assert "invalid TOML (line 3, column" in str(err.value)


def test_entry_fields(tmp_path: Path) -> None:
    sim = write(
        tmp_path / "s.toml",
        "[[binary]]\nname = 'x'\nrepo = 'https://github.com/a/b'\nbin = 'x'\n"
        "features = ['f1', 'f2']\nall-features = true\n",
    )
    assert binaries.sim_binaries(sim)["x"] == BinarySpec(
        "x",
        "build",
        "",
        bin="x",
        features=("f1", "f2"),
        all_features=True,
        repo="https://github.com/a/b",
        commit="main",
    )


def test_conflicting_declarations_across_sims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write(tmp_path / "sims" / "a.toml", "[[binary]]\nname = 'relay'\nbin = 'iroh-relay'\n")
    b = write(tmp_path / "sims" / "b.toml", "[[binary]]\nname = 'relay'\nexample = 'relay'\n")
    same = write(tmp_path / "sims" / "c.toml", "[[binary]]\nname = 'relay'\nbin = 'iroh-relay'\n")
    monkeypatch.chdir(tmp_path)
    # Identical declarations in two sims are fine.
    assert list(binaries.collect_sim_binaries([a, same])) == ["relay"]
    with pytest.raises(UsageError) as err:
        binaries.collect_sim_binaries([a, same, b])
    msg = str(err.value)
    assert "binary 'relay' is declared differently by sims/a.toml and sims/b.toml" in msg
    assert "--binary relay:MODE:VALUE" in msg
    assert err.value.exit_code == 2
    # A --binary of that name settles it.
    assert binaries.collect_sim_binaries([a, b], overridden={"relay"}) == {}


def test_corpus_iroh_sim_conflicts_with_own_sim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus_dir: Path
) -> None:
    mine = write(tmp_path / "mine.toml", "[[binary]]\nname = 'transfer'\npath = 'my/transfer'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="'transfer' is declared differently by .*iroh-1to1-nat"):
        binaries.collect_sim_binaries([corpus_dir / "sims" / "iroh-1to1-nat.toml", mine])


# ── host builds of sim entries ───────────────────────────────────────────────


def test_build_entries_selection(tmp_path: Path) -> None:
    specs = {
        "t": BinarySpec("t", "target", example="t"),
        "p": BinarySpec("p", "path", "bin/p"),
        "f": BinarySpec("f", "fetch", "https://h/f"),
        "b2": BinarySpec("b2", "build", bin="b2"),
        "b1": BinarySpec("b1", "build", example="b1"),
        "over": BinarySpec("over", "build", example="over"),
        "dir": BinarySpec("dir", "build", "crates/dir"),
    }
    names = [s.name for s in binaries.build_entries(specs, overrides={"over"})]
    assert names == ["b1", "b2", "dir"]


def test_build_entries_repo_unsupported(tmp_path: Path) -> None:
    spec = BinarySpec("x", "build", repo="https://github.com/a/b", origin=str(tmp_path / "s.toml"))
    with pytest.raises(UsageError) as err:
        binaries.build_entries({"x": spec})
    assert "built from https://github.com/a/b" in str(err.value)
    assert "--binary x:path:FILE" in str(err.value)
    assert binaries.build_entries({"x": spec}, overrides={"x"}) == []


WS = Path("/ws")


@pytest.mark.parametrize(
    ("spec", "kind", "tail", "guest"),
    [
        (
            BinarySpec("transfer", "build", example="transfer"),
            None,
            ["--example", "transfer"],
            f"/target/{MUSL}/release/examples/transfer",
        ),
        (
            BinarySpec("relay", "build", bin="iroh-relay"),
            None,
            ["--bin", "iroh-relay"],
            f"/target/{MUSL}/release/iroh-relay",
        ),
        (
            BinarySpec("x", "build", example="x", features=("a", "b")),
            None,
            ["--features", "a,b", "--example", "x"],
            f"/target/{MUSL}/release/examples/x",
        ),
        (
            BinarySpec("x", "build", bin="x", features=("a",), all_features=True),
            None,
            ["--all-features", "--bin", "x"],
            f"/target/{MUSL}/release/x",
        ),
        (BinarySpec("n", "build"), None, ["--example", "n"], f"/target/{MUSL}/release/examples/n"),
        (BinarySpec("n", "build"), "bin", ["--bin", "n"], f"/target/{MUSL}/release/n"),
    ],
)
def test_cargo_build_argv_and_guest_path(
    spec: BinarySpec, kind: str | None, tail: list[str], guest: str
) -> None:
    argv = binaries.cargo_build_argv(spec, MUSL, WS, kind=kind)
    assert argv == [
        "cargo", "build", "--release", "--manifest-path", "/ws/Cargo.toml", "--target", MUSL,
        *tail,
    ]  # fmt: skip
    assert binaries.guest_target_path(spec, MUSL, kind) == guest


def test_cargo_build_argv_project_dir_and_target_dir() -> None:
    spec = BinarySpec("x", "build", "crates/x", example="x")
    argv = binaries.cargo_build_argv(spec, MUSL, WS, target_dir=Path("/ws/target"))
    assert argv[3:7] == [
        "--manifest-path",
        "/ws/crates/x/Cargo.toml",
        "--target-dir",
        "/ws/target",
    ]
    abs_spec = BinarySpec("x", "build", "/elsewhere/x", example="x")
    assert binaries.cargo_build_argv(abs_spec, MUSL, WS)[4] == "/elsewhere/x/Cargo.toml"


def meta(*targets: tuple[str, str], target_dir: str = "/proj/target") -> dict:
    return {
        "packages": [
            {"name": "p", "targets": [{"name": n, "kind": [k]} for n, k in targets]},
        ],
        "target_directory": target_dir,
    }


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        (meta(("tool", "example"), ("tool", "bin")), "example"),
        (meta(("tool", "bin"), ("other", "example")), "bin"),
        (meta(("tool", "lib"), ("tool", "test")), None),
        ({}, None),
    ],
)
def test_choose_kind(metadata: dict, kind: str | None) -> None:
    assert binaries.choose_kind(metadata, "tool") == kind


class FakeCargo:
    """Plays cargo: answers metadata and 'builds' by writing the artifact."""

    def __init__(self, metadata: dict, rc: int = 0) -> None:
        self.metadata, self.rc = metadata, rc
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        if argv[1] == "metadata":
            return subprocess.CompletedProcess(argv, 0, json.dumps(self.metadata), "")
        if self.rc:
            return subprocess.CompletedProcess(argv, self.rc)
        target_dir = Path(argv[argv.index("--target-dir") + 1])
        target = argv[argv.index("--target") + 1]
        kind, name = argv[-2], argv[-1]
        sub = f"examples/{name}" if kind == "--example" else name
        out = target_dir / target / "release" / sub
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"built " + name.encode())
        return subprocess.CompletedProcess(argv, 0)


def test_build_sim_binaries(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write(ws / "Cargo.toml", "[workspace]\n")
    write(ws / "crates" / "x" / "Cargo.toml", "[package]\n")
    target_dir = tmp_path / "target"
    entries = [
        BinarySpec("transfer", "build", example="transfer"),
        BinarySpec("relay", "build", bin="iroh-relay"),
        BinarySpec("plain", "build"),  # neither: cargo metadata decides
        BinarySpec("x", "build", "crates/x", example="x"),
    ]
    cargo = FakeCargo(meta(("plain", "bin")))
    args = binaries.build_sim_binaries(entries, MUSL, target_dir, ws, run=cargo)
    assert args == [
        f"transfer:path:/target/{MUSL}/release/examples/transfer",
        f"relay:path:/target/{MUSL}/release/iroh-relay",
        f"plain:path:/target/{MUSL}/release/plain",
        f"x:path:/target/{MUSL}/release/examples/x",
    ]
    builds = [c for c in cargo.calls if c[1] == "build"]
    assert all(c[c.index("--target-dir") + 1] == str(target_dir) for c in builds)
    assert builds[3][4] == str(ws / "crates" / "x" / "Cargo.toml")
    assert [c[1] for c in cargo.calls].count("metadata") == 1


BUILD_ERRORS = [
    (BinarySpec("nope", "build"), FakeCargo(meta()), UsageError, "no example or bin named"),
    (BinarySpec("x", "build", "gone", example="x"), FakeCargo(meta()), UsageError, "no Cargo.toml"),
    (BinarySpec("x", "build", example="x"), FakeCargo(meta(), rc=101), TaskError, "exit 101"),
]


@pytest.mark.parametrize(("entry", "cargo", "error", "message"), BUILD_ERRORS)
def test_build_sim_binaries_errors(
    tmp_path: Path, entry: BinarySpec, cargo: FakeCargo, error: type, message: str
) -> None:
    write(tmp_path / "Cargo.toml", "[workspace]\n")
    with pytest.raises(error) as err:
        binaries.build_sim_binaries([entry], MUSL, tmp_path / "target", tmp_path, run=cargo)
    assert message in str(err.value)


# ── staging overrides ────────────────────────────────────────────────────────


def test_stage_path_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = write(tmp_path / "build" / "relay", "binary")
    src.chmod(0o600)
    work = tmp_path / "work"
    spec = binaries.parse_override("relay:path:build/relay")
    arg = binaries.stage_override(spec, work, MUSL, tmp_path / "target", tmp_path)
    assert arg == "relay:path:/work/binaries/relay"
    dest = work / "binaries" / "relay"
    assert dest.read_text() == "binary"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert staged(work) == ["relay"]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (f"target:{MUSL}/release/examples/transfer", f"{MUSL}/release/examples/transfer"),
        ("target:examples/transfer", f"{MUSL}/release/examples/transfer"),
        ("target:bin/relay", "release/relay"),  # no musl build: the host release one
    ],
)
def test_stage_target_prefix(tmp_path: Path, value: str, where: str) -> None:
    target_dir = tmp_path / "target"
    write(target_dir / where, where)
    work = tmp_path / "work"
    spec = BinarySpec("b", "path", value)
    assert binaries.stage_override(spec, work, MUSL, target_dir, tmp_path).endswith("/binaries/b")
    assert (work / "binaries" / "b").read_text() == where


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing/relay", "does not exist; build it first or fix the path"),
        ("folder", "is a directory; give the binary file inside it"),
        ("target:examples/nope", "does not exist"),
    ],
)
def test_stage_path_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    work = tmp_path / "work"
    spec = BinarySpec("relay", "path", value)
    with pytest.raises(UsageError) as err:
        binaries.stage_override(spec, work, MUSL, tmp_path / "target", tmp_path)
    assert message in str(err.value)
    assert f"--binary relay:path:{value}" in str(err.value)
    assert err.value.exit_code == 2
    assert staged(work) == []


def test_stage_path_relative_to_workspace_when_not_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    write(ws / "bin" / "tool", "t")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = BinarySpec("tool", "path", "bin/tool")
    binaries.stage_override(spec, tmp_path / "work", MUSL, tmp_path / "target", ws)
    assert (tmp_path / "work" / "binaries" / "tool").read_text() == "t"


# A local HTTP server stands in for the download hosts (GitHub and others), which this
# machine cannot reach.


def tarball(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch) -> Path:
    """The user's cache dir (fetch downloads are kept there), one per test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def test_stage_fetch_plain_and_cached(tmp_path: Path, http_server) -> None:
    base, routes = http_server
    routes["/dl/tool"] = b"tool binary"
    work = tmp_path / "work"
    spec = binaries.parse_override(f"tool:fetch:{base}/dl/tool")
    assert binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path) == (
        "tool:path:/work/binaries/tool"
    )
    dest = work / "binaries" / "tool"
    assert dest.read_bytes() == b"tool binary"
    assert os.access(dest, os.X_OK)
    # Cached by URL: staging again does not download again.
    dest.unlink()
    binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path)
    assert dest.read_bytes() == b"tool binary"
    assert routes.requests == ["/dl/tool"]
    # In the user's cache, not the work dir the guest writes.
    assert len(list((tmp_path / "user-cache" / "patchbay" / "fetch").rglob("tool"))) == 1
    assert not (work / ".cache").exists()


def test_stage_fetch_tarball_takes_first_file(tmp_path: Path, http_server) -> None:
    base, routes = http_server
    routes["/dl/tool.tar.gz"] = tarball({"dist/tool": b"T", "dist/README": b"R"})
    work = tmp_path / "work"
    spec = BinarySpec("mytool", "fetch", f"{base}/dl/tool.tar.gz")
    binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path)
    assert (work / "binaries" / "mytool").read_bytes() == b"T"
    assert staged(work) == ["mytool"]


@pytest.mark.parametrize(
    ("path", "body", "error", "message"),
    [
        ("/dl/missing", None, TaskError, "HTTP 404"),
        ("/dl/evil.tar.gz", tarball({"tool": b"T"}, symlink="dist/x"), TaskError, "is a link"),
        ("/dl/bad.tar.gz", b"not a tarball", TaskError, "cannot unpack"),
    ],
)
def test_stage_fetch_errors(
    tmp_path: Path, http_server, path: str, body, error: type, message: str
) -> None:
    base, routes = http_server
    if body is not None:
        routes[path] = body
    work = tmp_path / "work"
    spec = BinarySpec("tool", "fetch", base + path)
    with pytest.raises(error) as err:
        binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path)
    assert message in str(err.value)
    assert not isinstance(err.value, UsageError)
    assert staged(work) == []
    assert not [p for p in work.rglob("*") if p.name.endswith(".part")]


def test_stage_fetch_needs_http_url(tmp_path: Path) -> None:
    spec = BinarySpec("tool", "fetch", "ftp://h/tool")
    with pytest.raises(UsageError, match="fetch needs an http:// or https:// URL"):
        binaries.stage_override(spec, tmp_path / "work", MUSL, tmp_path, tmp_path)


def test_stage_build_with_fake_cargo(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    write(proj / "Cargo.toml", "[package]\n")
    cargo = FakeCargo(meta(("tool", "bin"), target_dir=str(tmp_path / "ptarget")))
    work = tmp_path / "work"
    spec = BinarySpec("tool", "build", str(proj))
    assert binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path, run=cargo) == (
        "tool:path:/work/binaries/tool"
    )
    assert (work / "binaries" / "tool").read_bytes() == b"built tool"
    metadata_call, build_call = cargo.calls
    assert metadata_call == binaries.cargo_metadata_argv(proj)
    assert build_call[-4:] == ["--target", MUSL, "--bin", "tool"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nothing", "is not a directory; give a cargo project folder"),
        ("no-manifest", "is not a cargo project (no Cargo.toml)"),
        ("no-target", "has no example or bin named tool"),
    ],
)
def test_stage_build_errors(tmp_path: Path, setup: str, message: str) -> None:
    proj = tmp_path / "proj"
    if setup != "nothing":
        proj.mkdir()
    if setup == "no-target":
        write(proj / "Cargo.toml", "[package]\n")
    work = tmp_path / "work"
    spec = BinarySpec("tool", "build", str(proj))
    with pytest.raises(UsageError) as err:
        binaries.stage_override(spec, work, MUSL, tmp_path, tmp_path, run=FakeCargo(meta()))
    assert message in str(err.value)
    assert err.value.exit_code == 2
    assert staged(work) == []


def _host_triple() -> str | None:
    if not shutil.which("cargo") or not shutil.which("rustc"):
        return None
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("host: "):
            return line.split()[1]
    return None


@pytest.mark.skipif(_host_triple() is None, reason="needs cargo and rustc")
def test_stage_build_with_real_cargo(tmp_path: Path) -> None:
    # The musl target is not installed here; the host triple exercises the same path.
    target = _host_triple()
    proj = tmp_path / "proj"
    write(proj / "Cargo.toml", '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n')
    write(proj / "src" / "lib.rs", "")
    write(proj / "examples" / "hello.rs", 'fn main() { println!("hello from example"); }\n')
    write(proj / "src" / "bin" / "hello.rs", 'fn main() { println!("hello from bin"); }\n')
    write(proj / "src" / "bin" / "other.rs", 'fn main() { println!("other bin"); }\n')
    work = tmp_path / "work"
    for name, expected in (("hello", "hello from example"), ("other", "other bin")):
        spec = binaries.parse_override(f"{name}:build:{proj}")
        arg = binaries.stage_override(spec, work, target, tmp_path / "unused", tmp_path)
        assert arg == f"{name}:path:/work/binaries/{name}"
        out = subprocess.run([work / "binaries" / name], capture_output=True, text=True)
        assert out.stdout.strip() == expected


def test_prepare_binary_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    write(ws / "Cargo.toml", "[workspace]\n")
    write(ws / "prebuilt" / "relay", "mine")
    sims = [
        write(
            ws / "sims" / "a.toml",
            "[[binary]]\nname = 'relay'\nbin = 'iroh-relay'\n"
            "[[binary]]\nname = 'transfer'\nexample = 'transfer'\n"
            "[[binary]]\nname = 'tgt'\nmode = 'target'\nexample = 'tgt'\n",
        ),
        # Declares relay differently, but the --binary relay replaces both.
        write(ws / "sims" / "b.toml", "[[binary]]\nname = 'relay'\npath = 'x/relay'\n"),
    ]
    monkeypatch.chdir(ws)
    cargo = FakeCargo(meta())
    args = binaries.prepare_binary_args(
        ["relay:path:prebuilt/relay"], sims, tmp_path / "work", MUSL, tmp_path / "target", ws, cargo
    )
    assert args == [
        f"transfer:path:/target/{MUSL}/release/examples/transfer",
        "relay:path:/work/binaries/relay",
    ]
    assert [c[-1] for c in cargo.calls] == ["transfer"]
