"""In-process secure aggregation (SecAgg+, Bonawitz et al. 2017) on Flower's primitives.

A curious server in the simulator must hold only *masked* uploads and be able to recover
only their (weighted) sum. This module runs the four SecAgg+ stages of Flower 1.42
(``flwr.client.mod.secaggplus_mod`` / ``flwr.server.workflow.SecAggPlusWorkflow``) inside
one process, with the same math and the same primitives. The fixed-point encoding of the
parameters (quantisation, its error bound) is in :mod:`engine.federation.secagg_encoding`,
each client's key material in :mod:`engine.federation.secagg_keys`; this module uses

* ``secaggplus_utils.pseudo_rand_gen`` (mask expansion from a seed),
  ``share_keys_plaintext_concat`` / ``share_keys_plaintext_separate``,
* ``crypto.shamir.create_shares`` / ``combine_shares`` (t-out-of-n sharing of b_i, sk1_i),
* ``crypto.symmetric_encryption.generate_shared_key`` (ECDH + HKDF), ``encrypt`` /
  ``decrypt`` (Fernet, for the share exchange routed through the server),
* ``flwr.supercore.primitives.asymmetric`` (de)serialisation of the public keys,
* ``ndarrays_arithmetic`` (factor_extract, addition, subtraction, mod).

Protocol per round (Flower's notation: c = clipping_range, Q = quantization_range,
M = modulus_range, n_i = num_examples, W_max = max_weight):

1. Setup: client i draws two ECDH key pairs (sk1_i, pk1_i) for pairwise masks and
   (sk2_i, pk2_i) for encrypting shares; the server relays the public keys.
2. Share keys: client i draws a self-mask seed b_i, Shamir-splits b_i and sk1_i
   (threshold t) and sends share j to client j encrypted under ECDH(sk2_i, pk2_j); the
   server forwards ciphertexts it cannot read.
3. Masked upload: client i encodes its clipped parameters x_i, weighted by w_i = q_i / Q
   with q_i = round(n_i / W_max * Q), as the integer vector [q_i, z_i]
   (``secagg_encoding.encode_upload``); the vector gets + PRG(b_i) + sum_{j<i} PRG(s_ij)
   - sum_{j>i} PRG(s_ij) mod M, where s_ij = ECDH(sk1_i, pk1_j) = s_ji, so pairwise masks
   cancel in the sum.
4. Unmask: survivors reveal shares of b_i for every survivor and of sk1_d for every
   dropped client d (never both for one client); the server subtracts PRG(b_i) of the
   survivors and the dangling pairwise masks of the dropped clients and decodes the sum
   (``secagg_encoding.decode_sum``: dequantise, remove the per-client offset c, divide by
   sum_i q_i / Q). The result is sum_i w_i x_i / sum_i w_i, the num_examples-weighted
   FedAvg of the clipped parameters.

Differences from Flower, all deliberate (those of the encoding are listed in
:mod:`engine.federation.secagg_encoding`):

* Everyone is everyone's neighbour (Flower's ``num_shares=1.0``, i.e. SecAgg on the
  complete graph); the reconstruction threshold is computed exactly as Flower does for a
  float: ``t = max(2, round(reconstruction_threshold * n_clients))``.
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

import math

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    public_key_to_bytes,
)

from engine.core.types import NDArrays
from engine.federation.secagg_encoding import SecAggParams, decode_sum, encode_upload
from engine.federation.secagg_keys import ClientSecrets, draw_client_secrets

__all__ = [
    "SecAggError",
    "SecAggSession",
    "secure_round",
    "secure_weighted_mean",
]


class SecAggError(RuntimeError):
    """The protocol cannot complete (too few survivors, misuse that would leak data)."""


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
        self._clients: dict[int, ClientSecrets] = {}
        self.public_keys: dict[str, tuple[bytes, bytes]] = {}
        pk2 = self._setup_keys()
        inbox = self._share_keys(pk2)
        self._receive_shares(inbox)

    def _setup_keys(self) -> dict[int, ec.EllipticCurvePublicKey]:
        """Stage 0 (setup): every client's two key pairs and self-mask seed.

        Private halves (``draw_client_secrets``) stay in ``_clients``; public halves go to
        the server (``public_keys``, ``_pk1``). Returns each client's pk2 (share
        encryption), by index.
        """
        for i, cid in enumerate(self.client_ids):
            me = self._clients[i] = draw_client_secrets(i, cid, self.seed)
            self.public_keys[cid] = (
                public_key_to_bytes(me.sk1.public_key()),
                public_key_to_bytes(me.sk2.public_key()),
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
        entropy = None if self.seed is None else [self.seed, i, 0x5ECA66]
        vec = self._add_masks(i, encode_upload(arrays, num_examples, p, entropy))
        me.uploaded = True
        self._masked_weights[client_id] = vec[0]
        return vec[1:]

    def _add_masks(self, i: int, vec: NDArrays) -> NDArrays:
        """Masked upload, client i's side: add PRG(b_i) and the pairwise masks, mod M."""
        p = self.params
        me = self._clients[i]
        dims = self._dims()
        vec = parameters_addition(vec, pseudo_rand_gen(me.rd_seed, p.modulus_range, dims))
        for j, pk1_j in self._pk1.items():
            if j == i:
                continue
            pairwise = pseudo_rand_gen(generate_shared_key(me.sk1, pk1_j), p.modulus_range, dims)
            # Opposite signs at the two ends of a pair make the masks cancel in the sum.
            vec = (parameters_addition if i > j else parameters_subtraction)(vec, pairwise)
        # np.asarray: 0-d arrays come back from numpy operators as scalars.
        return [
            np.asarray(v, dtype=np.int64)
            for v in parameters_mod([np.asarray(v, np.int64) for v in vec], p.modulus_range)
        ]

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

    def _reveal(self, i: int, survivors: set[int], dropped: set[int]) -> dict[int, bytes]:
        """Unmask stage, client i's side: share of b_j for survivors, of sk1_d for dropped.

        An honest client refuses to reveal both secrets of one client: with b_j and
        sk1_j the server could strip every mask from j's individual upload.
        """
        me = self._clients[i]
        conflict = (survivors & me.revealed_sk1) | (dropped & me.revealed_b)
        if conflict:
            raise SecAggError(
                f"client #{me.index} refuses to reveal shares: clients {sorted(conflict)} "
                "were already declared the opposite way (survivor vs dropped); revealing "
                "both b and sk1 of one client would unmask its individual upload"
            )
        me.revealed_b |= survivors
        me.revealed_sk1 |= dropped
        out = {j: me.b_shares[j] for j in survivors}
        out.update({d: me.sk1_shares[d] for d in dropped})
        return out

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
            for owner, share in self._reveal(i, survivors, dead).items():
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
        """Reduce mod M, split off the summed weight factor and decode (``decode_sum``).

        Returns the float32 weighted mean per array and the total weight (num_examples).
        """
        p = self.params
        total = parameters_mod(total, p.modulus_range)
        q_total, sums = factor_extract(total)
        q_total = int(q_total)
        if q_total <= 0:
            raise SecAggError("the survivors' total weight is zero")
        return decode_sum(sums, q_total, n_survivors, p)

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

