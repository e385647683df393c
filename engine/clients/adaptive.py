"""Adaptive model-poisoning attackers: the strongest updates a group of colluding hospitals
can send against the server's rule.

The threat model is the standard omniscient one of this literature: in every round the
attackers see the updates the honest hospitals trained (their Δ = model − global model) and
know the aggregation rule; all attackers send the same malicious update. Every function is
a pure function of arrays (updates as flat float vectors, ``(n, d)`` for n hospitals):

* :func:`min_max_gamma`, :func:`min_sum_gamma` — Min-Max and Min-Sum (Shejwalkar &
  Houmansadr, NDSS 2021): the malicious update is mean(Δ) + γ·p for a perturbation p
  (:func:`perturbation`), with the largest γ whose update stays as close to the honest ones
  as they are to each other (Min-Max: its largest distance to one of them is at most the
  largest distance between two of them; Min-Sum: its sum of squared distances to them is at
  most the largest such sum of one of them). γ is found by bisection to a relative tolerance
  (the paper's code halves a step from a fixed start and can stop at a γ that breaks the
  constraint).
* :func:`line_maximize` with :func:`rule_damage` — ALIE (mean − z·std, Baruch et al. 2019)
  and IPM (−ε·mean, Xie et al. 2020) with their factor chosen to do the most damage to the
  rule at hand (as ByzFL's ``Optimal_ALIE`` / ``Optimal_IPM`` with ``LineMaximize``): damage
  is the distance between the rule's aggregate and the honest mean.
* :func:`fang_krum`, :func:`fang_trim` — Fang et al. (USENIX Security 2020), full
  knowledge: against Krum, −λ·sign(mean Δ) with λ halved from the paper's upper bound;
  against the trimmed mean and the median, each coordinate pushed just beyond the honest
  extreme on the side opposite to the honest direction.

:func:`adaptive_update` puts them together for one round; the hospital's upload is
:mod:`engine.clients.behaviour`'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from engine.core.types import pairwise_sq

# The server's rule on a round's updates (each ``(d,)``), equal weights: its aggregate update.
Rule = Callable[[list[np.ndarray]], np.ndarray]
ADAPTIVE_KINDS = ("min_max", "min_sum", "alie_opt", "ipm_opt", "fang_krum", "fang_trim")
FACTOR_MAX = 100.0  # the largest z (ALIE) or ε (IPM) the line search tries
BISECTION_STEPS = 60


def perturbation(deltas: np.ndarray, kind: str) -> np.ndarray:
    """Min-Max's and Min-Sum's direction ``(d,)`` from the honest updates ``(n, d)``:
    ``std`` −std(Δ), ``unit`` −mean(Δ)/‖mean(Δ)‖, ``sign`` −sign(mean(Δ))."""
    mean = deltas.mean(axis=0)
    if kind == "std":
        return -deltas.std(axis=0)
    if kind == "unit":
        norm = float(np.linalg.norm(mean))
        return -mean / norm if norm > 0 else np.zeros_like(mean)
    if kind == "sign":
        return -np.sign(mean)
    raise ValueError(f"perturbation {kind!r} is unknown; use std, unit or sign")


def _largest(ok: Callable[[float], bool]) -> float:
    """The largest γ ≥ 0 with ``ok(γ)`` (``ok`` holds at 0 and, past some γ, no more):
    doubling to a γ where it fails, then bisection."""
    hi = 1.0
    while ok(hi):
        hi *= 2.0
        if hi > 1e12:  # the constraint never binds (no spread among the honest updates)
            return hi
    lo = 0.0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def min_max_gamma(deltas: np.ndarray, p: np.ndarray) -> float:
    """Min-Max's γ: the largest with max_i ‖mean + γp − Δᵢ‖ ≤ max_{i,j} ‖Δᵢ − Δⱼ‖."""
    bound = float(np.sqrt(pairwise_sq(deltas).max()))
    mean = deltas.mean(axis=0)
    return _largest(lambda g: float(np.linalg.norm(mean + g * p - deltas, axis=1).max())
                    <= bound)


def min_sum_gamma(deltas: np.ndarray, p: np.ndarray) -> float:
    """Min-Sum's γ: the largest with Σ_i ‖mean + γp − Δᵢ‖² ≤ max_i Σ_j ‖Δᵢ − Δⱼ‖²."""
    bound = float(pairwise_sq(deltas).sum(axis=1).max())
    mean = deltas.mean(axis=0)
    return _largest(lambda g: float(((mean + g * p - deltas) ** 2).sum()) <= bound)


def rule_damage(rule: Rule, honest: np.ndarray, malicious: np.ndarray, attackers: int) -> float:
    """How far ``rule`` moves the aggregate from the honest mean when ``attackers`` copies
    of ``malicious`` join the ``honest`` updates: ‖rule(Δ ∪ m…) − mean(Δ)‖."""
    uploads = [*honest, *([malicious] * attackers)]
    return float(np.linalg.norm(rule(uploads) - honest.mean(axis=0)))


def line_maximize(damage: Callable[[float], float], start: float,
                  top: float = FACTOR_MAX, steps: int = 20) -> float:
    """The factor in [0, ``top``] that maximises ``damage``: a geometric scan (``start``,
    the fixed attack's factor, included) then golden-section search between the best point's
    neighbours. Returns a factor whose damage is at least that of every factor it tried,
    ``start`` included."""
    grid = sorted({0.0, start, *np.geomspace(1e-3, top, 25)})
    values = [damage(x) for x in grid]
    best = int(np.argmax(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    x, fx = grid[best], values[best]
    ratio = (np.sqrt(5.0) - 1) / 2
    a, b = lo, hi
    for _ in range(steps):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        fc, fd = damage(c), damage(d)
        for point, value in ((c, fc), (d, fd)):
            if value > fx:
                x, fx = point, value
        a, b = (a, d) if fc >= fd else (c, b)
    return float(x)


# Fang et al.'s constants: λ is halved until under this (their threshold), and the
# trimmed-mean attack's values reach b times beyond the honest extreme.
FANG_THRESHOLD, FANG_B = 1e-5, 2.0


def fang_krum_bound(honest: np.ndarray, attackers: int) -> float:
    """Fang et al.'s upper bound on λ for Krum with the honest updates ``(n, d)`` (updates
    are measured from the global model, so its distance to one is that update's norm)."""
    n, d = honest.shape
    # Each honest update's distances to its m − c − 2 = n − 2 nearest honest ones (m
    # uploads of which c attackers), over m − 2c − 1.
    near = np.sort(np.sqrt(pairwise_sq(honest)), axis=1)[:, 1:max(n - 2, 1) + 1]
    first = near.sum(axis=1).min() / (max(n - attackers - 1, 1) * np.sqrt(d))
    return float(first + np.linalg.norm(honest, axis=1).max() / np.sqrt(d))


def fang_krum(honest: np.ndarray, rule: Rule, attackers: int) -> tuple[np.ndarray, float]:
    """Fang et al.'s attack on Krum: −λ·sign(mean Δ), λ from :func:`fang_krum_bound`
    halved down to :data:`FANG_THRESHOLD`; of those λ, the one that moves ``rule`` most from
    the honest mean. The paper stops at the largest λ Krum picks; the λ kept here does at
    least that one's damage in the round's measure (it is among those tried), and the same
    search finds the worst λ of rules that never pick one upload."""
    direction = -np.sign(honest.mean(axis=0))
    lam, tried = fang_krum_bound(honest, attackers), []
    while lam >= FANG_THRESHOLD and len(tried) < 64:
        tried.append(lam)
        lam /= 2.0
    tried = tried or [FANG_THRESHOLD]
    damage = [rule_damage(rule, honest, x * direction, attackers) for x in tried]
    best = tried[int(np.argmax(damage))]
    return best * direction, best


def fang_trim(honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fang et al.'s attack on the trimmed mean (and the median), full knowledge: where the
    honest mean of a coordinate is negative, a value drawn in [max, b·max] (max > 0) or
    [max, max/b]; where it is positive, in [min/b, min] (min > 0) or [b·min, min]; b =
    :data:`FANG_B`, max and min over the honest updates ``(n, d)``. The paper's ranges are
    on the model parameters and each attacker draws its own value; here they are on the
    updates (the models' common origin removed) and one draw serves every attacker."""
    mean = honest.mean(axis=0)
    top, low = honest.max(axis=0), honest.min(axis=0)
    top_far = np.where(top > 0, top * FANG_B, top / FANG_B)
    low_far = np.where(low > 0, low / FANG_B, low * FANG_B)
    u = rng.uniform(0.0, 1.0, mean.shape)
    up, down = top + u * (top_far - top), low_far + u * (low - low_far)
    return np.where(mean < 0, up, np.where(mean > 0, down, mean))


# The round's update, for every attacker: its inputs (the rule itself, held so that it is
# compared by identity, not by an id a freed rule could pass on) and the result.
_LAST: list[tuple[tuple, Rule, np.ndarray, float]] = []


def adaptive_update(kind: str, honest: np.ndarray, rule: Rule, attackers: int,
                    perturb: str = "std", start: float = 1.0) -> tuple[np.ndarray, float]:
    """The malicious update ``(d,)`` of ``kind`` against ``rule`` from the honest updates
    ``(n, d)``, and its factor (γ for Min-Max/Min-Sum, z for ALIE, ε for IPM, λ for
    Fang's Krum attack, b for his trimmed-mean attack). ``start``:
    the fixed attack's factor, which the line search always tries. The attackers of a round
    send the same update: the last one computed is kept for the next with the same inputs
    (keyed by a digest of the honest updates), so the search runs once a round."""
    key = (kind, hashlib.sha256(np.ascontiguousarray(honest).tobytes()).hexdigest(),
           honest.shape, attackers, perturb, start)
    if _LAST and _LAST[0][0] == key and _LAST[0][1] is rule:
        return _LAST[0][2].copy(), _LAST[0][3]
    update, factor = _adaptive_update(kind, honest, rule, attackers, perturb, start)
    _LAST[:] = [(key, rule, update, factor)]
    return update.copy(), factor


def _adaptive_update(kind: str, honest: np.ndarray, rule: Rule, attackers: int,
                     perturb: str, start: float) -> tuple[np.ndarray, float]:
    mean = honest.mean(axis=0)
    if kind == "fang_krum":
        return fang_krum(honest, rule, attackers)
    if kind == "fang_trim":  # its draws seeded by the honest updates: a rerun repeats them
        digest = hashlib.sha256(np.ascontiguousarray(honest).tobytes()).digest()
        return fang_trim(honest, np.random.default_rng(list(digest[:16]))), FANG_B
    if kind in ("min_max", "min_sum"):
        p = perturbation(honest, perturb)
        gamma = (min_max_gamma if kind == "min_max" else min_sum_gamma)(honest, p)
        return mean + gamma * p, gamma
    if kind == "alie_opt":
        std = honest.std(axis=0)

        def make(z: float) -> np.ndarray:
            return mean - z * std
    elif kind == "ipm_opt":
        def make(eps: float) -> np.ndarray:
            return -eps * mean
    else:
        raise ValueError(f"adaptive attack {kind!r} is unknown; use one of {ADAPTIVE_KINDS}")
    factor = line_maximize(lambda x: rule_damage(rule, honest, make(x), attackers), start)
    return make(factor), factor
