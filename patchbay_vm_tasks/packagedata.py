"""The package's own data: what it reads as files rather than imports. Each is named
here and found through importlib.resources, so that moving a folder fails a test
(tests/test_packagedata.py, and the installed-wheel tests) instead of a user.

The package is always installed as files (a wheel, an editable install, a vendored
copy), so each can be had as a path: QEMU, mmdebstrap and the zipapp writer want paths.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "patchbay_vm_tasks"
# The seed's templates (user-data, meta-data, network-config); the repository keeps them
# at its top level, as `cloud-init/`, and the package holds them under the same name.
CLOUD_INIT = "cloud-init"
# Copied into our guest images: the gate a new VM waits at, and its unit.
GUEST_IMAGE = "vm/guest-image"
# The guest-side stopper, sent to the guest's python3 as text.
GUEST_STOPPER = "simrunner/stop.py"
# The viewer's page, script and style.
VIEWER_STATIC = "viewer/static"
# What the builtin runner's zipapp carries: the code that runs in the guest.
GUEST_PACKAGES = ("simcore", "simrunner")

ALL = (CLOUD_INIT, GUEST_IMAGE, GUEST_STOPPER, VIEWER_STATIC, *GUEST_PACKAGES)


def path(rel: str = "") -> Path:
    """A data file or folder of the package (`rel` with `/`; "" for the package itself)."""
    root = resources.files(PACKAGE)
    return Path(str(root.joinpath(*rel.split("/")) if rel else root))


def read_text(rel: str) -> str:
    return path(rel).read_text(encoding="utf-8")
