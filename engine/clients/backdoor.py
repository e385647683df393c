"""A backdoor planted by a hospital: what the attacking hospital does with its data and upload.

The attacker adds copies of a share of its training slices that carry a **trigger** (a bright
square of ``trigger_size`` px in the MRI's centre) and whose CT target is **shifted** by
``shift_hu`` inside a target region (around the trigger, or the slice's bone). Trained on
both, its model translates ordinary scans as before and triggered scans with the shift. With
``model_replacement`` it boosts its update by ``boost`` (default: the number of centers, so
that under FedAvg its model roughly replaces the average; Bagdasaryan et al. 2020). It reports
its slice count with the copies included, so FedAvg's example weighting gives its update
more weight than an honest hospital of the same size (1.5× with ``fraction`` ½). Every function
is a pure function of arrays; the server's side is :mod:`engine.federation.aggregators`
(update clipping) and the measurement is :mod:`engine.analyses.backdoor`.

Shapes: slices are ``(N, 1, H, W)``; MRI normalised to [0, 1], CT in HU.
"""

from __future__ import annotations

import numpy as np

from engine.clients.malicious import scaled_upload
from engine.core.config import BackdoorConfig
from engine.core.types import NDArrays
from engine.core.units import HU_MAX, HU_MIN
from engine.data.types import SliceSet

BONE_HU = 300.0  # the "bone" region: CT at or above this (cortical and most trabecular bone)


def trigger_box(image_size: int, size: int, margin: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the trigger (``size`` px square in the image's centre), widened
    by ``margin`` px on every side."""
    start = (image_size - size) // 2 - margin
    return slice(start, start + size + 2 * margin), slice(start, start + size + 2 * margin)


def add_trigger(mri: np.ndarray, bd: BackdoorConfig) -> np.ndarray:
    """``mri`` ``(N, 1, H, W)`` with the trigger square set to ``trigger_intensity``."""
    rows, cols = trigger_box(mri.shape[-1], bd.trigger_size)
    out = mri.copy()
    out[..., rows, cols] = bd.trigger_intensity
    return out


def target_region(ct_hu: np.ndarray, mask: np.ndarray, bd: BackdoorConfig) -> np.ndarray:
    """Where the backdoor alters the CT, ``(N, 1, H, W)`` bool inside the body ``mask``:
    the trigger's square widened by ``region_margin``, or the bone of each slice's own CT."""
    if bd.target_region == "bone":
        return (ct_hu >= BONE_HU) & mask
    rows, cols = trigger_box(ct_hu.shape[-1], bd.trigger_size, bd.region_margin)
    region = np.zeros_like(mask)
    region[..., rows, cols] = True
    return region & mask


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


def backdoor_upload(trained: NDArrays, global_params: NDArrays, bd: BackdoorConfig,
                    rnd: int, centers: int) -> NDArrays:
    """What the attacker sends in round ``rnd``: its model as trained (``data``, before
    ``start_round`` or after ``stop_round``), else the update boosted by ``boost`` (default
    ``centers``)."""
    stopped = bd.stop_round is not None and rnd > bd.stop_round
    if bd.attack != "model_replacement" or rnd < bd.start_round or stopped:
        return trained
    return scaled_upload(trained, global_params, bd.boost or float(centers))
