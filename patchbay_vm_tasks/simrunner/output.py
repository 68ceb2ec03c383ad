"""The run folder, field for field as the Rust runner writes it (RUNNER-FACTS section 5).

<work>/sim-YYMMDD-HHMMSS/            run root (UTC; -1, -2 on collision)
    progress.json manifest.json combined-results.json combined-results.md
    <sim>/sim.json results.json results.md events.jsonl state.json device.*.log certs/ files/
<work>/latest -> sim-YYMMDD-HHMMSS   relative symlink to the newest run root
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..simcore import steps

try:
    from .. import __version__ as VERSION
except ImportError:  # bundled without the top-level package
    VERSION = "unknown"

RUNNER = {"name": "builtin", "version": VERSION}


def timestamp(when: float | None = None) -> str:
    """`%Y-%m-%dT%H:%M:%SZ`, UTC."""
    t = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temp file + rename): a viewer never reads half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def create_unique_dir(parent: Path, base: str) -> Path:
    """mkdir `base`, else `base-1`, `base-2`, ...: atomic, so concurrent runners never share."""
    n = 0
    while True:
        path = parent / (base if n == 0 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def point_latest(work: Path, run_name: str) -> None:
    """Replace `<work>/latest` atomically: symlink under a temp name, then rename over."""
    tmp = work / f".latest.{os.getpid()}.{threading.get_ident()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(run_name, tmp)
    os.replace(tmp, work / "latest")


def create_run_root(work: Path, now: float | None = None) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    root = create_unique_dir(work, "sim-" + stamp.strftime("%y%m%d-%H%M%S"))
    point_latest(work, root.name)
    return root


def sanitize(name: str) -> str:
    """A sim name as one path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "sim"


def environment() -> dict[str, Any]:
    """manifest.json `environment`: where the run happened; accel/qemu from the host."""
    env: dict[str, Any] = {
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "in_vm": os.environ.get("NETSIM_IN_VM") == "1",
    }
    for key, var in (("accel", "PATCHBAY_VM_ACCEL"), ("qemu_version", "PATCHBAY_VM_QEMU_VERSION")):
        if os.environ.get(var):
            env[key] = os.environ[var]
    return env


class EventLog:
    """events.jsonl: one `{opid, timestamp, kind, ...}` object a line, flushed as written."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()
        self.opid = 0

    def emit(self, kind: str, fields: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            if self._file.closed:
                return
            self.opid += 1
            rec = {"opid": self.opid, "timestamp": timestamp(), "kind": kind, **(fields or {})}
            self._file.write(json.dumps(rec, default=str) + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class SimEntry:
    """One sim of progress.json / manifest.json."""

    sim: str
    status: str = "pending"  # pending | running | ok | error
    sim_dir: str | None = None
    runtime_ms: int | None = None
    sim_json: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sim": self.sim,
            "status": self.status,
            "sim_dir": self.sim_dir,
            "runtime_ms": self.runtime_ms,
            "sim_json": self.sim_json,
            "error": self.error,
        }


@dataclass
class RunFolder:
    """The run root and what progress.json, manifest.json and combined-results say about it."""

    root: Path
    sims: list[SimEntry]
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    status: str = "running"
    interrupted: bool = False
    ended: float | None = None
    # combined-results runs by sim index: in run order, however the sims' ends interleave
    results_by_index: dict[int, dict[str, Any]] = field(default_factory=dict)
    # manifest.json `concurrency` (`run --jobs`): set by the caller
    concurrency: Callable[[], dict[str, Any]] | None = None
    # sims end in several threads with --jobs: one writer of the run's files at a time
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def results(self) -> list[dict[str, Any]]:
        return [self.results_by_index[i] for i in sorted(self.results_by_index)]

    @property
    def name(self) -> str:
        return self.root.name

    @classmethod
    def create(cls, work: Path, sim_names: list[str]) -> RunFolder:
        run = cls(create_run_root(work), [SimEntry(n) for n in sim_names])
        run.write_progress()
        run.write_manifest()
        run.write_combined()
        return run

    def counts(self) -> tuple[int, int]:
        ok = sum(1 for s in self.sims if s.status == "ok")
        err = sum(1 for s in self.sims if s.status == "error")
        return ok, err

    def write_progress(self) -> None:
        ok, err = self.counts()
        pending = [s.sim for s in self.sims if s.status in ("pending", "running")]
        running = [s.sim for s in self.sims if s.status == "running"]
        data = {
            "run": self.name,
            "status": self.status,
            "started_at": timestamp(self.started),
            "updated_at": timestamp(),
            "total": len(self.sims),
            "completed": ok + err,
            "ok": ok,
            "error": err,
            "current_sim": (running or pending or [None])[0] if self.status == "running" else None,
            "simulations": [s.as_dict() for s in self.sims],
        }
        if len(running) > 1:
            data["running"] = running  # `run --jobs`: current_sim is the first of these
        if self.interrupted:
            data["interrupted"] = True
        write_json(self.root / "progress.json", data)

    def write_manifest(self) -> None:
        done = self.ended is not None
        data = {
            "run": self.name,
            "started_at": timestamp(self.started),
            "status": self.status,
            "ended_at": timestamp(self.ended) if done else None,
            "runtime_ms": int((time.monotonic() - self.started_mono) * 1000) if done else None,
            "success": (all(s.status == "ok" for s in self.sims) and not self.interrupted)
            if done
            else None,
            "runner": RUNNER,
            "environment": environment(),
            "simulations": [s.as_dict() for s in self.sims],
        }
        if self.concurrency is not None:
            data["concurrency"] = self.concurrency()
        if self.interrupted:
            data["interrupted"] = True
        write_json(self.root / "manifest.json", data)

    def write_combined(self) -> None:
        write_json(self.root / "combined-results.json", {"runs": self.results})
        write_text(self.root / "combined-results.md", steps.combined_markdown(self.results))

    def sim_started(self, index: int) -> None:
        with self.lock:
            self.sims[index].status = "running"
            self.write_progress()

    def sim_ended(
        self,
        index: int,
        sim_dir: Path,
        ok: bool,
        runtime_ms: int,
        error: str | None,
        records: list[dict[str, Any]],
    ) -> None:
        with self.lock:
            entry = self.sims[index]
            entry.status = "ok" if ok else "error"
            entry.sim_dir = sim_dir.name
            entry.runtime_ms = runtime_ms
            entry.sim_json = f"{sim_dir.name}/sim.json"
            entry.error = error
            if ok and records:
                self.results_by_index[index] = {
                    "run": self.name,
                    "sim_dir": sim_dir.name,
                    "sim": entry.sim,
                    "steps": records,
                }
            self.write_progress()
            self.write_combined()
            self.write_manifest()

    def finish(self, interrupted: bool = False) -> None:
        with self.lock:
            self.interrupted = interrupted
            self.status = "done"
            self.ended = time.time()
            self.write_progress()
            self.write_combined()
            self.write_manifest()


def write_results(sim_dir: Path, sim: str, records: list[dict[str, Any]]) -> None:
    """results.json and results.md (only called for a sim that succeeded, with records)."""
    write_json(sim_dir / "results.json", {"sim": sim, "steps": records})
    write_text(sim_dir / "results.md", steps.results_markdown(sim, records))


def list_logs(sim_dir: Path) -> list[dict[str, str]]:
    """The step logs of a sim folder, {node, kind, path}: `device.<dev>.<id>.<pipe>.log`."""
    out = []
    for p in sorted(sim_dir.glob("device.*.log")):
        parts = p.name.split(".")
        out.append({"node": parts[1] if len(parts) > 2 else "", "kind": "text", "path": p.name})
    return out
