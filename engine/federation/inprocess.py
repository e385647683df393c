"""The in-process federation runner (default runtime).

Each round: the server sends the global model; every center trains locally
(:func:`engine.federation.client.train_local`); honest centers optionally prune and privatise
their update (client-level DP), malicious ones replace it with their attack
(:mod:`engine.attacks.poisoning`); uploads are masked under secure aggregation; the server
aggregates, records its view (and, with attackers present, its detection statistics), and the
global model is evaluated on every center's held-out patients and on the unseen center.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.attacks.poisoning import malicious_upload, poison_slices, update_statistics
from engine.config import ExperimentConfig
from engine.data.types import Cohort, SliceSet
from engine.federation import server_view
from engine.federation.aggregators import make_aggregator
from engine.federation.client import LocalTraining, evaluate_patients, train_local
from engine.federation.dp import (
    DPAccounting,
    dp_accounting,
    privatize_update,
    public_metadata,
    train_local_dp_sgd,
)
from engine.federation.pruning import prune_update
from engine.metrics import mean_over_patients
from engine.model import NDArrays, build_model, get_parameters


class Cancelled(Exception):
    """Raised inside the runner when the user asked to stop."""


@dataclass
class FederationResult:
    """What a finished federation hands back (all metrics in HU / dB / unitless SSIM)."""

    final_params: NDArrays
    history: list[dict[str, Any]] = field(default_factory=list)
    per_center: dict[str, dict[str, float]] = field(default_factory=dict)
    unseen_center: dict[str, float] | None = None
    train_s: float = 0.0
    eval_s: float = 0.0
    steps: int = 0
    detection: list[dict[str, Any]] = field(default_factory=list)


def _client_seed(seed: int, rnd: int, center: int) -> int:
    return int(np.random.default_rng([seed, rnd, center]).integers(2**62))


def training_sets(cfg: ExperimentConfig, cohort: Cohort) -> tuple[list, set[str]]:
    """Every center's training slices (poisoned for ``data_noise`` attackers) and the names
    of the malicious centers (empty without poisoning)."""
    poison = cfg.attacks.poisoning
    if not poison.enabled:
        return [c.train for c in cohort.centers], set()
    bad = set(poison.malicious_centers)
    data = [poison_slices(c.train, poison.target, poison.noise_std, poison.fraction,
                          np.random.default_rng([cfg.seed, k, 2]))
            if k in bad and poison.kind == "data_noise" else c.train
            for k, c in enumerate(cohort.centers)]
    return data, {cohort.centers[k].name for k in bad}


def is_malicious(cfg: ExperimentConfig, center: int) -> bool:
    poison = cfg.attacks.poisoning
    return poison.enabled and center in poison.malicious_centers


def honest_dp(cfg: ExperimentConfig, center: int) -> bool:
    """Whether ``center`` applies DP (malicious centers skip client-side defenses)."""
    return cfg.defenses.dp.enabled and not is_malicious(cfg, center)


def client_update(cfg: ExperimentConfig, model: torch.nn.Module, rnd: int, center: int,
                  data: SliceSet, global_params: NDArrays) -> tuple[NDArrays, dict[str, Any]]:
    """Center ``center``'s local training in round ``rnd`` (seeded by both): the same on
    every runtime. Patient-level DP trains with DP-SGD. Returns its trained parameters and
    the metadata it reports (a DP hospital reports public protocol values only)."""
    local, seed = LocalTraining.from_config(cfg), _client_seed(cfg.seed, rnd, center)
    if not honest_dp(cfg, center):
        return train_local(model, global_params, data, local, seed=seed)
    dp = cfg.defenses.dp
    if dp.level == "sample":
        accounting = dp_accounting(dp, cfg.federation.rounds, local, len(data))
        trained, meta = train_local_dp_sgd(model, global_params, data, local, accounting,
                                           dp.clip_norm, seed=seed)
    else:
        trained, meta = train_local(model, global_params, data, local, seed=seed)
    return trained, public_metadata(meta)


def client_upload(cfg: ExperimentConfig, rnd: int, center: int, trained: NDArrays,
                  metadata: dict[str, Any], global_params: NDArrays, malicious: bool,
                  all_trained: list[NDArrays] | None = None, *, dp: bool = True) -> NDArrays:
    """What center ``center`` sends after training: honest centers apply the client-side
    defenses (pruning, then DP unless ``dp`` is False; DP's clip and noise go into
    ``metadata``), malicious ones their attack. ``all_trained`` (every center's honest
    model) is needed by ``alie`` only."""
    rng = dp_rng(cfg, rnd, center)
    if malicious:
        # ALIE is given every center's honestly trained update (its own included).
        return malicious_upload(cfg.attacks.poisoning.kind, trained, all_trained or [trained],
                                global_params, cfg.attacks.poisoning, rng)
    if cfg.defenses.prune_fraction:
        trained = prune_update(trained, global_params, cfg.defenses.prune_fraction)
    dp_cfg = cfg.defenses.dp
    if dp and dp_cfg.enabled and dp_cfg.level == "client":
        sigma = dp_accounting(dp_cfg, cfg.federation.rounds, LocalTraining.from_config(cfg),
                              int(metadata["num_examples"])).noise_multiplier
        trained, dp_meta = privatize_update(trained, global_params, dp_cfg.clip_norm, sigma,
                                            rng)
        metadata |= dp_meta
    return trained


def dp_accountings(cfg: ExperimentConfig, cohort: Cohort) -> dict[str, DPAccounting]:
    """Center name → its DP accounting, for the centers that apply DP (empty without DP)."""
    local = LocalTraining.from_config(cfg)
    return {c.name: dp_accounting(cfg.defenses.dp, cfg.federation.rounds, local, len(c.train))
            for k, c in enumerate(cohort.centers) if honest_dp(cfg, k)}


def dp_epsilon(accountings: dict[str, DPAccounting], rounds: int) -> float | None:
    """The weakest (largest) ε over the DP centers after ``rounds`` rounds; None for ∞."""
    eps = max((a.epsilon(rounds) for a in accountings.values()), default=math.inf)
    return eps if math.isfinite(eps) else None


def dp_rng(cfg: ExperimentConfig, rnd: int, center: int) -> np.random.Generator:
    """The random stream of ``center``'s client-side noise in round ``rnd``."""
    return np.random.default_rng([cfg.seed, rnd, center, 1])


def evaluate_global(model: torch.nn.Module, params: NDArrays,
                    cohort: Cohort) -> tuple[dict[str, float], dict[str, dict], dict | None]:
    """Metrics of ``params``: pooled over all centers' held-out patients, per center, unseen.

    Each patient is predicted and scored once; pooled = the mean over all held-out patients.
    """
    rows = {c.name: list(evaluate_patients(model, params, c.test).values())
            for c in cohort.centers}
    per_center = {name: mean_over_patients(r) for name, r in rows.items()}
    pooled = mean_over_patients([r for center in rows.values() for r in center])
    unseen = None
    if cohort.unseen:
        unseen = mean_over_patients(list(evaluate_patients(model, params,
                                                           cohort.unseen.test).values()))
    return pooled, per_center, unseen


class RoundRecorder:
    """Evaluates the global model after a round and builds the round's record (the same
    format on every runtime, see :func:`run_federation`)."""

    def __init__(self, cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                 on_round: Callable[[dict[str, Any]], None] | None,
                 model: torch.nn.Module | None = None) -> None:
        self.cfg, self.cohort, self.result, self.on_round = cfg, cohort, result, on_round
        self.model = model or build_model(cfg)  # its weights are overwritten to evaluate
        self.accountings = dp_accountings(cfg, cohort)
        self.t_start = time.perf_counter()

    def evaluate_now(self, rnd: int) -> bool:
        fed = self.cfg.federation
        return rnd in (0, fed.rounds) or rnd % fed.eval_every == 0

    def record(self, rnd: int, global_params: NDArrays, clients: dict[str, dict],
               detection: dict[str, dict] | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = self.result
        entry: dict[str, Any] = {"round": rnd, "global": None, "per_center": None,
                                 "unseen": None, "clients": clients}
        result.steps += sum(int(m.get("steps", 0)) for m in clients.values())
        if self.accountings and rnd > 0:
            entry["dp_epsilon"] = dp_epsilon(self.accountings, rnd)
        if detection is not None:
            entry["detection"] = detection
            result.detection.append({"round": rnd, "clients": detection})
        if self.evaluate_now(rnd):
            pooled, per_center, unseen = evaluate_global(self.model, global_params,
                                                         self.cohort)
            entry |= {"global": pooled, "per_center": per_center, "unseen": unseen}
            result.history.append({"round": rnd, **pooled})
            result.per_center, result.unseen_center = per_center, unseen
        result.eval_s += time.perf_counter() - t0
        entry["elapsed_s"] = round(time.perf_counter() - self.t_start, 3)
        if self.on_round:
            self.on_round(entry)
        return entry


def run_federation(
    cfg: ExperimentConfig,
    cohort: Cohort,
    *,
    run_dir: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FederationResult:
    """Train the federation described by ``cfg`` on ``cohort``.

    Args:
        run_dir: where the server view is stored (rounds chosen by
            ``federation.server_view_rounds``); ``None`` stores nothing.
        on_round: called after each round with a JSON-ready record
            ``{"round", "global": {mae_hu, psnr_db, ssim} | None, "per_center", "unseen",
            "clients": {id: metadata}, "elapsed_s"}``; round 0 is the untrained model.
        should_stop: polled between clients; returning True raises :class:`Cancelled`.
    """
    fed = cfg.federation
    model = build_model(cfg)
    names = list(model.state_dict())
    aggregator = make_aggregator(fed)
    global_params = get_parameters(model)
    result = FederationResult(final_params=global_params)
    train_sets, malicious = training_sets(cfg, cohort)
    recorder = RoundRecorder(cfg, cohort, result, on_round, model)
    recorder.record(0, global_params, {})
    for rnd in range(1, fed.rounds + 1):
        t0 = time.perf_counter()
        trained: dict[str, NDArrays] = {}
        metadata: dict[str, dict[str, Any]] = {}
        for k, center in enumerate(cohort.centers):
            if should_stop():
                raise Cancelled(f"cancelled during round {rnd}")
            trained[center.name], metadata[center.name] = client_update(
                cfg, model, rnd, k, train_sets[k], global_params)
        honest = list(trained.values())
        uploads = {name: client_upload(cfg, rnd, k, params, metadata[name], global_params,
                                       name in malicious, honest)
                   for k, (name, params) in enumerate(trained.items())}
        weights = {c: int(metadata[c]["num_examples"]) for c in uploads}
        detection = None
        if cfg.defenses.secure_aggregation:
            from engine.federation.secagg import secure_round

            sent, new_params, encoding = secure_round(
                uploads, weights, cfg.defenses.secagg_clipping_range,
                seed=_client_seed(cfg.seed, rnd, 10_000),
            )
            new_params = [n.astype(g.dtype) for n, g in zip(new_params, global_params,
                                                            strict=True)]
        else:
            sent = uploads
            new_params = aggregator([(uploads[c], weights[c]) for c in uploads])
            encoding = {"kind": "plain"}
            if malicious:
                detection = update_statistics(uploads, global_params)
        if run_dir is not None and cfg.records_view(rnd):
            server_view.write_round(run_dir, rnd, global_params=global_params, uploads=sent,
                                    aggregate=new_params, metadata=metadata,
                                    encoding=encoding, param_names=names)
        global_params = new_params
        result.train_s += time.perf_counter() - t0
        recorder.record(rnd, global_params, metadata, detection)
    result.final_params = global_params
    return result
