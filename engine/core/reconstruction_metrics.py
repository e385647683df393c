"""Figures of a gradient-inversion reconstruction, as plain functions of arrays: its
similarity to the real slices after the best pairing, the attacker's template floor, and the
leak test against a permutation null over other patients' slices.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from engine.core.units import HU_MIN, HU_RANGE


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
