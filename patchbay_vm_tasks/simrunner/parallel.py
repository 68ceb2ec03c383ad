"""Several sims at once in one runner (`run --jobs N`): who ran beside whom, and the pool.

Each sim has its own lab (namespaces named per lab, SimRun.prefix), so sims do not see
each other's networks; they do share the machine's CPUs, and under emulation a sim that
moves data slows every other one down. So every sim.json says which sims ran while it
ran (`concurrency.alongside`), and the manifest whether any two overlapped at all: numbers
of sims that ran side by side are not comparable with numbers of a run with --jobs 1.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Schedule:
    """When each sim (by its index) started and ended; thread-safe."""

    def __init__(self, names: list[str], jobs: int) -> None:
        self.names = names
        self.jobs = jobs
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._ended: dict[int, float] = {}
        self._overlapped = False

    def start(self, index: int) -> None:
        with self._lock:
            if any(j not in self._ended for j in self._started):
                self._overlapped = True  # another sim is still running as this one starts
            self._started[index] = time.monotonic()

    def end(self, index: int) -> None:
        with self._lock:
            self._ended[index] = time.monotonic()

    def alongside(self, index: int) -> list[str]:
        """The sims whose run overlapped this one's (so far: asked as it ends, every sim
        that overlapped it has started), in run order."""
        with self._lock:
            start = self._started.get(index)
            if start is None:
                return []
            end = self._ended.get(index, time.monotonic())
            found = []
            for j, other_start in sorted(self._started.items()):
                if j == index:
                    continue
                other_end = self._ended.get(j)
                if other_start < end and (other_end is None or other_end > start):
                    found.append(self.names[j])
            return found

    @property
    def concurrent(self) -> bool:
        """Whether any two sims of the run overlapped."""
        with self._lock:
            return self._overlapped

    def sim_json(self, index: int) -> dict[str, Any]:
        """sim.json's `concurrency`: the run's --jobs, and who ran beside this sim."""
        alongside = self.alongside(index)
        return {"jobs": self.jobs, "ran_concurrently": bool(alongside), "alongside": alongside}

    def manifest(self) -> dict[str, Any]:
        """manifest.json's `concurrency`."""
        return {"jobs": self.jobs, "ran_concurrently": self.concurrent}


def run_pool(count: int, jobs: int, work: Callable[[int], None], cancel: threading.Event) -> None:
    """work(0) ... work(count - 1), at most `jobs` at once, each index once, lowest first;
    no new one starts once `cancel` is set. With one job, in the calling thread. The
    calling thread waits in short joins, so that its signal handlers keep running."""
    if jobs <= 1 or count <= 1:
        for i in range(count):
            if cancel.is_set():
                return
            work(i)
        return
    lock = threading.Lock()
    next_index = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if cancel.is_set() or errors or next_index[0] >= count:
                    return
                i = next_index[0]
                next_index[0] += 1
            try:
                work(i)
            except BaseException as e:  # handed to the caller once every worker ended
                with lock:
                    errors.append(e)
                return

    threads = [
        threading.Thread(target=worker, name=f"sim-job-{n + 1}", daemon=True)
        for n in range(min(jobs, count))
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]
