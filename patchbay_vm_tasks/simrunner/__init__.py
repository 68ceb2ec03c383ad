"""The builtin patchbay runner. Runs inside the guest, as root, on the guest's python3.

Standard library only. The host bundles this package and `simcore` into one zipapp
(`<work>/.patchbay-bin/patchbay`) and runs it where the Rust runner would run.
"""
