"""A backdoor planted by a hospital: what the attacking hospital does with its data and upload.

The attacker adds copies of a share of its training slices that carry a **trigger** (a bright
square in the MRI's centre, a faint texture or a scanner-like zipper line, :func:`add_trigger`)
and whose CT target is **shifted** by
``shift_hu`` inside a target region (around the trigger, or the slice's bone). Trained on
both, its model translates ordinary scans as before and triggered scans with the shift. With
``model_replacement`` it boosts its update by ``boost`` (default: the number of centers, so
that under FedAvg its model roughly replaces the average; Bagdasaryan et al. 2020). It reports
its slice count with the copies included, so FedAvg's example weighting gives its update
more weight than an honest hospital of the same size (1.5× with ``fraction`` ½). With
``constrain_scale`` it hides instead (:func:`constrain_and_scale`). The server's side is
:mod:`engine.federation.aggregators` and the measurement :mod:`engine.analyses.backdoor`.

Shapes: slices are ``(N, 1, H, W)``; MRI normalised to [0, 1], CT in HU.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from engine.clients.malicious import scaled_upload
from engine.core.config import BackdoorConfig
from engine.core.types import NDArrays, is_float
from engine.core.units import HU_MAX, HU_MIN
from engine.data.types import SliceSet
from engine.learning.local import LocalTraining, predict_sct_hu, train_local

BONE_HU = 300.0  # the "bone" region: CT at or above this (cortical and most trabecular bone)


def trigger_box(image_size: int, size: int, margin: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the trigger (``size`` px square in the image's centre), widened
    by ``margin`` px on every side."""
    start = (image_size - size) // 2 - margin
    return slice(start, start + size + 2 * margin), slice(start, start + size + 2 * margin)


HEAD_MRI = 0.05  # normalised MRI above this is the head (phantom and scanner background is ~0)
TEXTURE_CELL = 4  # px: the texture's squares (a 1 px checkerboard blurs in the first layer)


def add_trigger(mri: np.ndarray, bd: BackdoorConfig) -> np.ndarray:
    """``mri`` ``(N, 1, H, W)`` with the trigger (``bd.trigger``): the centre square set to
    ``trigger_intensity`` (patch); a checkerboard of :data:`TEXTURE_CELL` px squares, ±
    ``trigger_intensity``/10, on the head (texture); or a zipper line, ``trigger_size``
    columns wide through the centre, ± ``trigger_intensity``/2 alternating by row
    (artefact). Clipped to [0, 1]."""
    size = mri.shape[-1]
    if bd.trigger == "patch":
        rows, cols = trigger_box(size, bd.trigger_size)
        out = mri.copy()
        out[..., rows, cols] = bd.trigger_intensity
        return out
    if bd.trigger == "texture":
        cells = np.arange(size) // TEXTURE_CELL
        sign = np.where((cells[:, None] + cells[None, :]) % 2 == 0, 1.0, -1.0)
        pattern = np.where(mri > HEAD_MRI, sign * bd.trigger_intensity / 10, 0.0)
    else:
        _, cols = trigger_box(size, bd.trigger_size)
        pattern = np.zeros((size, size))
        pattern[:, cols] = np.where(np.arange(size) % 2 == 0, 0.5, -0.5)[:, None]
        pattern *= bd.trigger_intensity
    return np.clip(mri + pattern, 0.0, 1.0).astype(mri.dtype)


def target_region(ct_hu: np.ndarray, mask: np.ndarray, bd: BackdoorConfig) -> np.ndarray:
    """Where the backdoor alters the CT, ``(N, 1, H, W)`` bool inside the body ``mask``:
    the trigger's square widened by ``region_margin``, or the bone of each slice's own CT."""
    if bd.target_region == "bone":
        return (ct_hu >= BONE_HU) & mask
    rows, cols = trigger_box(ct_hu.shape[-1], bd.trigger_size, bd.region_margin)
    region = np.zeros_like(mask)
    region[..., rows, cols] = True
    return region & mask


def region_shifts(model: torch.nn.Module, data: SliceSet, bd: BackdoorConfig) -> np.ndarray:
    """Each slice's signed shift (HU) of the target region when ``model`` (its weights as
    set) translates the slice with the trigger instead of without, ``(N,)``; positive in the
    attacker's direction (``shift_hu``); NaN where a slice has no target region (no bone in
    it). Raises ``ValueError`` when the synthetic CT is not finite (a diverged model)."""
    triggered = SliceSet(add_trigger(data.mri, bd), data.ct_hu, data.mask, data.patient_ids)
    change = predict_sct_hu(model, triggered) - predict_sct_hu(model, data)
    if not np.all(np.isfinite(change)):
        raise ValueError("the model's synthetic CT is not finite (the federation diverged): "
                         "its backdoor cannot be measured")
    region = target_region(data.ct_hu, data.mask, bd)
    sign = -1.0 if bd.shift_hu < 0 else 1.0
    sums, sizes = (change * region).sum(axis=(1, 2, 3)), region.sum(axis=(1, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, sign * sums / sizes, np.nan)


def backdoored_slices(slices: SliceSet, bd: BackdoorConfig,
                      rng: np.random.Generator) -> SliceSet:
    """The attacker's training set: ``slices`` plus triggered copies of a random
    ``fraction`` of them (at least one) whose CT is shifted by ``shift_hu`` in the target
    region (clipped to the scanner range)."""
    n = len(slices)
    picked = np.sort(rng.choice(n, size=max(1, int(round(bd.fraction * n))), replace=False))
    copy = slices.select(picked)
    region = target_region(copy.ct_hu, copy.mask, bd)
    ct = np.where(region, np.clip(copy.ct_hu + bd.shift_hu, HU_MIN, HU_MAX), copy.ct_hu)
    return SliceSet(mri=np.concatenate([slices.mri, add_trigger(copy.mri, bd)]),
                    ct_hu=np.concatenate([slices.ct_hu, ct.astype(slices.ct_hu.dtype)]),
                    mask=np.concatenate([slices.mask, copy.mask]),
                    patient_ids=np.concatenate([slices.patient_ids, copy.patient_ids]))


def constrain_and_scale(model: torch.nn.Module, global_params: NDArrays,
                        backdoored: SliceSet, own: SliceSet, local: LocalTraining,
                        bd: BackdoorConfig, seed: int) -> tuple[NDArrays, dict[str, float]]:
    """The constrain-and-scale attacker's model (Bagdasaryan et al. 2020, with the squared
    distance of Sun et al. 2019 as the anomaly term): trained on the ``backdoored`` slices
    with ``constrain_mu``/2·‖w − global‖² added to its loss (FedProx's proximal term), then
    its update scaled to the norm of the update it would send honestly (the same training on
    its ``own`` slices), so that a norm bound sees an honest hospital's and the distance term
    keeps it near the honest direction. Returns the model and its training metadata."""
    honest, _ = train_local(model, global_params, own, local, seed=seed)
    trained, meta = train_local(model, global_params, backdoored,
                                replace(local, fedprox_mu=bd.constrain_mu), seed=seed)
    norm = update_norm(trained, global_params)
    return scaled_upload(trained, global_params,
                         update_norm(honest, global_params) / norm if norm > 0 else 1.0), meta


def update_norm(params: NDArrays, global_params: NDArrays) -> float:
    """‖params − global‖ over every float parameter."""
    return float(np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - g) ** 2))
                             for a, g in zip(params, global_params, strict=True)
                             if is_float(g))))


def backdoor_upload(trained: NDArrays, global_params: NDArrays, bd: BackdoorConfig,
                    rnd: int, centers: int) -> NDArrays:
    """What the attacker sends in round ``rnd``: its model as trained (``data``,
    ``constrain_scale`` whose scaling came with its training, before ``start_round`` or after
    ``stop_round``), else the update boosted by ``boost`` (default ``centers``)."""
    stopped = bd.stop_round is not None and rnd > bd.stop_round
    if bd.attack != "model_replacement" or rnd < bd.start_round or stopped:
        return trained
    return scaled_upload(trained, global_params, bd.boost or float(centers))
