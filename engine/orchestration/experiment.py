"""Execute one experiment into its run folder: data → federation → attacks → summary.

The attacks run in the order of :data:`ATTACKS`, a registry of steps: each says when it is
enabled and how it runs, and writes its own block of ``summary.json``. A new attack is one
more :class:`AttackStep`.
"""

from __future__ import annotations

import errno
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.analyses.backdoor import backdoor_report, clean_config, control_config, defended
from engine.analyses.poisoning import (
    baseline_config,
    plain_fedavg,
    poisoning_report,
    seed_rows,
)
from engine.analyses.results import parse_summary
from engine.analyses.summary import build_summary, volumetric_summary
from engine.analyses.whatif import run_whatif
from engine.attacks.dp_audit import run_dp_audit
from engine.attacks.inversion_scenario import run_inversion
from engine.attacks.membership import run_membership
from engine.core.config import ExperimentConfig
from engine.core.processes import process_identity
from engine.core.render import sample_row, save_png
from engine.core.run_folder import RunFolder, remove_stale_temporaries
from engine.core.types import NDArrays
from engine.data.cohort import AttackerData, attacker_data, load_cohort
from engine.data.types import Cohort
from engine.federation.flower_runtime import run_flower
from engine.federation.inprocess import run_federation
from engine.federation.protocol import Cancelled, FederationResult, load_checkpoint
from engine.learning.local import predict_sct_hu
from engine.learning.model import build_model, count_parameters, select_device, set_parameters
from engine.orchestration.store import find_finished_run
from engine.orchestration.threads import use_threads


@dataclass
class RunContext:
    """What an attack step gets: the run, its data and federation, and what earlier steps
    wrote (by summary key)."""

    run: RunFolder
    cfg: ExperimentConfig
    cohort: Cohort
    result: FederationResult
    attacker: AttackerData | None
    phase: str = ""
    done: dict[str, Any] = field(default_factory=dict)

    def progress(self, unit: str) -> Callable[[int, int, str], None]:
        """Progress of the current step, in ``unit``s (see :meth:`RunFolder.progress`). Every
        report is also where Stop takes effect: an attack reports each iteration, round or
        canary, so a stop request ends the run there (``Cancelled``) instead of after the
        attack, or by a signal once the grace has passed."""
        report = self.run.progress(self.phase, unit)
        phase = self.phase

        def step(done: int, total: int, detail: str = "") -> None:
            if self.run.cancel_requested():
                raise Cancelled(f"stopped by you during {phase} ({unit} {done} of {total})")
            report(done, total, detail)

        return step


@dataclass(frozen=True)
class AttackStep:
    """One analysis after training: its ``summary.json`` key, the status phase shown while it
    runs, when it is enabled, and how it runs."""

    key: str
    phase: str
    enabled: Callable[[ExperimentConfig], bool]
    run: Callable[[RunContext], dict[str, Any]]


def _poisoning(ctx: RunContext) -> dict[str, Any]:
    """The poisoning report and its verdict. Every federation it compares with is a finished
    identical run in the same runs root when there is one, else trained now (nothing of it
    stored but its learning curve): the clean baseline, the attacked and clean federations
    at the further seeds (``attacks.poisoning.seeds``), and under a rule other than FedAvg
    the same attack against FedAvg with its clean federation (the control)."""
    cfg, threads = ctx.cfg, torch.get_num_threads()
    seeds = [cfg.seed + i for i in range(cfg.attacks.poisoning.seeds)]
    cohorts = {cfg.seed: ctx.cohort}

    known: dict[str, tuple[list[dict], str | None]] = {}

    def history(run_cfg: ExperimentConfig, what: str) -> tuple[list[dict], str | None]:
        key = run_cfg.model_dump_json()
        if key not in known:
            known[key] = _history(run_cfg, what)
        return known[key]

    def _history(run_cfg: ExperimentConfig, what: str) -> tuple[list[dict], str | None]:
        found = find_finished_run(run_cfg, ctx.run.root, threads)
        if found is not None:
            ctx.run.log(f"{what}: reusing the finished run {found.run_id}")
            return (found.summary() or {})["federation"]["history"], found.run_id
        ctx.run.log(f"{what}: training it")
        if run_cfg.seed not in cohorts:
            cohorts[run_cfg.seed] = load_cohort(run_cfg.data, run_cfg.seed)
        progress, rounds = ctx.progress("round"), run_cfg.federation.rounds
        return run_federation(run_cfg, cohorts[run_cfg.seed],
                              should_stop=ctx.run.cancel_requested,
                              on_round=lambda e: progress(e["round"], rounds, what)
                              ).history, None

    def curves(rule_cfg: ExperimentConfig, rule: str) -> tuple[dict, dict]:
        attacked, clean = {}, {}
        for s in seeds:
            at_seed = rule_cfg.model_copy(update={"seed": s})
            attacked[s] = (ctx.result.history if at_seed == cfg else
                           history(at_seed, f"{rule} under attack, seed {s}")[0])
            clean[s] = history(baseline_config(at_seed), f"{rule} without attackers, seed {s}")[0]
        return attacked, clean

    baseline, baseline_run = history(baseline_config(cfg), "baseline")
    attacked, clean = curves(cfg, cfg.federation.aggregator)
    fedavg = None
    if not plain_fedavg(cfg):
        fedavg_cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(
            update={"aggregator": "fedavg", "pre_aggregator": "none"})})
        fedavg = seed_rows(*curves(fedavg_cfg, "FedAvg (the control)"))
    return poisoning_report(cfg, ctx.cohort, ctx.result, baseline, baseline_run,
                            seed_rows(attacked, clean), fedavg)


def _backdoor(ctx: RunContext) -> dict[str, Any]:
    """The backdoor's report: this run's final model against the same federation without
    the attacker (the null), and for a defended run the same attack against plain FedAvg
    (the control) with its own clean federation, each trained now."""
    cfg, progress = ctx.cfg, ctx.progress("round")

    def train(run_cfg: ExperimentConfig, what: str) -> FederationResult:
        ctx.run.log(f"{what}: training it")
        rounds = run_cfg.federation.rounds
        return run_federation(run_cfg, ctx.cohort, should_stop=ctx.run.cancel_requested,
                              on_round=lambda e: progress(e["round"], rounds, what))

    clean = train(clean_config(cfg), "the federation without the attacker")
    control = control_clean = None
    if defended(cfg):
        control = train(control_config(cfg), "the same attack against FedAvg (the control)")
        control_clean = train(clean_config(control_config(cfg)), "FedAvg without the attacker")
    after_stop: list[tuple[int, NDArrays]] = []
    if (stop := cfg.attacks.backdoor.stop_round) is not None:
        # The run's own rounds are not kept: the same federation again, in process, keeping
        # the global model of every round after the attacker stopped.
        rounds = cfg.federation.rounds
        ctx.run.log("the rounds after the attacker stopped: training them again")

        def keep(r: int, p: NDArrays) -> None:
            progress(r, rounds, "the rounds after the attacker stopped, again")
            if r > stop:
                after_stop.append((r, p))

        run_federation(cfg, ctx.cohort, should_stop=ctx.run.cancel_requested, on_global=keep)
    return backdoor_report(cfg, ctx.cohort, ctx.result, clean, control, control_clean,
                           ctx.run.path, after_stop)


ATTACKS: tuple[AttackStep, ...] = (
    AttackStep("mia", "membership inference",
               lambda cfg: cfg.attacks.membership.enabled,
               lambda ctx: run_membership(ctx.run.path, ctx.cfg, ctx.cohort,
                                          progress=ctx.progress("round"))),
    AttackStep("inversion", "gradient inversion",
               lambda cfg: cfg.attacks.inversion.enabled,
               lambda ctx: run_inversion(ctx.run.path, ctx.cfg, ctx.cohort, ctx.attacker,
                                         log=ctx.run.log, progress=ctx.progress("iteration"))),
    AttackStep("poisoning", "poisoning baseline",
               lambda cfg: cfg.attacks.poisoning.enabled, _poisoning),
    AttackStep("backdoor", "backdoor",
               lambda cfg: cfg.attacks.backdoor.enabled, _backdoor),
    AttackStep("dp_audit", "privacy audit",
               lambda cfg: cfg.attacks.dp_audit.enabled,
               lambda ctx: run_dp_audit(ctx.run.path, ctx.cfg, ctx.cohort,
                                        ctx.result.final_params,
                                        progress=ctx.progress("canary"))),
    AttackStep("whatif", "what-if",
               lambda cfg: cfg.data.whatif_patient is not None,
               lambda ctx: run_whatif(ctx.run.path, ctx.cfg, ctx.cohort,
                                      ctx.done.get("inversion"), ctx.attacker,
                                      ctx.done.get("mia"))),
)


def _save_samples(run: RunFolder, cfg: ExperimentConfig, cohort: Cohort,
                  result: FederationResult) -> dict[str, str]:
    """One held-out slice per center (middle of the first patient): npz for the UI + PNG."""
    model = build_model(cfg)
    set_parameters(model, result.final_params)
    groups = [(c.name, c.test) for c in cohort.centers]
    if cohort.unseen:
        groups.append((cohort.unseen.name, cohort.unseen.test))
    arrays, files = {}, {}
    for name, data in groups:
        first = data.for_patient(data.patients[0])
        sl = first.select(np.array([len(first) // 2]))
        sct = predict_sct_hu(model, sl)[0, 0]
        arrays |= {f"{name}__mri": sl.mri[0, 0], f"{name}__ct_hu": sl.ct_hu[0, 0],
                   f"{name}__sct_hu": sct, f"{name}__mask": sl.mask[0, 0]}
        png = run.artifacts / f"sample_{name}.png"
        save_png(sample_row(sl.mri[0, 0], sl.ct_hu[0, 0], sct, sl.mask[0, 0]), png,
                 scale=max(1, 128 // cfg.data.image_size))
        files[name] = str(png.relative_to(run.path))
    np.savez_compressed(run.artifacts / "samples.npz", **arrays)
    return files


def _resume_point(run: RunFolder) -> tuple[int, Any, list[dict[str, Any]]] | None:
    """Where a resumed run goes on: its last checkpoint and the records up to it (records
    written after the checkpoint are dropped and recomputed); None: from the start."""
    checkpoint = load_checkpoint(run.path)
    run.keep_metrics_until(checkpoint[0] if checkpoint else -1)
    if checkpoint is None:
        run.log("resuming: no checkpoint, starting from round 0")
        return None
    run.log(f"resuming after round {checkpoint[0]}")
    return checkpoint[0], checkpoint[1], run.metrics()


def _train(run: RunFolder, cfg: ExperimentConfig, cohort: Cohort,
           on_round: Callable[[dict[str, Any]], None] | None,
           resume: bool) -> FederationResult:
    """The federation of the run: from the start, from its last checkpoint (``resume``), or
    only rebuilt from its records when every round was already trained. Each round's record
    is written, reported as progress and logged, then passed to ``on_round``."""
    training = run.progress("training", "round")

    def record(entry: dict[str, Any]) -> None:
        run.append_metrics(entry)
        training(entry["round"], cfg.federation.rounds, "")
        if on_round:
            on_round(entry)
        g = entry.get("global") or {}
        run.log(f"round {entry['round']}: " + ", ".join(f"{k} {v:.3f}" for k, v in g.items()))

    start = _resume_point(run) if resume else None
    if start is not None and start[0] >= cfg.federation.rounds:  # only attacks were left
        return FederationResult.from_records(start[2], start[1])
    if cfg.federation.runtime == "inprocess":
        return run_federation(cfg, cohort, run_dir=run.path, on_round=record,
                              should_stop=run.cancel_requested, start=start)
    # its ServerApp writes the round records and the log itself
    return run_flower(cfg, run, on_round=on_round)


def _save_final_model(run: RunFolder, cfg: ExperimentConfig,
                      result: FederationResult) -> torch.nn.Module:
    """The trained global model, saved as ``checkpoints/final.pt``; returned for its size."""
    ckpt = run.path / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    model = build_model(cfg)
    set_parameters(model, result.final_params)
    torch.save(model.state_dict(), ckpt / "final.pt")
    return model


def _volumetric(run: RunFolder, cfg: ExperimentConfig, cohort: Cohort,
                result: FederationResult) -> tuple[dict[str, Any] | None, float]:
    """The per-volume evaluation (``evaluation.volumetric``) and the seconds it took;
    ``(None, 0.0)`` when it is off."""
    if not cfg.evaluation.volumetric:
        return None, 0.0
    run.set_status("running", phase="volumetric evaluation")
    t_vol = time.perf_counter()
    volumetric = volumetric_summary(cfg, cohort, result.final_params, log=run.log)
    volumetric_s = time.perf_counter() - t_vol
    run.log(f"volumetric evaluation: {volumetric_s:.1f} s")
    return volumetric, volumetric_s


def _run_attacks(ctx: RunContext) -> dict[str, Any]:
    """Every enabled step of :data:`ATTACKS`, in order; their summary blocks by key."""
    for step in ATTACKS:
        if step.enabled(ctx.cfg):
            ctx.phase = step.phase
            ctx.run.set_status("running", phase=step.phase)
            ctx.run.log(f"{step.phase}: starting")
            ctx.done[step.key] = step.run(ctx)
    return ctx.done


def _failure_message(run: RunFolder, err: Exception) -> str:
    """The ``error`` of a failed run's status; a full disk says how to go on."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return (f"the disk holding {run.root} is full ({err.strerror}); free some space, "
                f"then resume the run (Runs page, or fedsct run --resume {run.run_id})")
    return f"{type(err).__name__}: {err}"


def execute(run: RunFolder, on_round: Callable[[dict[str, Any]], None] | None = None,
            resume: bool = False) -> dict[str, Any] | None:
    """Run the experiment stored in ``run`` and write its results there.

    Status goes running → done | failed | cancelled; on failure the error is in
    ``status.json`` and the traceback in ``log.txt``. ``on_round`` also receives each
    round's record (after it is written). With ``resume``, training goes on from the run's
    last checkpoint (see :func:`engine.orchestration.store.check_resumable`) and ends as an
    uninterrupted run would have, on the thread count it started with (recorded in
    ``status.json``). The run never changes torch's thread count: the caller sets it
    (:mod:`engine.orchestration.threads`), and ``summary.json`` → ``environment`` records it.
    Returns the summary when done.
    """
    t0 = time.perf_counter()
    cfg = run.config()
    for stale in remove_stale_temporaries(run.path):
        run.log(f"removed {stale.name}, left by a process killed while writing it")
    recorded = run.status().threads
    if resume and recorded is not None and recorded >= 1:
        use_threads(recorded)  # the figures of a resumed run are those it would have had
    threads = torch.get_num_threads()
    run.set_status("running", **process_identity(), started=time.time(), phase="data",
                   error=None, threads=threads)
    try:
        run.log(f"device {select_device()}, torch threads {threads}"
                + (" (as when the run started)" if resume and recorded == threads else ""))
        cohort = load_cohort(cfg.data, cfg.seed, progress=run.log)
        # Before training, so that a source without patients for the attacker fails at once.
        # Under secure aggregation the attack inverts the round's aggregate, so its controls
        # need as many slices as every hospital's upload together.
        uploads = cfg.data.centers if cfg.defenses.secure_aggregation else 1
        attacker = (attacker_data(cfg.data, cfg.seed, progress=run.log,
                                  control_uploads=uploads)
                    if cfg.attacks.inversion.enabled else None)
        data_s = time.perf_counter() - t0
        run.set_status("running", phase="training", data_s=round(data_s, 3))
        result = _train(run, cfg, cohort, on_round, resume)
        model = _save_final_model(run, cfg, result)
        samples = _save_samples(run, cfg, cohort, result)
        volumetric, volumetric_s = _volumetric(run, cfg, cohort, result)
        done = _run_attacks(RunContext(run, cfg, cohort, result, attacker))
        summary = build_summary(cfg, cohort, result, time.perf_counter() - t0, data_s,
                                count_parameters(model), samples, volumetric,
                                volumetric_s) | done
        # Readers take summary.json as a RunSummary: one that would not read as one is this
        # run's failure, said now, not a damaged file found later by every page.
        parse_summary(summary, "the summary this run built")
        run.write_summary(summary)
        run.set_status("done", phase="done", finished=time.time())
        return summary
    except Cancelled as err:
        run.log(str(err) or "stopped by you")
        run.set_status("cancelled", phase="cancelled", finished=time.time(),
                       error=str(err) or "stopped by you")
    except Exception as err:  # noqa: BLE001 - any failure must end in a readable status
        run.log(traceback.format_exc())
        run.set_status("failed", phase="failed", error=_failure_message(run, err),
                       finished=time.time())
    return None
