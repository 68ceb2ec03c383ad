"""The guest's /app, /target and /work are named once (settings.py, beside `mounts()`
that pairs them with the host's folders); the paths below them are built from those
names (sim/runner.py GUEST_RUNNER, sim/binaries.py GUEST_BINARIES, rusttest/staging.py).
They were written out in six modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.rusttest import staging as test_staging
from patchbay_vm_tasks.sim import binaries, inputs, runner

PACKAGE = Path(settings.__file__).resolve().parent
GUEST_PATH_RE = re.compile(r"^/(app|target|work)(/|$)")
# Where the names are written: settings.py; and vm/shares.py's share tags, which this
# change left to the machine's part (TAGS could be derived from mounts()).
ALLOWED = {"settings.py", "vm/shares.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            out.add(id(first.value))
    return out


def test_no_module_writes_a_guest_path_out() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and GUEST_PATH_RE.match(node.value)
            ):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert found == []


def test_the_paths_below_them() -> None:
    assert [m[0] for m in settings.VmSettings.mounts(_settings())] == ["/app", "/target", "/work"]
    assert runner.GUEST_RUNNER == inputs.GUEST_RUNNER == "/work/.patchbay-bin/patchbay"
    assert binaries.GUEST_BINARIES == "/work/binaries"
    assert str(test_staging.GUEST_TESTS_DIR) == "/work/binaries/tests"
    assert inputs.guest_sim_path(Path("/p/sims/a.toml"), Path("/p")) == "/app/sims/a.toml"


def _settings() -> settings.VmSettings:
    # mounts() reads only the three folders.
    return SimpleNamespace(project_dir=Path("/p"), target_dir=Path("/t"), work_dir=Path("/w"))  # type: ignore[return-value]
