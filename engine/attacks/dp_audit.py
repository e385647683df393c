"""Audits of differential privacy with canaries: an empirical lower bound on ε.

The accountant's ε assumes that the code adds the noise it is told about. The audit checks
the code that does it, from what the server receives, with ``attacks.dp_audit.canaries``
canaries each present with probability ½ (the one-run design of Steinke, Nasr & Jagielski
2023):

* ``kind: client`` (hospital-level DP): canary hospitals in the style of Andrew et al. 2023,
  each with its own fixed random unit direction u. In every round of the run a present
  canary's local model is the global model moved by 2C along u (so its update is clipped to
  C); an absent canary's is the global model itself (a zero update: the neighbouring dataset
  the accountant's add/remove relation assumes). Both upload through the hospitals' own
  client code (:func:`engine.clients.behaviour.client_upload`: pruning, clip, noise, each
  canary on its own random stream), so an absent canary is never visible from the mere
  existence of an upload (in a Flower run, through the ClientApp's DP mod, which adds the
  noise there). The server's score of a canary is the sum over rounds of the
  cosine between u and its upload's update, or, under secure aggregation, the update of the
  round's aggregate of the canaries (the server sees only their sum). The canaries are
  audited, not aggregated: the run's model is what the hospitals trained.
* ``kind: patient`` (patient-level DP-SGD): canary patients inside Hospital A's DP-SGD
  (:class:`engine.clients.dp.GradientCanaries`, white-box Dirac canaries: each one's
  gradient is 2C on its own parameter coordinate), sampled, clipped and noised with the
  real patients in every step of the real run. The server's score of a canary is minus the
  change of its coordinate in Hospital A's upload (under secure aggregation, in the
  aggregate), summed over the rounds recorded in the server view.

The scores go to :func:`engine.core.audit.audit_epsilon` (the one-run bound), beside the
most that many canaries could certify (:func:`~engine.core.audit.audit_cap`) and the
accountant's ε.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.clients.behaviour import client_upload
from engine.clients.dp import AUDITED_CENTER, gradient_canaries, planned_accounting
from engine.core.audit import audit_cap, audit_epsilon, clopper_pearson_epsilon, one_shot_epsilon
from engine.core.config import ExperimentConfig
from engine.core.types import NDArrays, is_float
from engine.data.types import Cohort
from engine.federation.flower_app import dp_mod_upload
from engine.federation.server_view import ServerView
from engine.learning.model import build_model

# Canary hospitals take indices from here on for their random streams (hospitals are 0…15).
CANARY_FIRST = 1_000
VERDICTS = ("consistent", "violation", "weak_audit")
# A bound below this share of the cap says nothing when the cap is below the accountant's ε.
WEAK_SHARE = 0.25


def _unit_direction(seed: int, k: int, size: int) -> np.ndarray:
    u = np.random.default_rng([seed, 0xCA, k]).normal(size=size)
    return u / np.linalg.norm(u)


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
    rounds, size = cfg.federation.rounds, sum(sizes)
    # A Flower hospital's noise is added by the ClientApp's DP mod: audit that code.
    in_process = cfg.federation.runtime == "inprocess"

    def trained(k: int, u: np.ndarray) -> NDArrays:
        """Canary ``k``'s local model: the global one, moved by 2C along u when present."""
        local = [a.copy() for a in global_params]
        if present[k]:
            parts = np.split(u, np.cumsum(sizes)[:-1])
            for i, base, part in zip(floats, start, parts, strict=True):
                local[i] = (base + 2 * clip * part.reshape(base.shape)
                            ).astype(global_params[i].dtype)
        return local

    def update(k: int, rnd: int, local: NDArrays) -> np.ndarray:
        """The update canary ``k`` uploads in round ``rnd``, flattened (float64)."""
        upload = (client_upload(cfg, rnd, CANARY_FIRST + k, local, {}, global_params,
                                malicious=False) if in_process else
                  dp_mod_upload(cfg, rnd, CANARY_FIRST + k, local, global_params))
        return np.concatenate([(upload[i].astype(np.float64) - base).ravel()
                               for i, base in zip(floats, start, strict=True)])

    scores = np.zeros(canaries)
    if not cfg.defenses.secure_aggregation:
        for k in range(canaries):
            u = _unit_direction(seed, k, size)
            local = trained(k, u)
            for rnd in range(1, rounds + 1):
                delta = update(k, rnd, local)
                scores[k] += float(delta @ u) / (np.linalg.norm(delta) + 1e-30)
            progress(k + 1, canaries, f"canary {k + 1:,} of {canaries:,}")
        return scores, present
    # Secure aggregation: the server sees each round's sum of the canaries' uploads only.
    # Round by round (directions drawn again, not stored), so memory stays one model's size.
    for rnd in range(1, rounds + 1):
        total = np.zeros(size)
        for k in range(canaries):
            total += update(k, rnd, trained(k, _unit_direction(seed, k, size)))
            progress((rnd - 1) * canaries + k + 1, rounds * canaries,
                     f"round {rnd} of {rounds}: canary {k + 1:,} of {canaries:,}")
        total /= np.linalg.norm(total) + 1e-30
        for k in range(canaries):
            scores[k] += float(total @ _unit_direction(seed, k, size))
    return scores, present


def patient_canary_scores(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores, present, rounds)`` of the canary patients in Hospital A's DP-SGD (see the
    module docstring), from every round recorded in the server view."""
    canaries = gradient_canaries(build_model(cfg), cfg.attacks.dp_audit.canaries,
                                 cfg.defenses.dp.clip_norm, cfg.seed)
    view, center = ServerView(run_dir), cohort.centers[AUDITED_CENTER].name
    scores = np.zeros(len(canaries.names))
    for rnd in view.rounds:
        seen = view[rnd]
        if seen.individual_uploads:
            update = seen.client_update(center)
        else:
            update = [np.asarray(a, dtype=np.float64) - np.asarray(g, dtype=np.float64)
                      for a, g in zip(seen.aggregate, seen.global_params, strict=True)]
        arrays = dict(zip(seen.param_names, update, strict=True))
        scores -= [arrays[n].ravel()[i] for n, i in zip(canaries.names, canaries.index,
                                                        strict=True)]
    return scores, canaries.present, len(view.rounds)


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


def run_dp_audit(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort, global_params: NDArrays,
                 progress: Callable[[int, int, str], None] = lambda *_: None
                 ) -> dict[str, Any]:
    """The ``dp_audit`` block of ``summary.json``."""
    audit = cfg.attacks.dp_audit
    t0 = time.perf_counter()
    if audit.kind == "patient":
        scores, present, rounds = patient_canary_scores(run_dir, cfg, cohort)
    else:
        scores, present = canary_scores(cfg, global_params, audit.canaries, cfg.seed, progress)
        rounds = cfg.federation.rounds
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
    # Andrew et al.'s estimate assumes one Gaussian release per canary: hospital level only.
    estimate = (one_shot_epsilon(scores[present], scores[~present], delta)
                if audit.kind == "client" else math.nan)
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
        # None: no estimate (patient level), or the absent canaries' scores do not vary.
        "one_shot_estimate": estimate if math.isfinite(estimate) else None,
        "rounds": rounds,
        "observed": "aggregate" if cfg.defenses.secure_aggregation else "uploads",
        "seconds": round(time.perf_counter() - t0, 2),
    }
