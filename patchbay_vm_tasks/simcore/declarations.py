"""What a sim file and the files it `[[extends]]` declare: binaries, prepare, step
templates and step groups (SIM-FORMAT "Extends", "Binaries", "Step templates and groups")."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import model
from .format_keys import (
    BINARY_KEYS,
    EXTENDS_KEYS,
    PREPARE_KEYS,
    SIM_KEYS,
    STEP_KEYS,
    TOP_KEYS,
    TOPOLOGY_KEYS,
    USE_KEYS,
)
from .limits import MAX_EXTENDS_DEPTH, MAX_REF_CHARS, check_name, shorten
from .tables import TableReader
from .tomlfiles import expand_user, is_file, places_near, resolve, show_path

SimError = model.SimError

BINARY_MODES = tuple(model.BinaryMode)

_BINARY_STRINGS = ("path", "url", "repo", "commit", "example", "bin")


@dataclass
class Defs:
    """What a file and the files it extends declare; later entries win by name."""

    binaries: dict[str, model.Binary] = field(default_factory=dict)
    prepare: list[dict[str, Any]] = field(default_factory=list)
    templates: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    groups: dict[str, tuple[list[dict[str, Any]], str]] = field(default_factory=dict)

    def update(self, other: Defs) -> None:
        self.binaries.update(other.binaries)
        self.prepare += other.prepare
        self.templates.update(other.templates)
        self.groups.update(other.groups)


def infer_binary_mode(
    entry: dict[str, Any], path: str = "<sim>", key: str = "binary"
) -> model.BinaryMode:
    """Mode of a `[[binary]]` table: explicit, else path -> path, url -> fetch,
    repo/example/bin -> build; no source is an error."""
    mode = entry.get("mode")
    if mode is not None:
        if mode not in BINARY_MODES:
            raise SimError(
                path, f"{key}.mode", f"unknown mode {mode!r}; use one of {', '.join(BINARY_MODES)}"
            )
        return model.BinaryMode(mode)
    if entry.get("path"):
        return model.BinaryMode.PATH
    if entry.get("url"):
        return model.BinaryMode.FETCH
    if entry.get("repo") or entry.get("example") or entry.get("bin"):
        return model.BinaryMode.BUILD
    raise SimError(path, key, "has no source; give it path, url, repo, example or bin")


def _find_ref(tr: TableReader, ref: Any, referrer: Path, path: str, key: str) -> Path:
    """A file named by `[[extends]]` or `[sim] binaries`: next to the referring file,
    then one folder up, then in the cwd."""
    ref = tr.string(ref, path, key)
    if not ref:
        raise SimError(path, key, "is empty; name a TOML file")
    if len(ref) > MAX_REF_CHARS or "\0" in ref:
        raise SimError(
            path, key, f"{shorten(repr(ref))} is not a usable file name (at most {MAX_REF_CHARS})"
        )
    rel = expand_user(Path(ref), path, key)
    candidates = [rel] if rel.is_absolute() else places_near(referrer.parent, rel)
    for cand in candidates:
        if is_file(cand):
            return resolve(cand, path, key)
    looked = ", ".join(shorten(str(c.parent)) for c in candidates)
    raise SimError(
        path, key, f"{shorten(repr(ref))} not found (looked in {looked}); fix the file name"
    )


def collect(tr: TableReader, path: Path, stack: tuple[Path, ...], full: bool) -> tuple[dict, Defs]:
    """The file's TOML and what it and its extends declare. `full`: templates, groups
    and prepare too (binaries_of only needs the binaries)."""
    shown = show_path(path)
    data = tr.read_file(path, shown, None)
    stack = (*stack, path)
    defs = Defs()
    if full:
        tr.check_keys(data, TOP_KEYS, shown, "", "a sim file")
        if len(stack) > 1:
            ignored = sorted(k for k in data if k in {"step", *TOPOLOGY_KEYS})
            if ignored:
                tr.warnings.append(
                    f"{shown}: {', '.join(ignored)} ignored: a file used by [[extends]] "
                    "gives binaries, prepare, step templates and step groups only"
                )
    extends = data.get("extends", [])
    if isinstance(extends, dict):  # a single [extends] table
        extends = [extends]
    if not isinstance(extends, list):
        raise SimError(shown, "extends", 'write [[extends]] with file = "other.toml"')
    for i, ext in enumerate(extends):
        key = f"extends[{i}]"
        if not isinstance(ext, dict) or not isinstance(ext.get("file"), str):
            raise SimError(shown, key, 'an [[extends]] has no file = "other.toml"')
        if full:
            tr.check_keys(ext, EXTENDS_KEYS, shown, key, "[[extends]]")
        sub = _find_ref(tr, ext["file"], path, shown, f"{key}.file")
        if len(stack) > MAX_EXTENDS_DEPTH:
            raise SimError(
                shown,
                f"{key}.file",
                f"[[extends]] nest more than {MAX_EXTENDS_DEPTH} files deep; shorten the chain",
            )
        if sub in stack:
            chain = " -> ".join(show_path(p) for p in (*stack, sub))
            raise SimError(
                shown, f"{key}.file", f"[[extends]] loop: {chain}; remove one of the extends"
            )
        # In order: a later extends wins over an earlier one.
        defs.update(collect(tr, sub, stack, full)[1])
    sim = tr.table(data.get("sim", {}), shown, "sim")
    if full:
        tr.check_keys(sim, SIM_KEYS, shown, "sim", "[sim]")
    if sim.get("binaries") is not None:
        shared = _find_ref(tr, sim["binaries"], path, shown, "sim.binaries")
        shared_shown = show_path(shared)
        shared_data = tr.read_file(shared, shared_shown, "sim.binaries")
        defs.binaries.update(_binaries_in(tr, shared_data, shared_shown, str(shared)))
    defs.binaries.update(_binaries_in(tr, data, shown, str(path)))  # own entries win
    if full:
        defs.prepare += _prepare_in(tr, data, shown)
        defs.templates.update(_templates_in(tr, data, shown))
        defs.groups.update(_groups_in(tr, data, shown))
    return data, defs


def _binaries_in(
    tr: TableReader, data: dict[str, Any], path: str, origin: str
) -> dict[str, model.Binary]:
    """`path`: the file as shown in messages; `origin`: its resolved path."""
    value = data.get("binary", [])
    if not isinstance(value, list):
        raise SimError(path, "binary", "use [[binary]] (an array of tables) for binaries")
    out: dict[str, model.Binary] = {}
    for i, entry in enumerate(value):
        b = dataclasses.replace(_binary(tr, entry, path, i), origin=origin)
        out[b.name] = b  # within one file the later entry wins, as in the runner
    return out


def _binary(tr: TableReader, entry: Any, path: str, index: int) -> model.Binary:
    if not isinstance(entry, dict):
        raise SimError(path, f"binary[{index}]", "each [[binary]] must be a table with a name")
    name = entry.get("name")
    if name is None or name == "":
        raise SimError(path, f"binary[{index}]", 'a [[binary]] entry has no name; add name = "..."')
    check_name(name, path, f"binary[{index}].name", "binary name")
    key = f"binary.{name}"
    tr.check_keys(entry, BINARY_KEYS, path, key, "[[binary]]")
    mode = infer_binary_mode(entry, path, key)
    features = entry.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise SimError(path, f"{key}.features", "features must be a list of strings")
    all_features = entry.get("all-features", entry.get("all_features", False))
    if not isinstance(all_features, bool):
        raise SimError(path, f"{key}.all-features", "all-features must be true or false")
    fields = {k: tr.opt_string(entry, k, path, key) for k in _BINARY_STRINGS}
    if mode == model.BinaryMode.PATH and not fields["path"]:
        raise SimError(path, key, 'mode = "path" needs path = "FILE"')
    if mode == model.BinaryMode.FETCH and not fields["url"]:
        raise SimError(path, key, 'mode = "fetch" needs url = "https://..."')
    repo = fields["repo"]
    return model.Binary(
        name=name,
        mode=mode,
        path=fields["path"],
        url=fields["url"],
        repo=repo,
        # SIM-FORMAT: commit defaults to main when a repo is given.
        commit=fields["commit"] or ("main" if repo else None),
        example=fields["example"],
        bin=fields["bin"],
        features=tuple(features),
        all_features=all_features,
        origin=path,
    )


def _prepare_in(tr: TableReader, data: dict[str, Any], path: str) -> list[dict[str, Any]]:
    value = data.get("prepare", [])
    entries = [value] if isinstance(value, dict) else value  # one table or an array
    if not isinstance(entries, list):
        raise SimError(path, "prepare", "write [[prepare]] (an array of tables)")
    out = []
    for i, entry in enumerate(entries):
        key = f"prepare[{i}]"
        entry = tr.table(entry, path, key)
        tr.check_keys(entry, PREPARE_KEYS, path, key, "[[prepare]]")
        if entry.get("mode", "build") != "build":
            raise SimError(path, f"{key}.mode", 'only mode = "build" exists')
        for k in ("features", "examples", "bins"):
            if k in entry:
                tr.strings(entry[k], path, f"{key}.{k}")
        if not isinstance(entry.get("all-features", False), bool):
            raise SimError(path, f"{key}.all-features", "must be true or false")
        out.append(dict(entry))
    return out


def _named_entries(
    tr: TableReader, data: dict[str, Any], name: str, path: str, what: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(name, key for messages, table) of each `[[NAME]]` entry, which must have a name."""
    for i, entry in enumerate(tr.array_of_tables(data, name, path)):
        entry_name = entry.get("name")
        if not isinstance(entry_name, str) or not entry_name:
            raise SimError(path, f"{name}[{i}].name", f"a {what} needs a name")
        yield entry_name, f"{name}.{entry_name}", entry


def _templates_in(tr: TableReader, data: dict[str, Any], path: str) -> dict[str, tuple[dict, str]]:
    out = {}
    for name, key, entry in _named_entries(tr, data, "step-template", path, "step template"):
        tr.check_keys(entry, STEP_KEYS | {"name"}, path, key, "[[step-template]]")
        out[name] = ({k: v for k, v in entry.items() if k != "name"}, path)
    return out


def _groups_in(
    tr: TableReader, data: dict[str, Any], path: str
) -> dict[str, tuple[list[dict], str]]:
    out = {}
    for name, key, entry in _named_entries(tr, data, "step-group", path, "step group"):
        tr.check_keys(entry, frozenset({"name", "step"}), path, key, "[[step-group]]")
        steps = tr.array_of_tables(entry, "step", path)
        for j, step in enumerate(steps):
            tr.check_keys(
                step, STEP_KEYS | USE_KEYS - {"vars"}, path, f"{key}.step[{j}]", "a group step"
            )
        out[name] = (steps, path)
    return out
