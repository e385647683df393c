"""The poisoning report: what the malicious centers did to the federation, against its clean
baseline (the same federation without attackers), and whether the server's detection view saw
them. Given its baseline: finding or training the baseline is the orchestration's job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import t as student_t

from engine.core.config import AttacksConfig, ExperimentConfig
from engine.data.types import Cohort
from engine.federation.detection import detection_summary
from engine.federation.protocol import FederationResult


def baseline_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same federation without any attack: the reference a poisoned run is held against
    (identical to a sweep's baseline cell, so a finished one is reused)."""
    return cfg.model_copy(update={"attacks": AttacksConfig()})


# Final MAE under attack ÷ the same federation's clean MAE: from BROKEN the federation is
# useless (the error at least doubled); up to PROTECTED it is within 25 % of clean.
BROKEN = 2.0
PROTECTED = 1.25
VERDICTS = ("protected", "damaged", "broken", "attack_too_weak")


def mean_interval(values: list[float]) -> list[float] | None:
    """95 % Student-t interval of the mean over seeds (an error ratio, a backdoor's shift);
    None for one seed."""
    if len(values) < 2:
        return None
    r = np.asarray(values, dtype=float)
    half = student_t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r))
    return [float(r.mean() - half), float(r.mean() + half)]


def poisoning_verdict(ratios: list[float], fedavg_ratios: list[float]) -> str:
    """The verdict on a rule from its error ratios over seeds and the same attack's ratios
    against FedAvg (the control; for FedAvg itself, its own ratios).

    ``broken`` when the mean ratio reaches :data:`BROKEN`, ``damaged`` above
    :data:`PROTECTED`; within it ``protected`` only when the same attack hurt FedAvg beyond
    :data:`PROTECTED` at every seed, else ``attack_too_weak`` (nothing to protect from).
    """
    mean = float(np.mean(ratios))
    if mean >= BROKEN:
        return "broken"
    if mean > PROTECTED:
        return "damaged"
    return "protected" if fedavg_ratios and min(fedavg_ratios) > PROTECTED else "attack_too_weak"


def seed_rows(attacked: dict[int, list[dict[str, Any]]],
              clean: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per seed: the attacked and clean federations' final MAE (HU) and their ratio, from
    their learning curves (``{seed: history}``)."""
    return [{"seed": s, "mae_hu": attacked[s][-1]["mae_hu"],
             "baseline_mae_hu": clean[s][-1]["mae_hu"],
             "mae_ratio": attacked[s][-1]["mae_hu"] / clean[s][-1]["mae_hu"]}
            for s in attacked]


def poisoning_report(cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                     baseline_history: list[dict[str, Any]],
                     baseline_run: str | None,
                     seeds: list[dict[str, Any]] | None = None,
                     fedavg_seeds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``summary["poisoning"]``: the attack, its baseline (``baseline_history``, from the
    finished clean run ``baseline_run`` or trained for this report), one cell, detection,
    and the verdict over ``seeds`` (:func:`seed_rows` of this rule; default: this run only)
    with the same attack against FedAvg (``fedavg_seeds``; for FedAvg, its own)."""
    poison = cfg.attacks.poisoning
    keys = ("mae_hu", "psnr_db", "ssim")
    base = {k: baseline_history[-1][k] for k in keys}
    final = {k: result.history[-1][k] for k in keys}
    return {
        "kind": poison.kind,
        "malicious": list(poison.malicious_centers),
        "malicious_names": [cohort.centers[k].name for k in poison.malicious_centers],
        "noise_std": poison.noise_std, "target": poison.target, "fraction": poison.fraction,
        "scale": poison.scale, "z": poison.z,
        "baseline": {cfg.federation.aggregator: base},
        "baseline_history": baseline_history,
        "baseline_run": baseline_run,
        "cells": [{"malicious": list(poison.malicious_centers), "kind": poison.kind,
                   "noise_std": poison.noise_std, "aggregator": cfg.federation.aggregator,
                   **final, "mae_ratio": final["mae_hu"] / base["mae_hu"]}],
        "detection": detection_summary(result.detection),
        **verdict_block(cfg, seeds or [{"seed": cfg.seed, "mae_hu": final["mae_hu"],
                                        "baseline_mae_hu": base["mae_hu"],
                                        "mae_ratio": final["mae_hu"] / base["mae_hu"]}],
                        fedavg_seeds),
    }


def plain_fedavg(cfg: ExperimentConfig) -> bool:
    """Whether the server averages without a pre-aggregator: its own FedAvg control."""
    return cfg.federation.aggregator == "fedavg" and cfg.federation.pre_aggregator == "none"


def verdict_block(cfg: ExperimentConfig, seeds: list[dict[str, Any]],
                  fedavg_seeds: list[dict[str, Any]] | None) -> dict[str, Any]:
    """``verdict``, ``seeds``, ``mae_ratio_mean``, ``ratio_ci`` and ``fedavg_control``
    (``aggregator``, ``seeds``, ``mae_ratio_mean``, ``ratio_ci``, ``hurt``: FedAvg's ratio
    above :data:`PROTECTED` at every seed; ``self``: the run is FedAvg, its own control)."""
    own = plain_fedavg(cfg)
    control = seeds if own else (fedavg_seeds or [])
    ratios = [r["mae_ratio"] for r in seeds]
    control_ratios = [r["mae_ratio"] for r in control]
    return {
        "verdict": poisoning_verdict(ratios, control_ratios),
        "seeds": seeds,
        "mae_ratio_mean": float(np.mean(ratios)),
        "ratio_ci": mean_interval(ratios),
        "fedavg_control": None if not control else {
            "aggregator": "fedavg", "self": own, "seeds": control,
            "mae_ratio_mean": float(np.mean(control_ratios)),
            "ratio_ci": mean_interval(control_ratios),
            "hurt": min(control_ratios) > PROTECTED},
    }
