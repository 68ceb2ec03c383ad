"""Invoke collections: `vm`, `sim`, `test`. Import them into your own tasks.py."""

import sys

from invoke import Collection

# Invoke turns bytecode caching off before it loads a tasks file (so a project gets no
# tasks.pyc); our modules would then be compiled from source at every task's start
# (0.15-0.2 s here) when installed editable or vendored. Cache them like any library's,
# and only them: the setting is restored once they are loaded.
_dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, False
try:
    from ..settings import config_defaults
    from .sim import sim
    from .test import test
    from .vm import vm
finally:
    sys.dont_write_bytecode = _dont_write_bytecode


def _register_defaults(collection: Collection) -> Collection:
    """Make the `vm:` settings known to Invoke's config machinery (`invoke.yaml`,
    `INVOKE_VM_*`, `c.config.vm`); project files and the environment still win."""
    collection.configure({"vm": config_defaults()})
    return collection


# Each collection carries the defaults, so a tasks.py that imports only one works too
# (Invoke gives a collection's config to its own tasks); each task knows its dotted name
# for its help (tasks/common.Task).
for _collection in (vm, sim, test):
    _register_defaults(_collection)
    for _name, _task in _collection.tasks.items():
        _task.help_name = f"{_collection.name}.{_name}"


def namespace() -> Collection:
    """The full namespace, as the root tasks.py and the `patchbay-vm` command use it."""
    return _register_defaults(Collection(vm, sim, test))


def configure(collection: Collection) -> Collection:
    """Give a collection of your own the `vm:` settings, so that your own tasks in it see
    `c.config.vm` too: `ns = configure(Collection(vm, sim, mytask))`. (Invoke gives a
    collection's config only to the tasks under it; `namespace()` does this itself.)"""
    return _register_defaults(collection)


__all__ = ["configure", "namespace", "sim", "test", "vm"]
