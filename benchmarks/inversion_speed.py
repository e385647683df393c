"""Gradient inversion speed on the study's U-Net: restarts batched in one vmapped pass vs a
per-restart loop (as the original DLG code and ``breaching`` do), same inputs, one run.

    python -m benchmarks.inversion_speed [--sizes 64 128] [--restarts 4] [--iterations 10]

Reports attack iterations per second (one iteration = one optimiser step of every restart)
and restart-iterations per second, for both ways, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from engine.attacks.inversion import AttackerPrior, InversionPayload, inverting_gradients
from engine.core.units import hu_to_unit
from engine.data.phantom import phantom_patient
from engine.learning.local import LocalTraining
from engine.learning.model import build_model, get_parameters
from engine.orchestration.presets import build_config


def payload_at(size: int) -> InversionPayload:
    """One client's one-slice upload on the ig-strong model at ``size`` px (a noisy
    stand-in update: speed does not depend on its values)."""
    cfg = build_config("ig-strong", sets=[f"data.image_size={size}"])
    model = build_model(cfg)
    start = get_parameters(model)
    rng = np.random.default_rng(0)
    uploaded = [a + 1e-3 * rng.standard_normal(a.shape).astype(a.dtype)
                if np.issubdtype(a.dtype, np.floating) else a for a in start]
    s = phantom_patient(0, 0, 0, image_size=size, n_slices=4)
    prior = AttackerPrior.from_slices(s.mri, hu_to_unit(s.ct_hu))
    return InversionPayload(model, list(model.state_dict()), start, uploaded,
                            LocalTraining.from_config(cfg), 1, size, prior)


def measure(sizes: tuple[int, ...] = (64, 128), restarts: int = 4, iterations: int = 10,
            repeats: int = 2) -> list[dict]:
    rows = []
    for size in sizes:
        payload = payload_at(size)
        best: dict[str, float] = {}
        for _ in range(repeats):
            for batched in (False, True):
                attack = inverting_gradients(iterations=iterations, restarts=restarts,
                                             batched=batched)
                t0 = time.perf_counter()
                attack.reconstruct(payload)
                key = "batched_s" if batched else "loop_s"
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
        rows.append({
            "image_size": size, "restarts": restarts, "iterations": iterations,
            "batched_iterations_per_s": round(iterations / best["batched_s"], 2),
            "loop_iterations_per_s": round(iterations / best["loop_s"], 2),
            "batched_restart_iterations_per_s": round(iterations * restarts
                                                      / best["batched_s"], 2),
            "speedup": round(best["loop_s"] / best["batched_s"], 2),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(tuple(args.sizes), args.restarts, args.iterations), indent=1))


if __name__ == "__main__":
    main()
