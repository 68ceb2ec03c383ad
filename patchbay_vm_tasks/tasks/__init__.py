"""Invoke collections: `vm`, `sim`, `test`. Import them into your own tasks.py."""

from invoke import Collection

from ..settings import config_defaults
from .sim import sim
from .test import test
from .vm import vm


def _register_defaults(collection: Collection) -> Collection:
    """Make the `vm:` settings known to Invoke's config machinery (`invoke.yaml`,
    `INVOKE_VM_*`, `c.config.vm`); project files and the environment still win."""
    collection.configure({"vm": config_defaults()})
    return collection


# Each collection carries the defaults, so a tasks.py that imports only one works too.
for _collection in (vm, sim, test):
    _register_defaults(_collection)


def namespace() -> Collection:
    """The full namespace, as the root tasks.py and the `patchbay-vm` command use it."""
    return _register_defaults(Collection(vm, sim, test))


__all__ = ["namespace", "sim", "test", "vm"]
