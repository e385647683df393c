"""Membership scoring speed: vectorised per-sample gradients (torch.func) vs a per-sample
backward loop (as the FedMIA reference code does), on the same inputs, in one run; plus the
full scoring time of a finished `mia-paper` run if one is given.

    python -m benchmarks.mia_scoring [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from engine.attacks.membership import per_sample_gradients, per_sample_gradients_loop
from engine.core.units import hu_to_unit
from engine.data.phantom import phantom_patient
from engine.learning.model import build_model
from engine.orchestration.presets import build_config


def gradient_speedup(n_samples: int = 48, repeats: int = 3) -> dict:
    """Seconds for ``n_samples`` per-sample gradients of the mia-paper U-Net, both ways."""
    cfg = build_config("mia-paper")
    model = build_model(cfg)
    s = phantom_patient(0, 0, 0, image_size=cfg.data.image_size, n_slices=n_samples)
    mri = torch.from_numpy(s.mri)
    ct = torch.from_numpy(hu_to_unit(s.ct_hu))
    chunk = 32  # as engine.attacks.membership.gradient_signals

    def vectorised() -> torch.Tensor:
        return torch.cat([per_sample_gradients(model, mri[i : i + chunk], ct[i : i + chunk],
                                               "l1") for i in range(0, n_samples, chunk)])

    def loop() -> torch.Tensor:
        return per_sample_gradients_loop(model, mri, ct, "l1")

    # Same inputs, same gradients: batched convolutions round differently (~1e-7), which can
    # flip the sign of an L1 residual that is almost exactly 0, so compare directions.
    agreement = float(torch.nn.functional.cosine_similarity(vectorised(), loop()).min())
    if agreement < 0.999:
        raise AssertionError(f"vectorised and looped gradients disagree (cosine {agreement})")
    def one_batch_gradient() -> None:
        # Not per-sample: one mean gradient of all samples, the floor no per-sample method
        # can beat on the same hardware (same convolutions, one backward pass).
        model.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(model(mri), ct).backward()

    best = {"vectorised_s": float("inf"), "loop_s": float("inf"),
            "batch_gradient_floor_s": float("inf")}
    for _ in range(repeats):
        for name, fn in (("loop_s", loop), ("vectorised_s", vectorised),
                         ("batch_gradient_floor_s", one_batch_gradient)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {"samples": n_samples, "image_size": cfg.data.image_size,
            "torch_threads": torch.get_num_threads(),
            **{k: round(v, 3) for k, v in best.items()},
            "speedup": round(best["loop_s"] / best["vectorised_s"], 2),
            "max_possible_speedup": round(best["loop_s"] / best["batch_gradient_floor_s"], 2),
            "min_cosine_vectorised_vs_loop": round(agreement, 6)}


def scoring_time(run_dir: str) -> dict:
    """Wall time of the whole membership attack on a finished run (signals + ROC analysis)."""
    from pathlib import Path

    from engine.attacks.membership import run_membership
    from engine.core.run_folder import RunFolder
    from engine.data.cohort import load_cohort

    run = RunFolder(Path(run_dir))
    cfg = run.config()
    cohort = load_cohort(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    mia = run_membership(run.path, cfg, cohort)
    return {"run": run.run_id, "rounds_attacked": len(mia["rounds"]),
            "total_s": round(time.perf_counter() - t0, 2), "signals_s": mia["timing_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished mia-paper run folder to time the full attack on")
    args = ap.parse_args()
    out = {"per_sample_gradients": gradient_speedup()}
    if args.run:
        out["mia_paper_scoring"] = scoring_time(args.run)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
