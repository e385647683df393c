"""The gradient-inversion scenario (as in ``breaching``, apart from the attack): what the
server holds of a recorded round as payloads, the calibration controls at the target's
difficulty, the verdict per hospital, and the run step that attacks, scores and saves.
The attack itself is :mod:`engine.attacks.inversion`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

from engine.attacks.inversion import (
    AGGREGATE,
    AttackerPrior,
    GradientInversion,
    InversionPayload,
    InversionResult,
    attack_from_config,
)
from engine.core.config import ExperimentConfig
from engine.core.reconstruction_metrics import (
    LEAK_MARGIN,
    NULL_DRAWS,
    NULL_QUANTILE,
    leak_test,
    reconstruction_metrics,
    template_metrics,
)
from engine.core.render import save_png, to_gray
from engine.core.units import hu_to_unit
from engine.data.cohort import AttackerData, pooled_reference_patients, reference_patients
from engine.data.types import Cohort, SliceSet
from engine.federation.aggregators import FedAvg
from engine.federation.server_view import ServerView
from engine.learning.local import LocalTraining, train_local
from engine.learning.model import build_model, build_unet, get_parameters, select_device

# --------------------------------------------------------------------------- scenario


def pick_round(recorded: list[int], target: str | int) -> int:
    if not recorded:
        raise ValueError("the run has no server view to attack; record rounds with "
                         "federation.server_view_rounds")
    if target == "first":
        return recorded[0]
    if target == "last":
        return recorded[-1]
    if target not in recorded:
        raise ValueError(f"attacks.inversion.target_round = {target} was not recorded; "
                         f"recorded rounds: {recorded}")
    return int(target)


def inversion_payloads(run_dir: Path, cfg: ExperimentConfig,
                       prior: AttackerPrior) -> list[InversionPayload]:
    """One payload per targeted client, read from the run's server view; where the server
    holds no individual upload (secure aggregation), one payload of the round's aggregate
    over every client (client :data:`AGGREGATE`), whatever ``target_center`` says."""
    inv = cfg.attacks.inversion
    view = ServerView(run_dir)
    rnd = view[pick_round(view.rounds, inv.target_round)]

    def count(c: str) -> int:
        return int(rnd.metadata[c]["num_examples"]) if inv.batch_size == "auto" \
            else int(inv.batch_size)

    if not rnd.individual_uploads:
        groups = tuple(count(c) for c in rnd.clients)
        return [InversionPayload(
            model=build_model(cfg), param_names=rnd.param_names,
            global_params=rnd.global_params, client_params=rnd.aggregate,
            local=LocalTraining.from_config(cfg), num_examples=sum(groups),
            image_size=cfg.data.image_size, prior=prior, round=rnd.round, client=AGGREGATE,
            groups=groups)]
    clients = rnd.clients if inv.target_center == "all" else [rnd.clients[inv.target_center]]
    payloads = []
    for c in clients:
        payloads.append(InversionPayload(
            model=build_model(cfg), param_names=rnd.param_names,
            global_params=rnd.global_params, client_params=rnd.client_params(c),
            local=LocalTraining.from_config(cfg), num_examples=count(c),
            image_size=cfg.data.image_size, prior=prior,
            round=rnd.round, client=c,
        ))
    return payloads


def control_payload(model: torch.nn.Module, slices: SliceSet, local: LocalTraining,
                    prior: AttackerPrior, image_size: int, seed: int,
                    groups: tuple[int, ...] = ()) -> InversionPayload:
    """One calibration control: ``slices`` uploaded after the target's local training
    ``local`` by ``model`` (the target's architecture without normalisation) from a fresh
    initialisation drawn with ``seed``, through the real client code. With ``groups`` (an
    aggregate's client sizes, summing to ``len(slices)``), consecutive groups of slices are
    trained as separate clients and averaged as FedAvg averages them."""
    torch.manual_seed(seed)
    for layer in model.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    start = get_parameters(model)
    if not groups:
        trained, _ = train_local(model, start, slices, local, seed=seed)
    else:
        ends = np.cumsum((0, *groups))
        trained = FedAvg()([
            (train_local(model, start, slices.select(np.arange(a, b)), local,
                         seed=seed + k)[0], n)
            for k, (a, b, n) in enumerate(zip(ends[:-1], ends[1:], groups, strict=True))])
    return InversionPayload(model, list(model.state_dict()), start, trained, local,
                            len(slices), image_size, prior, round=1, client="control",
                            groups=tuple(groups))


def score_reconstruction(mri: np.ndarray, ct_unit: np.ndarray, truth: SliceSet,
                         prior: AttackerPrior, reference: SliceSet,
                         truth_levels: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics of a reconstruction ``(R, 1, H, W)`` against the originals, the floor (the
    prior's mean) and the leak test's null (unrelated ``reference`` patients): the
    metrics of :func:`reconstruction_metrics`, ``floor_*``, and ``gain``, ``threshold``,
    ``leak``, ``null_ssim_body`` (the null's mean), ``null_upper``, ``p_value``,
    ``reference_patients``."""
    true_ct = hu_to_unit(truth.ct_hu)
    metrics = reconstruction_metrics(mri, ct_unit, truth.mri, true_ct, truth.mask)
    floor = template_metrics(prior.mri, prior.ct_unit, truth.mri, true_ct, truth.mask)
    test = leak_test(mri, ct_unit, truth.mri, true_ct, truth.mask, reference.mri,
                     hu_to_unit(reference.ct_hu), reference.mask,
                     truth_patients=truth.patient_ids, truth_levels=truth_levels,
                     attacker_patients=reference.patient_ids)
    return metrics | {"floor_ssim": floor["ssim"], "floor_ssim_body": floor["ssim_body"],
                      "floor_ssim_ct": floor["ssim_ct"], "gain": test["gain"],
                      "threshold": test["threshold"], "leak": test["leak"],
                      "null_ssim_body": test["null_mean"], "null_upper": test["null_upper"],
                      "p_value": test["p_value"],
                      "reference_patients": test["reference_patients"]}


def control_design(cfg: ExperimentConfig, slices: int, groups: tuple[int, ...] = ()) -> str:
    """The calibration control in words."""
    local = LocalTraining.from_config(cfg)
    if groups:
        steps = local.steps(max(groups))
        return (f"the hospitals' network without normalisation, the aggregate of "
                f"{len(groups)} uploads of {'/'.join(map(str, groups))} slices ({slices} in "
                f"all), {local.optimizer.upper()} {steps} local step"
                f"{'s' if steps != 1 else ''} each, {local.loss.upper()} loss")
    steps = local.steps(slices)
    return (f"the hospitals' network without normalisation, {slices} slice"
            f"{'s' if slices != 1 else ''} per upload, {local.optimizer.upper()} "
            f"{steps} local step{'s' if steps != 1 else ''}, {local.loss.upper()} loss")


def calibrate(attack: GradientInversion, cfg: ExperimentConfig, control: SliceSet,
              reference: SliceSet, prior: AttackerPrior, slices: int,
              on_step: Callable[[int], None] | None = None,
              groups: tuple[int, ...] = ()) -> dict[str, Any]:
    """The same attack, same budget, on controls at the target's difficulty: uploads of
    ``slices`` slices of the ``control`` patient after the target's own local training
    (optimiser, loss, steps, batch size) by the hospitals' network with only its
    normalisation removed (normalisation is what makes a U-Net's update hard to invert).
    With ``groups`` (the attacked aggregate's client sizes) each control is such an
    aggregate: the slices split into those clients, trained apart and averaged.
    Each of ``attacks.inversion.control_trials`` trials draws other slices and another
    initialisation; a trial is recovered by the rule that calls a target's upload leaking
    (:func:`reconstruction_metrics.leak_test` against unrelated ``reference`` patients).

    Returns ``{"recovered"`` (every trial recovered), ``"total"``, ``"rate"``, ``"rate_ci"``
    (95 % Clopper–Pearson), ``"trials"`` (each trial's ``gain``, ``threshold``,
    ``recovered``, ``ssim_body``, ``null_ssim_body``), the means ``"ssim_body"``,
    ``"floor_ssim_body"``, ``"gain"``, and ``"design"``, ``"slices"``, ``"image_size"``,
    ``"iterations"``, ``"restarts"``, ``"seconds"``}``.
    """
    m = cfg.model
    model = build_unet(tuple(m.channels), "none", m.num_res_units).to(select_device())
    local = LocalTraining.from_config(cfg)
    trials, seconds = [], 0.0
    total = cfg.attacks.inversion.control_trials
    for t in range(total):
        seed = cfg.seed + t
        rng = np.random.default_rng([seed, 0xC0])
        pick = np.sort(rng.choice(len(control), slices, replace=slices > len(control)))
        truth = control.select(pick)
        payload = control_payload(model, truth, local, prior, cfg.data.image_size, seed,
                                  groups)
        step = None if on_step is None else (lambda i, t=t: on_step(t * attack.iterations + i))
        result = attack.reconstruct(payload, step)
        seconds += result.seconds
        scored = score_reconstruction(result.mri, result.ct_unit, truth, prior, reference,
                                      (pick + 0.5) / len(control))
        trials.append({"seed": seed, "recovered": scored["leak"],
                       **{k: scored[k] for k in ("gain", "threshold", "ssim_body",
                                                 "null_ssim_body", "floor_ssim_body")}})
    recovered = sum(t["recovered"] for t in trials)
    ci = binomtest(recovered, total).proportion_ci(confidence_level=0.95, method="exact")
    return {"recovered": recovered == total, "total": total, "rate": recovered / total,
            "rate_ci": [float(ci.low), float(ci.high)], "trials": trials,
            **{k: float(np.mean([t[k] for t in trials]))
               for k in ("ssim_body", "floor_ssim_body", "gain")},
            "design": control_design(cfg, slices, groups), "slices": slices,
            "image_size": cfg.data.image_size, "iterations": attack.iterations,
            "restarts": attack.restarts, "seconds": round(seconds, 2)}


def inversion_verdict(per_client: dict[str, dict[str, Any]],
                      calibration: dict[str, Any] | None) -> str:
    """``leak`` when some client's reconstruction passes the leak test; ``no_leak`` only when
    none does *and* the calibration controls at the target's difficulty were all recovered at
    the same budget; otherwise ``inconclusive`` (the attack is too weak here to tell)."""
    if any(p["leak"] for p in per_client.values()):
        return "leak"
    return "no_leak" if calibration and calibration.get("recovered") else "inconclusive"


def run_inversion(run_dir: Path, cfg: ExperimentConfig, cohort: Cohort, attacker: AttackerData,
                  log: Callable[[str], None] = lambda _msg: None,
                  progress: Callable[[int, int, str], None] = lambda *_: None
                  ) -> dict[str, Any]:
    """Attack the targeted clients of a finished run; calibrate; store images; return the
    ``inversion`` block of ``summary.json``. ``progress(done, total, detail)`` counts
    iterations over every attacked hospital and the calibration control.

    The originals (each client's training slices) are used only to score the result.
    """
    inv = cfg.attacks.inversion
    out = Path(run_dir) / "inversion"
    out.mkdir(exist_ok=True)
    attack = attack_from_config(inv, cfg.seed)
    prior = AttackerPrior.from_data(attacker.public)
    names = [c.name for c in cohort.centers]
    per_client: dict[str, Any] = {}
    payloads = inversion_payloads(run_dir, cfg, prior)
    total = (len(payloads) + inv.control_trials) * attack.iterations  # hospitals, controls

    def steps(k: int, what: str) -> Callable[[int], None]:
        return lambda i: progress(k * attack.iterations + i, total,
                                  f"{what}, iteration {i:,} of {attack.iterations:,}")

    for k, payload in enumerate(payloads):
        if payload.groups:
            log(f"every upload of round {payload.round} is masked: inverting the round's "
                f"aggregate of {len(payload.groups)} hospitals ({payload.num_examples} slices "
                f"at once, {attack.iterations} iterations)")
            truth = SliceSet.concat([c.train for c in cohort.centers
                                     if c.name in _aggregated(run_dir, payload.round)])
            reference = pooled_reference_patients(cfg.data, cfg.seed, cohort, attacker)
        else:
            log(f"inverting {payload.client}'s upload of round {payload.round} (hospital "
                f"{k + 1} of {len(payloads)}, {payload.num_examples} slices, "
                f"{attack.iterations} iterations)")
            index = names.index(payload.client)
            truth = cohort.centers[index].train
            reference = reference_patients(cfg.data, cfg.seed, cohort, index, attacker)
        result = attack.reconstruct(payload, steps(k, f"hospital {k + 1} of {len(payloads)}"
                                                   if not payload.groups else "aggregate"))
        scored = score_reconstruction(result.mri, result.ct_unit, truth, prior, reference)
        per_client[payload.client] = {
            **{k: v for k, v in scored.items() if k != "pairs"},
            "round": payload.round, "seconds": round(result.seconds, 2),
            "final_loss": result.losses[-1], "restart_losses": result.restart_losses,
            "evaluations": result.evaluations, "objective": result.objective,
            "readable_fraction": result.readable_fraction,
        }
        _save_client(out, payload, result, truth, scored["pairs"], cfg.data.image_size)
    slices = max(p.num_examples for p in payloads)
    groups = payloads[0].groups
    design = control_design(cfg, slices, groups)
    log(f"calibrating: the same attack ({attack.iterations} iterations) on "
        f"{inv.control_trials} control upload(s) at the target's difficulty ({design})")
    calibration = calibrate(attack, cfg, attacker.control,
                            reference_patients(cfg.data, cfg.seed, cohort, None, attacker),
                            prior, slices, lambda i: progress(
                                len(payloads) * attack.iterations + i, total,
                                f"calibration control, iteration {i:,} of "
                                f"{inv.control_trials * attack.iterations:,}"), groups)
    keys = ("ssim", "ssim_body", "psnr_db", "ssim_ct", "psnr_db_ct", "ssim_coarse",
            "floor_ssim", "floor_ssim_body", "null_ssim_body")
    return {
        "method": inv.method,
        **{k: float(np.mean([p[k] for p in per_client.values()])) for k in keys},
        "per_client": per_client,
        "iterations": attack.iterations,
        "restarts": attack.restarts,
        "inner_iterations": attack.inner_iterations if attack.optimizer == "lbfgs" else None,
        "evaluations": max(p["evaluations"] for p in per_client.values()),
        "verdict": inversion_verdict(per_client, calibration),
        # "aggregate": every upload was masked, the server attacked the round's sum.
        "observed": AGGREGATE if groups else "uploads",
        "calibration": calibration,
        "leak_margin": LEAK_MARGIN,
        "null": {"draws": NULL_DRAWS, "quantile": NULL_QUANTILE, "margin": LEAK_MARGIN,
                 "reference_patients": min(p["reference_patients"]
                                           for p in per_client.values()),
                 "gain": max(p["null_upper"] - p["null_ssim_body"]
                             for p in per_client.values())},
    }


def _aggregated(run_dir: Path, rnd: int) -> list[str]:
    """The clients whose uploads the round's aggregate sums."""
    return ServerView(run_dir)[rnd].clients


def _save_client(out: Path, payload: InversionPayload, result: InversionResult,
                 truth: SliceSet, pairs: list[list[int]], image_size: int) -> None:
    """``<client>.npz`` (reconstruction, originals, pairs, floor, loss curve, snapshots) and
    a PNG of the first matched pair (MRI and CT, original | reconstruction)."""
    true_ct = hu_to_unit(truth.ct_hu)
    np.savez_compressed(
        out / f"{payload.client}.npz", mri=result.mri, ct_unit=result.ct_unit,
        true_mri=truth.mri, true_ct_unit=true_ct, mask=truth.mask,
        patient_ids=truth.patient_ids.astype(str),
        pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
        prior_mri=payload.prior.mri, prior_ct_unit=payload.prior.ct_unit,
        losses=np.array(result.losses),
        snapshots_mri=(result.snapshots_mri if result.snapshots_mri is not None
                       else np.zeros((0,))),
        snapshots_ct_unit=(result.snapshots_ct_unit if result.snapshots_ct_unit is not None
                           else np.zeros((0,))),
        snapshot_iterations=np.array(result.snapshot_iterations),
    )
    i, j = pairs[0]
    row = np.concatenate([to_gray(truth.mri[j, 0], 0, 1), to_gray(result.mri[i, 0], 0, 1),
                          to_gray(true_ct[j, 0], 0.2, 0.5),
                          to_gray(result.ct_unit[i, 0], 0.2, 0.5)], axis=1)
    save_png(row, out / f"{payload.client}.png", scale=max(1, 128 // image_size))
