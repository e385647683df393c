"""Torch threads that fit the cores other processes leave free.

Two torch processes that each use every core slow each other several-fold (oversubscribed
threads spin and wait on each other): on 2 cores a 2-thread run shared with another 2-thread
torch process takes far longer than a 1-thread run. A background job therefore uses the
cores that no other process is busy with, re-checked while it runs (each round, each
progress report of an attack), within the cap the job queue gives it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
MIN_INTERVAL_S = 2.0  # averaging window: shorter windows follow scheduler noise


def _busy_and_total() -> tuple[float, float] | None:
    """Busy and total CPU time of the whole machine so far, seconds (None off Linux)."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
        ticks = [float(v) for v in fields[:8]]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class ThreadGovernor:
    """Sets ``torch.set_num_threads`` to the free cores, between 1 and ``cap``.

    Call :meth:`update` from the thread that runs torch (OpenMP's thread count is per
    calling thread); it is cheap and does nothing until ``MIN_INTERVAL_S`` have passed.
    """

    def __init__(self, cap: int, cores: int | None = None) -> None:
        if cap < 1:
            raise ValueError(f"thread cap must be at least 1, got {cap}")
        self.cap = cap
        self.cores = cores or os.cpu_count() or 1
        self.threads = torch.get_num_threads()
        self._mark()

    def _mark(self) -> None:
        self._at = time.monotonic()
        self._own = time.process_time()
        self._machine = _busy_and_total()

    def others_busy(self) -> float | None:
        """Cores other processes kept busy since the last mark (None off Linux)."""
        now = _busy_and_total()
        elapsed = time.monotonic() - self._at
        if now is None or self._machine is None or elapsed <= 0:
            return None
        machine_busy = now[0] - self._machine[0]
        own = time.process_time() - self._own
        return max(0.0, machine_busy - own) / elapsed

    def update(self, force: bool = False) -> int:
        """Re-check the machine (at most every ``MIN_INTERVAL_S`` unless ``force``) and set
        torch's thread count; returns it."""
        if not force and time.monotonic() - self._at < MIN_INTERVAL_S:
            return self.threads
        others = self.others_busy()
        self._mark()
        if others is None:
            wanted = self.cap
        else:
            wanted = max(1, min(self.cap, round(self.cores - others)))
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            self.threads = wanted
        return self.threads

    def start(self, sample_s: float = 0.5) -> int:
        """The first setting, from a short look at the machine before any work starts."""
        self._mark()
        time.sleep(sample_s)
        return self.update(force=True)
