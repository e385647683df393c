"""Start → results of a live demo, quiet and beside a competing torch process.

Four conditions, one after another in fresh run folders:

* ``fixed threads``: the run as a plain ``fedsct run`` (torch's default: one thread per core),
  which is how dashboard jobs ran before they fitted their threads to the machine;
* ``job (fitted threads)``: the same run as the dashboard's job queue runs it
  (``python -m engine.orchestration.jobs RUN``, threads re-fitted to the free cores);

each on a quiet machine and beside a competing process that runs 2-thread torch matrix
products for as long as the run lasts. The figure is the run's own wall time
(``summary.json`` → ``timing.wall_s``) plus process start-up, i.e. Start → results.

    python -m benchmarks.contention [--preset study-setup] [--repeats 1]
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
from engine.orchestration.queue import THREADS_ENV
from engine.orchestration.store import create_run

OUT = Path("test-output/benchmarks/contention.json")
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(768, 768)
while True:
    a = (a @ a).tanh()
"""


def _run(preset: str, root: Path, how: str) -> float:
    """Seconds from launching the run's process to its exit (results written)."""
    run = create_run(build_config(preset), root, preset=preset)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV)}
    if how == "job":
        cores = str(os.cpu_count() or 1)
        env |= {THREADS_ENV: cores, "OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores}
        cmd = [sys.executable, "-m", "engine.orchestration.jobs", str(run.path)]
    else:
        cmd = [sys.executable, "-c", "import sys; from pathlib import Path; from "
               "engine.orchestration.experiment import execute; from engine.core.run_folder "
               "import RunFolder; sys.exit(execute(RunFolder(Path(sys.argv[1]))) is None)",
               str(run.path)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    assert run.status()["state"] == "done", run.status()
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="study-setup")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for load in ("quiet", "competing 2-thread torch process"):
            competitor = (subprocess.Popen([sys.executable, "-c", COMPETITOR])
                          if load != "quiet" else None)
            try:
                for how, label in (("fixed", "fixed threads"), ("job", "job (fitted threads)")):
                    key = f"{label}, {load}"
                    for _ in range(args.repeats):
                        results.setdefault(key, []).append(
                            round(_run(args.preset, Path(tmp), how), 1))
                        print(f"{key}: {results[key][-1]} s", flush=True)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
    best = {k: min(v) for k, v in results.items()}
    summary = {"preset": args.preset, "cores": os.cpu_count(), "seconds": results,
               "loaded_over_quiet": {
                   how: round(best[f"{how}, competing 2-thread torch process"]
                              / best[f"{how}, quiet"], 2)
                   for how in ("fixed threads", "job (fitted threads)")},
               "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    print(json.dumps(summary, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
