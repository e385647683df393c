"""The server's detection view: how far each upload lies from the others.

Under plain aggregation the server sees every upload, so it can compare them; this is what a
server that looks for poisoning computes each round (never under secure aggregation, where it
holds no individual upload).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.core.types import NDArrays, is_float

# A center is flagged in a round when its distance to the median is more than this many
# times the median distance of all centers (robust to one outlier among four).
FLAG_RATIO = 2.0


def update_statistics(uploads: dict[str, NDArrays],
                      global_params: NDArrays) -> dict[str, dict[str, float | bool]]:
    """The server's detection view of one round.

    Returns, per client: ``update_norm`` (L2 of upload − global), ``median_distance`` (L2
    distance to the coordinate-wise median of all uploads), ``distance_ratio`` (that distance
    over the median of all clients' distances) and ``flagged`` (ratio > :data:`FLAG_RATIO`).
    """
    names = list(uploads)
    floats = [i for i, g in enumerate(global_params) if is_float(g)]
    flat = np.stack([np.concatenate([np.ravel(uploads[c][i]).astype(np.float64)
                                     - np.ravel(global_params[i]) for i in floats])
                     for c in names])
    median = np.median(flat, axis=0)
    dist = np.linalg.norm(flat - median, axis=1)
    typical = float(np.median(dist)) or 1e-30
    return {c: {"update_norm": float(np.linalg.norm(flat[k])),
                "median_distance": float(dist[k]),
                "distance_ratio": float(dist[k] / typical),
                "flagged": bool(dist[k] / typical > FLAG_RATIO)}
            for k, c in enumerate(names)}


def detection_summary(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Per client: share of rounds flagged and mean distance ratio; who is flagged in most
    rounds (``detected``)."""
    if not per_round:
        return {"per_round": [], "flag_rate": {}, "mean_distance_ratio": {}, "detected": [],
                "flag_ratio": FLAG_RATIO}
    clients = list(per_round[0]["clients"])
    rate = {c: float(np.mean([r["clients"][c]["flagged"] for r in per_round]))
            for c in clients}
    ratio = {c: float(np.mean([r["clients"][c]["distance_ratio"] for r in per_round]))
             for c in clients}
    return {"per_round": per_round, "flag_rate": rate, "mean_distance_ratio": ratio,
            "detected": [c for c in clients if rate[c] > 0.5], "flag_ratio": FLAG_RATIO}
