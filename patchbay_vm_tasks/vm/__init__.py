"""The machine: QEMU's command line and accelerator, images, firmware, the cloud-init
seed, shares, keys, ports, provisioning, the guest connection, boot, resume, saved states,
templates, the state dir and the VM's lifecycle. Host side; imports nothing of sims or
Rust tests."""
