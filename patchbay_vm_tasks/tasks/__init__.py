"""Invoke collections: `vm`, `sim`, `test`. Import them into your own tasks.py."""

from invoke import Collection

from .sim import sim
from .test import test
from .vm import vm


def namespace() -> Collection:
    """The full namespace, as the root tasks.py and the `patchbay-vm` command use it."""
    return Collection(vm, sim, test)


__all__ = ["namespace", "sim", "test", "vm"]
