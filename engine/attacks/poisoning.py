"""Poisoning by malicious centers: noise on their data or their upload, and model poisoning.

Every attack is a pure function of arrays, so it can be tested with hand-made inputs:

* :func:`poison_slices` — ``data_noise``: Gaussian noise on a share of the center's training
  slices (MRI, CT or both), in normalised units (MRI [0, 1], CT units of
  :func:`engine.data.preprocess.hu_to_unit`).
* :func:`noisy_upload` — ``update_noise``: Gaussian noise added to the uploaded parameters.
* :func:`sign_flipped_upload` — ``sign_flip``: the honest update reversed (× ``scale``).
* :func:`scaled_upload` — ``scaling``: model replacement, the honest update × ``scale``.
* :func:`alie_upload` — ``alie`` ("A Little Is Enough", Baruch et al. 2019): per coordinate,
  the honest updates' mean minus ``z`` standard deviations; it stays inside the spread of
  honest updates, which is what lets it pass median- and distance-based rules.

A malicious center deviates from the protocol, so client-side defenses (pruning, DP) are not
applied to its upload. :func:`update_statistics` is the server's detection view: each upload's
update norm and its distance to the coordinate-wise median of all uploads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.data.preprocess import hu_to_unit, unit_to_hu
from engine.data.types import SliceSet

NDArrays = list[np.ndarray]
UPDATE_KINDS = ("update_noise", "sign_flip", "scaling", "alie")
# A center is flagged in a round when its distance to the median is more than this many
# times the median distance of all centers (robust to one outlier among four).
FLAG_RATIO = 2.0


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def poison_slices(slices: SliceSet, target: str, noise_std: float, fraction: float,
                  rng: np.random.Generator) -> SliceSet:
    """``slices`` with Gaussian noise on a random ``fraction`` of them.

    Args:
        target: ``mri`` | ``ct`` | ``both``.
        noise_std: standard deviation in normalised units (MRI [0, 1]; CT 1 = 4024 HU).
        fraction: share of slices poisoned, in (0, 1]; at least one slice.
    """
    n = len(slices.mri)
    picked = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    mri, ct_hu = slices.mri.copy(), slices.ct_hu.copy()
    shape = (len(picked), *mri.shape[1:])
    if target in ("mri", "both"):
        mri[picked] += rng.normal(0.0, noise_std, shape).astype(mri.dtype)
    if target in ("ct", "both"):
        noisy = hu_to_unit(ct_hu[picked]) + rng.normal(0.0, noise_std, shape)
        # unit_to_hu clips to the scanner range, as a real (noisy) CT would be stored.
        ct_hu[picked] = unit_to_hu(noisy).astype(ct_hu.dtype)
    return SliceSet(mri=mri, ct_hu=ct_hu, mask=slices.mask, patient_ids=slices.patient_ids)


def noisy_upload(local: NDArrays, noise_std: float, rng: np.random.Generator) -> NDArrays:
    """``local`` + N(0, noise_std²) on every float parameter (absolute units)."""
    return [(a + rng.normal(0.0, noise_std, a.shape)).astype(a.dtype) if _is_float(a) else a
            for a in local]


def scaled_upload(local: NDArrays, global_params: NDArrays, scale: float) -> NDArrays:
    """``global + scale · (local − global)`` (model replacement when ``scale`` ≈ n)."""
    return [(g + scale * (a.astype(np.float64) - g)).astype(a.dtype) if _is_float(a) else a
            for a, g in zip(local, global_params, strict=True)]


def sign_flipped_upload(local: NDArrays, global_params: NDArrays, scale: float) -> NDArrays:
    """``global − scale · (local − global)``: the honest update reversed."""
    return scaled_upload(local, global_params, -scale)


def alie_upload(honest: list[NDArrays], global_params: NDArrays, z: float) -> NDArrays:
    """Per coordinate ``global + mean(Δ) − z · std(Δ)`` over the honest updates ``Δ``.

    The attacker is given every center's honest update, as in the ALIE paper's evaluation
    (an upper bound on what colluding centers can estimate).
    """
    out = []
    for i, g in enumerate(global_params):
        if not _is_float(g):
            out.append(honest[0][i])
            continue
        deltas = np.stack([h[i].astype(np.float64) - g for h in honest])
        out.append((g + deltas.mean(axis=0) - z * deltas.std(axis=0)).astype(g.dtype))
    return out


def malicious_upload(kind: str, own: NDArrays, honest: list[NDArrays],
                     global_params: NDArrays, poisoning: Any,
                     rng: np.random.Generator) -> NDArrays:
    """The upload of a malicious center that trained ``own`` (for ``data_noise``: the
    model trained on its poisoned data, sent as is)."""
    if kind == "update_noise":
        return noisy_upload(own, poisoning.noise_std, rng)
    if kind == "sign_flip":
        return sign_flipped_upload(own, global_params, poisoning.scale)
    if kind == "scaling":
        return scaled_upload(own, global_params, poisoning.scale)
    if kind == "alie":
        return alie_upload(honest, global_params, poisoning.z)
    return own


def update_statistics(uploads: dict[str, NDArrays],
                      global_params: NDArrays) -> dict[str, dict[str, float | bool]]:
    """The server's detection view of one round.

    Returns, per client: ``update_norm`` (L2 of upload − global), ``median_distance`` (L2
    distance to the coordinate-wise median of all uploads), ``distance_ratio`` (that distance
    over the median of all clients' distances) and ``flagged`` (ratio > :data:`FLAG_RATIO`).
    """
    names = list(uploads)
    floats = [i for i, g in enumerate(global_params) if _is_float(g)]
    flat = np.stack([np.concatenate([np.ravel(uploads[c][i]).astype(np.float64)
                                     - np.ravel(global_params[i]) for i in floats])
                     for c in names])
    median = np.median(flat, axis=0)
    dist = np.linalg.norm(flat - median, axis=1)
    typical = float(np.median(dist)) or 1e-30
    return {c: {"update_norm": float(np.linalg.norm(flat[k])),
                "median_distance": float(dist[k]),
                "distance_ratio": float(dist[k] / typical),
                "flagged": bool(dist[k] / typical > FLAG_RATIO)}
            for k, c in enumerate(names)}


# --------------------------------------------------------------------------- reporting


def baseline_config(cfg: Any) -> Any:
    """The same federation without any attack: the reference a poisoned run is held against
    (identical to a sweep's baseline cell, so a finished one is reused)."""
    from engine.config import AttacksConfig

    return cfg.model_copy(update={"attacks": AttacksConfig()})


def detection_summary(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Per client: share of rounds flagged and mean distance ratio; who is flagged in most
    rounds (``detected``)."""
    if not per_round:
        return {"per_round": [], "flag_rate": {}, "mean_distance_ratio": {}, "detected": [],
                "flag_ratio": FLAG_RATIO}
    clients = list(per_round[0]["clients"])
    rate = {c: float(np.mean([r["clients"][c]["flagged"] for r in per_round]))
            for c in clients}
    ratio = {c: float(np.mean([r["clients"][c]["distance_ratio"] for r in per_round]))
             for c in clients}
    return {"per_round": per_round, "flag_rate": rate, "mean_distance_ratio": ratio,
            "detected": [c for c in clients if rate[c] > 0.5], "flag_ratio": FLAG_RATIO}


def run_poisoning_report(run_dir: Any, cfg: Any, cohort: Any, result: Any,
                         progress: Any = lambda _msg: None,
                         should_stop: Any = lambda: False) -> dict[str, Any]:
    """``summary["poisoning"]``: the attack, its baseline (a finished identical clean run in
    the same runs root, else trained now without storing anything), one cell, detection."""
    from pathlib import Path

    from engine.federation.inprocess import run_federation
    from engine.sweeps import find_finished_run

    poison = cfg.attacks.poisoning
    clean = baseline_config(cfg)
    found = find_finished_run(clean, Path(run_dir).parent)
    if found is not None:
        progress(f"baseline: reusing the clean run {found.run_id}")
        history = found.summary()["federation"]["history"]
    else:
        progress("baseline: training the same federation without attackers")
        history = run_federation(clean, cohort, should_stop=should_stop).history
    keys = ("mae_hu", "psnr_db", "ssim")
    base = {k: history[-1][k] for k in keys}
    final = {k: result.history[-1][k] for k in keys}
    return {
        "kind": poison.kind,
        "malicious": list(poison.malicious_centers),
        "malicious_names": [cohort.centers[k].name for k in poison.malicious_centers],
        "noise_std": poison.noise_std, "target": poison.target, "fraction": poison.fraction,
        "scale": poison.scale, "z": poison.z,
        "baseline": {cfg.federation.aggregator: base},
        "baseline_history": history,
        "baseline_run": found.run_id if found is not None else None,
        "cells": [{"malicious": list(poison.malicious_centers), "kind": poison.kind,
                   "noise_std": poison.noise_std, "aggregator": cfg.federation.aggregator,
                   **final, "mae_ratio": final["mae_hu"] / base["mae_hu"]}],
        "detection": detection_summary(result.detection),
    }
