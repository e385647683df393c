"""The in-process federation runner (default runtime).

Each round: the server sends the global model; every hospital trains and uploads as
:mod:`engine.clients.behaviour` says (honest: prune → DP; malicious: its attack); the server
runs :func:`~engine.federation.protocol.server_round` (secure aggregation, or the aggregation
rule and the detection view), stores its view and the global model is evaluated on every
hospital's held-out patients and on the unseen hospital.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.clients.behaviour import client_update, client_upload, training_sets
from engine.core.config import ExperimentConfig
from engine.core.types import NDArrays
from engine.data.types import Cohort
from engine.federation.aggregators import make_aggregator
from engine.federation.protocol import (
    Cancelled,
    FederationResult,
    RoundRecorder,
    close_round,
    save_checkpoint,
    server_round,
)
from engine.learning.model import build_model, get_parameters


def run_federation(
    cfg: ExperimentConfig,
    cohort: Cohort,
    *,
    run_dir: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    start: tuple[int, NDArrays, list[dict[str, Any]]] | None = None,
) -> FederationResult:
    """Train the federation described by ``cfg`` on ``cohort``.

    Args:
        run_dir: where the server view is stored (rounds chosen by
            ``federation.server_view_rounds``); ``None`` stores nothing.
        on_round: called after each round with a JSON-ready record
            ``{"round", "global": {mae_hu, psnr_db, ssim} | None, "per_center", "unseen",
            "clients": {id: metadata}, "elapsed_s"}``; round 0 is the untrained model.
        should_stop: polled between clients; returning True raises :class:`Cancelled`.
        start: ``(round, global model after it, the records up to it)`` to resume from a
            checkpoint; the rounds after it then run exactly as they would have.

    With ``run_dir``, the global model is checkpointed every ``federation.checkpoint_every``
    rounds (and after the last).
    """
    fed = cfg.federation
    model = build_model(cfg)
    names = list(model.state_dict())
    aggregator = make_aggregator(fed)
    train_sets, malicious = training_sets(cfg, cohort)
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
    every = fed.checkpoint_every
    for rnd in range(first, fed.rounds + 1):
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
        outcome = server_round(cfg, rnd, uploads, weights, global_params, aggregator,
                               malicious)
        global_params = close_round(cfg, run_dir, rnd, global_params, outcome, metadata, names)
        result.train_s += time.perf_counter() - t0
        recorder.record(rnd, global_params, metadata, outcome.detection)
        # After the record: a resumed run drops records newer than its checkpoint.
        if run_dir is not None and every and (rnd % every == 0 or rnd == fed.rounds):
            save_checkpoint(run_dir, rnd, global_params)
    result.final_params = global_params
    return result
