"""The run's summary: the figures of ``summary.json`` that do not come from an attack."""

from __future__ import annotations

import platform
from typing import Any

import flwr
import monai
import numpy as np
import torch

from engine import __version__
from engine.clients.behaviour import dp_accountings, dp_epsilon
from engine.clients.dp import MEANINGFUL_EPSILON, NEIGHBOURING
from engine.core.config import ExperimentConfig
from engine.data.types import Cohort
from engine.federation.protocol import FederationResult
from engine.learning.model import select_device


def versions() -> dict[str, str]:
    return {"fedsct": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "flwr": flwr.__version__,
            "numpy": np.__version__}


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
