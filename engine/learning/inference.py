"""The shared model applied to a whole patient volume: a synthetic CT on the volume's own grid,
as the volumetric metrics score it (SynthRAD2023 style)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.units import HU_MIN, unit_to_hu
from engine.data.preprocess import normalise_mri, resample_slices
from engine.data.types import PatientVolume


@torch.no_grad()
def native_sct_hu(model: torch.nn.Module, volume: PatientVolume, image_size: int,
                  batch_size: int = 32) -> np.ndarray:
    """The synthetic CT of every axial slice of ``volume``, on the volume's own grid
    ``(X, Y, Z)`` in HU (−1024 outside the body mask).

    The slices are cut as :func:`engine.data.preprocess.volume_to_slices` cuts the training
    slices (MRI normalised over the whole volume inside the mask, axial with anterior up,
    padded to a square and resampled to ``image_size``², MRI 0 outside the resampled mask),
    but all of them; each prediction is resampled back to the square (bilinear), the padding
    cut off and the slice put back in place. One batch of slices is held at image size.
    """
    mri = normalise_mri(volume.mri, volume.mask)

    def axial(a: np.ndarray) -> np.ndarray:  # (X, Y, Z) RAS → (Z, Y, X), anterior up
        return np.ascontiguousarray(np.flip(a.transpose(2, 1, 0), axis=1))

    mri_s = resample_slices(axial(mri), image_size, "bilinear")
    del mri
    body_s = resample_slices(axial(volume.mask.astype(np.float32)), image_size,
                             "bilinear") > 0.5
    mri_s = np.where(body_s, mri_s, 0.0).astype(np.float32)
    nx, ny, nz = volume.mask.shape
    side = max(ny, nx)
    top, left = (side - ny) // 2, (side - nx) // 2
    out = np.empty((nz, ny, nx), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, nz, batch_size):
        x = torch.from_numpy(mri_s[start : start + batch_size, None]).to(device)
        hu = F.interpolate(unit_to_hu(model(x)), size=(side, side), mode="bilinear",
                           align_corners=False)
        out[start : start + batch_size] = hu[:, 0, top : top + ny, left : left + nx].cpu()
    sct = np.flip(out, axis=1).transpose(2, 1, 0)
    return np.where(volume.mask, sct, HU_MIN).astype(np.float32)
