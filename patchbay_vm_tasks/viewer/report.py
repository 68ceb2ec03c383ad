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

from . import logs, runs
from .api import static_file

# A report goes into mail and CI artifacts: long logs keep their end, where failures are.
LOG_CAP = 256 * 1024
# Files the page reads through the files route.
RUN_FILES = ("sim.json", "results.json")


class ReportError(Exception):
    pass


def _text_tail(path: Path) -> str:
    data = path.read_bytes()
    if len(data) <= LOG_CAP:
        return data.decode("utf-8", errors="replace")
    kept = data[-LOG_CAP:].decode("utf-8", errors="replace")
    return f"[... {len(data) - LOG_CAP} earlier bytes left out of the report ...]\n{kept}"


def _run_data(run: runs.RunInfo) -> dict[str, Any]:
    listed = logs.list_logs(run.path)
    files = {}
    for name in RUN_FILES:
        path = runs.file_in(run.path, [name])
        if path is not None:
            files[name] = path.read_text(encoding="utf-8", errors="replace")
    return {
        "state": runs.read_json(run.path / runs.STATE),
        "events": logs.read_events(run.path / runs.EVENTS)[0],
        "logs": listed,
        "logText": {e["path"]: _text_tail(run.path / e["path"]) for e in listed},
        "files": files,
    }


def resolve_invocation(work_dir: Path, invocation: str) -> str:
    """`latest` (the `latest` link, else the newest sim-* folder) or a folder name."""
    name = runs.latest_invocation(work_dir) if invocation == "latest" else invocation
    if not name or runs.invocation_dir(work_dir, name) is None:
        raise ReportError(f"no invocation {invocation!r} in {work_dir}")
    return name


def report_data(work_dir: Path, invocation: str = "latest") -> dict[str, Any]:
    """What the page needs for one invocation, as plain JSON data."""
    work_dir = work_dir.resolve()
    name = resolve_invocation(work_dir, invocation)
    folder = work_dir / name
    found = [r for r in runs.discover_runs(work_dir) if r.invocation == name]
    combined = runs.read_json(folder / "combined-results.json")
    progress = runs.invocation_progress(folder)
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "invocation": name,
        "runs": [r.api() for r in found],
        "progress": {name: progress} if progress is not None else {},
        "combined": {name: combined} if isinstance(combined, dict) else {},
        "runData": {r.name: _run_data(r) for r in found},
    }


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


def write_report(work_dir: Path, out: Path, invocation: str = "latest") -> Path:
    """Write the report of an invocation to out; returns out."""
    text = render_report(report_data(work_dir, invocation))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
