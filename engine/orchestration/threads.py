"""A run's torch thread count: chosen before the run starts, never changed while it runs.

The thread count is part of what a run computes, not only of how fast: every parallel sum is
split per thread, so another count rounds differently, and Adam with normalisation layers
carries that on over the rounds (``smoke``'s final MAE, hospitals trained one after another:
537.0 HU on one thread, 561.8 on two).
So the count comes from settings, never from the machine's load at the moment: the same
config with the same count on the same machine gives the same figures whatever else runs.
It is recorded in ``summary.json`` → ``environment`` (and ``status.json``), a resumed run
restores it, and a finished run is reused only by a run that would use the same count.

The count is, in this order: ``--threads N`` of ``fedsct run|sweep|study``, else
``$FEDSCT_THREADS``, else ``$OMP_NUM_THREADS``, else the cores this process may use shared
among the jobs the queue runs at once (``FEDSCT_MAX_JOBS``, default 1). The price of a fixed
count: beside another busy process a run is slower than one that would drop to the free
cores (``benchmarks/contention.py`` measures it; ``benchmarks/README.md`` has the figures).

This module does not import torch until :func:`use_threads`: the command line checks its
arguments before torch loads.
"""

from __future__ import annotations

import os

THREADS_ENV = "FEDSCT_THREADS"
MAX_THREADS = 256
# OpenMP threads waiting for work spin GOMP_SPINCOUNT times before they sleep (libgomp's own
# default: 300,000). Beside another busy process the spinning takes the core the working
# thread needs. 1,000 left a quiet `study-setup` as fast (20.8–22.0 s against 19.6–21.5 s)
# and cut it beside a 2-thread torch process from 75.8–91.2 s to 42.2–47.1 s
# (benchmarks/contention.py, benchmarks/README.md). It changes how threads wait, never what
# they compute. Read when torch loads: set before.
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "1000"}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_jobs() -> int:
    """How many heavy jobs the queue runs at once (``FEDSCT_MAX_JOBS``, default 1)."""
    try:
        return max(1, int(os.environ.get("FEDSCT_MAX_JOBS", "1")))
    except ValueError:
        return 1


def parse_threads(text: str, source: str = "--threads") -> int:
    """A thread count given as text: 1 to :data:`MAX_THREADS`; ``ValueError`` with one line
    naming ``source``, the value and what is allowed."""
    shown = repr(text) if len(repr(text)) <= 24 else repr(text)[:23] + "…"
    try:
        n = int(text)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{source} {shown} is not a thread count; use a whole number from 1 "
                         f"to {MAX_THREADS} (this machine has {usable_cores()} cores)")
    return n


def default_threads() -> int:
    """The thread count a run gets unless told otherwise: ``$FEDSCT_THREADS`` (``ValueError``
    when it is not a count), else ``$OMP_NUM_THREADS`` as torch reads it, else the usable
    cores shared among the queue's parallel jobs."""
    text = os.environ.get(THREADS_ENV)
    if text not in (None, ""):
        return parse_threads(text, f"${THREADS_ENV}")
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and 1 <= int(omp) <= MAX_THREADS:
        return int(omp)
    return max(1, usable_cores() // max_jobs())


def job_environment(threads: int) -> dict[str, str]:
    """The variables a run's own process needs before torch loads: its thread count, and
    :data:`OPENMP_DEFAULTS` where this environment does not set them."""
    count = str(threads)
    return ({k: v for k, v in OPENMP_DEFAULTS.items() if k not in os.environ}
            | {THREADS_ENV: count, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count})


def use_threads(n: int) -> int:
    """Set torch's thread count for this process (before the run starts); returns it."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
