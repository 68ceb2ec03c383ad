"""Log files of a run folder (node and kind, as patchbay's server names them) and tails."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import files

SAMPLE_BYTES = 16 * 1024
# Files of one run folder listed (and sampled) at most; a run of ours has dozens.
MAX_LISTED = 4096
# A line of events.jsonl longer than this is skipped (ours are a few hundred bytes).
MAX_EVENT_LINE = 1024 * 1024
# What one read of events.jsonl takes at most (the live stream reads on from there); the
# report embeds the events of this much.
MAX_EVENTS_BYTES = 32 * 1024 * 1024
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


def _json(text: str) -> tuple[bool, Any]:
    # serde_json refuses NaN/Infinity too; too deep (`[` 20,000 times) is not JSON either.
    try:
        return True, files.loads_json(text)
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


def list_logs(base: Path, parts: Sequence[str] = ()) -> list[dict[str, str]]:
    """Non-empty regular files directly in the run folder base/parts (links and anything
    not a regular file skipped), sorted. A file whose sample cannot be read is left out;
    the others are still listed."""
    logs = []
    try:
        with os.scandir(base.joinpath(*parts)) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries[:MAX_LISTED]:
        try:
            if not entry.is_file(follow_symlinks=False) or not files.safe_segment(entry.name):
                continue
            sample, _size = files.read_window(base, [*parts, entry.name], 0, SAMPLE_BYTES)
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


def complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The complete lines of data and how many bytes they take; a partial last line waits."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def parse_event(line: bytes) -> dict | None:
    """One events.jsonl line as an event with an integer opid, else None (broken, not an
    object, too long or nested too deep: skipped, the stream goes on)."""
    if len(line) > MAX_EVENT_LINE:
        return None
    try:
        event = files.loads_json(line)
    except ValueError:
        return None
    opid = event.get("opid") if isinstance(event, dict) else None
    if isinstance(opid, int) and not isinstance(opid, bool):
        return event
    return None


def parse_events(lines: list[bytes], after: int | None) -> list[dict]:
    """Events with an integer opid above `after` (None: all); broken lines are skipped."""
    events = []
    for line in lines:
        event = parse_event(line)
        if event is not None and (after is None or event["opid"] > after):
            events.append(event)
    return events


def read_events(
    base: Path, rel: Sequence[str], after: int | None = None
) -> tuple[list[dict], int, bool]:
    """The complete events of an events.jsonl above `after` (None: all) among its first
    MAX_EVENTS_BYTES, the byte offset read up to, and whether the file was longer."""
    try:
        data, size = files.read_window(base, rel, 0, MAX_EVENTS_BYTES)
    except OSError:
        return [], 0, False
    lines, end = complete_lines(data)
    return parse_events(lines, after), end, size > len(data)
