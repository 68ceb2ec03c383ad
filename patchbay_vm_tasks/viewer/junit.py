"""JUnit XML for CI: a testcase per sim of a `sim.run`, a testcase per test of a `test.run`.

The writers are pure (data in, XML text out); `sim_invocation_data` reads what they need
from a work dir.

Names are the same in every run, so that a CI's history of a sim or a test lines up:
a sim is the testcase `<sim name>` of classname `patchbay.<sim name>` in the testsuite
`patchbay`; a test is `<test name>` of classname `<binary>` (cargo's hash left out of a
file name). What changes per run goes in properties and system-out: the run folder
(`sim-YYMMDD-HHMMSS`, and `<folder>/<sim dir>` per sim), a binary's full file name.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import files
from . import runs

# Per sim, the step logs (system-out) are capped: CI UIs choke on megabytes.
OUT_CAP = 64 * 1024
# XML 1.0 cannot hold most control characters, which test output does contain.
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    return _BAD_XML.sub("\ufffd", text)


def _cap(text: str, limit: int = OUT_CAP) -> str:
    return (
        text
        if len(text) <= limit
        else f"[... {len(text) - limit} chars left out ...]\n" + text[-limit:]
    )


def _xml(suites: ET.Element) -> str:
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode")


def _suite(parent: ET.Element, name: str, cases: list[ET.Element], seconds: float) -> ET.Element:
    counts = {"failures": 0, "errors": 0, "skipped": 0}
    for case in cases:
        for kind, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
            counts[kind] += case.find(tag) is not None
    suite = ET.SubElement(parent, "testsuite", name=name, tests=str(len(cases)))
    for kind, n in counts.items():
        suite.set(kind, str(n))
    suite.set("time", f"{seconds:.3f}")
    suite.extend(cases)
    return suite


def _properties(parent: ET.Element, values: dict[str, str], first: bool = False) -> None:
    """`<properties><property name= value=/>...</properties>`; first: before the cases
    (where the JUnit schema has a suite's properties)."""
    props = ET.Element("properties")
    for key, value in values.items():
        ET.SubElement(props, "property", name=key, value=_clean(value))
    if first:
        parent.insert(0, props)
    else:
        parent.append(props)


# ------------------------------------------------------------------------- sims

# The suite, and the first part of each sim's classname: the same in every run.
SIM_SUITE = "patchbay"


def sim_failure_message(sim_json: dict | None, progress_error: str | None = None) -> str:
    """`step 2 run "ping-check" on sender: <message>`, or the phase, or progress's error."""
    error = (sim_json or {}).get("error") or {}
    message = error.get("message") or progress_error or "failed"
    step = error.get("step")
    if isinstance(step, dict):
        where = f"step {step.get('index', '?')} {step.get('action') or '?'}"
        where += f' "{step["id"]}"' if step.get("id") else ""
        where += f" on {step['device']}" if step.get("device") else ""
        return f"{where}: {message}"
    if error.get("phase"):
        return f"{error['phase']}: {message}"
    return str(message)


def sim_junit_xml(
    invocation: str,
    simulations: Sequence[dict],
    sim_jsons: dict[str, dict | None],
    step_logs: dict[str, dict[str, str]],
) -> str:
    """One testsuite for the invocation, a testcase per sim.

    simulations: progress.json / manifest.json `simulations[]` ({sim, status, sim_dir,
    runtime_ms, error}); sim_jsons and step_logs are keyed by sim name (log file -> text).
    """
    root = ET.Element("testsuites", name=SIM_SUITE)
    cases = []
    total = 0.0
    for entry in simulations:
        case, seconds = _sim_case(invocation, entry, sim_jsons, step_logs)
        total += seconds
        cases.append(case)
    suite = _suite(root, SIM_SUITE, cases, total)
    _properties(suite, {"invocation": invocation}, first=True)
    return _xml(root)


def _sim_case(
    invocation: str,
    entry: dict,
    sim_jsons: dict[str, dict | None],
    step_logs: dict[str, dict[str, str]],
    extra: dict[str, str] | None = None,
) -> tuple[ET.Element, float]:
    """The testcase of one sim of an invocation, and its seconds; extra: more properties
    (a try's number), which also open its system-out."""
    name = str(entry.get("sim") or entry.get("sim_dir") or "?")
    sim_json = sim_jsons.get(name) or None
    status = (sim_json or {}).get("status") or entry.get("status") or "pending"
    ms = (sim_json or {}).get("runtime_ms", entry.get("runtime_ms")) or 0
    seconds = float(ms) / 1000 if isinstance(ms, int | float) else 0.0
    case = ET.Element("testcase", name=name, classname=f"{SIM_SUITE}.{name}")
    case.set("time", f"{seconds:.3f}")
    run_folder = f"{invocation}/{Path(str(entry.get('sim_dir') or name)).name}"
    _properties(case, {"run_folder": run_folder, **(extra or {})})
    if status == "error":
        message = sim_failure_message(sim_json, entry.get("error"))
        failure = ET.SubElement(case, "failure", message=_clean(message), type="sim")
        error = (sim_json or {}).get("error") or {}
        failure.text = _clean(
            f"{message}\nphase: {error.get('phase', '?')}\nsim_dir: {entry.get('sim_dir')}"
        )
    elif status != "ok":
        ET.SubElement(case, "skipped", message=f"sim did not finish (status {status})")
    logs = step_logs.get(name) or {}
    out = "\n".join(f"==> {path} <==\n{text.rstrip()}" for path, text in sorted(logs.items()))
    lead = "".join(f"{k}: {v}\n" for k, v in (extra or {}).items())
    ET.SubElement(case, "system-out").text = _clean(f"{lead}run folder: {run_folder}\n{_cap(out)}")
    return case, seconds


def sim_repeat_junit_xml(tries: Sequence[dict[str, Any]], total_tries: int) -> str:
    """`sim.run --repeat N`: one testsuite `patchbay`, a testcase per sim per try.

    Every try of a sim keeps the sim's stable name and classname, and says which try it
    is in its properties (`try`, `tries`) and system-out: dashboards that follow a test
    by classname and name (GitLab, Jenkins, Buildkite, Datadog) then see one test that
    passed 4 times and failed twice in this run, which is how they tell a flaky test,
    and its history lines up with runs without --repeat. (A `[try 2/6]` in the name
    would make six tests, each with a steady record, and new names whenever N changes.)

    tries: sim_invocation_data() of each try, with its `try` number added."""
    root = ET.Element("testsuites", name=SIM_SUITE)
    cases = []
    total = 0.0
    for data in tries:
        extra = {"try": str(data["try"]), "tries": str(total_tries)}
        for entry in data["simulations"]:
            case, seconds = _sim_case(
                data["invocation"], entry, data["sim_jsons"], data["step_logs"], extra
            )
            total += seconds
            cases.append(case)
    suite = _suite(root, SIM_SUITE, cases, total)
    names = ",".join(str(d["invocation"]) for d in tries)
    _properties(suite, {"invocation": names, "tries": str(total_tries)}, first=True)
    return _xml(root)


def write_sim_repeat_junit(where: tuple[Path, Sequence[str]], out: Path) -> Path:
    """The JUnit file of a `sim.run --repeat N` (where: the work dir and the tries' run
    folders, in order)."""
    work_dir, folders = where
    tries = [{**sim_invocation_data(work_dir, name), "try": k} for k, name in enumerate(folders, 1)]
    xml = sim_repeat_junit_xml(tries, len(folders))
    return files.write_atomic(out, xml.encode("utf-8"))


def _step_logs(base: Path, parts: list[str]) -> dict[str, str]:
    """The step logs of a sim folder, each by its last OUT_CAP bytes (never read whole),
    read through `files` (links and anything not a regular file left out)."""
    found = {}
    try:
        names = sorted(e.name for e in os.scandir(base.joinpath(*parts)))
    except OSError:
        return {}
    for name in names:
        if not name.endswith((".stdout.log", ".stderr.log")) or not files.safe_segment(name):
            continue
        try:
            data, size = files.read_tail(base, [*parts, name], OUT_CAP)
        except OSError:
            continue
        text = data.decode("utf-8", errors="replace")
        found[name] = (
            text if size <= len(data) else f"[... {size - len(data)} bytes left out ...]\n{text}"
        )
    return found


def sim_invocation_data(work_dir: Path, invocation: str = "latest") -> dict[str, Any]:
    """sim_junit_xml's arguments read from `work_dir/<invocation>` (or `latest`)."""
    name = runs.latest_invocation(work_dir) if invocation == "latest" else invocation
    folder = runs.invocation_dir(work_dir, name) if name else None
    if folder is None or name is None:
        raise FileNotFoundError(f"no invocation {invocation!r} in {work_dir}")
    progress = runs.invocation_progress(work_dir, name) or {}
    sims = [s for s in progress.get("simulations") or [] if isinstance(s, dict)]
    sim_jsons, step_logs = {}, {}
    for entry in sims:
        key = str(entry.get("sim") or entry.get("sim_dir") or "?")
        sim_dir = Path(str(entry.get("sim_dir") or key)).name
        if runs.invocation_dir(folder, sim_dir) is not None:
            data = runs.read_json(work_dir, [name, sim_dir, "sim.json"])
            sim_jsons[key] = data if isinstance(data, dict) else None
            step_logs[key] = _step_logs(work_dir, [name, sim_dir])
    return {"invocation": name, "simulations": sims, "sim_jsons": sim_jsons, "step_logs": step_logs}


def write_sim_junit(work_dir: Path, out: Path, invocation: str = "latest") -> Path:
    """The JUnit file of a sim.run invocation (for `sim.run --junit FILE`)."""
    xml = sim_junit_xml(**sim_invocation_data(work_dir, invocation))
    return files.write_atomic(out, xml.encode("utf-8"))


# ------------------------------------------------------------------------- tests


@dataclass(frozen=True)
class TestBinaryRun:
    """One test binary's run in the guest: its name, exit code and combined output."""

    __test__ = False  # not a pytest class

    name: str
    exit_code: int
    output: str
    seconds: float = 0.0
    try_no: int = 0  # test.run --repeat: which try (1..tries); 0 without
    tries: int = 0


@dataclass(frozen=True)
class LibtestCase:
    name: str
    outcome: str  # ok | failed | ignored
    detail: str = ""


_RESULT = re.compile(r"^test (?P<name>.+?) \.\.\. (?P<res>ok|FAILED|ignored(?:, .*)?)\s*$")
_FAIL_HEAD = re.compile(r"^---- (?P<name>.+?) (?:stdout|stderr) ----$")


def parse_libtest(output: str) -> list[LibtestCase]:
    """Per-test outcomes from libtest's pretty output, with each failure's captured output."""
    results: dict[str, str] = {}
    details: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        m = _RESULT.match(line)
        if m:
            res = m["res"]
            results[m["name"]] = "ok" if res == "ok" else "failed" if res == "FAILED" else "ignored"
            current = None
            continue
        head = _FAIL_HEAD.match(line)
        if head:
            current = head["name"]
            details.setdefault(current, [])
        elif current and (line == "failures:" or line.startswith("test result:")):
            current = None
        elif current:
            details[current].append(line)
    return [LibtestCase(n, o, "\n".join(details.get(n, [])).strip()) for n, o in results.items()]


def _panic_message(detail: str) -> str:
    for line in detail.splitlines():
        if "panicked at" in line:
            idx = detail.splitlines().index(line)
            rest = detail.splitlines()[idx + 1 : idx + 2]
            return (line.strip() + (" " + rest[0].strip() if rest else ""))[:300]
    return (detail.splitlines() or ["test failed"])[0][:300]


# The hash cargo puts in a test binary's file name (`net-3f2a9c0b1d4e5f60`): it changes
# with the compiler, the flags and the dependencies, so it is no part of a stable name.
_CARGO_HASH = re.compile(r"-[0-9a-f]{16}$")


def stable_binary_name(name: str) -> str:
    """A test binary's name without cargo's hash (`net-3f2a9c0b1d4e5f60` -> `net`)."""
    return _CARGO_HASH.sub("", name) or name


def test_run_junit_xml(binaries: Sequence[TestBinaryRun]) -> str:
    """A testsuite per binary; a testcase per libtest line, or one for the binary when its
    output has none (`harness = false`, `-q`)."""
    root = ET.Element("testsuites", name="cargo test (patchbay VM)")
    for binary in binaries:
        stable = stable_binary_name(binary.name)
        parsed = parse_libtest(binary.output)
        cases = []
        if parsed:
            for test in parsed:
                case = ET.Element("testcase", name=test.name, classname=stable, time="0.000")
                if test.outcome == "failed":
                    failure = ET.SubElement(
                        case, "failure", message=_clean(_panic_message(test.detail))
                    )
                    failure.text = _clean(_cap(test.detail))
                elif test.outcome == "ignored":
                    ET.SubElement(case, "skipped", message="ignored")
                cases.append(case)
            if binary.exit_code and not any(c.find("failure") is not None for c in cases):
                # Exited non-zero with every test passing: a crash after the tests, say so.
                case = ET.Element("testcase", name="(binary exit)", classname=stable)
                ET.SubElement(case, "failure", message=f"exit code {binary.exit_code}")
                cases.append(case)
        else:
            case = ET.Element("testcase", name=stable, classname=stable)
            case.set("time", f"{binary.seconds:.3f}")
            if binary.exit_code:
                failure = ET.SubElement(case, "failure", message=f"exit code {binary.exit_code}")
                failure.text = _clean(_cap(binary.output))
            cases.append(case)
        # --repeat: a suite per try, every try's cases with the stable names; the try is
        # a property (sim_repeat_junit_xml says why).
        tried = {"try": str(binary.try_no), "tries": str(binary.tries)} if binary.tries else {}
        for case in cases if tried else ():
            _properties(case, tried, first=True)
        suite = _suite(root, stable, cases, binary.seconds)
        if stable != binary.name or tried:
            binary_prop = {"binary": binary.name} if stable != binary.name else {}
            _properties(suite, {**binary_prop, **tried}, first=True)
        if binary.output:
            ET.SubElement(suite, "system-out").text = _clean(_cap(binary.output))
    return _xml(root)
