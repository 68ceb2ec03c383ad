"""Rust tests: building them with cargo for the guest's target, staging the test
binaries and running them in the guest."""
