"""Types every layer shares."""

from __future__ import annotations

import numpy as np

# A model's parameters and buffers as NumPy arrays, in ``state_dict`` order: what clients
# upload, what the server aggregates and what the server view stores.
NDArrays = list[np.ndarray]


def is_float(array: np.ndarray) -> bool:
    """Whether ``array`` holds floats (integer buffers, e.g. BatchNorm's counter, are never
    noised, pruned or scaled)."""
    return bool(np.issubdtype(array.dtype, np.floating))


def flat_update(params: NDArrays, global_params: NDArrays) -> np.ndarray:
    """The float parameters' update ``params − global`` as one ``(d,)`` float64 vector."""
    return np.concatenate([(np.asarray(a, np.float64) - g).ravel()
                           for a, g in zip(params, global_params, strict=True) if is_float(g)])


def flat_updates(models: list[NDArrays], global_params: NDArrays) -> np.ndarray:
    """Each model's :func:`flat_update` as the rows of one ``(n, d)`` array."""
    return np.stack([flat_update(m, global_params) for m in models])


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


def pairwise_sq(points: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(n, n)`` between the rows of ``points`` ``(n, d)``."""
    sq = (points * points).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0.0)
