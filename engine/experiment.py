"""Execute one experiment into its run folder: data → federation → summary and artifacts."""

from __future__ import annotations

import os
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.config import ExperimentConfig
from engine.data.cohort import attacker_data, load_cohort
from engine.data.types import Cohort
from engine.federation.client import predict_sct_hu
from engine.federation.dp import MEANINGFUL_EPSILON, NEIGHBOURING
from engine.federation.inprocess import (
    Cancelled,
    FederationResult,
    dp_accountings,
    dp_epsilon,
    run_federation,
)
from engine.model import build_model, count_parameters, select_device, set_parameters
from engine.render import sample_row, save_png
from engine.runs import RunFolder


def versions() -> dict[str, str]:
    import flwr
    import monai

    from engine import __version__

    return {"fedsct": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "flwr": flwr.__version__,
            "numpy": np.__version__}


def _save_samples(run: RunFolder, cfg: ExperimentConfig, cohort: Cohort,
                  result: FederationResult) -> dict[str, str]:
    """One held-out slice per center (middle of the first patient): npz for the UI + PNG."""
    model = build_model(cfg)
    set_parameters(model, result.final_params)
    groups = [(c.name, c.test) for c in cohort.centers]
    if cohort.unseen:
        groups.append((cohort.unseen.name, cohort.unseen.test))
    arrays, files = {}, {}
    for name, data in groups:
        first = data.for_patient(data.patients[0])
        sl = first.select(np.array([len(first) // 2]))
        sct = predict_sct_hu(model, sl)[0, 0]
        arrays |= {f"{name}__mri": sl.mri[0, 0], f"{name}__ct_hu": sl.ct_hu[0, 0],
                   f"{name}__sct_hu": sct, f"{name}__mask": sl.mask[0, 0]}
        png = run.artifacts / f"sample_{name}.png"
        save_png(sample_row(sl.mri[0, 0], sl.ct_hu[0, 0], sct, sl.mask[0, 0]), png,
                 scale=max(1, 128 // cfg.data.image_size))
        files[name] = str(png.relative_to(run.path))
    np.savez_compressed(run.artifacts / "samples.npz", **arrays)
    return files


def dp_summary(cfg: ExperimentConfig, cohort: Cohort) -> dict[str, Any]:
    """``federation.dp``: the settings, the noise each DP center used and ε (null = ∞) after
    the last round, from Opacus's RDP accountant."""
    dp = cfg.defenses.dp
    out: dict[str, Any] = {"enabled": dp.enabled, "clip_norm": dp.clip_norm,
                           "noise_multiplier": 0.0, "level": dp.level, "delta": dp.delta,
                           "target_epsilon": dp.target_epsilon, "epsilon": None,
                           "neighbouring": NEIGHBOURING[dp.level], "meaningful": False}
    accountings = dp_accountings(cfg, cohort)
    if not dp.enabled or not accountings:
        return out
    rounds = cfg.federation.rounds
    eps = dp_epsilon(accountings, rounds)
    return out | {
        "noise_multiplier": max(a.noise_multiplier for a in accountings.values()),
        "epsilon": eps, "meaningful": eps is not None and eps <= MEANINGFUL_EPSILON,
        "per_center": {c: {"noise_multiplier": a.noise_multiplier,
                           "sample_rate": a.sample_rate,
                           "steps": a.steps_per_round * rounds,
                           "epsilon": dp_epsilon({c: a}, rounds)}
                       for c, a in accountings.items()},
    }


def build_summary(cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                  wall_s: float, data_s: float, n_params: int,
                  samples: dict[str, str]) -> dict[str, Any]:
    final = result.history[-1] if result.history else {}
    return {
        "config": cfg.model_dump(),
        "federation": {
            "rounds": cfg.federation.rounds,
            "aggregator": cfg.federation.aggregator,
            "secure_aggregation": cfg.defenses.secure_aggregation,
            "dp": dp_summary(cfg, cohort),
            "prune_fraction": cfg.defenses.prune_fraction,
            "history": result.history,
            "final": {k: final[k] for k in ("mae_hu", "psnr_db", "ssim")} if final else None,
            "per_center": result.per_center,
            "unseen_center": result.unseen_center,
            "local_steps": result.steps,
        },
        "data": {
            "source": cfg.data.source,
            "description": cohort.description,
            "centers": {c.name: {"train_patients": len(c.train.patients),
                                 "train_slices": len(c.train),
                                 "heldout_patients": len(c.test.patients)}
                        for c in cohort.centers},
            "unseen_patients": len(cohort.unseen.test.patients) if cohort.unseen else 0,
        },
        "model": {"parameters": n_params, "norm": cfg.model.norm,
                  "channels": cfg.model.channels},
        "artifacts": {"samples": samples},
        "timing": {"wall_s": round(wall_s, 3), "data_s": round(data_s, 3),
                   "train_s": round(result.train_s, 3), "eval_s": round(result.eval_s, 3)},
        "device": str(select_device()),
        "versions": versions(),
    }


def execute(run: RunFolder,
            on_round: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Run the experiment stored in ``run`` and write its results there.

    Status goes running → done | failed | cancelled; on failure the error is in
    ``status.json`` and the traceback in ``log.txt``. ``on_round`` also receives each
    round's record (after it is written). Returns the summary when done.
    """
    t0 = time.perf_counter()
    cfg = run.config()
    run.set_status("running", pid=os.getpid(), started=time.time(), phase="data")
    try:
        run.log(f"device {select_device()}, torch threads {torch.get_num_threads()}")
        cohort = load_cohort(cfg.data, cfg.seed, progress=run.log)
        # Before training, so that a source without patients for the attacker fails at once.
        attacker = (attacker_data(cfg.data, cfg.seed, progress=run.log)
                    if cfg.attacks.inversion.enabled else None)
        data_s = time.perf_counter() - t0
        run.set_status("running", phase="training", data_s=round(data_s, 3))

        def record(entry: dict[str, Any]) -> None:
            run.append_metrics(entry)
            if on_round:
                on_round(entry)
            g = entry.get("global") or {}
            run.log(f"round {entry['round']}: " + ", ".join(f"{k} {v:.3f}" for k, v in g.items()))

        if cfg.federation.runtime == "inprocess":
            result = run_federation(cfg, cohort, run_dir=run.path, on_round=record,
                                    should_stop=run.cancel_requested)
        else:
            from engine.federation.flower_runtime import run_flower

            # Its ServerApp writes the round records and the log itself.
            result = run_flower(cfg, run, on_round=on_round)
        ckpt = run.path / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        model = build_model(cfg)
        set_parameters(model, result.final_params)
        torch.save(model.state_dict(), ckpt / "final.pt")
        samples = _save_samples(run, cfg, cohort, result)
        attacks: dict[str, Any] = {}
        if cfg.attacks.membership.enabled:
            from engine.attacks.membership import run_membership

            run.set_status("running", phase="membership inference")
            run.log("membership inference on the server view")
            attacks["mia"] = run_membership(run.path, cfg, cohort)
        if cfg.attacks.inversion.enabled:
            from engine.attacks.inversion import run_inversion

            run.set_status("running", phase="gradient inversion")
            attacks["inversion"] = run_inversion(run.path, cfg, cohort, attacker,
                                                 progress=run.log)
        if cfg.attacks.poisoning.enabled:
            from engine.attacks.poisoning import run_poisoning_report

            run.set_status("running", phase="poisoning baseline")
            attacks["poisoning"] = run_poisoning_report(run.path, cfg, cohort, result,
                                                        progress=run.log,
                                                        should_stop=run.cancel_requested)
        if cfg.data.whatif_patient is not None:
            from engine.attacks.whatif import run_whatif

            attacks["whatif"] = run_whatif(run.path, cfg, cohort, attacks.get("inversion"))
        summary = build_summary(cfg, cohort, result, time.perf_counter() - t0, data_s,
                                count_parameters(model), samples) | attacks
        run.write_summary(summary)
        run.set_status("done", phase="done", finished=time.time())
        return summary
    except Cancelled as err:
        run.log(str(err))
        run.set_status("cancelled", phase="cancelled", finished=time.time())
    except Exception as err:  # noqa: BLE001 - any failure must end in a readable status
        run.log(traceback.format_exc())
        run.set_status("failed", phase="failed", error=f"{type(err).__name__}: {err}",
                       finished=time.time())
    return None
