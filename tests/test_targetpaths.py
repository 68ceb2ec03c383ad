"""`target:` paths: one rule (simcore/targetpaths.py), and its three callers agree.

The callers: the host staging a `--binary NAME:path:target:...` override
(sim/binaries.py), the host copying a sim's own `path = "target:..."` binary to a guest
without shared folders (sim/staging.py), and the builtin runner in the guest resolving
that same entry against NETSIM_TARGET_DIR (simcore/steps.py). Before, only the first
knew the `target:examples/NAME` and `target:bin/NAME` shortcuts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks.sim import binaries, staging
from patchbay_vm_tasks.sim.binaries import BinarySpec
from patchbay_vm_tasks.simcore import model, steps, targetpaths

MUSL = "x86_64-unknown-linux-musl"
GNU = "x86_64-unknown-linux-gnu"

# (the `target:` value, the files the cargo target dir holds, where all three find it;
# None: nowhere, so the host's override fails and nothing is copied to the guest)
CASES = [
    ("target:examples/transfer", [f"{MUSL}/release/examples/transfer"], "musl"),
    ("target:examples/transfer", ["release/examples/transfer"], "host"),
    (
        "target:examples/transfer",
        [f"{MUSL}/release/examples/transfer", "release/examples/transfer"],
        "musl",
    ),
    ("target:bin/iroh-relay", [f"{MUSL}/release/iroh-relay"], "musl"),
    ("target:bin/iroh-relay", ["release/iroh-relay"], "host"),
    ("target:examples/transfer", [], None),
    ("target:release/tool", ["release/tool"], "release/tool"),
    (f"target:{MUSL}/debug/tool", [f"{MUSL}/debug/tool"], f"{MUSL}/debug/tool"),
    # Not a shortcut (a further folder, no name): as written.
    ("target:examples/sub/tool", ["examples/sub/tool"], "examples/sub/tool"),
    ("target:bin/", ["bin/x"], None),
    # Another triple is not looked in for a `target:` path (mode = "target" does that).
    ("target:examples/transfer", [f"{GNU}/release/examples/transfer"], None),
]


def _expected(value: str, where: str | None) -> str | None:
    kind, _, name = value[len("target:") :].partition("/")
    sub = f"examples/{name}" if kind == "examples" else name
    return {"musl": f"{MUSL}/release/{sub}", "host": f"release/{sub}"}.get(where or "", where)


def _layout(target_dir: Path, files: list[str]) -> None:
    for rel in files:
        (target_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (target_dir / rel).write_text(rel)
    target_dir.mkdir(parents=True, exist_ok=True)


def _host_override(value: str, target_dir: Path) -> str | None:
    """sim.run --binary b:path:VALUE: the file staged, as a path in the target dir."""
    found = binaries.resolve_target_path(value, target_dir, MUSL)
    return found.relative_to(target_dir).as_posix() if found.is_file() else None


def _host_copy(sim: Path, target_dir: Path) -> str | None:
    """QEMU_VM_FS=none: the guest path sim.run copies for the sim's own entry."""
    roots = {"/app": sim.parent, "/target": target_dir, "/work": sim.parent / "work"}
    found = staging.sim_binary_paths([sim], roots, MUSL)
    return found[0].removeprefix("/target/") if found else None


def _guest(value: str, target_dir: Path) -> str | None:
    """The builtin runner with NETSIM_TARGET_DIR = the same folder (a shared /target)."""
    entry = {"b": model.Binary("b", model.BinaryMode.PATH, path=value)}
    paths, _missing = steps.resolve_binaries(entry, target_dir=str(target_dir), machine="x86_64")
    rel = Path(paths["b"]).relative_to(target_dir).as_posix()
    return rel if (target_dir / rel).is_file() else None


@pytest.mark.parametrize(("value", "files", "where"), CASES)
def test_the_three_callers_agree(
    tmp_path: Path, value: str, files: list[str], where: str | None
) -> None:
    target_dir = tmp_path / "target"
    _layout(target_dir, files)
    sim = tmp_path / "sim.toml"
    sim.write_text(f'[sim]\nname = "s"\n[[binary]]\nname = "b"\npath = "{value}"\n')
    expected = _expected(value, where)
    assert _host_override(value, target_dir) == expected
    assert _host_copy(sim, target_dir) == expected
    assert _guest(value, target_dir) == expected


@pytest.mark.parametrize("value", sorted({value for value, _files, _where in CASES}))
def test_a_missing_file_is_named_where_it_is_looked_for_first(tmp_path: Path, value: str) -> None:
    # Nothing there: host and guest name the same (first) place, nothing is copied.
    target_dir = tmp_path / "target"
    _layout(target_dir, [])
    sim = tmp_path / "sim.toml"
    sim.write_text(f'[sim]\nname = "s"\n[[binary]]\nname = "b"\npath = "{value}"\n')
    first = target_dir / targetpaths.candidates(value, MUSL)[0]
    assert binaries.resolve_target_path(value, target_dir, MUSL) == first
    assert _host_copy(sim, target_dir) is None
    entry = {"b": model.Binary("b", model.BinaryMode.PATH, path=value)}
    paths, _ = steps.resolve_binaries(entry, target_dir=str(target_dir), machine="x86_64")
    assert Path(paths["b"]) == first


@pytest.mark.parametrize(
    ("value", "places"),
    [
        ("target:examples/t", [f"{MUSL}/release/examples/t", "release/examples/t"]),
        ("target:bin/r", [f"{MUSL}/release/r", "release/r"]),
        ("target:release/x", ["release/x"]),
        ("target:", [""]),
    ],
)
def test_candidates(value: str, places: list[str]) -> None:
    assert targetpaths.candidates(value, MUSL) == places


def test_mode_target_and_the_shortcut_look_in_the_same_places_first(tmp_path: Path) -> None:
    # mode = "target" with example = NAME is `target:examples/NAME`, and also looks in
    # the other triples the folder holds, before the host's release/.
    _layout(tmp_path, [f"{GNU}/release/examples/t", "release/examples/t"])
    entry = {"t": model.Binary("t", model.BinaryMode.TARGET, example="t")}
    paths, _ = steps.resolve_binaries(entry, target_dir=str(tmp_path), machine="x86_64")
    assert paths["t"] == str(tmp_path / GNU / "release/examples/t")
    shortcut = {"t": model.Binary("t", model.BinaryMode.PATH, path="target:examples/t")}
    paths, _ = steps.resolve_binaries(shortcut, target_dir=str(tmp_path), machine="x86_64")
    assert paths["t"] == str(tmp_path / "release/examples/t")
    assert targetpaths.artifact_candidates("example", "t", MUSL, [GNU]) == [
        f"{MUSL}/release/examples/t",
        f"{GNU}/release/examples/t",
        "release/examples/t",
    ]


def test_host_builds_land_where_the_rule_says(tmp_path: Path) -> None:
    # A sim entry built on the host is handed to the runner at the release layout's place.
    spec = BinarySpec("t", model.BinaryMode.BUILD, example="t")
    assert binaries.guest_target_path(spec, MUSL) == "/target/" + targetpaths.release_path(
        MUSL, "example", "t"
    )
    assert binaries.guest_target_path(BinarySpec("r", "build", bin="r"), MUSL) == (
        f"/target/{MUSL}/release/r"
    )
