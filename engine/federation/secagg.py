"""In-process secure aggregation (SecAgg+, Bonawitz et al. 2017) on Flower's primitives.

A curious server in the simulator must hold only *masked* uploads and be able to recover
only their (weighted) sum. This module runs the four SecAgg+ stages of Flower 1.42
(``flwr.client.mod.secaggplus_mod`` / ``flwr.server.workflow.SecAggPlusWorkflow``) inside
one process, with the same math and the same primitives:

* ``quantization.quantize`` / ``dequantize`` (stochastic rounding to ``[0, Q]``),
* ``secaggplus_utils.pseudo_rand_gen`` (mask expansion from a seed),
  ``share_keys_plaintext_concat`` / ``share_keys_plaintext_separate``,
* ``crypto.shamir.create_shares`` / ``combine_shares`` (t-out-of-n sharing of b_i, sk1_i),
* ``crypto.symmetric_encryption.generate_shared_key`` (ECDH + HKDF), ``encrypt`` /
  ``decrypt`` (Fernet, for the share exchange routed through the server),
* ``flwr.supercore.primitives.asymmetric`` key generation and (de)serialisation,
* ``ndarrays_arithmetic`` (factor_combine/extract, addition, subtraction, mod).

Protocol per round (Flower's notation: c = clipping_range, Q = quantization_range,
M = modulus_range, n_i = num_examples, W_max = max_weight):

1. Setup: client i draws two ECDH key pairs (sk1_i, pk1_i) for pairwise masks and
   (sk2_i, pk2_i) for encrypting shares; the server relays the public keys.
2. Share keys: client i draws a self-mask seed b_i, Shamir-splits b_i and sk1_i
   (threshold t) and sends share j to client j encrypted under ECDH(sk2_i, pk2_j); the
   server forwards ciphertexts it cannot read.
3. Masked upload: q_i = round(n_i / W_max * Q); the clipped parameters x_i are scaled by
   w_i = q_i / Q, quantised to z_i = round((w_i x_i + c) Q / (2c)) (stochastic) and the
   vector [q_i, z_i] gets + PRG(b_i) + sum_{j<i} PRG(s_ij) - sum_{j>i} PRG(s_ij) mod M,
   where s_ij = ECDH(sk1_i, pk1_j) = s_ji, so pairwise masks cancel in the sum.
4. Unmask: survivors reveal shares of b_i for every survivor and of sk1_d for every
   dropped client d (never both for one client); the server subtracts PRG(b_i) of the
   survivors and the dangling pairwise masks of the dropped clients, dequantises, removes
   the per-client offset c and divides by sum_i q_i / Q. The result is
   sum_i w_i x_i / sum_i w_i, the num_examples-weighted FedAvg of the clipped parameters.

Differences from Flower, all deliberate:

* Everyone is everyone's neighbour (Flower's ``num_shares=1.0``, i.e. SecAgg on the
  complete graph); the reconstruction threshold is computed exactly as Flower does for a
  float: ``t = max(2, round(reconstruction_threshold * n_clients))``.
* Raw parameters are clipped to ``[-c, c]`` *before* weighting. Flower clips inside
  ``quantize``, i.e. after multiplying by ``w_i <= 1``, so its effective bound on a raw
  parameter is ``c / w_i >= c`` and depends on the client's weight; clipping first gives
  one weight-independent bound and is identical for ``|x| <= c``.
* Parameters are cast to float64 before weighting/quantising: in float32,
  ``(x + c) * Q / (2c)`` near ``Q = 2**22`` has a half-ulp of 0.25 quantisation steps,
  which would loosen the error bound below.
* With an integer ``seed`` the keys, self-mask seeds and stochastic rounding are derived
  from the seed (reproducible runs); ``seed=None`` uses fresh OS entropy exactly like
  Flower. Use a different seed every round: two uploads under the same masks reveal
  their difference to the server.
* The weight factor [q_i] (Flower's element 0 of the upload) is kept apart from the
  arrays so a masked upload has the model's shapes; the server still only sees it masked
  (``SecAggSession.masked_weights``).

Known limitation inherited from Flower: ``pseudo_rand_gen`` folds its seed into 32 bits
for ``numpy.random.RandomState``, so each mask has at most 2**32 possible streams.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_multiply,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from engine.core.types import NDArrays

__all__ = [
    "NDArrays",
    "SecAggError",
    "SecAggParams",
    "SecAggSession",
    "quantization_error_bound",
    "secure_weighted_mean",
]


class SecAggError(RuntimeError):
    """The protocol cannot complete (too few survivors, misuse that would leak data)."""


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


@dataclass
class _ClientSecrets:
    """Everything one client keeps to itself; the server never reads these fields.

    ``b_shares[j]`` / ``sk1_shares[j]`` hold this client's Shamir share of client j's
    self-mask seed b_j and pairwise key sk1_j (j may be the client itself).
    """

    index: int
    sk1: ec.EllipticCurvePrivateKey
    sk1_bytes: bytes
    sk2: ec.EllipticCurvePrivateKey
    rd_seed: bytes
    enc_keys: dict[int, bytes] = field(default_factory=dict)
    b_shares: dict[int, bytes] = field(default_factory=dict)
    sk1_shares: dict[int, bytes] = field(default_factory=dict)
    revealed_b: set[int] = field(default_factory=set)
    revealed_sk1: set[int] = field(default_factory=set)
    uploaded: bool = False

    def reveal(self, survivors: set[int], dropped: set[int]) -> dict[int, bytes]:
        """Unmask stage, client side: share of b_j for survivors, of sk1_d for dropped.

        An honest client refuses to reveal both secrets of one client: with b_j and
        sk1_j the server could strip every mask from j's individual upload.
        """
        conflict = (survivors & self.revealed_sk1) | (dropped & self.revealed_b)
        if conflict:
            raise SecAggError(
                f"client #{self.index} refuses to reveal shares: clients {sorted(conflict)} "
                "were already declared the opposite way (survivor vs dropped); revealing "
                "both b and sk1 of one client would unmask its individual upload"
            )
        self.revealed_b |= survivors
        self.revealed_sk1 |= dropped
        out = {j: self.b_shares[j] for j in survivors}
        out.update({d: self.sk1_shares[d] for d in dropped})
        return out


def _derived_key(seed: int, client_id: str, label: str) -> ec.EllipticCurvePrivateKey:
    # 383 bits are always below the P-384 group order (> 2**383), hence a valid scalar.
    digest = hashlib.sha512(f"fedsct-secagg|{seed}|{client_id}|{label}".encode()).digest()
    scalar = int.from_bytes(digest, "big") >> (512 - 383)
    return ec.derive_private_key(max(scalar, 1), ec.SECP384R1())


class SecAggSession:
    """One round of secure aggregation among ``client_ids``. Deterministic for ``seed``.

    Server-visible state (what an honest-but-curious server observes): the public keys
    (``public_keys``), the encrypted share ciphertexts it forwards during setup, each
    client's masked upload, its masked weight factor (``masked_weights``) and, at unmask
    time, the shares needed to unmask the *sum*. Everything in ``_clients`` is private to
    the respective client.

    Args:
        client_ids: distinct ids, at least 2; the list order fixes the pairwise mask
            signs (Flower's node-id order).
        params: protocol settings.
        seed: makes keys, self-mask seeds and stochastic rounding reproducible; use a new
            one every round (same seed = same masks = difference of two rounds leaks).
            ``None`` draws fresh OS entropy like Flower.
    """

    def __init__(
        self,
        client_ids: list[str],
        params: SecAggParams = SecAggParams(),  # noqa: B008 - frozen, immutable default
        seed: int | None = 0,
    ) -> None:
        ids = [str(c) for c in client_ids]
        if len(ids) < 2:
            raise ValueError(f"secure aggregation needs at least 2 clients, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids must be distinct, got {ids}")
        n = len(ids)
        if n * params.quantization_range >= params.modulus_range:
            # Each quantised value lies in [0, Q]; the unmasked sum must not wrap mod M.
            raise ValueError(
                f"{n} clients x quantization_range {params.quantization_range} must stay "
                f"below modulus_range {params.modulus_range} or the sum wraps around"
            )
        self.params = params
        self.seed = seed
        self.client_ids: list[str] = ids
        self.threshold: int = params.threshold(n)
        self._index = {cid: i for i, cid in enumerate(ids)}
        self._shapes: list[tuple[int, ...]] | None = None
        self._masked_weights: dict[str, np.ndarray] = {}
        self._clients: dict[int, _ClientSecrets] = {}
        self.public_keys: dict[str, tuple[bytes, bytes]] = {}
        pk2 = self._setup_keys()
        inbox = self._share_keys(pk2)
        self._receive_shares(inbox)

    def _setup_keys(self) -> dict[int, ec.EllipticCurvePublicKey]:
        """Stage 0 (setup): every client's two key pairs and self-mask seed.

        Private halves stay in ``_clients``; public halves go to the server
        (``public_keys``, ``_pk1``). Returns each client's pk2 (share encryption), by index.
        """
        seed = self.seed
        for i, cid in enumerate(self.client_ids):
            if seed is None:
                sk1, _ = generate_key_pairs()
                sk2, _ = generate_key_pairs()
                rd_seed = os.urandom(32)
            else:
                sk1 = _derived_key(seed, cid, "sk1")
                sk2 = _derived_key(seed, cid, "sk2")
                rd_seed = hashlib.sha256(f"fedsct-secagg|{seed}|{cid}|b".encode()).digest()
            self._clients[i] = _ClientSecrets(
                index=i, sk1=sk1, sk1_bytes=private_key_to_bytes(sk1), sk2=sk2, rd_seed=rd_seed
            )
            self.public_keys[cid] = (
                public_key_to_bytes(sk1.public_key()),
                public_key_to_bytes(sk2.public_key()),
            )
        all_pks = [pk for pair in self.public_keys.values() for pk in pair]
        if len(set(all_pks)) != len(all_pks):
            raise SecAggError("two clients hold identical public keys; choose distinct ids")
        self._pk1 = {self._index[c]: bytes_to_public_key(p[0]) for c, p in self.public_keys.items()}
        return {self._index[c]: bytes_to_public_key(p[1]) for c, p in self.public_keys.items()}

    def _share_keys(
        self, pk2: dict[int, ec.EllipticCurvePublicKey]
    ) -> dict[int, list[tuple[int, bytes]]]:
        """Stage 1 (share keys): client i Shamir-splits b_i and sk1_i (threshold t).

        Share j travels to client j through the server, encrypted under ECDH(sk2_i, pk2_j)
        so the server cannot read it. Returns the server's inbox: recipient index ->
        ``(sender index, ciphertext)`` in sender order.
        """
        n = len(self.client_ids)
        inbox: dict[int, list[tuple[int, bytes]]] = {i: [] for i in range(n)}
        for i, me in self._clients.items():
            b_shares = create_shares(me.rd_seed, self.threshold, n)
            sk1_shares = create_shares(me.sk1_bytes, self.threshold, n)
            for j in range(n):
                if j == i:
                    me.b_shares[i], me.sk1_shares[i] = b_shares[i], sk1_shares[i]
                    continue
                me.enc_keys[j] = generate_shared_key(me.sk2, pk2[j])
                plaintext = share_keys_plaintext_concat(i, j, b_shares[j], sk1_shares[j])
                inbox[j].append((i, encrypt(me.enc_keys[j], plaintext)))
        return inbox

    def _receive_shares(self, inbox: dict[int, list[tuple[int, bytes]]]) -> None:
        """Stage 2 prologue: each client decrypts what the server forwarded to it."""
        for j, messages in inbox.items():
            me = self._clients[j]
            for src, ciphertext in messages:
                actual_src, dst, b_share, sk1_share = share_keys_plaintext_separate(
                    decrypt(me.enc_keys[src], ciphertext)
                )
                if (actual_src, dst) != (src, j):
                    raise SecAggError(f"share routed wrongly: {actual_src}->{dst} as {src}->{j}")
                me.b_shares[src], me.sk1_shares[src] = b_share, sk1_share

    @property
    def masked_weights(self) -> dict[str, np.ndarray]:
        """Server view: each uploader's masked weight factor, int64 array of shape (1,)."""
        return {cid: w.copy() for cid, w in self._masked_weights.items()}

    def _dims(self) -> list[tuple[int, ...]]:
        assert self._shapes is not None
        return [(1,), *self._shapes]

    def mask(self, client_id: str, parameters: NDArrays, num_examples: float) -> NDArrays:
        """Client side: clip, weight, quantise, add self + pairwise masks mod modulus.

        Args:
            client_id: one of the session's clients; each uploads once per session.
            parameters: float arrays (any shapes, same for every client), parameter units.
            num_examples: the client's FedAvg weight, ``0 < num_examples <= max_weight``.

        Returns:
            int64 arrays of the same shapes with values in ``[0, modulus_range)``: what
            the server receives (plus the masked weight factor in ``masked_weights``).
        """
        i = self._client_index(client_id)
        me = self._clients[i]
        if me.uploaded:
            raise SecAggError(
                f"client {client_id!r} already uploaded in this session; masks must never "
                "be reused (two uploads under one mask reveal their difference)"
            )
        p = self.params
        if not (math.isfinite(num_examples) and num_examples > 0):
            raise ValueError(f"num_examples of {client_id!r} must be > 0, got {num_examples}")
        if num_examples > p.max_weight:
            raise ValueError(
                f"num_examples {num_examples} of client {client_id!r} exceeds max_weight "
                f"{p.max_weight}; raise SecAggParams.max_weight to at least {num_examples}"
            )
        shapes = [tuple(np.shape(a)) for a in parameters]
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise ValueError(f"client {client_id!r} uploads shapes {shapes}, others {self._shapes}")
        arrays = [np.asarray(a, dtype=np.float64) for a in parameters]
        for k, a in enumerate(arrays):
            if not np.isfinite(a).all():
                raise ValueError(f"client {client_id!r}: array {k} has NaN/inf values")

        # Flower's weighting: w_i = round(n_i / W_max * Q) / Q, so sum_i w_i is an exact
        # integer / Q and the server can divide by it after unmasking.
        q_ratio = round(num_examples / p.max_weight * p.quantization_range)
        dq_ratio = q_ratio / p.quantization_range
        clipped = [np.clip(a, -p.clipping_range, p.clipping_range) for a in arrays]
        weighted = parameters_multiply(clipped, dq_ratio)
        entropy = None if self.seed is None else [self.seed, i, 0x5ECA66]
        with _global_numpy_seed(entropy):
            quantized = quantize(weighted, p.clipping_range, p.quantization_range)
        vec = factor_combine(q_ratio, quantized)

        dims = self._dims()
        vec = parameters_addition(vec, pseudo_rand_gen(me.rd_seed, p.modulus_range, dims))
        for j, pk1_j in self._pk1.items():
            if j == i:
                continue
            pairwise = pseudo_rand_gen(generate_shared_key(me.sk1, pk1_j), p.modulus_range, dims)
            # Opposite signs at the two ends of a pair make the masks cancel in the sum.
            vec = (parameters_addition if i > j else parameters_subtraction)(vec, pairwise)
        # np.asarray: 0-d arrays come back from numpy operators as scalars.
        vec = [
            np.asarray(v, dtype=np.int64)
            for v in parameters_mod([np.asarray(v, np.int64) for v in vec], p.modulus_range)
        ]
        me.uploaded = True
        self._masked_weights[client_id] = vec[0]
        return vec[1:]

    def unmask_aggregate(
        self, masked: dict[str, NDArrays], dropped: set[str] | frozenset[str] = frozenset()
    ) -> tuple[NDArrays, float]:
        """Server side: sum surviving uploads, strip the masks, dequantise, divide.

        Clients listed in ``dropped`` or absent from ``masked`` count as dropped (their
        uploads never reached the server and are ignored). Survivors reveal shares of
        b_i of every survivor and of sk1_d of every dropped client; with at least
        ``threshold`` survivors the server reconstructs those secrets, subtracts the
        survivors' self masks and the dropped clients' dangling pairwise masks.

        Args:
            masked: client id -> upload returned by ``mask`` (int64, model shapes).
            dropped: ids of clients that dropped out after setup.

        Returns:
            (weighted mean per array as float32, same shapes; total weight = sum of the
            survivors' num_examples as recovered from the masked factors, error
            <= N * max_weight / (2 Q)). The mean is within ``quantization_error_bound``
            of the num_examples-weighted mean of the survivors' clipped parameters.

        Raises:
            SecAggError: fewer survivors than ``threshold`` or a survivor not uploaded.
        """
        survivors, dead = self._survivors(masked, dropped)
        dims = self._dims()
        total = self._sum_uploads(masked, survivors)
        total = self._remove_masks(total, survivors, dead, dims)
        return self._dequantized_mean(total, len(survivors))

    def _survivors(
        self, masked: dict[str, NDArrays], dropped: set[str] | frozenset[str]
    ) -> tuple[set[int], set[int]]:
        """Split the clients into survivors and dropped ones, as index sets.

        Raises:
            ValueError: an id the session does not know.
            SecAggError: fewer survivors than ``threshold`` or a survivor not uploaded.
        """
        unknown = (set(masked) | set(dropped)) - set(self._index)
        if unknown:
            raise ValueError(f"unknown client ids {sorted(unknown)}; session has {self.client_ids}")
        survivors = {self._index[c] for c in masked if c not in dropped}
        dead = set(range(len(self.client_ids))) - survivors
        if len(survivors) < self.threshold:
            raise SecAggError(
                f"only {len(survivors)} of {len(self.client_ids)} clients survived but "
                f"{self.threshold} shares are needed to reconstruct the masks "
                f"(reconstruction_threshold={self.params.reconstruction_threshold}); the "
                "aggregate cannot be unmasked this round"
            )
        missing = sorted(
            self.client_ids[i] for i in survivors if self.client_ids[i] not in self._masked_weights
        )
        if missing:
            raise SecAggError(f"clients {missing} did not produce their masked weight")
        return survivors, dead

    def _sum_uploads(self, masked: dict[str, NDArrays], survivors: set[int]) -> NDArrays:
        """Sum the survivors' masked vectors ``[q_i, *arrays]`` (int64, not yet mod M).

        The server sums what it received, nothing more.
        """
        total: NDArrays | None = None
        for i in sorted(survivors):
            cid = self.client_ids[i]
            upload = masked[cid]
            if [tuple(np.shape(a)) for a in upload] != self._shapes:
                raise ValueError(f"upload of {cid!r} does not have the session's shapes")
            vec = [self._masked_weights[cid], *(np.asarray(a, np.int64) for a in upload)]
            total = vec if total is None else parameters_addition(total, vec)
        assert total is not None
        return total

    def _remove_masks(
        self, total: NDArrays, survivors: set[int], dead: set[int], dims: list[tuple[int, ...]]
    ) -> NDArrays:
        """Unmask stage: rebuild secrets from the survivors' shares and strip the masks.

        Subtracts each survivor's self mask PRG(b_i) and undoes every survivor's pairwise
        mask with a dropped client d (from the reconstructed sk1_d). Result not yet mod M.
        """
        p = self.params
        shares: dict[int, list[bytes]] = {k: [] for k in range(len(self.client_ids))}
        for i in sorted(survivors):
            for owner, share in self._clients[i].reveal(survivors, dead).items():
                shares[owner].append(share)
        for owner, share_list in shares.items():
            secret = combine_shares(share_list)
            if owner in survivors:
                self_mask = pseudo_rand_gen(secret, p.modulus_range, dims)
                total = parameters_subtraction(total, self_mask)
                continue
            # Only survivors' uploads carry masks paired with this dropped client; pairs
            # between two dropped clients never reached the server (Flower also loops
            # over them, where they cancel).
            sk1_dead = bytes_to_private_key(secret)
            for j in sorted(survivors):
                pairwise = pseudo_rand_gen(
                    generate_shared_key(sk1_dead, self._pk1[j]), p.modulus_range, dims
                )
                # Survivor j added the mask if j > owner: undo with the opposite sign.
                op = parameters_addition if owner > j else parameters_subtraction
                total = op(total, pairwise)
        return total

    def _dequantized_mean(self, total: NDArrays, n_survivors: int) -> tuple[NDArrays, float]:
        """Reduce mod M, dequantise and divide by the summed weight factor.

        Returns the float32 weighted mean per array and the total weight (num_examples).
        """
        p = self.params
        total = parameters_mod(total, p.modulus_range)
        q_total, sums = factor_extract(total)
        q_total = int(q_total)
        if q_total <= 0:
            raise SecAggError("the survivors' total weight is zero")
        dequantized = dequantize(sums, p.clipping_range, p.quantization_range)
        # Each of the k summed values carried a +c shift; dequantize removed one of them.
        offset = -(n_survivors - 1) * p.clipping_range
        scale = p.quantization_range / q_total
        mean = [np.asarray((d + offset) * scale, dtype=np.float32) for d in dequantized]
        total_weight = q_total / p.quantization_range * p.max_weight
        return mean, total_weight

    def _client_index(self, client_id: str) -> int:
        try:
            return self._index[client_id]
        except KeyError:
            raise ValueError(
                f"unknown client {client_id!r}; session has {self.client_ids}"
            ) from None


def secure_weighted_mean(
    uploads: list[tuple[str, NDArrays, int]],
    params: SecAggParams = SecAggParams(),  # noqa: B008 - frozen, immutable default
    seed: int | None = 0,
) -> tuple[dict[str, NDArrays], NDArrays]:
    """One full round without dropouts.

    Args:
        uploads: ``(client_id, parameters, num_examples)`` per client (>= 2 clients).
        params: protocol settings.
        seed: see ``SecAggSession``; use a new seed every round.

    Returns:
        (server view: client id -> masked int64 upload with the model's shapes,
        num_examples-weighted mean of the clipped parameters as float32 arrays).
    """
    session = SecAggSession([cid for cid, _, _ in uploads], params, seed)
    masked = {cid: session.mask(cid, arrays, n) for cid, arrays, n in uploads}
    mean, _ = session.unmask_aggregate(masked)
    return masked, mean


def secure_round(
    uploads: dict[str, NDArrays], num_examples: dict[str, int], clipping_range: float,
    seed: int,
) -> tuple[dict[str, NDArrays], NDArrays, dict]:
    """One in-process SecAgg+ round for the federation runner.

    Returns ``(masked uploads — what the server holds per client —, the weighted mean,
    encoding)``; ``encoding`` holds only public protocol parameters, which the server view
    stores so that readers can interpret the masked uploads.
    """
    params = SecAggParams(clipping_range=clipping_range,
                          max_weight=float(max(SecAggParams().max_weight,
                                               *num_examples.values())))
    masked, mean = secure_weighted_mean(
        [(cid, arrays, num_examples[cid]) for cid, arrays in uploads.items()], params, seed
    )
    encoding = {"kind": "secagg", "clipping_range": params.clipping_range,
                "quantization_range": params.quantization_range,
                "modulus_range": params.modulus_range, "max_weight": params.max_weight}
    return masked, mean, encoding


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
