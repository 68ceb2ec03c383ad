"""Build and tear down the iroh-1to10-public lab N times; print median seconds as JSON.

Run as root, on the host or in the guest (standard library only):
    python3 benchmarks/lab_build.py [N]
The topology is `topos/1to10-public.toml` of the corpus (router `dc`, devices
`fetcher-0..9` and `provider`: 13 namespaces with the lab root), built by hand so that
the benchmark needs neither the corpus nor the reader. Target in the emulated (TCG)
guest: build <= 3 s, teardown <= 1 s.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchbay_vm_tasks.simcore import model  # noqa: E402 (after the path fix)
from patchbay_vm_tasks.simrunner.lab import Lab  # noqa: E402


def topology() -> model.Topology:
    devices = [f"fetcher-{i}" for i in range(10)] + ["provider"]
    return model.Topology(
        routers=(model.Router("dc"),),
        devices=tuple(model.Device(d, (model.Interface("eth0", "dc"),), "eth0") for d in devices),
    )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    builds, teardowns = [], []
    for n in range(runs):
        lab = Lab(topology(), f"bench{os.getpid() % 10000}{n}", lambda kind, fields: None)
        t0 = time.monotonic()
        try:
            lab.build()
            t1 = time.monotonic()
        finally:
            t2 = time.monotonic()
            lab.teardown()
            t3 = time.monotonic()
        builds.append(t1 - t0)
        teardowns.append(t3 - t2)
    print(
        json.dumps(
            {
                "topology": "1to10-public",
                "namespaces": len(lab.plan.namespaces),
                "runs": runs,
                "build_s": round(statistics.median(builds), 4),
                "teardown_s": round(statistics.median(teardowns), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
