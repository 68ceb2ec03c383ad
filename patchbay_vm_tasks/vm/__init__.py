"""The machine: QEMU's command line, its process and its QMP and guest-agent clients, the
accelerator, images, firmware, the cloud-init seed, shares, keys, ports, provisioning, the
guest connection, boot and resume (and what they share to start QEMU), saved states,
templates, the state dir, the running VM's record and the lifecycle. Host side; imports
nothing of sims, Rust tests, the viewer or the tasks (tests/test_vm_imports.py)."""
