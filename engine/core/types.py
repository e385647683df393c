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
