"""The results server's storage: each pushed run a folder, an index in SQLite, retention.

    <data dir>/                    mode 0700
      index.sqlite3                the index (standard library sqlite3, WAL)
      runs/<project>/<run id>/     what the archive held, as it held it
      incoming/<push>/             a push being received and unpacked (never listed)
      trash/<run id>/              a run retention took, until it is deleted

A push is received and unpacked whole under incoming/, then its folder is renamed into
runs/ (one rename: atomic), and only then is its row written. A push that dies half-way
leaves its leftovers under incoming/, which the next start deletes; a killed server
leaves at worst a whole folder without a row, which the next start indexes. The index can
always be rebuilt from the folders (`reconcile`): a missing or unreadable index file is
made anew from them, rows whose folder is gone are dropped, folders without a row added.
The run id (`YYYYMMDD_HHMMSS_ffffff-<12 hex>`, UTC) says when the run was received, so
the order survives a rebuild.

Reading: the run list comes from memory (loaded from the index), so page loads do not
touch SQLite. A request that reads a run's files holds a reference on it (`reading`);
retention, which deletes the oldest runs once their total size is over the limit, skips
a run that is referenced, and the run just pushed, and goes on when the last reference
is let go. A run is taken out of the index and renamed into trash/ under the lock before
it is deleted, so no reader can start on a run that is going.

Without --accept-push (`writable=False`) nothing is written: the index is built in memory
from the folders, and looked at again every RESCAN_S seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sim import compare
from . import pushed, runs

INDEX = "index.sqlite3"
RUNS = "runs"
INCOMING = "incoming"
TRASH = "trash"
SCHEMA = 1
PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUN_ID = re.compile(r"([0-9]{8})_([0-9]{6})_([0-9]{6})-[0-9a-f]{12}")
# A read-only server looks for new and deleted folders at most this often.
RESCAN_S = 10.0
# Stored runs whose list of labs/sims is kept in memory (they never change).
LISTINGS = 256

_COLUMNS = (
    "path", "project", "run", "received_at", "branch", "commit_id", "pr", "pr_url", "title",
    "created_at", "base_branch", "thresholds", "note", "kind", "status", "summary", "size",
    "nfiles", "base", "comparison",
)  # fmt: skip


class DataDirBusy(Exception):
    """Another server accepting pushes holds the data dir."""


def valid_project(name: str) -> bool:
    return bool(PROJECT.fullmatch(name)) and ".." not in name


def received_at(run_id: str) -> str:
    m = RUN_ID.fullmatch(run_id)
    assert m, run_id
    d, t, us = m.groups()
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}.{us}Z"


@dataclass
class Stored:
    """One stored run, as the index holds it."""

    project: str
    run: str
    branch: str | None = None
    commit: str | None = None
    pr: int | None = None
    pr_url: str | None = None
    title: str | None = None
    created_at: str | None = None
    base_branch: str | None = None
    thresholds: list[str] = field(default_factory=list)
    note: str | None = None
    kind: str = "empty"
    status: str = "unknown"
    summary: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    nfiles: int = 0
    base: str | None = None  # the run it was compared with
    comparison: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return f"{self.project}/{self.run}"

    @property
    def received_at(self) -> str:
        return received_at(self.run)

    def meta(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "commit": self.commit,
            "pr": self.pr,
            "pr_url": self.pr_url,
            "title": self.title,
            "created_at": self.created_at,
            "base_branch": self.base_branch,
            "thresholds": self.thresholds,
        }

    def api(self, full: bool = False) -> dict[str, Any]:
        comparison = None
        if self.comparison is not None:
            shown = self.comparison if full else pushed.comparison_summary(self.comparison)
            comparison = shown | {"base": self.base}
        return {
            "path": self.path,
            "project": self.project,
            "run": self.run,
            "received_at": self.received_at,
            **self.meta(),
            "note": self.note,
            "kind": self.kind,
            "status": self.status,
            "summary": self.summary,
            "size": self.size,
            "files": self.nfiles,
            "comparison": comparison,
            "view": f"/runs#{self.path}",
            "viewer": f"/runs/{self.path}/",
        }

    def row(self) -> tuple:
        return (
            self.path, self.project, self.run, self.received_at, self.branch, self.commit,
            self.pr, self.pr_url, self.title, self.created_at, self.base_branch,
            json.dumps(self.thresholds), self.note,
            self.kind, self.status, json.dumps(self.summary), self.size, self.nfiles,
            self.base, None if self.comparison is None else json.dumps(self.comparison),
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Stored:
        return cls(
            project=row["project"],
            run=row["run"],
            branch=row["branch"],
            commit=row["commit_id"],
            pr=row["pr"],
            pr_url=row["pr_url"],
            title=row["title"],
            created_at=row["created_at"],
            base_branch=row["base_branch"],
            thresholds=json.loads(row["thresholds"] or "[]"),
            note=row["note"],
            kind=row["kind"],
            status=row["status"],
            summary=json.loads(row["summary"] or "{}"),
            size=row["size"],
            nfiles=row["nfiles"],
            base=row["base"],
            comparison=json.loads(row["comparison"]) if row["comparison"] else None,
        )


def parse_size(text: str) -> int:
    """`10GB`, `500MB`, `1.5GB`, `2GiB`, `1000` (bytes) -> bytes; ValueError otherwise.
    KB/MB/GB/TB are powers of 1000 (as patchbay-serve reads them), KiB/MiB/GiB/TiB of 1024."""
    m = re.fullmatch(r"\s*([0-9]{1,15}(?:\.[0-9]{1,6})?)\s*([KMGT]i?B|B)?\s*", text, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 10GB, 500MB, 2GiB)")
    unit = (m[2] or "B").upper()
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    base = 1024 if "I" in unit else 1000
    value = int(float(m[1]) * base**power)
    if value <= 0:
        raise ValueError(f"{text!r}: give a size above 0")
    return value


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
    shutil.rmtree(path, ignore_errors=True)


class Store:
    def __init__(
        self,
        data_dir: Path,
        *,
        writable: bool,
        retention: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.runs_dir = data_dir / RUNS
        self.incoming = data_dir / INCOMING
        self.trash = data_dir / TRASH
        self.writable = writable
        self.retention = retention
        self.lock = threading.RLock()
        self.rescanning = threading.Lock()
        self.owner: Any = None  # the lock file of a writable data dir
        self.refs: Counter[str] = Counter()
        self.runs: dict[str, Stored] = {}  # by path, in run id order
        self.generation = 0
        self.over_limit = False
        self.last_id = ""
        self.rescanned = time.monotonic()
        self.listings: OrderedDict[str, list[runs.RunInfo]] = OrderedDict()
        self.rebuilt = False  # the index was made anew from the folders at start
        self.db: sqlite3.Connection | None = None
        if writable:
            self._prepare()
        self.db = self._open_index()
        self._load()
        self.reconcile()
        if writable:
            self.enforce_retention()

    # -- the folders and the index -----------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.data_dir, 0o700)
        # One server writes a data dir: a second one would delete the first one's pushes
        # in progress (incoming/) at its start.
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.data_dir / "server.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise DataDirBusy(
                f"{self.data_dir} is in use by another server that accepts pushes"
            ) from None
        self.owner = lock
        for folder in (self.runs_dir, self.incoming, self.trash):
            if not _real_dir(folder):
                _remove_tree(folder)
                folder.mkdir(mode=0o700)
        # What a killed server left: pushes half received or unpacked, runs half deleted.
        for folder in (self.incoming, self.trash):
            for entry in os.listdir(folder):
                _remove_tree(folder / entry)

    def _open_index(self) -> sqlite3.Connection:
        if not self.writable:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            db.row_factory = sqlite3.Row
            self._create(db)
            self.rebuilt = True
            return db
        path = self.data_dir / INDEX
        existed = path.exists()
        try:
            db = self._connect(path)
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            ok, version = False, -1
        if not ok or (existed and version != SCHEMA):
            with contextlib.suppress(Exception):
                db.close()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                old = path.with_name(INDEX + suffix)
                if old.exists():
                    old.rename(path.with_name(f"{INDEX}.unreadable-{stamp}{suffix}"))
            db = self._connect(path)
            existed = False
        self._create(db)
        self.rebuilt = not existed
        return db

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        return db

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS runs (path TEXT PRIMARY KEY, project TEXT NOT NULL, "
            "run TEXT NOT NULL, received_at TEXT NOT NULL, branch TEXT, commit_id TEXT, "
            "pr INTEGER, pr_url TEXT, title TEXT, created_at TEXT, base_branch TEXT, "
            "thresholds TEXT, "
            "note TEXT, kind TEXT NOT NULL, status TEXT NOT NULL, summary TEXT NOT NULL, "
            "size INTEGER NOT NULL, nfiles INTEGER NOT NULL, base TEXT, comparison TEXT)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS runs_by_time ON runs (run)")
        db.execute(f"PRAGMA user_version={SCHEMA}")

    def _load(self) -> None:
        assert self.db is not None
        rows = self.db.execute("SELECT * FROM runs ORDER BY run").fetchall()
        loaded = {}
        for row in rows:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                stored = Stored.from_row(row)
                if valid_project(stored.project) and RUN_ID.fullmatch(stored.run):
                    loaded[stored.path] = stored
        with self.lock:
            self.runs = dict(sorted(loaded.items(), key=lambda kv: kv[1].run))
            self.last_id = max((s.run for s in self.runs.values()), default="")
            self.generation += 1

    def _insert(self, stored: Stored) -> None:
        assert self.db is not None
        marks = ", ".join("?" * len(_COLUMNS))
        self.db.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})", stored.row()
        )

    def _delete(self, path: str) -> None:
        assert self.db is not None
        self.db.execute("DELETE FROM runs WHERE path = ?", (path,))

    def folders(self) -> dict[str, tuple[str, str]]:
        """The run folders on disk: path -> (project, run id); names that are not ours
        and anything that is not a real folder are left out."""
        found: dict[str, tuple[str, str]] = {}
        try:
            projects = sorted(os.listdir(self.runs_dir))
        except OSError:
            return found
        for project in projects:
            if not valid_project(project) or not _real_dir(self.runs_dir / project):
                continue
            try:
                entries = os.listdir(self.runs_dir / project)
            except OSError:
                continue
            for run in entries:
                if RUN_ID.fullmatch(run) and _real_dir(self.runs_dir / project / run):
                    found[f"{project}/{run}"] = (project, run)
        return found

    def reconcile(self) -> tuple[int, int]:
        """Make the index agree with the folders: rows without a folder dropped, folders
        without a row indexed (oldest first, each compared with the runs before it).
        (added, dropped)."""
        on_disk = self.folders()
        with self.lock:
            gone = [p for p in self.runs if p not in on_disk]
            for path in gone:
                del self.runs[path]
                self.listings.pop(path, None)
                self._delete(path)
            if gone:
                self.generation += 1
        added = 0
        for path, (project, run) in sorted(on_disk.items(), key=lambda kv: kv[1][1]):
            if path in self.runs:
                continue
            stored = self.examine(self.runs_dir / project / run, project, run)
            with self.lock:
                if not _real_dir(self.runs_dir / project / run):
                    continue
                self._insert(stored)
                self.runs[path] = stored
                self.last_id = max(self.last_id, run)
                self.generation += 1
            added += 1
        if added:
            with self.lock:
                self.runs = dict(sorted(self.runs.items(), key=lambda kv: kv[1].run))
        self.rescanned = time.monotonic()
        return added, len(gone)

    def maybe_rescan(self) -> None:
        """Read-only: look at the folders again when RESCAN_S have passed (one request
        does it; the others go on with the list as it is)."""
        if self.writable or time.monotonic() - self.rescanned <= RESCAN_S:
            return
        if self.rescanning.acquire(blocking=False):
            try:
                self.rescanned = time.monotonic()
                self.reconcile()
            finally:
                self.rescanning.release()

    # -- what a run is -----------------------------------------------------------------

    def examine(self, tree: Path, project: str, run: str) -> Stored:
        """A run folder (stored, or still under incoming/) as the index keeps it, compared
        with its base: the newest earlier run of the base branch."""
        meta, note = pushed.read_manifest(tree)
        kind, status, summary = pushed.describe(tree)
        size, nfiles = pushed.folder_size(tree)
        stored = Stored(project, run, **{k: meta[k] for k in meta}, note=note)
        stored.kind, stored.status, stored.summary = kind, status, summary
        stored.size, stored.nfiles = size, nfiles
        self.compare_with_base(stored, tree)
        return stored

    def pick_base(self, head: Stored) -> Stored | None:
        """The run a run is compared with: the newest run received before it of the same
        project and kind on its base branch (run.json's base_branch, else main, else
        master), PR runs left out; for a run on that branch itself, the one before it."""
        with self.lock:
            earlier = [
                s
                for s in self.runs.values()
                if s.project == head.project
                and s.run < head.run
                and s.kind == head.kind
                and s.pr is None
                and s.path != head.path
            ]
        names = [head.base_branch] if head.base_branch else list(pushed.DEFAULT_BASES)
        for name in names:
            on_branch = [s for s in earlier if s.branch == name]
            if on_branch:
                return on_branch[-1]
        return None

    def compare_with_base(self, stored: Stored, tree: Path) -> None:
        if stored.kind not in ("sims", "labs"):
            return
        base = self.pick_base(stored)
        if base is None:
            return
        with self.reading(base.path) as ok:
            if not ok:
                return
            thresholds = [compare.parse_threshold(t) for t in stored.thresholds]
            result = pushed.comparison(
                self.runs_dir / base.project / base.run, tree, stored.kind, thresholds
            )
        if result is not None:
            result["base_branch"] = base.branch
            result["base_commit"] = base.commit
            stored.base, stored.comparison = base.path, result

    # -- pushes --------------------------------------------------------------------------

    def new_push_folder(self) -> Path:
        """A new folder under incoming/ for one push to be received and unpacked in."""
        return Path(os.path.realpath(self._mkdtemp()))

    def _mkdtemp(self) -> str:
        import tempfile

        return tempfile.mkdtemp(prefix="push-", dir=self.incoming)

    def _new_id(self) -> str:
        now = dt.datetime.now(dt.UTC)
        run = now.strftime("%Y%m%d_%H%M%S_%f") + "-" + secrets.token_hex(6)
        if run <= self.last_id:  # the clock went back, or two in one microsecond
            last = dt.datetime.strptime(self.last_id[:22], "%Y%m%d_%H%M%S_%f")
            bumped = last + dt.timedelta(microseconds=1)
            run = bumped.strftime("%Y%m%d_%H%M%S_%f") + "-" + secrets.token_hex(6)
        self.last_id = run
        return run

    def add(self, tree: Path, project: str) -> Stored:
        """The unpacked, complete folder tree (under incoming/) as a stored run of project:
        examined and compared where it lies, renamed into runs/, then indexed; then
        retention runs (never on this run). OSError when the disk refuses."""
        assert self.writable and valid_project(project)
        # Examined before it has its id: compared with every run indexed so far.
        examined = self.examine(tree, project, "99999999_999999_999999-ffffffffffff")
        with self.lock:
            run = self._new_id()
            examined.run = run
            folder = self.runs_dir / project
            if not _real_dir(folder):
                _remove_tree(folder)
                folder.mkdir(mode=0o700)
            os.rename(tree, folder / run)
            _fsync_dir(folder)
            try:
                self._insert(examined)
            except sqlite3.Error:
                os.rename(folder / run, self.trash / run)
                raise OSError("the index cannot be written") from None
            self.runs[examined.path] = examined
            self.generation += 1
        self.enforce_retention(protect=examined.path)
        return examined

    # -- readers and retention -------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self, path: str) -> Iterator[bool]:
        """Hold a reference on a stored run while reading it (True), or False when it is
        not (or no longer) there. Retention skips it meanwhile."""
        ok = self.acquire(path)
        try:
            yield ok
        finally:
            if ok:
                self.release(path)

    def acquire(self, path: str) -> bool:
        with self.lock:
            if path not in self.runs:
                return False
            self.refs[path] += 1
            return True

    def release(self, path: str) -> None:
        with self.lock:
            self.refs[path] -= 1
            if self.refs[path] <= 0:
                del self.refs[path]
            again = self.over_limit and not self.refs.get(path)
        if again:
            self.enforce_retention()

    def total_size(self) -> int:
        with self.lock:
            return sum(s.size for s in self.runs.values())

    def enforce_retention(self, protect: str | None = None) -> list[str]:
        """Delete the oldest runs until the total is within the limit; a run being read
        and `protect` are skipped (and taken later, once let go). The deleted paths."""
        if self.retention is None or not self.writable:
            return []
        doomed: list[Path] = []
        deleted: list[str] = []
        with self.lock:
            total = sum(s.size for s in self.runs.values())
            for stored in list(self.runs.values()):
                if total <= self.retention:
                    break
                if stored.path == protect or self.refs.get(stored.path):
                    continue
                self._delete(stored.path)
                del self.runs[stored.path]
                self.listings.pop(stored.path, None)
                target = self.trash / stored.run
                try:
                    os.rename(self.runs_dir / stored.project / stored.run, target)
                    doomed.append(target)
                except OSError:
                    pass
                with contextlib.suppress(OSError):
                    os.rmdir(self.runs_dir / stored.project)  # only when it is empty
                total -= stored.size
                deleted.append(stored.path)
            self.over_limit = total > self.retention
            if deleted:
                self.generation += 1
        for path in doomed:
            _remove_tree(path)
        return deleted

    # -- what the pages read -----------------------------------------------------------

    def get(self, path: str) -> Stored | None:
        with self.lock:
            return self.runs.get(path)

    def listing(self) -> list[Stored]:
        """Every stored run, newest first."""
        self.maybe_rescan()
        with self.lock:
            return list(reversed(self.runs.values()))

    def folder(self, stored: Stored) -> Path:
        return self.runs_dir / stored.project / stored.run

    def run_listing(self, path: str) -> list[runs.RunInfo] | None:
        """The labs and sim runs of a stored run as the viewer lists them (kept: a stored
        run never changes)."""
        with self.lock:
            cached = self.listings.get(path)
            if cached is not None:
                self.listings.move_to_end(path)
                return cached
            stored = self.runs.get(path)
        if stored is None:
            return None
        found = runs.discover_runs(self.folder(stored), (), pushed.LAB_DEPTH, pushed.LAB_FOLDERS)
        with self.lock:
            self.listings[path] = found
            while len(self.listings) > LISTINGS:
                self.listings.popitem(last=False)
        return found

    def close(self) -> None:
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None
            if self.owner is not None:
                self.owner.release()
                self.owner = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
