"""Log files of a run folder (node and kind, as patchbay's server names them) and tails."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SAMPLE_BYTES = 16 * 1024
# The server's kind order decides the listing order within a node.
KIND_ORDER = ["tracing_jsonl", "lab_events", "jsonl", "json", "qlog", "ansi_text", "text"]


def node_of(filename: str) -> str:
    """`device.<name>.rest` or `router.<name>.rest` name a node; anything else is the run's."""
    parts = filename.split(".", 2)
    if len(parts) >= 2 and parts[0] in ("device", "router") and parts[1]:
        return parts[1]
    return "_run"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _json_lines(text: str) -> list[Any] | None:
    values = []
    for line in text.splitlines():
        line = line.strip().lstrip("\x1e")
        if not line:
            continue
        try:
            values.append(json.loads(line))
        except ValueError:
            return None
    return values or None


def kind_of(filename: str, sample: bytes) -> str:
    if filename == "events.jsonl":
        return "lab_events"
    if filename.endswith(".tracing.jsonl"):
        return "tracing_jsonl"
    text = sample.decode("utf-8", errors="replace").lstrip("\ufeff")
    if filename.endswith(".qlog") or ".qlog-" in filename:
        return "qlog"
    lines = _json_lines("\n".join(text.splitlines()[:5]))
    if lines and any(
        isinstance(v, dict) and {"timestamp", "level", "target"} <= v.keys() for v in lines
    ):
        return "tracing_jsonl"
    if filename.endswith(".jsonl") or _json_lines(text):
        return "jsonl"
    stripped = text.strip()
    if filename.endswith(".json") or (stripped[:1] in "{[" and stripped and _is_json(stripped)):
        return "json"
    if "\x1b[" in text:
        return "ansi_text"
    return "text"


def list_logs(run_dir: Path) -> list[dict[str, str]]:
    """Non-empty regular files directly in the run folder (links skipped), sorted."""
    logs = []
    try:
        entries = list(os.scandir(run_dir))
    except OSError:
        return []
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        try:
            with open(entry.path, "rb") as f:
                sample = f.read(SAMPLE_BYTES)
        except OSError:
            continue
        if sample:
            logs.append(
                {
                    "node": node_of(entry.name),
                    "kind": kind_of(entry.name, sample),
                    "path": entry.name,
                }
            )
    logs.sort(key=lambda e: (e["node"], KIND_ORDER.index(e["kind"]), e["path"]))
    return logs


def read_from(path: Path, offset: int) -> bytes:
    """The file's bytes from offset on (empty past the end)."""
    with open(path, "rb") as f:
        f.seek(max(0, offset))
        return f.read()


def complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The complete lines of data and how many bytes they take; a partial last line waits."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def parse_events(lines: list[bytes], after: int) -> list[dict]:
    """Events with an integer opid above `after`; broken lines are skipped."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        opid = event.get("opid") if isinstance(event, dict) else None
        if isinstance(opid, int) and not isinstance(opid, bool) and opid > after:
            events.append(event)
    return events


def read_events(path: Path, after: int = 0) -> tuple[list[dict], int]:
    """The complete events of events.jsonl above `after`, and the byte offset read up to."""
    try:
        data = read_from(path, 0)
    except OSError:
        return [], 0
    lines, end = complete_lines(data)
    return parse_events(lines, after), end
