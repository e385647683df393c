"""Peak memory (RSS) and wall time of `fedsct run --preset demo` as a separate process.

    python -m benchmarks.demo_memory
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time


def measure(preset: str = "demo") -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "engine", "run", "--preset", preset,
                               "--out", out, "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"preset": preset, "wall_s": round(wall, 2), "peak_rss_gib": round(peak_kib / 2**20, 3)}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
