"""Malicious client behaviours: noise on their data or their upload, and model poisoning.

These are what a malicious hospital *does* (as ``breaching``'s ``cases/users.py`` keeps client
behaviours apart from attacks); the server's side is :mod:`engine.federation.detection` and
the report of their effect is :mod:`engine.analyses.poisoning`. Every behaviour is a pure
function of arrays, so it can be tested with hand-made inputs:

* :func:`poison_slices` — ``data_noise``: Gaussian noise on a share of the center's training
  slices (MRI, CT or both), in normalised units (MRI [0, 1], CT units of
  :func:`engine.data.preprocess.hu_to_unit`).
* :func:`noisy_upload` — ``update_noise``: Gaussian noise added to the uploaded parameters.
* :func:`sign_flipped_upload` — ``sign_flip``: the honest update reversed (× ``scale``).
* :func:`scaled_upload` — ``scaling``: model replacement, the honest update × ``scale``.
* :func:`alie_upload` — ``alie`` ("A Little Is Enough", Baruch et al. 2019): per coordinate,
  the honest updates' mean minus ``z`` standard deviations; it stays inside the spread of
  honest updates, which is what lets it pass median- and distance-based rules.
* ``min_max``, ``min_sum``, ``alie_opt``, ``ipm_opt``, ``fang_krum``, ``fang_trim`` —
  adaptive attackers tuned to the server's rule each round (:mod:`engine.clients.adaptive`).

A malicious center deviates from the protocol, so client-side defenses (pruning, DP) are not
applied to its upload.
"""

from __future__ import annotations

import numpy as np

from engine.clients.adaptive import (
    ADAPTIVE_KINDS,
    Rule,
    adaptive_update,
)
from engine.core.config import PoisoningConfig
from engine.core.types import NDArrays, as_params, flat_updates, is_float
from engine.core.units import hu_to_unit, unit_to_hu
from engine.data.types import SliceSet

UPDATE_KINDS = ("update_noise", "sign_flip", "scaling", "alie", *ADAPTIVE_KINDS)


def poison_slices(slices: SliceSet, target: str, noise_std: float, fraction: float,
                  rng: np.random.Generator) -> SliceSet:
    """``slices`` with Gaussian noise on a random ``fraction`` of them.

    Args:
        target: ``mri`` | ``ct`` | ``both``.
        noise_std: standard deviation in normalised units (MRI [0, 1]; CT 1 = 4024 HU).
        fraction: share of slices poisoned, in (0, 1]; at least one slice.
    """
    n = len(slices.mri)
    picked = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    mri, ct_hu = slices.mri.copy(), slices.ct_hu.copy()
    shape = (len(picked), *mri.shape[1:])
    if target in ("mri", "both"):
        mri[picked] += rng.normal(0.0, noise_std, shape).astype(mri.dtype)
    if target in ("ct", "both"):
        noisy = hu_to_unit(ct_hu[picked]) + rng.normal(0.0, noise_std, shape)
        # unit_to_hu clips to the scanner range, as a real (noisy) CT would be stored.
        ct_hu[picked] = unit_to_hu(noisy).astype(ct_hu.dtype)
    return SliceSet(mri=mri, ct_hu=ct_hu, mask=slices.mask, patient_ids=slices.patient_ids)


def noisy_upload(local: NDArrays, noise_std: float, rng: np.random.Generator) -> NDArrays:
    """``local`` + N(0, noise_std²) on every float parameter (absolute units)."""
    return [(a + rng.normal(0.0, noise_std, a.shape)).astype(a.dtype) if is_float(a) else a
            for a in local]


def scaled_upload(local: NDArrays, global_params: NDArrays, scale: float) -> NDArrays:
    """``global + scale · (local − global)`` (model replacement when ``scale`` ≈ n)."""
    return [(g + scale * (a.astype(np.float64) - g)).astype(a.dtype) if is_float(a) else a
            for a, g in zip(local, global_params, strict=True)]


def sign_flipped_upload(local: NDArrays, global_params: NDArrays, scale: float) -> NDArrays:
    """``global − scale · (local − global)``: the honest update reversed."""
    return scaled_upload(local, global_params, -scale)


def alie_upload(honest: list[NDArrays], global_params: NDArrays, z: float) -> NDArrays:
    """Per coordinate ``global + mean(Δ) − z · std(Δ)`` over the honest updates ``Δ``.

    The attacker is given every center's honest update, as in the ALIE paper's evaluation
    (an upper bound on what colluding centers can estimate).
    """
    out = []
    for i, g in enumerate(global_params):
        if not is_float(g):
            out.append(honest[0][i])
            continue
        deltas = np.stack([h[i].astype(np.float64) - g for h in honest])
        out.append((g + deltas.mean(axis=0) - z * deltas.std(axis=0)).astype(g.dtype))
    return out


def malicious_upload(kind: str, own: NDArrays, honest: list[NDArrays],
                     global_params: NDArrays, poisoning: PoisoningConfig,
                     rng: np.random.Generator, rule: Rule | None = None) -> NDArrays:
    """The upload of a malicious center that trained ``own`` (for ``data_noise``: the
    model trained on its poisoned data, sent as is). ``honest``: the models the attacker is
    given (ALIE: every center's; the adaptive kinds: the honest centers'); ``rule``: the
    server's rule on flat updates, for the adaptive kinds (:mod:`engine.clients.adaptive`)."""
    if kind in ADAPTIVE_KINDS:
        if rule is None:
            raise ValueError(f"attacks.poisoning.kind = {kind!r} needs the server's rule")
        deltas = flat_updates(honest, global_params)
        start = poisoning.z if kind == "alie_opt" else poisoning.scale
        update, _ = adaptive_update(kind, deltas, rule, len(poisoning.malicious_centers),
                                    poisoning.perturbation, start)
        return as_params(update, global_params, own)
    if kind == "update_noise":
        return noisy_upload(own, poisoning.noise_std, rng)
    if kind == "sign_flip":
        return sign_flipped_upload(own, global_params, poisoning.scale)
    if kind == "scaling":
        return scaled_upload(own, global_params, poisoning.scale)
    if kind == "alie":
        return alie_upload(honest, global_params, poisoning.z)
    return own
