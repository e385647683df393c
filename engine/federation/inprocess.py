"""The in-process federation runner (default runtime).

Each round: the server sends the global model; every hospital trains and uploads as
:mod:`engine.clients.behaviour` says (honest: prune → DP; malicious: its attack); the server
runs :func:`~engine.federation.protocol.server_round` (secure aggregation, or the aggregation
rule and the detection view), stores its view and the global model is evaluated on every
hospital's held-out patients and on the unseen hospital.

Local training is batched where it can be (``federation.batched_clients``, see
:func:`plan_training`): the hospitals of a round train together as one computation
(:mod:`engine.learning.batched`), with the sequential path's results up to float rounding;
the others, e.g. patient-level DP-SGD, train one after another as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.clients.adaptive import Rule
from engine.clients.backdoor import constrain_and_scale
from engine.clients.behaviour import (
    attacking,
    client_seed,
    client_update,
    client_upload,
    constrains,
    honest_dp,
    sampled_centers,
    training_sets,
)
from engine.clients.dp import public_metadata
from engine.core.config import ConfigError, ExperimentConfig
from engine.core.types import NDArrays
from engine.data.types import Cohort, SliceSet
from engine.federation.aggregators import make_aggregator, update_rule
from engine.federation.protocol import (
    Cancelled,
    FederationResult,
    RoundRecorder,
    close_round,
    save_checkpoint,
    server_root,
    server_round,
)
from engine.learning.batched import (
    batched_slower_reason,
    train_local_batched,
    unsupported_reason,
)
from engine.learning.local import LocalTraining
from engine.learning.model import build_model, get_parameters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    """How a run's hospitals train each round.

    Attributes:
        batched: indices of the centers trained together as one batched computation
            (:func:`engine.learning.batched.train_local_batched`); the others train one
            after another (:func:`engine.clients.behaviour.client_update`).
        reason: why not every center is batched (``None`` when all are).
    """

    batched: tuple[int, ...]
    reason: str | None


def plan_training(cfg: ExperimentConfig, model: torch.nn.Module,
                  train_sets: list[SliceSet]) -> TrainingPlan:
    """Decide, once per run, which centers train batched (``federation.batched_clients``).

    Centers whose local training is :func:`~engine.learning.local.train_local` (honest ones
    without DP or with hospital-level DP, and malicious ones) can be batched; patient-level
    DP-SGD cannot. ``auto`` batches them where supported and measured faster, ``on`` raises
    :class:`ConfigError` unless every center can be batched, ``off`` batches none.
    """
    mode = cfg.federation.batched_clients
    if mode == "off":
        return TrainingPlan((), "federation.batched_clients = 'off'")
    dp = cfg.defenses.dp
    plain = tuple(k for k in range(len(train_sets))
                  if not (honest_dp(cfg, k) and dp.level == "sample") and not constrains(cfg, k))
    reason = None
    if len(plain) < len(train_sets):
        reason = ("patient-level DP-SGD (defenses.dp.level = 'sample') trains hospital by "
                  "hospital" if dp.enabled and dp.level == "sample" else
                  "the constrain-and-scale attacker trains on its own, twice a round")
    local = LocalTraining.from_config(cfg)
    unsupported = unsupported_reason(model, local, [len(train_sets[k]) for k in plain])
    if unsupported is not None:
        reason, plain = reason or unsupported, ()
    if mode == "on":
        if reason is not None:
            raise ConfigError(f"federation.batched_clients = 'on' is not possible here: "
                              f"{reason}; use 'auto' or 'off'")
        return TrainingPlan(plain, None)
    if plain:
        slower = batched_slower_reason(next(model.parameters()).device)
        if slower is not None:
            reason, plain = reason or slower, ()
    return TrainingPlan(plain, reason)


def train_round(cfg: ExperimentConfig, model: torch.nn.Module, rnd: int, cohort: Cohort,
                train_sets: list[SliceSet], global_params: NDArrays, plan: TrainingPlan,
                should_stop: Callable[[], bool],
                own_sets: list[SliceSet] | None = None,
                present: list[int] | None = None) -> tuple[dict[str, NDArrays],
                                                           dict[str, dict[str, Any]]]:
    """The local training in round ``rnd`` of every center, or of those ``present``
    (sampled): center name → trained parameters and the metadata it reports, in center
    order. Batched centers give what :func:`~engine.clients.behaviour.client_update` gives,
    up to float rounding. A constrain-and-scale attacker also trains on its ``own_sets``
    slices while it attacks."""
    here = set(range(len(cohort.centers)) if present is None else present)
    together = [k for k in plan.batched if k in here]
    if len(together) < 2:  # one sampled hospital trains on its own
        together = []
    batched: dict[int, tuple[NDArrays, dict[str, Any]]] = {}
    if together:
        if should_stop():
            raise Cancelled(f"cancelled during round {rnd}")
        outs = train_local_batched(
            model, global_params, [train_sets[k] for k in together],
            LocalTraining.from_config(cfg),
            seeds=[client_seed(cfg.seed, rnd, k) for k in together])
        batched = dict(zip(together, outs, strict=True))
    trained: dict[str, NDArrays] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for k, center in enumerate(cohort.centers):
        if k not in here:
            continue
        if should_stop():
            raise Cancelled(f"cancelled during round {rnd}")
        if k in batched:
            params, meta = batched[k]
            # As client_update: a DP hospital (hospital level here) reports public values only.
            trained[center.name] = params
            metadata[center.name] = public_metadata(cfg) if honest_dp(cfg, k) else meta
        elif constrains(cfg, k) and attacking(cfg, rnd) and own_sets is not None:
            trained[center.name], metadata[center.name] = constrain_and_scale(
                model, global_params, train_sets[k], own_sets[k],
                LocalTraining.from_config(cfg), cfg.attacks.backdoor,
                client_seed(cfg.seed, rnd, k))
        else:
            trained[center.name], metadata[center.name] = client_update(
                cfg, model, rnd, k, train_sets[k], global_params)
    return trained, metadata


def _log_plan(plan: TrainingPlan) -> None:
    """The one log line saying which centers train batched, and why not all."""
    if plan.batched:
        others = f"; the others one after another: {plan.reason}" if plan.reason else ""
        logger.info("local training: centers %s batched%s", list(plan.batched), others)
    else:
        logger.info("local training: one center after another: %s", plan.reason)


def _starting_point(
    cfg: ExperimentConfig,
    cohort: Cohort,
    model: torch.nn.Module,
    on_round: Callable[[dict[str, Any]], None] | None,
    start: tuple[int, NDArrays, list[dict[str, Any]]] | None,
) -> tuple[NDArrays, int, FederationResult, RoundRecorder]:
    """Where training begins: the global model, the first round to train, the result so
    far and its recorder. From scratch the untrained model is recorded as round 0; from a
    checkpoint (``start``) the result is rebuilt from its records."""
    if start is None:
        global_params, first = get_parameters(model), 1
        result = FederationResult(final_params=global_params)
        recorder = RoundRecorder(cfg, cohort, result, on_round, model)
        recorder.record(0, global_params, {})
    else:
        done, global_params, records = start
        first = done + 1
        result = FederationResult.from_records(records, global_params)
        recorder = RoundRecorder(cfg, cohort, result, on_round, model)
    return global_params, first, result, recorder


def _plan(cfg: ExperimentConfig, model: torch.nn.Module, train_sets: list[SliceSet],
          own_sets: list[SliceSet]) -> TrainingPlan:
    """The batching plan, checked on the sets of the rounds after a backdoor planter stops
    too: one plan serves every round, or none is batched."""
    plan = plan_training(cfg, model, train_sets)
    if own_sets is not train_sets and plan_training(cfg, model, own_sets) != plan:
        return TrainingPlan((), "the attacker's training set changes when it stops")
    return plan


def _training_data(cfg: ExperimentConfig,
                   cohort: Cohort) -> tuple[list[SliceSet], list[SliceSet], set[str]]:
    """The centers' training sets while the attackers attack and on their own slices (a
    backdoor planter's after it stopped, and the constrain-and-scale attacker's honest
    reference), and the malicious centers' names."""
    attack_sets, malicious = training_sets(cfg, cohort)
    bd = cfg.attacks.backdoor
    if attacking(cfg, cfg.federation.rounds) and not (bd.enabled
                                                      and bd.attack == "constrain_scale"):
        return attack_sets, attack_sets, malicious
    return attack_sets, training_sets(cfg, cohort, attack=False)[0], malicious


def _uploads(cfg: ExperimentConfig, rnd: int, cohort: Cohort, trained: dict[str, NDArrays],
             metadata: dict[str, dict[str, Any]], global_params: NDArrays,
             malicious: set[str], rule: Rule) -> dict[str, NDArrays]:
    """What each center that trained in round ``rnd`` sends (by its index in the cohort,
    which sampling makes differ from its position among those that trained)."""
    index = {c.name: k for k, c in enumerate(cohort.centers)}
    return {name: client_upload(cfg, rnd, index[name], params, metadata[name], global_params,
                                name in malicious, list(trained.values()), rule=rule)
            for name, params in trained.items()}


def run_federation(
    cfg: ExperimentConfig,
    cohort: Cohort,
    *,
    run_dir: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    start: tuple[int, NDArrays, list[dict[str, Any]]] | None = None,
    on_global: Callable[[int, NDArrays], None] | None = None,
) -> FederationResult:
    """Train the federation described by ``cfg`` on ``cohort``.

    Args:
        run_dir: where the server view is stored (rounds chosen by
            ``federation.server_view_rounds``); ``None`` stores nothing.
        on_round: called after each round with a JSON-ready record
            ``{"round", "global": {mae_hu, psnr_db, ssim} | None, "per_center", "unseen",
            "clients": {id: metadata}, "elapsed_s"}``; round 0 is the untrained model.
        should_stop: polled between clients (and before the batched ones train);
            returning True raises :class:`Cancelled`.
        start: ``(round, global model after it, the records up to it)`` to resume from a
            checkpoint; the rounds after it then run exactly as they would have.
        on_global: called after each round with (round, new global model): for analyses
            that follow the model round by round (a backdoor's durability).

    With ``run_dir``, the global model is checkpointed every ``federation.checkpoint_every``
    rounds (and after the last). Which hospitals train as one batched computation is decided
    once (:func:`plan_training`) and logged in one line.
    """
    fed = cfg.federation
    model = build_model(cfg)
    names = list(model.state_dict())
    aggregator = make_aggregator(fed)
    train_sets, own_sets, malicious = _training_data(cfg, cohort)
    plan = _plan(cfg, model, train_sets, own_sets)
    _log_plan(plan)
    global_params, first, result, recorder = _starting_point(cfg, cohort, model, on_round,
                                                             start)
    every, root = fed.checkpoint_every, server_root(cfg)
    rule = update_rule(aggregator, cfg.defenses.update_clip, fed.pre_aggregator,
                       fed.num_malicious)
    for rnd in range(first, fed.rounds + 1):
        t0 = time.perf_counter()
        sets = train_sets if attacking(cfg, rnd) else own_sets
        trained, metadata = train_round(cfg, model, rnd, cohort, sets, global_params, plan,
                                        should_stop, own_sets, sampled_centers(cfg, rnd))
        uploads = _uploads(cfg, rnd, cohort, trained, metadata, global_params, malicious, rule)
        weights = {c: int(metadata[c]["num_examples"]) for c in uploads}
        outcome = server_round(cfg, rnd, uploads, weights, global_params, aggregator,
                               malicious, root)
        global_params = close_round(cfg, run_dir, rnd, global_params, outcome, metadata, names)
        result.train_s += time.perf_counter() - t0
        recorder.record(rnd, global_params, metadata, outcome.detection)
        if on_global is not None:
            on_global(rnd, global_params)
        # After the record: a resumed run drops records newer than its checkpoint.
        if run_dir is not None and every and (rnd % every == 0 or rnd == fed.rounds):
            save_checkpoint(run_dir, rnd, global_params)
    result.final_params = global_params
    return result
