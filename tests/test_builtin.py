"""The builtin runner's zipapp: what it bundles, how it starts, the guest python check."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from patchbay_vm_tasks.sim import builtin


def test_zipapp_bundles_the_guest_side_and_nothing_of_the_host(tmp_path: Path) -> None:
    dest = builtin.write_zipapp(tmp_path / "patchbay")
    names = zipfile.ZipFile(dest).namelist()
    assert "__main__.py" in names
    assert "patchbay_vm_tasks/__init__.py" in names
    assert "patchbay_vm_tasks/simcore/model.py" in names
    assert "patchbay_vm_tasks/simrunner/__init__.py" in names
    # Host modules (invoke, fabric, rich users) never reach the guest.
    assert not [n for n in names if n.count("/") == 1 and n.endswith(".py") and "__init__" not in n]
    assert builtin.zipapp_bytes() == builtin.zipapp_bytes()  # deterministic


def test_guest_python_older_than_311_is_refused_with_what_to_do(tmp_path: Path) -> None:
    app = builtin.write_zipapp(tmp_path / "patchbay")
    # Play an old interpreter: the check runs before anything needs tomllib.
    code = (
        "import runpy, sys; sys.version_info = (3, 9, 2); "
        f"runpy.run_path({str(app)!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == builtin.EXIT_OLD_PYTHON == 69
    assert "the guest's python3 is 3.9" in out.stderr
    assert "needs 3.11 or newer" in out.stderr
    assert "--patchbay-version" in out.stderr
