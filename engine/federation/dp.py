"""Client-level differential privacy applied by each client before upload.

The client clips its update Δ = local − global to L2 norm ``C`` (Flower's FlatClip helper)
and adds Gaussian noise of standard deviation σ·C to every coordinate. Noise is added on
the client (local DP) because the threat is a curious server: noise the server adds itself
would not hide anything from it.
"""

from __future__ import annotations

import numpy as np
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv, get_norm

NDArrays = list[np.ndarray]


def privatize_update(local: NDArrays, global_params: NDArrays, clip_norm: float,
                     noise_multiplier: float, rng: np.random.Generator) -> tuple[NDArrays, dict]:
    """Clip ``local − global`` to ``clip_norm`` and add N(0, (σ·C)²) noise.

    Float arrays only are privatised; integer buffers are passed through unchanged.
    Returns the privatised parameters and ``{"update_norm", "clipped", "noise_std"}``.
    """
    floats = [i for i, a in enumerate(local) if np.issubdtype(a.dtype, np.floating)]
    loc = [local[i].astype(np.float64) for i in floats]
    glob = [global_params[i].astype(np.float64) for i in floats]
    norm = get_norm([a - b for a, b in zip(loc, glob, strict=True)])
    compute_clip_model_update(loc, glob, clip_norm)
    std = compute_stdv(noise_multiplier, clip_norm, 1)
    out = [a.copy() for a in local]
    for i, arr in zip(floats, loc, strict=True):
        noisy = arr + rng.normal(0.0, std, arr.shape) if std > 0 else arr
        out[i] = noisy.astype(local[i].dtype)
    return out, {"update_norm": norm, "clipped": bool(norm > clip_norm), "noise_std": std}
