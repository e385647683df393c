"""Phantom generation speed (slices per second) at 64² and 128², template already cached.

    python -m benchmarks.phantom_speed
"""

from __future__ import annotations

import json
import time

import torch

from engine.data.phantom import load_template, phantom_patient


def measure(sizes=(64, 128), patients: int = 8, slices: int = 16) -> dict:
    t0 = time.perf_counter()
    load_template()
    out = {"template_load_s": round(time.perf_counter() - t0, 3),
           "torch_threads": torch.get_num_threads()}
    for size in sizes:
        phantom_patient(0, 0, 0, image_size=size, n_slices=2)  # warm-up
        t0 = time.perf_counter()
        for p in range(patients):
            phantom_patient(0, p % 4, p, image_size=size, n_slices=slices)
        out[f"slices_per_s_{size}"] = round(patients * slices / (time.perf_counter() - t0), 1)
    return out


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
