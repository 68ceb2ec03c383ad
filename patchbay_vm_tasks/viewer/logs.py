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


# Rust's char::is_whitespace (what str::trim strips); Python's strip() also takes \x1c-\x1f.
_RUST_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _lines(text: str) -> list[str]:
    """Rust's str::lines: split at \\n only (str.splitlines also splits at \\x1e, \\x85,
    \\u2028..., which may stand raw inside a JSON line), one trailing \\r dropped."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # serde_json refuses NaN/Infinity too


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return False, None


def _looks_like_qlog_json_seq(text: str) -> bool:
    """The first line is a qlog JSON-SEQ header (so `.sqlog` and other names count too)."""
    lines = _lines(text)
    first = lines[0].strip(_RUST_WS).lstrip("\x1e") if lines else ""
    ok, v = _json(first) if first else (False, None)
    if not ok or not isinstance(v, dict):
        return False
    schema, fmt = v.get("file_schema"), v.get("serialization_format")
    return (
        isinstance(schema, str)
        and "qlog:file" in schema
        and isinstance(fmt, str)
        and fmt.lower() == "json-seq"
    )


def _looks_like_tracing_jsonl(text: str) -> bool:
    """Among the first 5 lines, a tracing-subscriber JSON object before any non-object line."""
    for line in _lines(text)[:5]:
        line = line.strip(_RUST_WS)
        if not line:
            continue
        ok, v = _json(line)
        if not ok or not isinstance(v, dict):
            return False
        if {"timestamp", "level", "target"} <= v.keys():
            return True
    return False


def _looks_like_jsonl(text: str) -> bool:
    saw = False
    for line in _lines(text):
        line = line.strip(_RUST_WS).lstrip("\x1e")
        if not line:
            continue
        if not _json(line)[0]:
            return False
        saw = True
    return saw


def _looks_like_json(text: str) -> bool:
    t = text.strip(_RUST_WS)
    return t[:1] in ("{", "[") and _json(t)[0]


def kind_of(filename: str, sample: bytes) -> str:
    """patchbay-server's detect_log_kind, test for test and in its order."""
    if filename == "events.jsonl":
        return "lab_events"
    if filename.endswith(".tracing.jsonl"):
        return "tracing_jsonl"
    text = sample.decode("utf-8", errors="replace").lstrip("\ufeff")
    if filename.endswith(".qlog") or ".qlog-" in filename or _looks_like_qlog_json_seq(text):
        return "qlog"
    if _looks_like_tracing_jsonl(text):
        return "tracing_jsonl"
    if filename.endswith(".jsonl") or _looks_like_jsonl(text):
        return "jsonl"
    if filename.endswith(".json") or _looks_like_json(text):
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
