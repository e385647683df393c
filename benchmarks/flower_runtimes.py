"""The same experiment on the three runtimes: wall time, peak memory and final metrics.

Each run is ``fedsct run`` in a child process; its peak memory is the largest total RSS of
that process and every process below it (Ray workers, SuperLink, SuperNodes, ClientApps),
sampled every 0.1 s from /proc. Parity: each runtime's final MAE/SSIM against the in-process
run of the same config, for FedAvg, FedMedian and secure aggregation.

    python -m benchmarks.flower_runtimes [--preset smoke] [--rules fedavg,fedmedian,secagg]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.core.processes import descendants

RUNTIMES = ("inprocess", "flower-sim", "flower-deploy")
RULES = {"fedavg": [], "fedmedian": ["federation.aggregator=fedmedian"],
         "secagg": ["defenses.secure_aggregation=true"]}


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    return total / 1024


def run_once(preset: str, sets: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "engine.orchestration.cli", "run", "--preset", preset,
           "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _rss_mib([proc.pid, *descendants(proc.pid)]))
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-2000:]}")
    run_dir = Path(output.strip().splitlines()[-1].split()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak),
            "final": summary["federation"]["final"]}


def measure(preset: str = "smoke", rules: tuple[str, ...] = tuple(RULES)) -> dict:
    out: dict = {"preset": preset, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for rule in rules:
            for runtime in RUNTIMES:
                sets = [*RULES[rule], f"federation.runtime={runtime}"]
                out["runs"][f"{rule}/{runtime}"] = run_once(preset, sets, Path(tmp))
    for rule in rules:
        ref = out["runs"][f"{rule}/inprocess"]
        for runtime in RUNTIMES[1:]:
            got = out["runs"][f"{rule}/{runtime}"]
            got["wall_ratio"] = round(got["wall_s"] / ref["wall_s"], 2)
            got["memory_ratio"] = round(got["peak_rss_mib"] / ref["peak_rss_mib"], 2)
            got["mae_rel_diff"] = abs(got["final"]["mae_hu"] - ref["final"]["mae_hu"]) / \
                ref["final"]["mae_hu"]
            got["ssim_abs_diff"] = abs(got["final"]["ssim"] - ref["final"]["ssim"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args()
    print(json.dumps(measure(args.preset, tuple(args.rules.split(","))), indent=1))


if __name__ == "__main__":
    main()
