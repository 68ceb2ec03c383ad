"""Where a binary lies in the cargo target dir: `target:` paths and cargo's release layout.

The one rule for the host (sim.run's `--binary NAME:path:target:...`, the builds it hands
the runner, the files it copies to a guest without shared folders) and the guest (the
builtin runner resolving a sim's `path = "target:..."` and `mode = "target"`). Paths here
are relative to the target dir and '/'-separated; each side joins them to its own target
dir (the host's, or the guest's `NETSIM_TARGET_DIR`) and says which exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

PREFIX = "target:"
# `target:examples/NAME` and `target:bin/NAME`, as the Rust runner spells its shortcuts,
# and the cargo target kind each one names.
SHORTCUTS = {"examples": "example", "bin": "bin"}


def release_path(triple: str | None, kind: str, name: str) -> str:
    """Where cargo puts a release build of example or bin NAME: `<triple>/release/examples/
    NAME` or `<triple>/release/NAME`; with no triple (a build for the host) `release/...`."""
    parts = [triple] if triple else []
    parts.append("release")
    if kind == "example":
        parts.append("examples")
    parts.append(name)
    return "/".join(parts)


def artifact_candidates(
    kind: str, name: str, triple: str, other_triples: Iterable[str] = ()
) -> list[str]:
    """Where a release build of example or bin NAME may lie, most wanted first: the
    guest's triple (its musl build), then `other_triples`, then the host's release/."""
    out: list[str] = []
    for t in (triple, *other_triples, None):
        path = release_path(t, kind, name)
        if path not in out:
            out.append(path)
    return out


def is_target_path(value: str) -> bool:
    return value.startswith(PREFIX)


def candidates(value: str, triple: str) -> list[str]:
    """Where `target:REST` may lie, most wanted first. The shortcuts `target:examples/NAME`
    and `target:bin/NAME` name a release build (artifact_candidates); any other REST is
    one place, as written (`target:release/tool`, `target:<triple>/debug/tool`)."""
    rest = value[len(PREFIX) :] if is_target_path(value) else value
    folder, _, name = rest.partition("/")
    if folder in SHORTCUTS and name and "/" not in name:
        return artifact_candidates(SHORTCUTS[folder], name, triple)
    return [rest]


def resolve(value: str, triple: str, exists: Callable[[str], bool]) -> str:
    """The place of `target:REST`: the first of candidates() that `exists` says is there,
    else the first (which a message then names as missing)."""
    places = candidates(value, triple)
    return next((p for p in places if exists(p)), places[0])
