"""Sim files and lab plans: pure code shared by the host and the guest.

Standard library only: the host uses it for `sim.check` and staging, the builtin
runner (`simrunner`, bundled with this package into one zipapp) runs it on the
guest's python3 (3.11 or newer, for tomllib).
"""
