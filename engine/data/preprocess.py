"""Preprocessing as in FedSynthCT-Brain.

* MRI: robust min-max (percentiles) to [0, 1].
* CT: clipped to [−1024, 3000] HU, background −1024 HU; the network sees normalised CT
  units (:mod:`engine.core.units`).
* Slices: axial, padded to a square field of view and resampled to ``image_size``².
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.units import HU_MAX, HU_MIN
from engine.data.types import PatientVolume, SliceSet


def normalise_mri(
    mri: np.ndarray, mask: np.ndarray | None = None, lo_pct: float = 0.5, hi_pct: float = 99.5
) -> np.ndarray:
    """Robust min-max of an MRI volume to [0, 1] using percentiles inside ``mask``.

    Args:
        mri: any shape, raw intensities.
        mask: same shape, bool; percentiles are taken over its voxels (all voxels if None).
    """
    values = mri[mask] if mask is not None and mask.any() else mri.ravel()
    lo, hi = np.percentile(values, [lo_pct, hi_pct])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-6 * max(1.0, abs(hi)):
        raise ValueError(
            "MRI has (almost) constant intensity inside the body mask; "
            "check that the file holds an MRI and that the mask covers the head"
        )
    out = np.clip((mri - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if mask is not None:
        out[~mask] = 0.0
    return out


def resample_slices(stack: np.ndarray, image_size: int, mode: str) -> np.ndarray:
    """Pad ``(N, H, W)`` slices to a square and resample to ``(N, image_size, image_size)``.

    ``mode`` is a torch interpolation mode ("bilinear" for intensities, "nearest" for masks).
    Padding uses each array's minimum, so MRI pads with 0 and CT with −1024 HU.
    """
    n, h, w = stack.shape
    side = max(h, w)
    pad_value = float(stack.min()) if stack.size else 0.0
    square = np.full((n, side, side), pad_value, dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[:, top : top + h, left : left + w] = stack
    t = torch.from_numpy(square)[:, None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(t, size=(image_size, image_size), mode=mode, **kwargs)
    return out[:, 0].numpy()


def axial_slice_indices(mask: np.ndarray, n_slices: int, min_fraction: float = 0.25) -> np.ndarray:
    """Pick ``n_slices`` evenly spaced axial indices where the body covers enough of the slice.

    Args:
        mask: ``(X, Y, Z)`` bool body mask.
        min_fraction: a slice qualifies when its body area is at least this fraction of the
            largest axial body area (skips the very top of the head and the neck edge).
    """
    area = mask.sum(axis=(0, 1))
    if area.max() == 0:
        raise ValueError("body mask is empty: no voxel belongs to the body")
    valid = np.flatnonzero(area >= min_fraction * area.max())
    if n_slices >= len(valid):
        return valid
    pick = np.linspace(0, len(valid) - 1, n_slices).round().astype(int)
    return valid[pick]


def volume_to_slices(volume: PatientVolume, image_size: int, n_slices: int) -> SliceSet:
    """Turn a patient volume into normalised axial slices ``(N, 1, S, S)``.

    MRI is normalised over the whole volume (inside the mask); CT outside the mask is set to
    −1024 HU, as FedSynthCT-Brain does.
    """
    idx = axial_slice_indices(volume.mask, n_slices)
    mri = normalise_mri(volume.mri, volume.mask)
    ct = np.where(volume.mask, np.clip(volume.ct_hu, HU_MIN, HU_MAX), HU_MIN).astype(np.float32)
    # (X, Y, Z) RAS → axial slices (Z, Y, X) displayed with anterior up.
    def axial(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(a[:, :, idx].transpose(2, 1, 0), axis=1))

    mri_s = resample_slices(axial(mri), image_size, "bilinear")
    ct_s = resample_slices(axial(ct), image_size, "bilinear")
    mask_s = resample_slices(axial(volume.mask.astype(np.float32)), image_size, "bilinear") > 0.5
    ct_s = np.where(mask_s, ct_s, HU_MIN).astype(np.float32)
    mri_s = np.where(mask_s, mri_s, 0.0).astype(np.float32)
    ids = np.array([volume.patient_id] * len(idx), dtype=object)
    return SliceSet(mri_s[:, None], ct_s[:, None], mask_s[:, None], ids)
