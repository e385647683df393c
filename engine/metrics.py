"""sCT quality metrics with the SynthRAD2023 conventions (official ``image_metrics.py``).

* MAE: mean |CT − sCT| over the body mask, in HU.
* PSNR: both clipped to [−1024, 3000] HU, data range 4024, over the mask voxels only (dB).
* SSIM: both clipped, voxels outside the mask set to −1024, shifted by +1024, skimage
  ``structural_similarity(data_range=4024, full=True)``; the mean of the SSIM map inside the
  mask after cropping 3 voxels from every border (skimage's default padding).

Our data are 2-D slice stacks ``(N, 1, H, W)`` of one patient, so SSIM is computed per slice
(2-D windows) and averaged over the mask pixels of all slices; MAE and PSNR pool the patient's
mask voxels. Patient values are then averaged, as the challenge averages over patients.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from engine.data.preprocess import HU_MAX, HU_MIN, HU_RANGE

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


# --------------------------------------------------------------------------- attack metrics

FPR_LEVELS = (0.1, 0.01, 0.001)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Highest TPR on the ROC curve whose FPR does not exceed ``level`` (no interpolation).

    With n negatives the FPR moves in steps of 1/n, so levels below 1/n read the TPR at
    FPR = 0, the strict reading that low-FPR membership inference asks for.
    """
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _auc_by_ranks(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC of each row: Mann–Whitney U from tie-averaged ranks. ``pos (B, P)``, ``neg (B, Q)``."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    p, q = pos.shape[1], neg.shape[1]
    return (ranks[:, :p].sum(axis=1) - p * (p + 1) / 2) / (p * q)


def roc_summary(scores: np.ndarray, members: np.ndarray, *, bootstrap: int = 1000,
                seed: int = 0) -> dict:
    """ROC analysis of membership scores (higher = more likely a member).

    Args:
        scores: ``(N,)`` float scores; ties are handled as scikit-learn does (AUC counts
            them as half).
        members: ``(N,)`` bool, True for training members.
        bootstrap: resamples (stratified) for the 95 % AUC interval; 0 disables it.

    Returns ``{"auc", "auc_ci": [lo, hi], "tpr_at_fpr": {"0.1", "0.01", "0.001"},
    "fpr": [...], "tpr": [...], "n_members", "n_nonmembers"}``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members, dtype=bool)
    if members.all() or not members.any():
        raise ValueError("membership ROC needs both members and non-members")
    fpr, tpr, _ = roc_curve(members, scores)
    auc = float(roc_auc_score(members, scores))
    ci = [auc, auc]
    if bootstrap:
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(members), np.flatnonzero(~members)
        pos_s = scores[rng.choice(pos, (bootstrap, len(pos)))]
        neg_s = scores[rng.choice(neg, (bootstrap, len(neg)))]
        aucs = _auc_by_ranks(pos_s, neg_s)
        ci = [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]
    return {
        "auc": auc,
        "auc_ci": ci,
        "tpr_at_fpr": {str(a): tpr_at_fpr(fpr, tpr, a) for a in FPR_LEVELS},
        "fpr": fpr.tolist(),
        "tpr": tpr.tolist(),
        "n_members": int(members.sum()),
        "n_nonmembers": int((~members).sum()),
    }
