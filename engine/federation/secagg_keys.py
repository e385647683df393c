"""Per-client key material of secure aggregation (SecAgg+): what each client keeps to itself.

Client i holds two ECDH key pairs, (sk1_i, pk1_i) for pairwise masks and (sk2_i, pk2_i)
for encrypting the shares it sends, a self-mask seed b_i, and, once the shares are
exchanged, its Shamir share of every client's b_j and sk1_j. Keys are generated and
serialised with Flower 1.42's ``flwr.supercore.primitives.asymmetric``.

With an integer ``seed`` the keys and the self-mask seed are derived from the seed and the
client id (reproducible runs); ``seed=None`` uses fresh OS entropy exactly like Flower.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes


@dataclass
class ClientSecrets:
    """Everything one client keeps to itself; the server never reads these fields.

    ``b_shares[j]`` / ``sk1_shares[j]`` hold this client's Shamir share of client j's
    self-mask seed b_j and pairwise key sk1_j (j may be the client itself);
    ``revealed_b`` / ``revealed_sk1`` the clients whose share it has revealed so far.
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


def draw_client_secrets(index: int, client_id: str, seed: int | None) -> ClientSecrets:
    """Setup stage, client side: the two key pairs' private halves and the self-mask seed.

    Args:
        index: the client's position in the session (fixes the pairwise mask signs).
        client_id: the client's id, mixed into the derivation for an integer ``seed``.
        seed: derive everything from it; ``None`` draws fresh OS entropy like Flower.
    """
    if seed is None:
        sk1, _ = generate_key_pairs()
        sk2, _ = generate_key_pairs()
        rd_seed = os.urandom(32)
    else:
        sk1 = _derived_key(seed, client_id, "sk1")
        sk2 = _derived_key(seed, client_id, "sk2")
        rd_seed = hashlib.sha256(f"fedsct-secagg|{seed}|{client_id}|b".encode()).digest()
    return ClientSecrets(
        index=index, sk1=sk1, sk1_bytes=private_key_to_bytes(sk1), sk2=sk2, rd_seed=rd_seed
    )


def _derived_key(seed: int, client_id: str, label: str) -> ec.EllipticCurvePrivateKey:
    # 383 bits are always below the P-384 group order (> 2**383), hence a valid scalar.
    digest = hashlib.sha512(f"fedsct-secagg|{seed}|{client_id}|{label}".encode()).digest()
    scalar = int.from_bytes(digest, "big") >> (512 - 383)
    return ec.derive_private_key(max(scalar, 1), ec.SECP384R1())
