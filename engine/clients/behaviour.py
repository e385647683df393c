"""What one hospital does in a round, the same on every runtime (in process and Flower).

Honest hospitals train (:mod:`engine.learning.local`; with patient-level DP, DP-SGD) and then
apply the client-side defenses in order: prune the update, clip and noise it (hospital-level
DP); masking for secure aggregation is the protocol's (:mod:`engine.federation.secagg`).
Malicious hospitals train on their (possibly poisoned or backdoored) data and send their attack
instead (:mod:`engine.clients.malicious`, :mod:`engine.clients.backdoor`). Every random choice
is drawn from a stream seeded by the experiment's seed, the round and the hospital, so a
runtime cannot change the result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from engine.clients.adaptive import ADAPTIVE_KINDS, Rule
from engine.clients.backdoor import backdoor_upload, backdoored_slices
from engine.clients.dp import (
    AUDITED_CENTER,
    DPAccounting,
    gradient_canaries,
    planned_accounting,
    privatize_update,
    public_metadata,
    train_local_dp_sgd,
)
from engine.clients.malicious import malicious_upload, poison_slices
from engine.clients.pruning import prune_update
from engine.core.config import ExperimentConfig
from engine.core.types import NDArrays
from engine.data.types import Cohort, SliceSet
from engine.learning.local import LocalTraining, train_local


def client_seed(seed: int, rnd: int, center: int) -> int:
    """The seed of ``center``'s local training in round ``rnd`` (its batch order)."""
    return int(np.random.default_rng([seed, rnd, center]).integers(2**62))


def malicious_centers(cfg: ExperimentConfig) -> set[int]:
    """The indices of the attacking centers: poisoners or backdoor planters (one kind per
    run, the config checks it)."""
    poison, backdoor = cfg.attacks.poisoning, cfg.attacks.backdoor
    if poison.enabled:
        return set(poison.malicious_centers)
    return set(backdoor.malicious_centers) if backdoor.enabled else set()


def attacking(cfg: ExperimentConfig, rnd: int) -> bool:
    """Whether the attackers attack in round ``rnd`` (a backdoor planter stops after
    ``attacks.backdoor.stop_round``)."""
    stop = cfg.attacks.backdoor.stop_round if cfg.attacks.backdoor.enabled else None
    return stop is None or rnd <= stop


def training_sets(cfg: ExperimentConfig, cohort: Cohort,
                  attack: bool = True) -> tuple[list, set[str]]:
    """Every center's training slices (poisoned for ``data_noise`` attackers, with triggered
    copies for backdoor planters; with ``attack`` False, as in a round after the attackers
    stopped, every center's own) and the names of the malicious centers."""
    bad = malicious_centers(cfg)
    poison, backdoor = cfg.attacks.poisoning, cfg.attacks.backdoor

    def own(k: int, data: SliceSet) -> SliceSet:
        rng = np.random.default_rng([cfg.seed, k, 2])
        if k not in bad or not attack:
            return data
        if poison.enabled and poison.kind == "data_noise":
            return poison_slices(data, poison.target, poison.noise_std, poison.fraction, rng)
        return backdoored_slices(data, backdoor, rng) if backdoor.enabled else data

    return ([own(k, c.train) for k, c in enumerate(cohort.centers)],
            {cohort.centers[k].name for k in bad})


def is_malicious(cfg: ExperimentConfig, center: int) -> bool:
    return center in malicious_centers(cfg)


def sampled_centers(cfg: ExperimentConfig, rnd: int) -> list[int]:
    """The centers that take part in round ``rnd``: each with probability
    ``federation.sample_rate`` (Poisson sampling, seeded by the seed and the round; every
    center when it is 1)."""
    n, q = cfg.data.centers, cfg.federation.sample_rate
    if q >= 1.0:
        return list(range(n))
    draws = np.random.default_rng([cfg.seed, rnd, 20_000]).random(n)
    return [k for k in range(n) if draws[k] < q]


def constrains(cfg: ExperimentConfig, center: int) -> bool:
    """Whether ``center`` is a constrain-and-scale backdoor planter (it trains twice a
    round, :func:`engine.clients.backdoor.constrain_and_scale`)."""
    bd = cfg.attacks.backdoor
    return bd.enabled and bd.attack == "constrain_scale" and center in bd.malicious_centers


def honest_dp(cfg: ExperimentConfig, center: int) -> bool:
    """Whether ``center`` applies DP (malicious centers skip client-side defenses)."""
    return cfg.defenses.dp.enabled and not is_malicious(cfg, center)


def client_update(cfg: ExperimentConfig, model: torch.nn.Module, rnd: int, center: int,
                  data: SliceSet, global_params: NDArrays) -> tuple[NDArrays, dict[str, Any]]:
    """Center ``center``'s local training in round ``rnd`` (seeded by both): the same on
    every runtime. Patient-level DP trains with DP-SGD. Returns its trained parameters and
    the metadata it reports (a DP hospital reports public protocol values only, see
    :func:`~engine.clients.dp.public_metadata`)."""
    local, seed = LocalTraining.from_config(cfg), client_seed(cfg.seed, rnd, center)
    if not honest_dp(cfg, center):
        return train_local(model, global_params, data, local, seed=seed)
    dp = cfg.defenses.dp
    if dp.level == "sample":
        audit = cfg.attacks.dp_audit
        canaries = (gradient_canaries(model, audit.canaries, dp.clip_norm, cfg.seed)
                    if audit.enabled and center == AUDITED_CENTER else None)
        trained, _ = train_local_dp_sgd(model, global_params, data, local,
                                        planned_accounting(cfg), dp.clip_norm,
                                        declared_patients=cfg.data.patients_per_center,
                                        seed=seed, canaries=canaries)
    else:
        trained, _ = train_local(model, global_params, data, local, seed=seed)
    return trained, public_metadata(cfg)


def client_upload(cfg: ExperimentConfig, rnd: int, center: int, trained: NDArrays,
                  metadata: dict[str, Any], global_params: NDArrays, malicious: bool,
                  all_trained: list[NDArrays] | None = None, *, dp: bool = True,
                  rule: Rule | None = None) -> NDArrays:
    """What center ``center`` sends after training: honest centers apply the client-side
    defenses (pruning, then DP unless ``dp`` is False; DP's clip and noise go into
    ``metadata``), malicious ones their attack. ``all_trained`` (every center's honest
    model) is needed by ``alie`` and the adaptive kinds, ``rule`` (the server's rule on flat
    updates) by the adaptive kinds only."""
    rng = dp_rng(cfg, rnd, center)
    if malicious and cfg.attacks.backdoor.enabled:
        return backdoor_upload(trained, global_params, cfg.attacks.backdoor, rnd,
                               cfg.data.centers)
    if malicious:
        # ALIE is given every center's honestly trained update (its own included); the
        # adaptive attackers the honest centers' (in center order in ``all_trained``) and
        # the server's rule.
        poison, given = cfg.attacks.poisoning, all_trained or [trained]
        if poison.kind in ADAPTIVE_KINDS:
            given = [m for k, m in enumerate(given) if k not in poison.malicious_centers]
        return malicious_upload(poison.kind, trained, given, global_params, poison, rng, rule)
    if cfg.defenses.prune_fraction:
        trained = prune_update(trained, global_params, cfg.defenses.prune_fraction)
    dp_cfg = cfg.defenses.dp
    if dp and dp_cfg.enabled and dp_cfg.level == "client":
        sigma = planned_accounting(cfg).noise_multiplier
        trained, dp_meta = privatize_update(trained, global_params, dp_cfg.clip_norm, sigma,
                                            rng)
        metadata |= dp_meta
    return trained


def dp_accountings(cfg: ExperimentConfig, cohort: Cohort) -> dict[str, DPAccounting]:
    """Center name → its DP accounting, for the centers whose updates get DP (empty without
    DP; every center when the server applies it): the same for all, computed from the
    declared size (:func:`planned_accounting`)."""
    dp = cfg.defenses.dp
    server = dp.enabled and dp.level == "server"
    return {c.name: planned_accounting(cfg)
            for k, c in enumerate(cohort.centers) if server or honest_dp(cfg, k)}


def dp_epsilon(accountings: dict[str, DPAccounting], rounds: int) -> float | None:
    """The weakest (largest) ε over the DP centers after ``rounds`` rounds; None for ∞."""
    eps = max((a.epsilon(rounds) for a in accountings.values()), default=math.inf)
    return eps if math.isfinite(eps) else None


def dp_rng(cfg: ExperimentConfig, rnd: int, center: int) -> np.random.Generator:
    """The random stream of ``center``'s client-side noise in round ``rnd``."""
    return np.random.default_rng([cfg.seed, rnd, center, 1])
