"""The poisoning report: what the malicious centers did to the federation, against its clean
baseline (the same federation without attackers), and whether the server's detection view saw
them. Given its baseline: finding or training the baseline is the orchestration's job.
"""

from __future__ import annotations

from typing import Any

from engine.core.config import AttacksConfig, ExperimentConfig
from engine.data.types import Cohort
from engine.federation.detection import detection_summary
from engine.federation.protocol import FederationResult


def baseline_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same federation without any attack: the reference a poisoned run is held against
    (identical to a sweep's baseline cell, so a finished one is reused)."""
    return cfg.model_copy(update={"attacks": AttacksConfig()})


def poisoning_report(cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                     baseline_history: list[dict[str, Any]],
                     baseline_run: str | None) -> dict[str, Any]:
    """``summary["poisoning"]``: the attack, its baseline (``baseline_history``, from the
    finished clean run ``baseline_run`` or trained for this report), one cell, detection."""
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
    }
