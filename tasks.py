"""Copy this file (and `pip install patchbay-vm-tasks`) into your project to get
`invoke vm.up`, `invoke sim.run --file sims/x.toml`, `invoke test.run`, ..."""

from patchbay_vm_tasks.tasks import namespace

ns = namespace()
