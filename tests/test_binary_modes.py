"""The binary modes are one enum (simcore/model.py `BinaryMode`), used end to end: the
reader's `[[binary]]` entries, sim.run's `--binary`, the builtin runner's `--binary`.
They were three tuples of strings (simcore/declarations.py, simcore/steps.py,
sim/binaries.py); the messages that list them are unchanged."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.sim import binaries
from patchbay_vm_tasks.simcore import declarations, model, reader, steps
from patchbay_vm_tasks.simcore.model import BinaryMode, SimError

PACKAGE = Path(model.__file__).resolve().parents[1]


def test_one_enum_guest_safe_and_plain_strings() -> None:
    assert [m.value for m in BinaryMode] == ["path", "fetch", "build", "target"]
    assert model.OVERRIDE_MODES == (BinaryMode.PATH, BinaryMode.FETCH, BinaryMode.BUILD)
    assert tuple(BinaryMode) == declarations.BINARY_MODES
    # A StrEnum: equal to its string, printed and written to JSON as it.
    assert BinaryMode.PATH == "path" and f"{BinaryMode.FETCH}" == "fetch"
    assert json.dumps({"mode": BinaryMode.TARGET}) == '{"mode": "target"}'


def test_each_side_hands_out_the_enum(tmp_path: Path) -> None:
    sim = tmp_path / "s.toml"
    sim.write_text(
        '[sim]\nname = "s"\n[[binary]]\nname = "a"\npath = "/bin/true"\n'
        '[[binary]]\nname = "b"\nurl = "https://h/b"\n[[binary]]\nname = "c"\nexample = "c"\n'
        '[[binary]]\nname = "d"\nmode = "target"\nbin = "d"\n'
    )
    found = reader.binaries_of(sim)
    assert {n: b.mode for n, b in found.items()} == {
        "a": BinaryMode.PATH,
        "b": BinaryMode.FETCH,
        "c": BinaryMode.BUILD,
        "d": BinaryMode.TARGET,
    }
    assert all(type(b.mode) is BinaryMode for b in found.values())
    assert type(binaries.sim_binaries(sim)["d"].mode) is BinaryMode
    assert type(binaries.parse_override("x:fetch:https://h/x").mode) is BinaryMode
    assert type(steps.parse_binary_override("x:target:y").mode) is BinaryMode


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: declarations.infer_binary_mode({"mode": "copy"}, "s.toml", "binary.x"),
            "s.toml: binary.x.mode: unknown mode 'copy'; use one of path, fetch, build, target",
        ),
        (
            lambda: steps.parse_binary_override("x:copy:y"),
            "--binary 'x:copy:y': mode must be path, fetch, build or target",
        ),
        (
            lambda: binaries.parse_override("x:target:y"),
            "--binary 'x:target:y': unknown mode 'target'; use NAME:MODE:VALUE with MODE "
            "path, fetch or build",
        ),
    ],
    ids=["sim-entry", "guest-runner", "sim-run"],
)
def test_the_messages_are_as_before(call, message: str) -> None:
    with pytest.raises((SimError, ValueError, UsageError)) as err:
        call()
    assert str(err.value) == message


def test_no_module_spells_the_modes_out_again() -> None:
    # A tuple or set of two or more mode names written as strings is a second definition.
    modes = {m.value for m in BinaryMode}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Tuple | ast.Set | ast.List):
                names = [
                    e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in modes
                ]
                if len(names) >= 2:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {names}")
    assert found == []
