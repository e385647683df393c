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

:func:`adaptive_update` puts them together for one round; the hospital's upload is
:mod:`engine.clients.behaviour`'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from engine.core.types import NDArrays, is_float

# The server's rule on a round's updates (each ``(d,)``), equal weights: its aggregate update.
Rule = Callable[[list[np.ndarray]], np.ndarray]
ADAPTIVE_KINDS = ("min_max", "min_sum", "alie_opt", "ipm_opt")
FACTOR_MAX = 100.0  # the largest z (ALIE) or ε (IPM) the line search tries
BISECTION_STEPS = 60


def flat_update(params: NDArrays, global_params: NDArrays) -> np.ndarray:
    """The float parameters' update ``params − global`` as one ``(d,)`` float64 vector."""
    return np.concatenate([(np.asarray(a, np.float64) - g).ravel()
                           for a, g in zip(params, global_params, strict=True) if is_float(g)])


def as_params(update: np.ndarray, global_params: NDArrays, template: NDArrays) -> NDArrays:
    """``global + update`` in the global model's shapes and dtypes (other buffers from
    ``template``): the inverse of :func:`flat_update`."""
    out, start = [], 0
    for g, t in zip(global_params, template, strict=True):
        if not is_float(g):
            out.append(t)
            continue
        part = update[start:start + g.size].reshape(g.shape)
        out.append((g + part).astype(g.dtype))
        start += g.size
    return out


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


def _pairwise_sq(points: np.ndarray) -> np.ndarray:
    sq = (points * points).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0.0)


def min_max_gamma(deltas: np.ndarray, p: np.ndarray) -> float:
    """Min-Max's γ: the largest with max_i ‖mean + γp − Δᵢ‖ ≤ max_{i,j} ‖Δᵢ − Δⱼ‖."""
    bound = float(np.sqrt(_pairwise_sq(deltas).max()))
    mean = deltas.mean(axis=0)
    return _largest(lambda g: float(np.linalg.norm(mean + g * p - deltas, axis=1).max())
                    <= bound)


def min_sum_gamma(deltas: np.ndarray, p: np.ndarray) -> float:
    """Min-Sum's γ: the largest with Σ_i ‖mean + γp − Δᵢ‖² ≤ max_i Σ_j ‖Δᵢ − Δⱼ‖²."""
    bound = float(_pairwise_sq(deltas).sum(axis=1).max())
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


# The round's update, for every attacker: its inputs (the rule itself, held so that it is
# compared by identity, not by an id a freed rule could pass on) and the result.
_LAST: list[tuple[tuple, Rule, np.ndarray, float]] = []


def adaptive_update(kind: str, honest: np.ndarray, rule: Rule, attackers: int,
                    perturb: str = "std", start: float = 1.0) -> tuple[np.ndarray, float]:
    """The malicious update ``(d,)`` of ``kind`` against ``rule`` from the honest updates
    ``(n, d)``, and its factor (γ for Min-Max/Min-Sum, z for ALIE, ε for IPM). ``start``:
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
