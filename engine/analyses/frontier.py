"""The privacy–utility frontier: the model's error and the membership attacks' AUC against ε.

From a DP sweep's table (one row per run; the runs without DP are the reference): for each
ε, the errors over seeds and their ratio to the error without DP at the same seed (mean and
95 % Student-t interval over seeds), and the patient-level AUCs of the membership attacks.
The verdict of the frontier is the smallest ε whose mean ratio stays within ``USEFUL``, or
none at this scale. Pure functions of
:class:`~engine.analyses.sweep_table.SweepRow` lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.analyses.poisoning import mean_interval
from engine.analyses.sweep_table import SweepRow, cell_parts

USEFUL = 1.5  # the error a private model may cost and still count as useful


@dataclass(frozen=True)
class FrontierPoint:
    """One ε of the frontier, over its seeds (``epsilon`` None: no DP; ``inf``: DP's
    clipping and sampling without noise)."""

    epsilon: float | None
    mae_hu: tuple[float, ...]
    ratio: float | None  # mean over seeds of the error ÷ the same seed's without DP
    ratio_ci: list[float] | None  # 95 % Student-t over seeds
    server_auc: float | None  # FedMIA on the uploads, patient level, mean over seeds
    global_auc: float | None  # the global-model attack, patient level, mean over seeds


def epsilon_label(epsilon: float | None) -> str:
    """A frontier point's ε in words: "no DP", "ε ∞" (DP without noise) or "ε 8"."""
    if epsilon is None:
        return "no DP"
    return "ε ∞" if math.isinf(epsilon) else f"ε {epsilon:.3g}"


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(known)) if known else None


def seed_of(row: SweepRow) -> str | None:
    """The seed a sweep row's cell names (``seed=2``), or None."""
    return cell_parts(row.cell).get("seed")


def frontier(rows: list[SweepRow]) -> list[FrontierPoint]:
    """The frontier's points, the non-private one first, then ε descending. Each run's
    error is divided by the run without DP of the same seed (same patients), or by the mean
    of the runs without DP where its seed has none. A DP run without noise (no ε reached) is
    the point ε ∞, after the one without DP."""
    groups: dict[float | None, list[SweepRow]] = {}
    for r in rows:
        if r.mae_hu is None:
            continue
        eps = (math.inf if r.epsilon is None else r.epsilon) if r.dp_enabled else None
        groups.setdefault(eps, []).append(r)
    plain = groups.get(None, [])
    base = {seed_of(r): float(r.mae_hu) for r in plain if seed_of(r) is not None}
    base_mean = float(np.mean([r.mae_hu for r in plain])) if plain else None
    points = []
    for eps in sorted(groups, key=lambda e: (0, 0.0) if e is None else (1, -e)):
        group = groups[eps]
        maes = tuple(float(r.mae_hu) for r in group)
        ratios = ([float(r.mae_hu) / base.get(seed_of(r), base_mean) for r in group]
                  if base_mean else [])
        points.append(FrontierPoint(
            eps, maes, float(np.mean(ratios)) if ratios else None,
            mean_interval(ratios) if ratios else None,
            _mean([r.patient_auc_pooled for r in group]),
            _mean([r.global_patient_auc_pooled for r in group])))
    return points


def smallest_useful_epsilon(points: list[FrontierPoint]) -> FrontierPoint | None:
    """The point with the smallest finite ε whose mean error is within :data:`USEFUL` × the
    non-private one (None: no ε does, or no reference)."""
    useful = [p for p in points if p.epsilon is not None and math.isfinite(p.epsilon)
              and p.ratio is not None and p.ratio <= USEFUL]
    return min(useful, key=lambda p: p.epsilon) if useful else None
