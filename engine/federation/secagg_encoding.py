"""Fixed-point encoding of secure aggregation (SecAgg+): parameters as integers mod M.

SecAgg+ masks integers, so each client's weighted parameters are quantised before masking
and the server dequantises the unmasked sum. Flower's notation: c = clipping_range,
Q = quantization_range, M = modulus_range, n_i = num_examples, W_max = max_weight.
The primitives are Flower 1.42's: ``quantization.quantize`` / ``dequantize`` (stochastic
rounding to ``[0, Q]``) and ``ndarrays_arithmetic`` (factor_combine/extract, multiply).

* Client i (``encode_upload``): q_i = round(n_i / W_max * Q); the clipped parameters x_i
  are scaled by w_i = q_i / Q and quantised to z_i = round((w_i x_i + c) Q / (2c))
  (stochastic); the upload before masking is the vector [q_i, z_i].
* Server (``decode_sum``): after the masks are gone and the sum reduced mod M, it
  dequantises, removes the per-client offset c and divides by sum_i q_i / Q. The result
  is sum_i w_i x_i / sum_i w_i, the num_examples-weighted FedAvg of the clipped parameters.

Differences from Flower, all deliberate:

* Raw parameters are clipped to ``[-c, c]`` *before* weighting. Flower clips inside
  ``quantize``, i.e. after multiplying by ``w_i <= 1``, so its effective bound on a raw
  parameter is ``c / w_i >= c`` and depends on the client's weight; clipping first gives
  one weight-independent bound and is identical for ``|x| <= c``.
* Parameters are cast to float64 before weighting/quantising: in float32,
  ``(x + c) * Q / (2c)`` near ``Q = 2**22`` has a half-ulp of 0.25 quantisation steps,
  which would loosen the error bound (``quantization_error_bound``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from engine.core.types import NDArrays


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+ settings; defaults are Flower's ``SecAggPlusWorkflow`` defaults.

    Attributes:
        clipping_range: raw parameters are clipped to ``[-clipping_range, clipping_range]``
            (parameter units) before quantisation; values outside are lost, as in SecAgg+.
        quantization_range: Q, number of integer steps spanning ``2 * clipping_range``.
        modulus_range: M, masks and uploads live in ``[0, M)``; a power of two ``> Q``.
        max_weight: upper bound for any client's ``num_examples`` (weights are quantised
            as ``num_examples / max_weight * Q``; too large loses precision).
        reconstruction_threshold: fraction of clients whose shares are needed to
            reconstruct a secret; ``t = max(2, round(fraction * n_clients))``.
    """

    clipping_range: float = 8.0
    quantization_range: int = 4_194_304
    modulus_range: int = 4_294_967_296
    max_weight: float = 1000.0
    reconstruction_threshold: float = 0.6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(f"clipping_range must be > 0, got {self.clipping_range}")
        q = self.quantization_range
        # Flower's stochastic rounding casts to int32.
        if not isinstance(q, int) or not 0 < q < 2**31:
            raise ValueError(f"quantization_range must be an int in [1, 2**31), got {q!r}")
        m = self.modulus_range
        # Sums of up to 2**31 masks below 2**32 stay exact in int64.
        if not isinstance(m, int) or m <= q or m > 2**32 or m & (m - 1):
            raise ValueError(
                "modulus_range must be a power of two with quantization_range < "
                f"modulus_range <= 2**32, got {m!r} (quantization_range={q})"
            )
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}")
        if not 0 < self.reconstruction_threshold <= 1:
            raise ValueError(
                "reconstruction_threshold must be a fraction in (0, 1], got "
                f"{self.reconstruction_threshold}"
            )

    def threshold(self, n_clients: int) -> int:
        """Shares needed to reconstruct a secret among ``n_clients`` (Flower's rule)."""
        return max(round(self.reconstruction_threshold * n_clients), 2)


def quantization_error_bound(num_examples: Sequence[float], params: SecAggParams) -> float:
    """Max |secure mean - plain weighted mean| per coordinate (parameter units).

    Derivation with N clients, c, Q, W_max as in the module docstring, a_i = n_i and the
    quantised weights b_i = round(a_i Q / W_max) W_max / Q (|b_i - a_i| <= W_max / 2Q),
    B = sum b_i:

    * stochastic rounding errs by < 1 step = 2c/Q per client, so the dequantised sum
      errs by < N * 2c/Q *before* the division by sum_i w_i = B / W_max, i.e. by
      < 2 N c W_max / (Q B) after it;
    * using b_i instead of a_i moves the weighted mean of values in [-c, c] by at most
      c * sum_i |b_i/B - a_i/A| <= c * 2 sum_i |b_i - a_i| / B <= N c W_max / (Q B);
    * float32 output adds half an ulp of a value in [-c, c], <= c * 2**-24.

    Total ``3 N c W_max / (Q B) + c 2**-24``: with the defaults, 4 clients and 400
    examples in all about 6e-5. A small total weight relative to ``max_weight`` makes
    it larger, which is why Flower warns against a too large ``max_weight``.

    Args:
        num_examples: each aggregated client's weight.
        params: the session's settings.

    Returns:
        The bound as a float.
    """
    n = len(num_examples)
    c, q, w_max = params.clipping_range, params.quantization_range, params.max_weight
    b_total = sum(num_examples) - n * w_max / (2 * q)
    if n == 0 or b_total <= 0:
        raise ValueError("need at least one client with a positive weight")
    return 3 * n * c * w_max / (q * b_total) + c * 2.0**-24


@contextmanager
def _global_numpy_seed(entropy: list[int] | None) -> Iterator[None]:
    """Seed NumPy's global RNG for Flower's ``quantize``, restoring it afterwards.

    ``quantization._stochastic_round`` draws from ``np.random.rand``; borrowing the global
    state (and giving it back) keeps runs reproducible without disturbing other code.
    """
    if entropy is None:
        yield
        return
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(entropy).generate_state(8))
    try:
        yield
    finally:
        np.random.set_state(saved)


def encode_upload(
    arrays: NDArrays, num_examples: float, params: SecAggParams, entropy: list[int] | None
) -> NDArrays:
    """Client side: clip, weight and quantise finite float64 arrays as ``[q_i, *z_i]``.

    Args:
        arrays: the client's parameters as float64 arrays, parameter units.
        num_examples: the client's FedAvg weight, ``0 < num_examples <= max_weight``.
        params: the session's settings.
        entropy: seeds the stochastic rounding; ``None`` draws from NumPy's global RNG.

    Returns:
        The weight factor q_i (shape ``(1,)``) followed by the quantised arrays, unmasked.
    """
    p = params
    # Flower's weighting: w_i = round(n_i / W_max * Q) / Q, so sum_i w_i is an exact
    # integer / Q and the server can divide by it after unmasking.
    q_ratio = round(num_examples / p.max_weight * p.quantization_range)
    dq_ratio = q_ratio / p.quantization_range
    clipped = [np.clip(a, -p.clipping_range, p.clipping_range) for a in arrays]
    weighted = parameters_multiply(clipped, dq_ratio)
    with _global_numpy_seed(entropy):
        quantized = quantize(weighted, p.clipping_range, p.quantization_range)
    return factor_combine(q_ratio, quantized)


def decode_sum(
    sums: NDArrays, q_total: int, n_summed: int, params: SecAggParams
) -> tuple[NDArrays, float]:
    """Server side: the weighted mean of ``n_summed`` unmasked uploads, reduced mod M.

    Args:
        sums: the summed quantised arrays (the weight factor already split off).
        q_total: the summed weight factors sum_i q_i, > 0.
        n_summed: how many uploads the sums hold.
        params: the session's settings.

    Returns:
        The float32 weighted mean per array and the total weight (num_examples).
    """
    p = params
    dequantized = dequantize(sums, p.clipping_range, p.quantization_range)
    # Each of the k summed values carried a +c shift; dequantize removed one of them.
    offset = -(n_summed - 1) * p.clipping_range
    scale = p.quantization_range / q_total
    mean = [np.asarray((d + offset) * scale, dtype=np.float32) for d in dequantized]
    total_weight = q_total / p.quantization_range * p.max_weight
    return mean, total_weight


def decode_single_upload(upload: NDArrays, encoding: dict, global_params: NDArrays) -> NDArrays:
    """The server's reading of one masked upload as parameters (public dequantisation only).

    Without the other clients' masks this is the client's quantised parameters plus a
    uniform mask, reduced to the quantisation range: values spread uniformly over
    ``[−c, c]`` whatever the client trained. Shapes and dtypes follow ``global_params``.
    """
    q, c = int(encoding["quantization_range"]), float(encoding["clipping_range"])
    return [
        (dequantize([np.asarray(u, np.int64) % q], c, q)[0]).astype(g.dtype).reshape(g.shape)
        for u, g in zip(upload, global_params, strict=True)
    ]
