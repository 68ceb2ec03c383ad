"""Run patchbay network simulations and Rust tests in a QEMU Linux VM, as Invoke tasks.

Host side: the modules here and `tasks/`. Guest side: `simrunner/` (the builtin
runner). Shared by both, standard library only: `simcore/`.
"""

__version__ = "0.2.0"
