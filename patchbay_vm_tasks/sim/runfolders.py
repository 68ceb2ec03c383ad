"""Run folders the host writes itself (a shard with no sims, a merge of shards), in the
layout the runner writes (RUNNER-FACTS 5): `sim-YYMMDD-HHMMSS[-N]` beside the others,
`latest` pointing at it, JSON files written whole.

The work dir is written by the guest too (SPEC 11): a run folder is made with mkdir (a
name that exists, a planted link included, is never reused: the next `-N` is taken),
every file goes through a temp file created exclusively and a rename (`files`), and
`latest` is replaced by a link of ours, never written through.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import files

# The runner's `-1`, `-2`, ... for runs started in the same second; a merge into a busy
# work dir could need a few more, never this many.
MAX_SUFFIX = 1000


def timestamp(when: float | None = None) -> str:
    """`%Y-%m-%dT%H:%M:%SZ`, UTC: the runner's timestamps."""
    t = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_dir(work_dir: Path, when: float | None = None) -> Path:
    """A new, empty run folder `work_dir/sim-YYMMDD-HHMMSS[-N]` (UTC), made by us."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    base = "sim-" + stamp.strftime("%y%m%d-%H%M%S")
    for n in range(MAX_SUFFIX):
        path = work_dir / (base if n == 0 else f"{base}-{n}")
        try:
            os.mkdir(path)  # exclusive: an existing name (a folder, a file, a link) is skipped
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run folder name for {base} in {work_dir}")


def point_latest(work_dir: Path, name: str) -> None:
    """`work_dir/latest` -> name (relative), replaced at once: a link of ours under a new
    name, renamed over whatever was there (a link the guest made is replaced, not used)."""
    for _attempt in range(100):
        tmp = work_dir / f".latest.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.symlink(name, tmp)
        except FileExistsError:
            continue
        try:
            os.replace(tmp, work_dir / "latest")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    raise FileExistsError(f"cannot make a temporary link in {work_dir}")


def write_json(path: Path, data: Any) -> Path:
    """data as the runner writes it (indented, a newline at the end), written whole."""
    return files.write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_text(path: Path, text: str) -> Path:
    return files.write_atomic(path, text.encode())
