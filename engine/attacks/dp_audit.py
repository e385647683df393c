"""Audit of hospital-level differential privacy with canary hospitals.

The accountant's ε assumes that every DP hospital clips its update to norm C and adds
N(0, (σC)²) to it, every round. The audit checks the code that does it, from what the server
receives: ``attacks.dp_audit.canaries`` canary hospitals (in the style of Andrew et al.
2023), each with its own fixed random unit direction u and present with probability ½. In
every round of the run a present canary's local model is the global model moved by 2C along
u (so its update is clipped to C); an absent canary's is the global model itself (a zero
update: the neighbouring dataset the accountant's add/remove relation assumes). Both upload
through the hospitals' own client code (:func:`engine.clients.behaviour.client_upload`:
pruning, clip, noise, each canary on its own random stream), so an absent canary is never
visible from the mere existence of an upload. The server's score of a canary is the sum over
rounds of the cosine between its upload's update and u. The canaries are audited, not
aggregated: the run's model is what the hospitals trained.

The score goes to :func:`engine.core.audit.audit_epsilon` (the one-run bound of Steinke et
al. 2023), beside the most that many canaries could certify (:func:`~engine.core.audit.
audit_cap`) and the accountant's ε.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.clients.behaviour import client_upload
from engine.clients.dp import planned_accounting
from engine.core.audit import audit_cap, audit_epsilon, clopper_pearson_epsilon, one_shot_epsilon
from engine.core.config import ExperimentConfig
from engine.core.types import NDArrays, is_float

# Canary hospitals take indices from here on for their random streams (hospitals are 0…15).
CANARY_FIRST = 1_000
VERDICTS = ("consistent", "violation", "weak_audit")
# A bound below this share of the cap says nothing when the cap is below the accountant's ε.
WEAK_SHARE = 0.25


def canary_scores(cfg: ExperimentConfig, global_params: NDArrays, canaries: int, seed: int,
                  progress: Callable[[int, int, str], None] = lambda *_: None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, present)`` of ``canaries`` canary hospitals over the config's rounds (see the
    module docstring), each round's upload made from ``global_params``: the update a canary
    uploads does not depend on the global model, only on its own direction and stream."""
    rng = np.random.default_rng([seed, 0xCA])
    present = rng.random(canaries) < 0.5
    floats = [i for i, a in enumerate(global_params) if is_float(a)]
    sizes = [global_params[i].size for i in floats]
    clip = cfg.defenses.dp.clip_norm
    start = [global_params[i].astype(np.float64) for i in floats]  # once, not per upload
    scores = np.zeros(canaries)
    rounds = cfg.federation.rounds
    for k in range(canaries):
        u = np.random.default_rng([seed, 0xCA, k]).normal(size=sum(sizes))
        u /= np.linalg.norm(u)
        parts = np.split(u, np.cumsum(sizes)[:-1])
        local = [a.copy() for a in global_params]
        if present[k]:
            for i, base, part in zip(floats, start, parts, strict=True):
                local[i] = (base + 2 * clip * part.reshape(base.shape)
                            ).astype(global_params[i].dtype)
        for rnd in range(1, rounds + 1):
            upload = client_upload(cfg, rnd, CANARY_FIRST + k, local, {}, global_params,
                                   malicious=False)
            delta = np.concatenate([(upload[i].astype(np.float64) - base).ravel()
                                    for i, base in zip(floats, start, strict=True)])
            scores[k] += float(delta @ u) / (np.linalg.norm(delta) + 1e-30)
        progress(k + 1, canaries, f"canary {k + 1:,} of {canaries:,}")
    return scores, present


def audit_verdict(bound: float, cap: float, accountant: float | None) -> str:
    """``violation``: the bound exceeds the accountant's ε (a bug, or an assumption of the
    accounting that does not hold); ``weak_audit``: the audit could not certify the claimed ε
    even with perfect guesses and found little; ``consistent`` otherwise."""
    claimed = math.inf if accountant is None else accountant
    if bound > claimed:
        return "violation"
    if cap < claimed and bound < WEAK_SHARE * cap:
        return "weak_audit"
    return "consistent"


def run_dp_audit(cfg: ExperimentConfig, global_params: NDArrays,
                 progress: Callable[[int, int, str], None] = lambda *_: None
                 ) -> dict[str, Any]:
    """The ``dp_audit`` block of ``summary.json`` for hospital-level DP."""
    audit = cfg.attacks.dp_audit
    t0 = time.perf_counter()
    scores, present = canary_scores(cfg, global_params, audit.canaries, cfg.seed, progress)
    delta = cfg.defenses.dp.delta
    found = audit_epsilon(scores, present, delta, audit.confidence)
    eps = planned_accounting(cfg).epsilon(cfg.federation.rounds)
    accountant = eps if math.isfinite(eps) else None
    cap = audit_cap(audit.canaries, delta, audit.confidence)
    # A second estimator for comparison: the median score as threshold (fixed in advance).
    threshold = float(np.median(scores))
    guessed = scores > threshold
    cp = clopper_pearson_epsilon(int((guessed & ~present).sum()), int((~present).sum()),
                                 int((~guessed & present).sum()), int(present.sum()), delta,
                                 audit.confidence)
    bound = float(found["epsilon_lower_bound"])
    estimate = one_shot_epsilon(scores[present], scores[~present], delta)
    return {
        "kind": audit.kind,
        "epsilon_lower_bound": bound,
        "estimator": "one_run",
        "canaries": audit.canaries,
        "present": int(present.sum()),
        "confidence": audit.confidence,
        "cap": cap,
        "accountant_epsilon": accountant,
        "delta": delta,
        "verdict": audit_verdict(bound, cap, accountant),
        "guesses": int(found["guesses"]),
        "correct": int(found["correct"]),
        "clopper_pearson": cp,
        # None: the absent canaries' scores do not vary (no noise): no finite estimate.
        "one_shot_estimate": estimate if math.isfinite(estimate) else None,
        "rounds": cfg.federation.rounds,
        "seconds": round(time.perf_counter() - t0, 2),
    }
