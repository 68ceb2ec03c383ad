"""`sim.report`: one self-contained HTML file of an invocation (the page, its data inlined).

The page's own script reads `window.PATCHBAY_REPORT` instead of the API, so the file opens
from disk or a CI artifact with no server and nothing fetched.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from .. import files
from . import logs, runs
from .api import static_file

# A report goes into mail and CI artifacts: long logs keep their end, where failures are
# (only that end is read).
LOG_CAP = 256 * 1024
# Files the page reads through the files route.
RUN_FILES = ("sim.json", "results.json")


class ReportError(Exception):
    pass


def _text_tail(base: Path, rel: list[str]) -> str:
    """The log's last LOG_CAP bytes (read as such: a huge log is never read whole), with a
    note of what was left out."""
    try:
        data, size = files.read_tail(base, rel, LOG_CAP)
    except OSError as e:
        return f"[not included in the report: {e.strerror or e}]"
    text = data.decode("utf-8", errors="replace")
    if size <= len(data):
        return text
    return f"[... {size - len(data)} earlier bytes left out of the report ...]\n{text}"


def _run_file(base: Path, rel: list[str]) -> str | None:
    try:
        return files.read_limited(base, rel, files.MAX_JSON_BYTES).decode("utf-8", "replace")
    except OSError:
        return None


def _run_data(base: Path, run: runs.RunInfo) -> dict[str, Any]:
    listed = logs.list_logs(base, run.parts)
    found = {name: _run_file(base, run.rel(name)) for name in RUN_FILES}
    events, _end, cut = logs.read_events(base, run.rel(runs.EVENTS))
    return {
        "state": runs.read_json(base, run.rel(runs.STATE)),
        "events": events,
        "eventsCut": cut,
        "logs": listed,
        "logText": {e["path"]: _text_tail(base, run.rel(e["path"])) for e in listed},
        "files": {name: text for name, text in found.items() if text is not None},
    }


def resolve_invocation(work_dir: Path, invocation: str) -> str:
    """`latest` (the `latest` link, else the newest sim-* folder) or a folder name."""
    name = runs.latest_invocation(work_dir) if invocation == "latest" else invocation
    if not name or runs.invocation_dir(work_dir, name) is None:
        raise ReportError(f"no invocation {invocation!r} in {work_dir}")
    return name


def report_data(work_dir: Path, invocation: str = "latest", baseline: Any = None) -> dict[str, Any]:
    """What the page needs for one invocation, as plain JSON data. Every file is read
    through `files`: no link followed, regular files only, logs by their tail.

    An invocation that is one try of a `sim.run --repeat` brings its other tries along
    (the page shows them together, with their summary). baseline: a `rundata.Group` to
    compare the invocation with (`sim.report --baseline DIR`)."""
    from ..sim import repeat, rundata  # the compare and --repeat readers

    work_dir = work_dir.resolve()
    name = resolve_invocation(work_dir, invocation)
    group = rundata.group_of(work_dir, name)
    names = group.folders() if group is not None and group.tries > 1 else [name]
    found = [r for r in runs.discover_runs(work_dir) if r.invocation in names]
    progress, combined = {}, {}
    for inv in names:
        prog = runs.invocation_progress(work_dir, inv)
        if prog is not None:
            progress[inv] = prog
        comb = runs.read_json(work_dir, [inv, "combined-results.json"])
        if isinstance(comb, dict):
            combined[inv] = comb
    data = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "invocation": name,
        "runs": [r.api() for r in found],
        "progress": progress,
        "combined": combined,
        "runData": {r.name: _run_data(work_dir, r) for r in found},
    }
    if group is not None and group.tries > 1:
        from .comparing import group_api

        data["groups"] = [group_api(group)]
        data["groupSummary"] = {group.label: repeat.summary_data(group)}
    if baseline is not None:
        from ..sim import compare

        head = group if group is not None else rundata.Group(name, [])
        data["compare"] = compare.compare(baseline, head).as_dict()
    return data


def _script_json(data: Any) -> str:
    # Inside <script>, "</script>" or "<!--" in a log line must not end the element.
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_report(data: dict[str, Any]) -> str:
    """The page with its stylesheet, script and data inlined: one HTML document."""
    page = static_file("index.html").decode()
    css = static_file("style.css").decode()
    js = static_file("app.js").decode().replace("</script", "<\\/script")
    page = page.replace(
        '<link rel="stylesheet" href="static/style.css">', f"<style>\n{css}\n</style>"
    )
    inline = f"<script>window.PATCHBAY_REPORT = {_script_json(data)};</script>\n"
    inline += f"<script>\n{js}\n</script>"
    page = page.replace('<script src="static/app.js"></script>', inline)
    title = html.escape(f"patchbay report {data.get('invocation', '')}")
    return page.replace("<title>patchbay results</title>", f"<title>{title}</title>")


def write_report(
    work_dir: Path, out: Path, invocation: str = "latest", baseline: Any = None
) -> Path:
    """Write the report of an invocation to out; returns out. Written whole or not at all
    (a temp file renamed onto out), and a link at out is replaced, not written through
    (out may be in the work dir, which the guest writes). baseline: report_data's."""
    text = render_report(report_data(work_dir, invocation, baseline))
    return files.write_atomic(out, text.encode("utf-8"))
