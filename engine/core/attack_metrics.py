"""Figures of a membership attack, as plain functions of arrays: ROC summary, AUC with
intervals over patients, TPR at fixed false-alarm rates, the rank test.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_curve

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
