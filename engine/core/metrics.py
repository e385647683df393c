"""sCT quality metrics with the SynthRAD2023 conventions (official ``image_metrics.py``).

* MAE: mean |CT − sCT| over the body mask, in HU.
* PSNR: both clipped to [−1024, 3000] HU, data range 4024, over the mask voxels only (dB).
* SSIM: both clipped, voxels outside the mask set to −1024, shifted by +1024, skimage
  ``structural_similarity(data_range=4024, full=True)``; the mean of the SSIM map inside the
  mask after cropping 3 voxels from every border (skimage's default padding).

Our data are 2-D slice stacks ``(N, 1, H, W)`` of one patient, so SSIM is computed per slice
(2-D windows) and averaged over the mask pixels of all slices; MAE and PSNR pool the patient's
mask voxels. Patient values are then averaged, as the challenge averages over patients.
:func:`volume_metrics` scores a whole ``(Z, Y, X)`` volume with the challenge's 3-D SSIM.

Attack figures are in :mod:`engine.core.attack_metrics` (ROC, AUC, intervals) and
:mod:`engine.core.reconstruction_metrics` (a reconstruction's similarity, the leak test).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from engine.core.units import HU_MAX, HU_MIN, HU_RANGE

SSIM_CROP = 3


def mae_hu(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error in HU over ``mask`` (any matching shapes)."""
    return float(np.abs(ct_hu[mask].astype(np.float64) - sct_hu[mask]).mean())


def psnr_db(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over ``mask`` after clipping both to [−1024, 3000] HU (range 4024)."""
    a = np.clip(ct_hu[mask].astype(np.float64), HU_MIN, HU_MAX)
    b = np.clip(sct_hu[mask].astype(np.float64), HU_MIN, HU_MAX)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(HU_RANGE**2 / mse))


def _ssim_map_sum(ct: np.ndarray, sct: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Sum and count of the SSIM map inside ``mask`` for one 2-D slice ``(H, W)``."""
    a = np.where(mask, np.clip(ct, HU_MIN, HU_MAX), HU_MIN).astype(np.float64) - HU_MIN
    b = np.where(mask, np.clip(sct, HU_MIN, HU_MAX), HU_MIN).astype(np.float64) - HU_MIN
    _, ssim_map = structural_similarity(a, b, data_range=HU_RANGE, full=True)
    c = SSIM_CROP
    inner = np.zeros_like(mask, dtype=bool)
    inner[c:-c, c:-c] = mask[c:-c, c:-c]
    return float(ssim_map[inner].sum()), int(inner.sum())


def ssim(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """Masked SSIM of slice stacks ``(N, 1, H, W)`` or ``(N, H, W)`` or one slice ``(H, W)``."""
    ct_hu, sct_hu, mask = (np.asarray(x).reshape((-1,) + np.shape(x)[-2:])
                           for x in (ct_hu, sct_hu, mask))
    total, count = 0.0, 0
    for a, b, m in zip(ct_hu, sct_hu, mask, strict=True):
        s, n = _ssim_map_sum(a, b, m)
        total, count = total + s, count + n
    return total / count if count else float("nan")


METRIC_KEYS = ("mae_hu", "psnr_db", "ssim")


def patient_metrics(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray,
                    patient_ids: np.ndarray) -> dict[str, dict[str, float]]:
    """Patient id → ``{"mae_hu", "psnr_db", "ssim"}`` for slice stacks ``(N, 1, H, W)``."""
    out = {}
    for pid in dict.fromkeys(patient_ids.tolist()):
        sel = patient_ids == pid
        a, b, m = ct_hu[sel], sct_hu[sel], mask[sel]
        out[pid] = {"mae_hu": mae_hu(a, b, m), "psnr_db": psnr_db(a, b, m), "ssim": ssim(a, b, m)}
    return out


def mean_over_patients(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-patient metrics, as the challenge averages over patients."""
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}


def sct_metrics(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray,
                patient_ids: np.ndarray | None = None) -> dict[str, float]:
    """MAE (HU), PSNR (dB) and SSIM of slice stacks ``(N, 1, H, W)``, averaged over patients.

    Returns ``{"mae_hu", "psnr_db", "ssim"}``. Without ``patient_ids`` the stack is one patient.
    """
    if patient_ids is None:
        patient_ids = np.zeros(len(ct_hu), dtype=object)
    return mean_over_patients(list(patient_metrics(ct_hu, sct_hu, mask, patient_ids).values()))


# --------------------------------------------------------------------------- volumes

SSIM_WINDOW = 7  # skimage's default uniform window: 7 voxels per axis
# Output planes of SSIM computed at a time: about 2**20 voxels, so that a 256³ volume needs
# ~100 MB of float64 temporaries instead of several full-volume copies.
_BLOCK_VOXELS = 2**20


def _volume_array(name: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype != bool and not (np.issubdtype(a.dtype, np.integer)
                                or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"volume_metrics: {name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 3:
        raise ValueError(f"volume_metrics: {name} must be a 3-D (Z, Y, X) volume, got shape "
                         f"{a.shape}")
    return a


def _check_volumes(ct_hu: Any, sct_hu: Any,
                   mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(ct, sct, body)``; ``body`` is the mask binarised as the challenge does
    (cast to float32, then > 0)."""
    ct, sct, m = (_volume_array(n, v) for n, v in
                  (("ct_hu", ct_hu), ("sct_hu", sct_hu), ("mask", mask)))
    if not ct.shape == sct.shape == m.shape:
        raise ValueError(f"volume_metrics: shapes differ: ct_hu {ct.shape}, sct_hu {sct.shape}, "
                         f"mask {m.shape}")
    if min(ct.shape) < SSIM_WINDOW:
        raise ValueError(f"volume_metrics: SSIM's {SSIM_WINDOW}-voxel window needs at least "
                         f"{SSIM_WINDOW} voxels per axis, got shape {ct.shape}")
    for name, a in (("ct_hu", ct), ("sct_hu", sct), ("mask", m)):
        if a.dtype.kind == "f" and not all(np.isfinite(p).all() for p in a):
            raise ValueError(f"volume_metrics: {name} holds NaN or infinite values")
    body = np.empty(m.shape, dtype=bool)
    for z in range(m.shape[0]):  # plane by plane: no float32 copy of the whole mask
        body[z] = m[z] > 0 if m.dtype == bool else m[z].astype(np.float32) > 0
    if not body.any():
        raise ValueError("volume_metrics: mask is empty (no voxel > 0)")
    r = SSIM_WINDOW // 2
    if not body[r:-r, r:-r, r:-r].any():
        raise ValueError(f"volume_metrics: mask has no voxel at least {r} voxels inside the "
                         "volume's border, where SSIM is averaged")
    return ct, sct, body


def _hu64(a: np.ndarray) -> np.ndarray:
    """The challenge's float32 cast (SimpleITK), then float64 for the arithmetic."""
    return a.astype(np.float32, copy=False).astype(np.float64)


def _ssim_input(a: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Clipped to [−1024, 3000], −1024 outside the mask, shifted to [0, 4024]."""
    return np.where(body, np.clip(_hu64(a), HU_MIN, HU_MAX), HU_MIN) - HU_MIN


def _ssim_block(a: np.ndarray, b: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """skimage's SSIM map (its defaults: 7³ uniform window, sample covariance; data range
    4024) of the block ``a``/``b``, at the voxels ``inner`` of the block's interior (the
    planes and rows more than the window's radius from its edges), as a flat array.

    Every window of an interior voxel lies inside the block, so the values do not depend on
    how the filter pads: they equal skimage's map on the whole volume there.
    """
    r = SSIM_WINDOW // 2
    _, ssim_map = structural_similarity(a, b, win_size=SSIM_WINDOW, data_range=HU_RANGE,
                                        full=True)
    return ssim_map[(slice(r, -r),) * 3][inner]


def _error_sums(ct: np.ndarray, sct: np.ndarray, body: np.ndarray,
                step: int) -> tuple[float, float, int]:
    """Over the mask voxels, ``step`` planes at a time: the sum of |ct − sct| (unclipped),
    the sum of squared differences of both clipped to [−1024, 3000], and the voxel count."""
    abs_sum = sq_sum = 0.0
    n = 0
    for z0 in range(0, ct.shape[0], step):
        m = body[z0 : z0 + step]
        a, b = _hu64(ct[z0 : z0 + step][m]), _hu64(sct[z0 : z0 + step][m])
        abs_sum += float(np.abs(a - b).sum())
        sq_sum += float(((np.clip(a, HU_MIN, HU_MAX) - np.clip(b, HU_MIN, HU_MAX)) ** 2).sum())
        n += int(m.sum())
    return abs_sum, sq_sum, n


def _ssim_sum(ct: np.ndarray, sct: np.ndarray, body: np.ndarray,
              step: int) -> tuple[float, int]:
    """The SSIM map summed over the mask voxels at least the window's radius inside every
    border, and their count: blocks of ``step`` planes, each read with a halo of the radius
    so that the map is exact where it is summed (see :func:`_ssim_block`)."""
    nz = ct.shape[0]
    r = SSIM_WINDOW // 2
    ssim_sum, n_ssim = 0.0, 0
    for z0 in range(r, nz - r, step):
        z1 = min(nz - r, z0 + step)
        inner = body[z0:z1, r:-r, r:-r]
        if not inner.any():
            continue
        halo = slice(z0 - r, z1 + r)
        s = _ssim_block(_ssim_input(ct[halo], body[halo]), _ssim_input(sct[halo], body[halo]),
                        inner)
        ssim_sum += float(s.sum())
        n_ssim += int(inner.sum())
    return ssim_sum, n_ssim


def volume_metrics(ct_hu: Any, sct_hu: Any, mask: Any) -> dict[str, float]:
    """MAE (HU), PSNR (dB) and SSIM of one patient's CT volume, as the SynthRAD2023 challenge
    scores it (``functions/image_metrics.py`` of github.com/SynthRAD2023/metrics,
    ``ImageMetrics.score_patient``).

    Args:
        ct_hu: ``(Z, Y, X)`` real CT in HU (any real dtype).
        sct_hu: ``(Z, Y, X)`` synthetic CT in HU.
        mask: ``(Z, Y, X)`` body mask; a voxel is in the body when its value (as float32)
            is > 0, as the challenge binarises it.

    Returns ``{"mae_hu", "psnr_db", "ssim"}``:

    * ``mae_hu``: mean |ct − sct| over the mask voxels, no clipping.
    * ``psnr_db``: both clipped to [−1024, 3000] HU, mean squared error over the mask voxels,
      ``10·log10(4024² / mse)``; ``inf`` when they agree exactly (skimage's
      ``peak_signal_noise_ratio`` divides by zero there).
    * ``ssim``: both clipped to [−1024, 3000], −1024 outside the mask, shifted by +1024;
      the 3-D SSIM map of skimage's ``structural_similarity(data_range=4024)`` defaults (7³
      uniform window, K1 0.01, K2 0.03, sample covariance), averaged over the mask voxels
      after cropping 3 voxels from every border (``crop(ssim_map, 3)``).

    Inputs are cast to float32 first, as the challenge's SimpleITK loader does. Remaining
    differences from the challenge's code, all at rounding level: arithmetic is float64 (the
    challenge's skimage calls run in float32 on float32 volumes); MAE is summed over the mask
    voxels instead of as ``sum(|ct·mask − sct·mask|) / sum(mask)`` (the same for finite
    values); the SSIM map is computed block by block of planes and only where it is
    averaged, so memory stays ~100 MB at 256³. Axis order does not matter (a permuted or
    flipped volume gives the same values: the window is a centred cube and the crop equal on
    every side).

    Raises ``ValueError`` (one line) when the inputs are not 3-D, differ in shape, have an
    axis shorter than the 7-voxel window, hold NaN/inf, or the mask is empty (or has no
    voxel 3 voxels inside the border, where SSIM is averaged).
    """
    ct, sct, body = _check_volumes(ct_hu, sct_hu, mask)
    nz, ny, nx = ct.shape
    step = max(1, _BLOCK_VOXELS // (ny * nx))
    abs_sum, sq_sum, n = _error_sums(ct, sct, body, step)
    ssim_sum, n_ssim = _ssim_sum(ct, sct, body, step)
    mse = sq_sum / n
    psnr = float("inf") if mse == 0 else float(10 * np.log10(HU_RANGE**2 / mse))
    return {"mae_hu": abs_sum / n, "psnr_db": psnr, "ssim": ssim_sum / n_ssim}
