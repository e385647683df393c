"""The run's summary: the figures of ``summary.json`` that do not come from an attack."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flwr
import monai
import numpy as np
import torch

from engine import __version__
from engine.clients.behaviour import dp_accountings, dp_epsilon
from engine.clients.dp import MEANINGFUL_EPSILON, NEIGHBOURING, SUBSTITUTION
from engine.core.config import ExperimentConfig
from engine.core.environment import numeric_environment
from engine.core.metrics import mean_over_patients, volume_metrics
from engine.core.types import NDArrays
from engine.data.cohort import split_folders
from engine.data.synthrad import load_synthrad_patient
from engine.data.types import CenterData, Cohort
from engine.federation.inprocess import plan_training
from engine.federation.protocol import FederationResult
from engine.learning.inference import native_sct_hu
from engine.learning.local import predict_sct_hu
from engine.learning.model import build_model, select_device, set_parameters


def versions() -> dict[str, str]:
    return {"fedsct": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__, "flwr": flwr.__version__,
            "numpy": np.__version__}


def run_environment(cfg: ExperimentConfig, cohort: Cohort) -> dict[str, Any]:
    """``environment``: what besides the config decides the figures
    (:func:`engine.core.environment.numeric_environment`: threads, device, CPU kernels,
    versions) and how training ran: ``precision``, ``runtime``, ``training`` (``batched``,
    ``sequential``, ``partly batched``, or ``flower``: each ClientApp trains on its own) and
    ``batched_centers`` (indices)."""
    env = numeric_environment(torch.get_num_threads())
    batched: tuple[int, ...] = ()
    if cfg.federation.runtime == "inprocess":
        n = len(cohort.centers)
        batched = plan_training(cfg, build_model(cfg), [c.train for c in cohort.centers]).batched
        training = ("batched" if len(batched) == n else "partly batched" if batched
                    else "sequential")
    else:
        training = "flower"
    return env | {"precision": cfg.federation.precision, "runtime": cfg.federation.runtime,
                  "training": training, "batched_centers": list(batched)}


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
    subs = [a.epsilon_substitution(rounds) for a in accountings.values()]
    sub = None if None in subs or not math.isfinite(max(subs)) else max(subs)
    return out | {
        "noise_multiplier": max(a.noise_multiplier for a in accountings.values()),
        "epsilon": eps, "meaningful": eps is not None and eps <= MEANINGFUL_EPSILON,
        "epsilon_substitution": sub,
        "substitution": SUBSTITUTION if dp.level != "sample" else None,
        "per_center": {c: {"noise_multiplier": a.noise_multiplier,
                           "sample_rate": a.sample_rate,
                           "steps": a.steps_per_round * rounds,
                           "epsilon": dp_epsilon({c: a}, rounds)}
                       for c, a in accountings.items()},
    }


# --------------------------------------------------------------------------- volumetric

# (patient id, CT, synthetic CT, body mask), each (Z, Y, X) on the patient's native grid.
ScoredVolume = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def _phantom_volumes(model: torch.nn.Module, center: CenterData) -> Iterator[ScoredVolume]:
    """A phantom patient is generated directly on its slice grid (no resampling, nothing to
    undo): its native volume is the stack of its slices."""
    for pid in center.test.patients:
        sl = center.test.for_patient(pid)
        yield pid, sl.ct_hu[:, 0], predict_sct_hu(model, sl)[:, 0], sl.mask[:, 0]


def _folder_volumes(model: torch.nn.Module, folders: list[Path], image_size: int,
                    log: Callable[[str], None]) -> Iterator[ScoredVolume]:
    """Patient folders are read again, one at a time (the cohort keeps only the resampled
    slices): native grid, CT in HU as stored (not clipped), the folder's mask."""
    for folder in folders:
        log(f"volumetric evaluation: {folder.name}")
        volume = load_synthrad_patient(folder)
        sct = native_sct_hu(model, volume, image_size)
        yield (volume.patient_id, volume.ct_hu.transpose(2, 1, 0), sct.transpose(2, 1, 0),
               volume.mask.transpose(2, 1, 0))


def _scored_group(volumes: Iterator[ScoredVolume]) -> dict[str, Any]:
    """``{mae_hu, psnr_db, ssim}`` (mean over patients), ``n`` and ``patients``."""
    patients = {}
    for pid, ct, sct, mask in volumes:
        try:
            patients[pid] = volume_metrics(ct, sct, mask)
        except ValueError as err:  # e.g. a volume thinner than SSIM's window: say whose
            raise ValueError(f"volumetric evaluation of patient {pid}: {err}") from None
    return {**mean_over_patients(list(patients.values())), "n": len(patients),
            "patients": patients}


def volumetric_summary(cfg: ExperimentConfig, cohort: Cohort, params: NDArrays,
                       log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """``federation.final_volumetric`` and ``federation.unseen_center_volumetric``: the
    global model ``params`` scored per patient volume with the SynthRAD2023 conventions
    (:func:`engine.core.metrics.volume_metrics`) on each hospital's held-out patients and
    on the unseen hospital's (None without one). Per group: the mean over patients, ``n``
    and each patient's figures; the final block pools all hospitals' held-out patients
    and adds ``per_center``."""
    model = build_model(cfg)
    set_parameters(model, params)
    size = cfg.data.image_size
    if cfg.data.source == "phantom":
        groups = {c.name: _phantom_volumes(model, c) for c in cohort.centers}
        unseen = _phantom_volumes(model, cohort.unseen) if cohort.unseen else None
    else:
        split = split_folders(cfg.data)
        groups = {c.name: _folder_volumes(model, test, size, log)
                  for c, (_letter, _train, test) in zip(cohort.centers, split.centers,
                                                        strict=True)}
        unseen = _folder_volumes(model, split.unseen[1], size, log) if split.unseen else None
    per_center = {name: _scored_group(volumes) for name, volumes in groups.items()}
    pooled = {pid: m for group in per_center.values() for pid, m in group["patients"].items()}
    final = {**mean_over_patients(list(pooled.values())), "n": len(pooled),
             "patients": pooled, "per_center": per_center}
    return {"final_volumetric": final,
            "unseen_center_volumetric": None if unseen is None else _scored_group(unseen)}


def build_summary(cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                  wall_s: float, data_s: float, n_params: int,
                  samples: dict[str, str], volumetric: dict[str, Any] | None = None,
                  volumetric_s: float = 0.0) -> dict[str, Any]:
    """The summary; ``volumetric``: :func:`volumetric_summary`'s blocks (None: not run),
    which took ``volumetric_s`` seconds."""
    final = result.history[-1] if result.history else {}
    volumetric = volumetric or {}
    timing = {"volumetric_s": round(volumetric_s, 3)} if volumetric else {}
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
            "final_volumetric": volumetric.get("final_volumetric"),
            "unseen_center_volumetric": volumetric.get("unseen_center_volumetric"),
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
                   "train_s": round(result.train_s, 3), "eval_s": round(result.eval_s, 3),
                   **timing},
        "device": str(select_device()),
        "versions": versions(),
        "environment": run_environment(cfg, cohort),
    }
