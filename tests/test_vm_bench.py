"""Benchmark: a warm `vm.up` against the cheapest possible guest round trip, one
OpenSSH `true`, in the same run. Reported (median of 5, and the ratio) in the
terminal summary; not asserted, since wall-clock bounds make flaky tests."""

from __future__ import annotations

import statistics
import subprocess
import time

import pytest
from vmfixtures import TIMINGS, VmEnv

pytestmark = pytest.mark.vm
RUNS = 5


def _median_seconds(fn) -> float:
    samples = []
    for _ in range(RUNS):
        started = time.monotonic()
        fn()
        samples.append(time.monotonic() - started)
    return statistics.median(samples)


def test_warm_up_against_one_ssh_round_trip(vm: VmEnv) -> None:
    info = vm.status()
    state = vm.state_dir
    ssh = [
        "ssh", "-i", str(state / "id_ed25519"), "-p", str(info["ssh_port"]),
        "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", "BatchMode=yes",
        "dev@127.0.0.1", "true",
    ]  # fmt: skip

    def baseline() -> None:
        subprocess.run(ssh, check=True, stdin=subprocess.DEVNULL)

    def warm_up() -> None:
        out = vm.invoke("vm.up")
        assert out.returncode == 0, out.stderr

    base = _median_seconds(baseline)
    warm = _median_seconds(warm_up)
    TIMINGS["bench: ssh true, median of 5 (s)"] = round(base, 2)
    TIMINGS["bench: warm vm.up, median of 5 (s)"] = round(warm, 2)
    TIMINGS["bench: warm vm.up / ssh true"] = round(warm / base, 2)
