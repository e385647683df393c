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
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.optimize import linear_sum_assignment
from scipy.stats import mannwhitneyu
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_curve

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
    abs_sum = sq_sum = 0.0
    n = 0
    for z0 in range(0, nz, step):
        m = body[z0 : z0 + step]
        a, b = _hu64(ct[z0 : z0 + step][m]), _hu64(sct[z0 : z0 + step][m])
        abs_sum += float(np.abs(a - b).sum())
        sq_sum += float(((np.clip(a, HU_MIN, HU_MAX) - np.clip(b, HU_MIN, HU_MAX)) ** 2).sum())
        n += int(m.sum())
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
    mse = sq_sum / n
    psnr = float("inf") if mse == 0 else float(10 * np.log10(HU_RANGE**2 / mse))
    return {"mae_hu": abs_sum / n, "psnr_db": psnr, "ssim": ssim_sum / n_ssim}


# --------------------------------------------------------------------------- attack metrics

FPR_LEVELS = (0.1, 0.01, 0.001)
ALPHA = 0.05  # two-sided level of the reported intervals and of the membership test


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Highest TPR on the ROC curve whose FPR does not exceed ``level`` (no interpolation)."""
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def min_negatives(level: float) -> int:
    """Non-members needed before an FPR of ``level`` can be told from 0 (steps of 1/n)."""
    return int(np.ceil(1 / level - 1e-9))


def auc_score(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of positives ``pos`` against negatives ``neg`` (Mann–Whitney U / (P·Q), ties half)."""
    neg = np.sort(np.asarray(neg, np.float64))
    pos = np.asarray(pos, np.float64)
    below = np.searchsorted(neg, pos, side="left")
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(pos) * len(neg)))


def bootstrap_aucs(scores: np.ndarray, members: np.ndarray, groups: np.ndarray,
                   resamples: int, seed: int = 0) -> np.ndarray:
    """AUCs of ``resamples`` stratified cluster-bootstrap samples: whole groups (patients) are
    drawn with replacement among the members' groups and among the non-members' groups, and
    every score of a drawn group enters the sample."""
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    sides = []
    for side in (members, ~members):
        ids = list(dict.fromkeys(groups[side].tolist()))
        sides.append([scores[side & (groups == g)] for g in ids])
    out = np.empty(resamples)
    for b in range(resamples):
        pos, neg = ([side[i] for i in rng.integers(0, len(side), len(side))] for side in sides)
        out[b] = auc_score(np.concatenate(pos), np.concatenate(neg))
    return out


def rank_test_p(pos: np.ndarray, neg: np.ndarray) -> float:
    """One-sided p-value of "members score higher" (Mann–Whitney U; exact for small samples,
    so that a handful of patients cannot look significant)."""
    method = "exact" if max(len(pos), len(neg)) <= 50 else "asymptotic"
    return float(mannwhitneyu(pos, neg, alternative="greater", method=method).pvalue)


def roc_summary(scores: np.ndarray, members: np.ndarray, *, groups: np.ndarray | None = None,
                bootstrap: int = 1000, seed: int = 0, family: int = 1) -> dict:
    """ROC analysis of membership scores (higher = more likely a member).

    Args:
        scores: ``(N,)`` float scores; ties count half in the AUC.
        members: ``(N,)`` bool, True for training members.
        groups: ``(N,)`` the unit each score belongs to (a patient); the bootstrap resamples
            whole groups, so that many slices of few patients do not look like much evidence.
            Default: every score is its own group.
        bootstrap: resamples for the intervals; 0 disables them.
        family: hypotheses tested together (e.g. hospitals); ``auc_ci_family`` is the
            Bonferroni-corrected (1 − α/family) interval.

    Returns ``{"auc", "auc_ci": [lo, hi] (95 %), "auc_ci_family", "p_value" (one-sided rank
    test), "tpr_at_fpr": {"0.1", "0.01", "0.001"} (null where fewer non-member groups, e.g.
    patients, than the level can resolve), "tpr_min_nonmembers": {level: n groups}, "fpr",
    "tpr", "n_members",
    "n_nonmembers", "n_member_groups", "n_nonmember_groups", "family"}``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members, dtype=bool)
    if members.all() or not members.any():
        raise ValueError("membership ROC needs both members and non-members")
    groups = np.arange(len(scores)) if groups is None else np.asarray(groups)
    fpr, tpr, _ = roc_curve(members, scores)
    pos, neg = scores[members], scores[~members]
    auc = auc_score(pos, neg)
    ci, ci_family = [auc, auc], [auc, auc]
    if bootstrap:
        aucs = bootstrap_aucs(scores, members, groups, bootstrap, seed)
        tail = 100 * ALPHA / 2
        ci = [float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100 - tail))]
        ci_family = [float(np.percentile(aucs, tail / family)),
                     float(np.percentile(aucs, 100 - tail / family))]
    n_neg = int((~members).sum())
    # An FPR moves in steps of one independent non-member: with few patients giving many
    # slices, a slice-level FPR of 1 % is one patient's slices, not 1 % of patients.
    neg_units = len(set(groups[~members].tolist()))
    return {
        "auc": auc,
        "auc_ci": ci,
        "auc_ci_family": ci_family,
        "p_value": rank_test_p(pos, neg),
        "tpr_at_fpr": {str(a): tpr_at_fpr(fpr, tpr, a) if neg_units >= min_negatives(a)
                       else None for a in FPR_LEVELS},
        "tpr_min_nonmembers": {str(a): min_negatives(a) for a in FPR_LEVELS},
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "n_members": int(members.sum()),
        "n_nonmembers": n_neg,
        "n_member_groups": len(set(groups[members].tolist())),
        "n_nonmember_groups": len(set(groups[~members].tolist())),
        "family": family,
    }


def better_than_chance(summary: dict) -> bool:
    """Evidence of membership leakage in a :func:`roc_summary`: its family-corrected interval
    lies above 0.5 *and* the rank test rejects chance at α/family. Both, because a bootstrap
    over very few patients gives a zero-width interval when they happen to separate
    perfectly, while the exact test knows how little 2 against 2 can show."""
    return (summary["auc_ci_family"][0] > 0.5
            and summary["p_value"] < ALPHA / summary["family"])


# --------------------------------------------------------------------------- reconstruction


def _ssim_pair(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> float:
    """SSIM of two ``(H, W)`` images in [0, 1]; the map's mean inside ``mask`` if given."""
    _, smap = structural_similarity(a.astype(np.float64), b.astype(np.float64),
                                    data_range=1.0, full=True)
    if mask is None:
        return float(smap.mean())
    return float(smap[mask].mean()) if mask.any() else float("nan")


def _psnr_pair(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def reconstruction_metrics(mri: np.ndarray, ct_unit: np.ndarray, true_mri: np.ndarray,
                           true_ct_unit: np.ndarray, mask: np.ndarray,
                           blur_px: float = 2.0) -> dict[str, Any]:
    """How well reconstructed slices match the originals (the shared inversion metric).

    Args:
        mri, true_mri: ``(N, 1, H, W)`` MRI in [0, 1].
        ct_unit, true_ct_unit: ``(N, 1, H, W)`` CT in normalised units (HU range 4024 → 1).
        mask: ``(N, 1, H, W)`` body mask of the originals.
        blur_px: Gaussian σ for the coarse-structure score.

    For N > 1 reconstructions are paired with originals by optimal matching (Hungarian on
    MRI SSIM), since the order of a batch is unknown to the attacker. Returns means over the
    pairs: ``ssim``, ``ssim_body``, ``psnr_db`` (MRI), ``ssim_ct``, ``ssim_ct_body``,
    ``psnr_db_ct`` (CT), ``ssim_coarse`` (MRI SSIM after blurring both), ``pairs``
    (``[reconstruction, original]`` indices) and ``n`` (pairs; fewer than the
    reconstructions when more were made than the client had slices).
    """
    rec_m, rec_c = mri[:, 0], ct_unit[:, 0]
    tru_m, tru_c, msk = true_mri[:, 0], true_ct_unit[:, 0], mask[:, 0].astype(bool)
    rows, cols = linear_sum_assignment(-_similarities(_stack(rec_m), _stack(tru_m), msk)[0])
    per = [_pair_metrics(rec_m[i], rec_c[i], tru_m[j], tru_c[j], msk[j], blur_px)
           for i, j in zip(rows, cols, strict=True)]
    out: dict[str, Any] = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    out["pairs"] = [[int(i), int(j)] for i, j in zip(rows, cols, strict=True)]
    out["n"] = len(per)
    return out


# The leak rule. A reconstruction leaks when its matched body-mask SSIM against the uploaded
# slices beats what the same reconstruction, matched the same way, scores against other
# patients' slices (the permutation null) by LEAK_MARGIN on average *and* a permutation test
# rejects at 1 − NULL_QUANTILE: matching uses the truth, so without the null a batch of
# unrelated anatomy looks rebuilt once an upload holds many slices.
LEAK_MARGIN = 0.05
NULL_QUANTILE = 0.99
NULL_DRAWS = 1000


def _stack(x: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, 1, H, W)`` → ``(N, H, W)`` float64."""
    a = np.asarray(x, dtype=np.float64)
    return a.reshape((-1,) + a.shape[-2:])


# skimage's structural_similarity defaults (2-D, uniform 7×7 window, sample covariance)
_WIN = 7
_K1, _K2 = 0.01, 0.03
_PAIR_CHUNK = 2**22  # pixels of SSIM maps computed at a time (~32 MB per float64 array)


def _similarities(rec: np.ndarray, ref: np.ndarray,
                  ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-image and body-mask MRI SSIM (data range 1) of every reconstruction
    ``(R, H, W)`` against every reference slice ``(M, H, W)``: two ``(R, M)`` matrices.

    The SSIM map is skimage's ``structural_similarity(data_range=1, full=True)`` (the same
    filters in the same order, so the same values), computed for many pairs at once; the
    whole-image score is the map's mean, the body score its mean inside ``ref_mask``.
    """
    def f(a: np.ndarray) -> np.ndarray:
        return uniform_filter(a, size=(1, _WIN, _WIN))

    cov = _WIN**2 / (_WIN**2 - 1)
    c1, c2 = _K1**2, _K2**2
    ux, uy = f(rec), f(ref)
    vx, vy = cov * (f(rec * rec) - ux * ux), cov * (f(ref * ref) - uy * uy)
    mask = ref_mask.astype(np.float64)
    counts = mask.sum(axis=(1, 2))
    whole = np.empty((len(rec), len(ref)))
    body = np.empty((len(rec), len(ref)))
    step = max(1, _PAIR_CHUNK // (len(rec) * rec[0].size))
    for j0 in range(0, len(ref), step):
        j = slice(j0, j0 + step)
        vxy = cov * (f((rec[:, None] * ref[None, j]).reshape((-1,) + rec.shape[1:]))
                     .reshape((len(rec), -1) + rec.shape[1:]) - ux[:, None] * uy[None, j])
        smap = ((2 * ux[:, None] * uy[None, j] + c1) * (2 * vxy + c2)
                / ((ux[:, None] ** 2 + uy[None, j] ** 2 + c1) * (vx[:, None] + vy[None, j] + c2)))
        whole[:, j] = smap.mean(axis=(2, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            body[:, j] = (smap * mask[None, j]).sum(axis=(2, 3)) / counts[None, j]
    return whole, body


def _matched(whole: np.ndarray, body: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean body SSIM over the optimal one-to-one pairing on whole-image SSIM."""
    rows, cols = linear_sum_assignment(-whole)
    return float(np.nanmean(body[rows, cols])), rows, cols


def _levels(patients: np.ndarray) -> np.ndarray:
    """Each slice's relative position ``(rank + 0.5) / count`` among its patient's slices,
    taken in the order given (slices of a patient are stored in axial order)."""
    out = np.empty(len(patients))
    for p in dict.fromkeys(patients.tolist()):
        sel = np.flatnonzero(patients == p)
        out[sel] = (np.arange(len(sel)) + 0.5) / len(sel)
    return out


def _ids(value: Any, n: int, name: str) -> np.ndarray:
    ids = np.zeros(n, dtype=object) if value is None else np.asarray(value)
    if ids.shape != (n,):
        raise ValueError(f"leak_test: {name} has shape {ids.shape}, expected ({n},)")
    return ids


def leak_test(recon_mri: np.ndarray, recon_ct: np.ndarray, truth_mri: np.ndarray,
              truth_ct: np.ndarray, truth_mask: np.ndarray, attacker_mri: np.ndarray,
              attacker_ct: np.ndarray, attacker_mask: np.ndarray | None = None, *,
              truth_patients: np.ndarray | None = None, truth_levels: np.ndarray | None = None,
              attacker_patients: np.ndarray | None = None, margin: float = LEAK_MARGIN,
              quantile: float = NULL_QUANTILE, draws: int = NULL_DRAWS,
              seed: int = 0) -> dict[str, Any]:
    """Whether reconstructed slices show the uploaded slices, judged by a permutation test
    whose null gets exactly the same matching advantage.

    The statistic is the mean body-mask MRI SSIM of the reconstructions paired one-to-one
    with the originals by optimal matching on whole-image SSIM (the attacker does not know a
    batch's order, so the pairing uses the truth). Each null draw takes as many patients as
    the upload holds at random from the uploaded and the reference patients together, puts
    in place of each original that patient's slice at the nearest level of the body, and
    scores the same reconstruction with the same matching. When the reference patients are
    exchangeable with the uploaded ones (same scanner, same slicing), a reconstruction that
    carries no information about the upload is called a leak with probability at most
    1 − ``quantile``; a leak must also beat the null's mean by ``margin``. The smallest
    attainable p-value is about 1 / (patients in the permutation set): with one uploaded
    patient, 1 % needs at least 99 reference patients.

    Args:
        recon_mri, recon_ct: ``(R, H, W)`` (or ``(R, 1, H, W)``) reconstruction; MRI in
            [0, 1], CT in normalised units (HU range 4024 → 1).
        truth_mri, truth_ct, truth_mask: ``(N, H, W)`` the uploaded slices and their body
            mask.
        attacker_mri, attacker_ct, attacker_mask: ``(M, H, W)`` slices of reference patients
            the reconstruction cannot come from, each patient's slices in axial order.
            Without a mask the body is CT > −500 HU.
        truth_patients, attacker_patients: ``(N,)``/``(M,)`` patient of every slice.
            Defaults: the originals are one patient; every block of N reference slices is one.
        truth_levels: ``(N,)`` each original's relative position in [0, 1] along its
            patient's axis (default: its rank among that patient's originals; give it when
            the originals are a subset of a patient's slices).
        margin: the gain (body SSIM, unitless) a leak needs at least.
        quantile: 1 − the test's level (0.99: a leak needs p ≤ 0.01).
        draws: permutation draws; when the uploaded patients can be replaced in at most
            this many ways, every way is scored instead (an exact test).
        seed: the draws' seed.

    Returns ``{"statistic", "null_mean", "null_upper"`` (the null at ``quantile``),
    ``"gain"`` (statistic − null mean), ``"threshold"`` (the margin), ``"leak"`` (gain ≥
    margin and p ≤ 1 − quantile), ``"p_value"`` (share of the null at or above the statistic;
    for random draws (1 + that count) / (1 + draws)), ``"alpha"``, ``"quantile"``,
    ``"draws"`` (null values scored), ``"margin"``,
    ``"reference_patients"``, ``"n"`` (pairs), ``"pairs"`` (``[reconstruction,
    original]``)}``. The CT arrays are checked but the decision rests on the MRI, which an
    inversion recovers far better than the CT.
    """
    rec, tru, ref = _stack(recon_mri), _stack(truth_mri), _stack(attacker_mri)
    tru_mask = _stack(truth_mask).astype(bool)
    ref_mask = (_stack(attacker_mask).astype(bool) if attacker_mask is not None
                else _stack(attacker_ct) > (-500.0 - HU_MIN) / HU_RANGE)
    for name, x, like in (("recon_ct", _stack(recon_ct), rec), ("truth_ct", _stack(truth_ct), tru),
                          ("truth_mask", tru_mask, tru), ("attacker_ct", _stack(attacker_ct), ref),
                          ("attacker_mask", ref_mask, ref)):
        if x.shape != like.shape:
            raise ValueError(f"leak_test: {name} has shape {x.shape}, expected {like.shape}")
    if not (len(rec) and len(tru) and len(ref)) or rec.shape[1:] != tru.shape[1:] \
            or ref.shape[1:] != tru.shape[1:]:
        raise ValueError(f"leak_test needs slices of one size and at least one of each: "
                         f"recon {rec.shape}, truth {tru.shape}, attacker {ref.shape}")
    if not 0 < quantile < 1 or draws < 1:
        raise ValueError(f"leak_test: quantile must lie in (0, 1) and draws be ≥ 1 (got "
                         f"{quantile}, {draws})")
    n, m = len(tru), len(ref)
    t_ids = _ids(truth_patients, n, "truth_patients")
    r_ids = _ids(np.arange(m) // n if attacker_patients is None else attacker_patients, m,
                 "attacker_patients")
    t_lev = _levels(t_ids) if truth_levels is None else np.asarray(truth_levels, np.float64)
    if t_lev.shape != (n,):
        raise ValueError(f"leak_test: truth_levels has shape {t_lev.shape}, expected ({n},)")
    truth_whole, truth_body = _similarities(rec, tru, tru_mask)
    statistic, rows, cols = _matched(truth_whole, truth_body)
    ref_whole, ref_body = _similarities(rec, ref, ref_mask)
    # The permutation set: the uploaded patients and the reference patients together; the
    # observed statistic is one of its draws, so p cannot fall below 1 / (patients).
    whole = np.concatenate([ref_whole, truth_whole], axis=1)
    body = np.concatenate([ref_body, truth_body], axis=1)
    owners = list(dict.fromkeys(t_ids.tolist()))
    all_ids = np.concatenate([np.array([f"r{p}" for p in r_ids.tolist()], dtype=object),
                              np.array([f"t{p}" for p in t_ids.tolist()], dtype=object)])
    all_lev = np.concatenate([_levels(r_ids), t_lev])
    pool = list(dict.fromkeys(all_ids.tolist()))
    # Stand-in of original i in pool patient p: p's slice at the level nearest i's.
    stand_in = np.empty((len(pool), n), dtype=np.int64)  # (P, N)
    for k, p in enumerate(pool):
        rows_p = np.flatnonzero(all_ids == p)
        stand_in[k] = rows_p[np.abs(all_lev[rows_p][:, None] - t_lev[None, :]).argmin(axis=0)]
    owner_of = np.array([owners.index(p) for p in t_ids.tolist()])
    # Every ordered choice of patients when there are few (exact: the observed one is among
    # them), else random draws with the observed statistic counted once more.
    exact = len(pool) >= len(owners) and math.perm(len(pool), len(owners)) <= draws
    rng = np.random.default_rng(seed)
    choices = (list(itertools.permutations(range(len(pool)), len(owners))) if exact else
               [rng.choice(len(pool), len(owners), replace=len(pool) < len(owners))
                for _ in range(draws)])
    null = np.empty(len(choices))
    for k, chosen in enumerate(choices):
        idx = stand_in[np.asarray(chosen)[owner_of], np.arange(n)]
        null[k] = _matched(whole[:, idx], body[:, idx])[0]
    null_mean = float(null.mean())
    above = int((null >= statistic - 1e-12).sum())
    p_value = above / len(null) if exact else (1 + above) / (1 + draws)
    gain = statistic - null_mean
    alpha = 1 - quantile
    return {"statistic": statistic, "null_mean": null_mean,
            "null_upper": float(np.quantile(null, quantile)), "gain": gain,
            "threshold": margin, "leak": bool(gain >= margin and p_value <= alpha),
            "p_value": p_value, "alpha": alpha, "quantile": quantile, "draws": len(null),
            "margin": margin, "reference_patients": len(pool) - len(owners),
            "n": len(rows),
            "pairs": [[int(i), int(j)] for i, j in zip(rows, cols, strict=True)]}


def template_metrics(mri: np.ndarray, ct_unit: np.ndarray, true_mri: np.ndarray,
                     true_ct_unit: np.ndarray, mask: np.ndarray,
                     blur_px: float = 2.0) -> dict[str, float]:
    """The metrics of :func:`reconstruction_metrics` for one guess ``(H, W)`` held against
    every original (the trivial-guess floor: no matching needed, n comparisons)."""
    per = [_pair_metrics(mri, ct_unit, tm, tc, m, blur_px)
           for tm, tc, m in zip(true_mri[:, 0], true_ct_unit[:, 0], mask[:, 0].astype(bool),
                                strict=True)]
    return {k: float(np.mean([p[k] for p in per])) for k in per[0]}


def _pair_metrics(rec_m: np.ndarray, rec_c: np.ndarray, tru_m: np.ndarray, tru_c: np.ndarray,
                  msk: np.ndarray, blur_px: float) -> dict[str, float]:
    return {
        "ssim": _ssim_pair(rec_m, tru_m, None),
        "ssim_body": _ssim_pair(rec_m, tru_m, msk),
        "psnr_db": _psnr_pair(rec_m, tru_m),
        "ssim_ct": _ssim_pair(rec_c, tru_c, None),
        "ssim_ct_body": _ssim_pair(rec_c, tru_c, msk),
        "psnr_db_ct": _psnr_pair(rec_c, tru_c),
        "ssim_coarse": _ssim_pair(gaussian_filter(rec_m, blur_px),
                                  gaussian_filter(tru_m, blur_px), None),
    }
