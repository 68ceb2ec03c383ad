"""The package's data files are found through one module (packagedata), each named
there; tests/test_packaging.py checks the same in an installed wheel and a vendored copy."""

from __future__ import annotations

from patchbay_vm_tasks import packagedata
from patchbay_vm_tasks.sim import builtin, guestrun
from patchbay_vm_tasks.vm import cloudinit, images


def test_every_named_data_file_is_there() -> None:
    for rel in packagedata.ALL:
        p = packagedata.path(rel)
        assert p.exists(), rel
        assert p.is_file() or any(p.iterdir()), rel
    assert packagedata.path() / "__init__.py" == packagedata.path("__init__.py")


def test_the_readers_use_it() -> None:
    assert {f.name for f in packagedata.path(packagedata.CLOUD_INIT).iterdir()} >= {
        f"{n}.yaml" for n in cloudinit.SEED_FILES
    }
    assert packagedata.path(packagedata.CLOUD_INIT) == cloudinit.PACKAGED_TEMPLATES
    for name in images.GUEST_FILES:
        assert (images.GUEST_FILES_DIR / name).is_file(), name
    argv = guestrun.interrupt_argv("abc")
    assert argv[argv.index("-c") + 1] == packagedata.read_text(packagedata.GUEST_STOPPER)
    assert packagedata.path() == builtin.PACKAGE
