"""The federation protocol around the hospitals: one server round and one round's record.

:func:`server_round` is what the server does with the uploads it receives (secure
aggregation, or the aggregation rule and the detection view), :func:`close_round` stores what
the server saw and returns the new global model, and :class:`RoundRecorder` evaluates the
global model and writes the round's record. The in-process runner and the Flower ServerApp
both use them, so every runtime stores the same server view and records.
"""

from __future__ import annotations

import os
import secrets
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.clients.backdoor import region_shifts
from engine.clients.behaviour import client_seed, dp_accountings, dp_epsilon
from engine.clients.dp import planned_accounting
from engine.core.config import BackdoorConfig, ExperimentConfig
from engine.core.metrics import mean_over_patients
from engine.core.types import NDArrays
from engine.data.cohort import root_slices
from engine.data.types import Cohort, SliceSet
from engine.federation import server_view
from engine.federation.aggregators import dp_mean, flame, fltrust, server_updates
from engine.federation.detection import update_statistics
from engine.federation.secagg import secure_round
from engine.learning.local import LocalTraining, evaluate_patients, train_local
from engine.learning.model import build_model, set_parameters

CHECKPOINT_DIR = "checkpoints"


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

    @classmethod
    def from_records(cls, records: list[dict[str, Any]],
                     final_params: NDArrays) -> FederationResult:
        """The result that rounds' records (``metrics.jsonl``) describe, as
        :class:`RoundRecorder` built it while they ran (timings excepted)."""
        result = cls(final_params=final_params)
        for entry in records:
            result.steps += sum(int(m.get("steps", 0)) for m in entry["clients"].values())
            if entry.get("global"):
                result.history.append({"round": entry["round"], **entry["global"]})
                result.per_center, result.unseen_center = entry["per_center"], entry["unseen"]
            if entry.get("detection") is not None:
                result.detection.append({"round": entry["round"], "clients": entry["detection"]})
        return result


@dataclass
class RoundOutcome:
    """What the server holds after receiving a round's uploads.

    Attributes:
        sent: client → its upload as the server received it (masked under SecAgg, or the
            sum for every client under Flower's SecAgg+).
        aggregate: the new global model the server computed.
        encoding: how uploads are encoded (public protocol parameters only).
        detection: the detection view when attackers are present and uploads are plain.
    """

    sent: dict[str, NDArrays]
    aggregate: NDArrays
    encoding: dict[str, Any]
    detection: dict[str, dict] | None = None


def server_round(cfg: ExperimentConfig, rnd: int, uploads: dict[str, NDArrays],
                 weights: dict[str, int], global_params: NDArrays,
                 aggregator: Callable[[list[tuple[NDArrays, int]], NDArrays], NDArrays],
                 malicious: set[str], root: SliceSet | None = None) -> RoundOutcome:
    """The server's step for ``uploads`` (client → parameters) weighted by ``weights``:
    SecAgg+ in process (the server receives masked uploads and unmasks only their weighted
    mean), else FLAME (``defenses.flame``), FLTrust (``defenses.fltrust``, with the
    server's ``root`` set, :func:`engine.data.cohort.root_slices`), server-side DP
    (``defenses.dp.level = server``) or the aggregation rule on the uploads as the server's
    update clipping and pre-aggregator left them, plus the detection view when attackers
    are present (with whether FLAME admitted each upload, or FLTrust's trust score in it)."""
    if cfg.defenses.secure_aggregation:
        sent, new_params, encoding = secure_round(
            uploads, weights, cfg.defenses.secagg_clipping_range,
            seed=client_seed(cfg.seed, rnd, 10_000))
        return RoundOutcome(sent, new_params, encoding)
    # The rule aggregates what the server's clipping and pre-aggregator left; the server
    # still saw (and the detection view shows) the uploads as sent.
    dp = cfg.defenses.dp
    detection = update_statistics(uploads, global_params) if malicious else None
    if cfg.defenses.flame:
        new_params, admitted = flame(uploads, global_params, cfg.defenses.flame_noise,
                                     np.random.default_rng([cfg.seed, rnd, 10_001]))
        for c, row in (detection or {}).items():
            row["admitted"] = c in admitted
    elif cfg.defenses.fltrust:
        if root is None:
            raise ValueError("defenses.fltrust = true needs the server's root set")
        new_params, trust = fltrust(uploads, global_params,
                                    root_update(cfg, rnd, global_params, root))
        for c, row in (detection or {}).items():
            row["trust"] = trust[c]
    elif dp.enabled and dp.level == "server":
        new_params = dp_mean(uploads, global_params, dp.clip_norm,
                             planned_accounting(cfg).noise_multiplier,
                             np.random.default_rng([cfg.seed, rnd, 10_002]),
                             expected=cfg.federation.sample_rate * cfg.data.centers)
    elif not uploads:  # nobody was sampled this round: the model stays
        new_params = global_params
    else:
        fed = cfg.federation
        kept = server_updates(uploads, global_params, cfg.defenses.update_clip,
                              fed.pre_aggregator, fed.num_malicious)
        new_params = aggregator([(kept[c], weights[c]) for c in kept], global_params)
    return RoundOutcome(uploads, new_params, {"kind": "plain"}, detection)


def server_root(cfg: ExperimentConfig) -> SliceSet | None:
    """The server's root set when FLTrust aggregates (None otherwise)."""
    d = cfg.defenses
    return root_slices(cfg.data, cfg.seed, d.fltrust_root_patients) if d.fltrust else None


def root_update(cfg: ExperimentConfig, rnd: int, global_params: NDArrays,
                root: SliceSet) -> NDArrays:
    """FLTrust's reference: the global model trained by the server on its ``root`` set as a
    hospital trains (same local training, its own seeded stream)."""
    trained, _ = train_local(build_model(cfg), global_params, root,
                             LocalTraining.from_config(cfg),
                             seed=client_seed(cfg.seed, rnd, 10_003))
    return trained


def close_round(cfg: ExperimentConfig, run_dir: Path | None, rnd: int,
                global_params: NDArrays, outcome: RoundOutcome,
                metadata: dict[str, dict[str, Any]], param_names: list[str]) -> NDArrays:
    """Store the round's server view (when ``federation.server_view_rounds`` asks) and return
    the new global model in the global model's dtypes."""
    new_params = [p.astype(g.dtype) for p, g in zip(outcome.aggregate, global_params,
                                                    strict=True)]
    if run_dir is not None and cfg.records_view(rnd):
        server_view.write_round(run_dir, rnd, global_params=global_params,
                                uploads=outcome.sent, aggregate=new_params, metadata=metadata,
                                encoding=outcome.encoding, param_names=param_names)
    return new_params


def save_checkpoint(run_dir: Path, rnd: int, params: NDArrays) -> None:
    """Keep the global model after round ``rnd`` in ``checkpoints/latest.npz`` (atomically).

    It is all a resumed run needs: clients start a fresh optimiser every round, the server's
    rules keep no state between rounds, and every random draw (batch order, DP noise, attacks,
    secure-aggregation masks) comes from a stream seeded by (seed, round, hospital).
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    tmp = folder / f".latest.{secrets.token_hex(4)}.npz"
    with open(tmp, "wb") as fh:
        np.savez(fh, round=np.array(rnd), **{f"p{i}": a for i, a in enumerate(params)})
    os.replace(tmp, folder / "latest.npz")


def load_checkpoint(run_dir: Path) -> tuple[int, NDArrays] | None:
    """(round, global model) of the last checkpoint, or None (none yet, or unreadable)."""
    try:
        with np.load(Path(run_dir) / CHECKPOINT_DIR / "latest.npz") as z:
            count = len(z.files) - 1
            return int(z["round"]), [z[f"p{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


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


def backdoor_shift(model: torch.nn.Module, params: NDArrays, cohort: Cohort,
                   bd: BackdoorConfig) -> float | None:
    """The backdoor's success in ``params`` after a round: the mean shift (HU) of the target
    region under the trigger over every held-out slice of every hospital and of the unseen
    hospital, as the final report measures it (None: no slice has a target region, or the
    model diverged)."""
    set_parameters(model, params)
    groups = [c.test for c in cohort.centers] + ([cohort.unseen.test] if cohort.unseen else [])
    try:
        shifts = np.concatenate([region_shifts(model, data, bd) for data in groups])
    except ValueError:
        return None
    shifts = shifts[~np.isnan(shifts)]
    return float(np.mean(shifts)) if len(shifts) else None


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
            if self.cfg.attacks.backdoor.enabled:
                pooled["backdoor_hu"] = backdoor_shift(self.model, global_params, self.cohort,
                                                       self.cfg.attacks.backdoor)
            entry |= {"global": pooled, "per_center": per_center, "unseen": unseen}
            result.history.append({"round": rnd, **pooled})
            result.per_center, result.unseen_center = per_center, unseen
        result.eval_s += time.perf_counter() - t0
        entry["elapsed_s"] = round(time.perf_counter() - self.t_start, 3)
        if self.on_round:
            self.on_round(entry)
        return entry
