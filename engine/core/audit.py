"""Empirical lower bounds on ε from a privacy audit: plain functions of counts and scores.

An audit inserts canaries, each present with probability ½, and scores how strongly each one
shows in what an attacker sees. If the mechanism is (ε, δ)-DP, no test tells present from
absent canaries much better than randomised response with e^ε : 1 odds, so a test that does
certifies, at a stated confidence, that the mechanism is *not* (ε', δ)-DP for every ε' below
the bound. A bound above the accountant's ε means the implementation (or an assumption of
the accounting) is wrong; a bound below it is consistent, and means little when the audit
could not have certified more (:func:`audit_cap`).

* :func:`one_run_epsilon`: Steinke, Nasr & Jagielski 2023 ("Privacy auditing with one (1)
  training run", Theorem 3 / Algorithm 2): r guesses, v correct, among m canaries.
* :func:`clopper_pearson_epsilon`: Jagielski, Ullman & Oprea 2020: one threshold's false
  positives and negatives, each rate bounded by a Clopper–Pearson interval.
* :func:`one_shot_epsilon`: Andrew et al. 2023: the ε of the Gaussian mechanism whose two
  distributions are the fitted ones (an estimate, not a bound).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from scipy.stats import beta, binom, norm

# Guess sets an audit may use, fixed in advance (shares of the canaries guessed, half of them
# present and half absent, the rest abstained on); their number is the Bonferroni factor of
# the audit's confidence. Not 1: about half the canaries are present, not exactly half, so
# guessing all would put some canaries on the wrong side of a perfect score's split.
GUESS_SHARES = (0.9, 0.5, 0.2, 0.1)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] for an (ε, δ)-DP mechanism, ``m`` canaries
    each present with probability ½ (Steinke et al. 2023, Theorem 3): the binomial tail at
    q = e^ε / (1 + e^ε) plus the δ term 2·m·δ·max_i P[v − i ≤ Bin(r, q) < v] / i."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"one_run_p_value needs 0 ≤ v ≤ r ≤ m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"one_run_p_value: ε = {epsilon} must be ≥ 0 and δ = {delta} in [0, 1]")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v − i ≤ Bin < v]
    worst = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * worst, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε at which ``v`` correct of ``r`` guesses would still be this unlikely:
    the mechanism is not (ε', δ)-DP for any ε' below it, at ``confidence``. 0 when the
    guesses are no better than a coin."""
    alpha = 1 - confidence
    if not 0 < alpha < 1:
        raise ValueError(f"confidence = {confidence} must lie in (0, 1)")
    if one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    high = 1.0
    while one_run_p_value(m, r, v, high, delta) < alpha:
        high *= 2
        if high > 1e3:  # certainly not reached by any finite audit
            return math.inf
    return float(brentq(lambda e: one_run_p_value(m, r, v, e, delta) - alpha, 0.0, high,
                        xtol=1e-6))


def _guesses(share: float, m: int) -> int:
    """Canaries guessed present (and as many absent) with ``share`` of ``m`` guessed."""
    return max(1, int(round(share * m / 2)))


def audit_cap(canaries: int, delta: float, confidence: float = 0.95) -> float:
    """The most :func:`audit_epsilon` could certify with ``canaries`` canaries at this
    confidence, even for an attack that scores every canary perfectly: its largest guess set
    all right (with the same Bonferroni correction over :data:`GUESS_SHARES`)."""
    level = 1 - (1 - confidence) / len(GUESS_SHARES)
    r = 2 * _guesses(max(GUESS_SHARES), canaries)
    return one_run_epsilon(canaries, r, r, delta, level)


def clopper_pearson_epsilon(false_pos: int, n_out: int, false_neg: int, n_in: int,
                            delta: float, confidence: float = 0.95) -> float:
    """ε lower bound of one threshold (Jagielski et al. 2020): with FPR and FNR bounded from
    above by two-sided Clopper–Pearson intervals at ``confidence``, max of
    ln((1 − δ − FNR)/FPR) and ln((1 − δ − FPR)/FNR); 0 when neither is positive."""
    if not (0 <= false_pos <= n_out and 0 <= false_neg <= n_in and n_out and n_in):
        raise ValueError(f"clopper_pearson_epsilon: counts out of range (FP {false_pos} of "
                         f"{n_out}, FN {false_neg} of {n_in})")
    q = 1 - (1 - confidence) / 2
    fpr = 1.0 if false_pos == n_out else float(beta.ppf(q, false_pos + 1, n_out - false_pos))
    fnr = 1.0 if false_neg == n_in else float(beta.ppf(q, false_neg + 1, n_in - false_neg))
    best = 0.0
    for num, den in ((1 - delta - fnr, fpr), (1 - delta - fpr, fnr)):
        if num > 0 and den > 0:
            best = max(best, math.log(num / den))
    return best


def audit_epsilon(scores: np.ndarray, present: np.ndarray, delta: float,
                  confidence: float = 0.95) -> dict[str, float | int]:
    """The one-run audit of canary ``scores`` (higher = more likely present) against the
    truth ``present``: for each share in :data:`GUESS_SHARES`, guess the highest-scored half
    of that share present and the lowest-scored half absent (abstain on the rest), and keep
    the best bound, each at a Bonferroni-corrected confidence so the maximum keeps
    ``confidence``.

    Returns ``{"epsilon_lower_bound", "guesses", "correct", "share", "canaries"}``.
    """
    scores = np.asarray(scores, np.float64)
    present = np.asarray(present, bool)
    if scores.shape != present.shape or scores.ndim != 1 or not len(scores):
        raise ValueError(f"audit_epsilon needs two equal 1-D arrays, got {scores.shape} and "
                         f"{present.shape}")
    m = len(scores)
    level = 1 - (1 - confidence) / len(GUESS_SHARES)
    order = np.argsort(-scores, kind="stable")
    best: dict[str, float | int] = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0,
                                    "share": GUESS_SHARES[0], "canaries": m}
    for share in GUESS_SHARES:
        k = min(_guesses(share, m), m // 2)
        top, bottom = order[:k], order[m - k:]
        r = 2 * k
        v = int(present[top].sum() + (~present[bottom]).sum())
        eps = one_run_epsilon(m, r, v, delta, level)
        if eps > best["epsilon_lower_bound"]:
            best = {"epsilon_lower_bound": eps, "guesses": r, "correct": v, "share": share,
                    "canaries": m}
    return best


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of the Gaussian mechanism whose two outputs are N(0, 1) and N(μ, 1)."""
    if mu <= 0:
        return 0.0
    return float(norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon)
                 * norm.cdf(-epsilon / mu - mu / 2))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The ε at ``delta`` of the Gaussian mechanism with separation ``mu`` (in noise
    standard deviations); 0 when even ε = 0 has δ(0) ≤ δ."""
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    high = max(1.0, mu * mu)
    while gaussian_delta(high, mu) > delta:
        high *= 2
    return float(brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, high, xtol=1e-9))


def one_shot_epsilon(scores_in: np.ndarray, scores_out: np.ndarray, delta: float) -> float:
    """Andrew et al. 2023's one-shot estimate: fit a normal distribution to the absent
    canaries' scores, read the present ones' mean separation in its standard deviations,
    and report the Gaussian mechanism's ε at that separation. An estimate (no confidence),
    for comparison with the bounds."""
    scores_in, scores_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    if len(scores_in) < 2 or len(scores_out) < 2:
        raise ValueError("one_shot_epsilon needs at least two present and two absent canaries")
    spread = float(scores_out.std(ddof=1))
    if spread == 0:
        return math.inf if scores_in.mean() != scores_out.mean() else 0.0
    return gaussian_epsilon(max(0.0, (scores_in.mean() - scores_out.mean()) / spread), delta)
