"""Update pruning (top-k sparsification) applied by each client before upload.

Zeroing the smallest entries of the update Δ = local − global is the "gradient pruning"
defense of DLG (Zhu et al. 2019): the server sees only the largest-magnitude coordinates.
"""

from __future__ import annotations

import numpy as np

from engine.core.types import NDArrays, is_float


def prune_update(local: NDArrays, global_params: NDArrays, fraction: float) -> NDArrays:
    """Zero the ``fraction`` smallest-magnitude entries of each float tensor of the update.

    Args:
        local: the client's parameters after local training.
        global_params: the parameters it started from (same order and shapes).
        fraction: share of each tensor's update entries set to zero, in [0, 1).

    Returns:
        ``global + pruned update``; integer buffers are passed through unchanged.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune fraction {fraction} must be in [0, 1)")
    out = []
    for loc, glob in zip(local, global_params, strict=True):
        if fraction == 0.0 or not is_float(loc) or loc.size == 0:
            out.append(loc)
            continue
        delta = loc.astype(np.float64) - glob
        drop = int(np.floor(fraction * delta.size))
        if drop:
            flat = np.abs(delta).ravel()
            # argpartition keeps exactly `drop` zeros even when magnitudes tie.
            smallest = np.argpartition(flat, drop - 1)[:drop]
            delta.ravel()[smallest] = 0.0
        out.append((glob + delta).astype(loc.dtype))
    return out
