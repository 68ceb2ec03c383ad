"""Step logic without processes: interpolation, capture parsing, asserts and results.

RUNNER-FACTS section 4 is the contract. The executor (`simrunner/execute.py`) feeds
output lines and capture values in; everything here is plain functions and data so
that it is tested without a lab.
"""

from __future__ import annotations

import json
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import model, targetpaths
from .model import BinaryMode


class StepError(Exception):
    """A step cannot go on. The message is what sim.json records."""


class CaptureTimeout(StepError):
    pass


class Interrupted(StepError):
    """The run was interrupted (signal, or the host went away) while a step waited."""


# --- binaries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryOverride:
    """`--binary NAME:MODE:VALUE` from the command line."""

    name: str
    mode: BinaryMode
    value: str


def parse_binary_override(text: str) -> BinaryOverride:
    """Parse `NAME:MODE:VALUE` (VALUE may hold further colons, e.g. a URL)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--binary {text!r}: expected NAME:MODE:VALUE")
    name, mode, value = parts
    if mode not in tuple(BinaryMode):
        raise ValueError(f"--binary {text!r}: mode must be path, fetch, build or target")
    return BinaryOverride(name, BinaryMode(mode), value)


def musl_triple(machine: str | None = None) -> str:
    """The Rust musl target triple of this machine (x86_64-unknown-linux-musl, ...)."""
    machine = machine or platform.machine()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{machine}-unknown-linux-musl"


def _target_candidates(target_dir: str, kind: str, name: str, machine: str | None) -> list[str]:
    """Where a target-mode artifact may lie: the musl triple first, then any triple, then host."""
    try:
        triples = sorted(t for t in os.listdir(target_dir) if t != "release")
    except OSError:
        triples = []
    rels = targetpaths.artifact_candidates(kind, name, musl_triple(machine), triples)
    return [os.path.join(target_dir, rel) for rel in rels]


def resolve_binaries(
    binaries: Mapping[str, model.Binary],
    overrides: Iterable[BinaryOverride] = (),
    target_dir: str | None = None,
    exists: Callable[[str], bool] = os.path.isfile,
    machine: str | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Resolve sim binaries to paths in this machine: (paths, why-not for the others).

    Only `path` mode (and `target` mode, looked up in NETSIM_TARGET_DIR) resolves here:
    the host builds or fetches the others and passes them as `NAME:path:...` overrides.
    A binary that does not resolve is only an error when a step uses it.
    """
    target_dir = target_dir or os.environ.get("NETSIM_TARGET_DIR") or "target"
    paths: dict[str, str] = {}
    missing: dict[str, str] = {}
    by_name = {o.name: o for o in overrides}
    for name in sorted(set(binaries) | set(by_name)):
        if name in by_name:
            o = by_name[name]
            if o.mode != BinaryMode.PATH:
                missing[name] = (
                    f"--binary {name}:{o.mode}:... cannot be resolved by the builtin runner "
                    f"(only path mode; the host stages the others)"
                )
                continue
            paths[name] = _path_value(o.value, target_dir, exists, machine)
            continue
        b = binaries[name]
        if b.mode == BinaryMode.PATH and b.path:
            paths[name] = _path_value(b.path, target_dir, exists, machine)
        elif b.mode == BinaryMode.TARGET and (b.example or b.bin):
            kind, artifact = ("example", b.example) if b.example else ("bin", b.bin)
            cands = _target_candidates(target_dir, kind, artifact, machine)
            found = next((c for c in cands if exists(c)), None)
            if found:
                paths[name] = found
            else:
                missing[name] = f"binary '{name}' (target mode) not found in {', '.join(cands)}"
        else:
            missing[name] = (
                f"binary '{name}' has mode {b.mode}: the host must stage it "
                f"(--binary {name}:path:FILE)"
            )
    return paths, missing


def _path_value(
    value: str, target_dir: str, exists: Callable[[str], bool], machine: str | None
) -> str:
    # `target:` prefix = in the cargo target dir (SIM-FORMAT, binaries; targetpaths.py).
    if targetpaths.is_target_path(value):
        rel = targetpaths.resolve(
            value, musl_triple(machine), lambda rel: exists(os.path.join(target_dir, rel))
        )
        return os.path.join(target_dir, rel)
    return value


# --- interpolation ----------------------------------------------------------------------------


_IDENT = re.compile(r"[A-Za-z0-9_]*")


@dataclass
class Vars:
    """What `${...}` and `$NAME` resolve against. `capture(key)` may block."""

    lab_env: Mapping[str, str]
    binaries: Mapping[str, str]
    capture: Callable[[str], str]
    missing_binaries: Mapping[str, str] | None = None

    def lab_var(self, name: str) -> str | None:
        if name in self.lab_env:
            return self.lab_env[name]
        return self.lab_env.get(name.upper())


def interpolate(text: str, v: Vars) -> str:
    """Replace `${binary.X}`, `${a.b}` (captures), `${NAME}` and `$NAME` in one string."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("${", j):
            end = text.find("}", j + 2)
            if end < 0:
                raise StepError(f"unclosed '${{' in {text!r}")
            out.append(_resolve_brace(text[j + 2 : end], v))
            i = end + 1
        else:
            m = _IDENT.match(text, j + 1)
            name = m.group(0)
            value = v.lab_var(name) if name else None
            # An unknown $VAR stays as written: it may be meant for the process.
            out.append(value if value is not None else "$" + name)
            i = m.end()
    return "".join(out)


def _resolve_brace(key: str, v: Vars) -> str:
    if key.startswith("binary."):
        name = key[len("binary.") :]
        if name in v.binaries:
            return v.binaries[name]
        why = (v.missing_binaries or {}).get(name)
        raise StepError(why or f"unknown binary '${{{key}}}': check the [[binary]] entries")
    if "." in key:
        return v.capture(key)
    value = v.lab_var(key)
    if value is None:
        raise StepError(f"unknown variable '${{{key}}}'")
    return value


def interpolate_args(args: list[str], v: Vars) -> list[str]:
    """Interpolate a command line; drop a `--flag VALUE` pair whose VALUE became empty."""
    values = [interpolate(a, v) for a in args]
    out: list[str] = []
    i = 0
    while i < len(values):
        if (
            i + 1 < len(values)
            and values[i].startswith("-")
            and values[i + 1] == ""
            and args[i + 1] != ""
        ):
            i += 2
            continue
        out.append(values[i])
        i += 1
    return out


# --- captures ---------------------------------------------------------------------------------


class CaptureStore:
    """Capture values by `step.name`, shared by pump threads; the latest value wins."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._cond = threading.Condition()

    def record(self, key: str, value: str) -> None:
        with self._cond:
            self._values[key] = value
            self._cond.notify_all()

    def get(self, key: str) -> str | None:
        with self._cond:
            return self._values.get(key)

    def snapshot(self) -> dict[str, str]:
        with self._cond:
            return dict(self._values)

    def wait(
        self,
        key: str,
        until: float,
        cancelled: Callable[[], bool] = lambda: False,
        what: str = "",
    ) -> str:
        """Block until `key` has a value or `until` (time.monotonic) passes."""
        with self._cond:
            while key not in self._values:
                left = until - time.monotonic()
                if left <= 0:
                    raise CaptureTimeout(what or f"timed out waiting for capture '{key}'")
                if cancelled():
                    raise Interrupted("interrupted")
                self._cond.wait(min(left, 0.2))
            return self._values[key]


def format_value(value: Any) -> str:
    """Strings raw, every other JSON value as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pick(doc: Any, path: str) -> str | None:
    """Follow a dot path (`.a.b.0.c`, leading dot optional); None when it leads nowhere."""
    cur = doc
    for seg in (s for s in path.split(".") if s):
        if isinstance(cur, list) and seg.isdigit():
            idx = int(seg)
            if idx >= len(cur):
                return None
            cur = cur[idx]
        elif isinstance(cur, dict) and seg in cur:
            cur = cur[seg]
        else:
            return None
    return format_value(cur)


def _matches(doc: Any, match: Mapping[str, Any] | None) -> bool:
    if not match:
        return True
    if not isinstance(doc, dict):
        return False
    return all(k in doc and doc[k] == want for k, want in match.items())


def _regex_value(regex: str, line: str) -> str | None:
    m = re.search(regex, line)
    if not m:
        return None
    return m.group(1) if m.re.groups >= 1 and m.group(1) is not None else m.group(0)


def capture_from_line(line: str, cap: model.Capture, parser: model.Parser) -> str | None:
    """Value a streamed line gives one capture (text / ndjson parsers), or None."""
    if cap.regex:
        value = _regex_value(cap.regex, line)
        if value is not None:
            return value
    if parser is model.Parser.NDJSON and (cap.pick or cap.match):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not _matches(doc, cap.match):
            return None
        if cap.pick:
            return pick(doc, cap.pick)
    return None


def capture_from_document(text: str, cap: model.Capture) -> str | None:
    """Value the whole output gives one capture (json parser): parsed once, after exit."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not _matches(doc, cap.match) or not cap.pick:
        return None
    return pick(doc, cap.pick)


def json_document_values(
    pipes: Mapping[str, list[str]], captures: Mapping[str, model.Capture]
) -> dict[str, str]:
    """Capture name -> value for the json parser, from each capture's pipe joined by lines."""
    out: dict[str, str] = {}
    for name, cap in captures.items():
        value = capture_from_document("\n".join(pipes.get(cap.pipe, [])), cap)
        if value is not None:
            out[name] = value
    return out


# --- asserts ----------------------------------------------------------------------------------


_OPERATORS = (" == ", " != ", " contains ", " matches ", " >= ")


@dataclass(frozen=True)
class Check:
    lhs: str
    op: str
    rhs: str


def parse_check(text: str) -> Check:
    """Split `lhs OP rhs` at the first operator found, searched in the Rust runner's order."""
    for op in _OPERATORS:
        idx = text.find(op)
        if idx >= 0:
            return Check(text[:idx].strip(), op.strip(), text[idx + len(op) :].strip())
    raise StepError(f"assert: unrecognised check expression: {text!r}")


def evaluate_check(text: str, lookup: Callable[[str], str | None]) -> None:
    """Raise StepError with the Rust runner's message when the check fails."""
    check = parse_check(text)
    got = lookup(check.lhs)
    if got is None:
        raise StepError(f"assert: cannot resolve '{check.lhs}': not a capture")
    if check.op == "==":
        ok = got == check.rhs
    elif check.op == "!=":
        ok = got != check.rhs
    elif check.op == "contains":
        ok = check.rhs in got
    elif check.op == "matches":
        try:
            ok = re.search(check.rhs, got) is not None
        except re.error as e:
            raise StepError(f"assert: bad regex {check.rhs!r}: {e}") from None
    else:  # >=
        try:
            ok = float(got) >= float(check.rhs)
        except ValueError:
            ok = False
    if not ok:
        raise StepError(f"assert FAILED: '{check.lhs}' (got '{got}') {check.op} '{check.rhs}'")


# --- results ----------------------------------------------------------------------------------


RESULT_FIELDS = ("duration", "up_bytes", "down_bytes", "latency_ms")


def collect_result(
    step_key: str, results: Mapping[str, str], lookup: Callable[[str], str | None]
) -> dict[str, str | None] | None:
    """A results record for a step, or None when none of its fields resolves."""
    record: dict[str, str | None] = {"id": step_key}
    for f in RESULT_FIELDS:
        ref = results.get(f)
        if ref and ref.startswith("."):  # template shorthand `.cap` = `<id>.cap`
            ref = step_key + ref
        record[f] = lookup(ref) if ref else None
    if all(record[f] is None for f in RESULT_FIELDS):
        return None
    return record


def elapsed_s(record: Mapping[str, Any]) -> float | None:
    """`duration`: an integer is microseconds, a float seconds."""
    raw = record.get("duration")
    if raw is None:
        return None
    raw = str(raw).strip()
    if re.fullmatch(r"\d+", raw):
        return int(raw) / 1_000_000
    try:
        return float(raw)
    except ValueError:
        return None


def _int(raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        return None


def mb_per_s(byte_field: Any, secs: float | None) -> float | None:
    """MB/s = bytes / (s x 10^6)."""
    n = _int(byte_field)
    if n is None or not secs or secs <= 0:
        return None
    return n / (secs * 1_000_000)


def down_mb_s(record: Mapping[str, Any]) -> float | None:
    return mb_per_s(record.get("down_bytes"), elapsed_s(record))


def up_mb_s(record: Mapping[str, Any]) -> float | None:
    return mb_per_s(record.get("up_bytes"), elapsed_s(record))


def latency(record: Mapping[str, Any]) -> float | None:
    raw = record.get("latency_ms")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row(record: Mapping[str, Any]) -> list[str]:
    return [
        str(record.get("id") or ""),
        str(record.get("down_bytes") or ""),
        _fmt(elapsed_s(record), 3),
        _fmt(down_mb_s(record), 2),
        str(record.get("up_bytes") or ""),
        _fmt(up_mb_s(record), 2),
        _fmt(latency(record), 1),
    ]


_ROW_HEADERS = ["id", "down_bytes", "elapsed_s", "mb_s", "up_bytes", "up_mb_s", "latency_ms"]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table of the columns that hold at least one value."""
    active = [i for i in range(len(headers)) if any(r[i] for r in rows)]
    if not active:
        return ""
    lines = ["|" + "".join(f" {headers[i]} |" for i in active)]
    lines.append("|" + "".join(f" {'-' * len(headers[i])} |" for i in active))
    lines += ["|" + "".join(f" {r[i]} |" for i in active) for r in rows]
    return "\n".join(lines) + "\n"


def results_markdown(sim: str, records: list[Mapping[str, Any]]) -> str:
    """results.md: sim, id, down_bytes, elapsed_s, mb_s, up_bytes, up_mb_s, latency_ms."""
    return _table(["sim", *_ROW_HEADERS], [[sim, *_row(r)] for r in records])


def combined_markdown(runs: list[Mapping[str, Any]]) -> str:
    """combined-results.md: a summary per sim (Sim, N, Max Down, Max Up), then all steps.

    `runs` are combined-results.json entries: {run, sim_dir, sim, steps}.
    """
    by_sim: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_sim.setdefault(run["sim"], []).extend(run["steps"])
    lines = [
        "| Sim | N | Max Down (MB/s) | Max Up (MB/s) |",
        "| --- | - | --------------- | ------------- |",
    ]
    for sim in sorted(by_sim):
        steps = by_sim[sim]
        downs = [x for x in map(down_mb_s, steps) if x is not None]
        ups = [x for x in map(up_mb_s, steps) if x is not None]
        lines.append(
            f"| {sim} | {len(steps)} | {_fmt(max(downs) if downs else None, 2)} "
            f"| {_fmt(max(ups) if ups else None, 2)} |"
        )
    detail = [[run["run"], run["sim"], *_row(s)] for run in runs for s in run["steps"]]
    return "\n".join(lines) + "\n\n" + _table(["run", "sim", *_ROW_HEADERS], detail)
