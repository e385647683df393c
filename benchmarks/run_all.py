"""Run every benchmark one after the other (never in parallel: 2 cores) and print JSON.

    make bench        # or: python -m benchmarks.run_all

The last three (batched hospitals, thread contention, NIfTI limits) print their own tables and
write their JSON under ``test-output/benchmarks/``. Not included: the GPU check
(``benchmarks/gpu_check.sh``, for a CUDA machine) and whole sweeps and studies (commands in
``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import platform

import torch

from benchmarks import (
    batched_hospitals,
    contention,
    demo_memory,
    federation_overhead,
    flower_runtimes,
    inversion_speed,
    mia_scoring,
    nifti_limits,
    phantom_speed,
)


def main() -> None:
    results = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "phantom": phantom_speed.measure(),
        "federation_overhead": federation_overhead.measure("demo", repeats=3),
        "demo_run": demo_memory.measure("demo"),
        "mia_per_sample_gradients": mia_scoring.gradient_speedup(),
        "inversion_restarts": inversion_speed.measure(),
        "flower_runtimes": flower_runtimes.measure(),
    }
    print(json.dumps(results, indent=1))
    batched_hospitals.main([])
    contention.main([])
    print(json.dumps({"nifti_limits": nifti_limits.measure()}, indent=1))


if __name__ == "__main__":
    main()
