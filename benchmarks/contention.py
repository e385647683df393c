"""Start → results of a live demo, quiet and beside a competing torch process.

A run keeps one torch thread count from start to end (its figures depend on it, see
``engine/orchestration/threads.py``). This measures what that costs when another process
keeps the cores busy, against the count a load-following run would have dropped to:

* ``2 threads`` (the default on 2 cores) and ``1 thread``, each as the dashboard's job queue
  runs it (``python -m engine.orchestration.jobs RUN`` in the queue's environment: its
  thread count and ``GOMP_SPINCOUNT=1000``);
* ``2 threads`` with OpenMP's own spin-wait (libgomp's default, as before the queue set it);
* with ``--passive``, also ``2 threads`` with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads
  sleep at once instead of spinning while they wait);

each on a quiet machine and beside a competing process that runs 2-thread torch matrix
products for as long as the run lasts. The figure is the time from launching the job's
process to its exit (results written), i.e. Start → results.

    python -m benchmarks.contention [--preset study-setup] [--repeats 1] [--passive]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.orchestration.presets import build_config
from engine.orchestration.store import create_run
from engine.orchestration.threads import OPENMP_DEFAULTS, job_environment

OUT = Path("test-output/benchmarks/contention.json")
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(768, 768)
while True:
    a = (a @ a).tanh()
"""


def _run(preset: str, root: Path, threads: int, extra: dict[str, str]) -> float:
    """Seconds from launching the job's process to its exit (results written)."""
    run = create_run(build_config(preset), root, preset=preset)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *OPENMP_DEFAULTS)}
    # The queue's environment for a job, with this condition's changes; an empty value leaves
    # the library's own default.
    env |= job_environment(threads) | OPENMP_DEFAULTS | extra
    env = {k: v for k, v in env.items() if v}
    cmd = [sys.executable, "-m", "engine.orchestration.jobs", str(run.path)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    assert run.status().state == "done", run.status()
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="study-setup")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--passive", action="store_true",
                   help="also 2 threads with OMP_WAIT_POLICY=PASSIVE")
    args = p.parse_args(argv)
    hows = {"2 threads": (2, {}), "1 thread": (1, {}),
            "2 threads, OpenMP's own spin-wait": (2, dict.fromkeys(OPENMP_DEFAULTS, ""))}
    if args.passive:
        hows["2 threads, passive wait"] = (2, {"OMP_WAIT_POLICY": "PASSIVE"})
    loaded = "competing 2-thread torch process"
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for load in ("quiet", loaded):
            competitor = (subprocess.Popen([sys.executable, "-c", COMPETITOR])
                          if load != "quiet" else None)
            try:
                for how, (threads, extra) in hows.items():
                    key = f"{how}, {load}"
                    for _ in range(args.repeats):
                        results.setdefault(key, []).append(
                            round(_run(args.preset, Path(tmp), threads, extra), 1))
                        print(f"{key}: {results[key][-1]} s", flush=True)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
    best = {k: min(v) for k, v in results.items()}
    summary = {"preset": args.preset, "cores": os.cpu_count(), "seconds": results,
               "loaded_over_quiet": {how: round(best[f"{how}, {loaded}"] / best[f"{how}, quiet"],
                                                2) for how in hows},
               # What a fixed count costs under load against the count a load-following run
               # would have dropped to (1 thread beside a 2-thread process on 2 cores).
               "fixed_2_over_1_thread_loaded": round(best[f"2 threads, {loaded}"]
                                                     / best[f"1 thread, {loaded}"], 2),
               "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(summary, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
