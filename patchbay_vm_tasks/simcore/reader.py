"""Read a patchbay sim file into `model.Sim`: one reader for the host and the guest.

The host uses it for `sim.check` and to stage the binaries a sim declares; the builtin
runner uses it in the guest. It follows SIM-FORMAT.md and what the Rust runner does
(RUNNER-FACTS.md): `[[extends]]`, `[sim]`, the topology (a `topos/` file or inline),
`[[binary]]`, `[[prepare]]`, step templates, step groups and counted devices are all
resolved here, so the runner only ever sees plain steps.

Errors are `model.SimError(path, key, message)` naming the file and the key, e.g.
`step[3].device` (step indexes count the file's `[[step]]` entries from 0) or
`device.client.eth0.gateway`. Unknown keys, which the Rust runner silently ignores,
are errors with `strict=True` (sim.check) and warnings in `Sim.warnings` otherwise.

Sim files are untrusted (SPEC 11). Every name that becomes a namespace, an interface, a
file or a word in a batch file is checked against `limits.NAME_RE` and its length here;
files, nesting, extends, routers, devices, `count`, steps, durations and link-condition
numbers are bounded by the constants of `limits.py`. Whatever a file holds, reading it
ends in a `Sim` or a one-line `SimError` (tests/test_reader_fuzz.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import model
from .conditions import PRESETS, describe_condition, read_condition
from .declarations import collect, infer_binary_mode
from .expansion import expand_counts, expand_steps
from .limits import check_name
from .plan import plan_text
from .references import check_references
from .step_tables import make_step, split_check
from .tables import TableReader
from .tomlfiles import TomlFiles, read_toml, resolve, show_path
from .topology import read_topology

SimError = model.SimError


def parse_condition(value: Any, path: str = "<sim>", key: str = "impair") -> model.LinkCondition:
    """A link condition from a preset name or a table (SIM-FORMAT "Link conditions")."""
    return read_condition(TableReader(strict=True), value, path, key)


def load_sim(
    path: Path | str,
    *,
    strict: bool,
    extra_binaries: tuple[str, ...] = (),
    files: TomlFiles | None = None,
) -> model.Sim:
    """Read, expand and check one sim file. `extra_binaries`: names given on the command
    line (`--binary`) that `${binary.NAME}` may use without a `[[binary]]` entry. `files`:
    the invocation's parsed files (a file another read parsed is not parsed again)."""
    sim_path = resolve(Path(path))
    shown = show_path(sim_path)
    tr = TableReader(strict, files)
    data, defs = collect(tr, sim_path, (), full=True)
    sim_table = data.get("sim", {})
    name = sim_table.get("name")
    if name is None or name == "":
        name = sim_path.stem
    else:
        # It names the sim's output folder and inspect's files, and shows in messages.
        name = check_name(name, shown, "sim.name", "sim name")
    topology, topology_ref, counts = read_topology(tr, data, sim_path, shown)
    raws = expand_steps(tr, data, shown, defs)
    steps = [make_step(tr, raw, shown) for raw in raws]
    steps, keys = expand_counts(steps, [r.key for r in raws], counts, shown)
    for i, step in enumerate(steps):
        step.index = i
    check_references(steps, keys, topology, set(defs.binaries) | set(extra_binaries), shown)
    return model.Sim(
        name=name,
        path=str(path),
        topology=topology,
        topology_ref=topology_ref,
        binaries=defs.binaries,
        prepare=defs.prepare,
        steps=steps,
        warnings=tr.warnings,
    )


def binaries_of(path: Path | str, files: TomlFiles | None = None) -> dict[str, model.Binary]:
    """The binaries one sim sees: extends (recursively, in order), `[sim] binaries`, then
    its own `[[binary]]` entries, later ones winning by name. Reads nothing else."""
    real = resolve(Path(path))
    return collect(TableReader(strict=False, files=files), real, (), full=False)[1].binaries


__all__ = [
    "PRESETS",
    "SimError",
    "TomlFiles",
    "binaries_of",
    "describe_condition",
    "infer_binary_mode",
    "load_sim",
    "parse_condition",
    "plan_text",
    "read_toml",
    "show_path",
    "split_check",
]
