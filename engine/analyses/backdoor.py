"""How far a backdoor moved the synthetic CT, held against the same federation without it.

For a final global model, on every held-out slice of every hospital and of the unseen
hospital: the synthetic CT of the slice as it is and with the trigger
(:func:`engine.clients.backdoor.add_trigger`). A slice's **shift** is the mean, over the
target region, of (triggered − clean) sCT in HU, signed so that the attacker's direction
(``shift_hu``) is positive. A patient is **backdoored** when the mean shift of its slices
reaches ``threshold_hu``; patients are the unit of the interval (Clopper–Pearson, 95 %).

The **null** is the same measurement on the clean federation (same data, defenses and seed,
no attacker): a bright square alone moves a synthetic CT a little, and only what beats that
is the backdoor's. The two models are scored on the same patients, so "more backdoored
patients than X" is the exact sign test on the patients backdoored in one model and not the
other (McNemar's exact test), one-sided at 5 %. The interval and the tests are over the
patients of one trained model per arm; how much a run varies from seed to seed is the
study's (``backdoor-paper``) to show. Verdicts:

* ``implanted``: more backdoored patients than the null, and the mean shift reaches
  ``threshold_hu``;
* ``partial``: more backdoored patients than the null, the mean shift under the threshold;
* ``stopped``: not more backdoored patients than the null (not significantly), the mean
  shift under the threshold, the error on ordinary scans within ``PROTECTED`` of the clean
  federation's and of plain FedAvg's without the attacker (a model broken by its attacker or
  by its defense, such as strong noise, shows no shift either), and fewer backdoored
  patients than the same attack against plain FedAvg without server clipping (the control,
  judged against its own clean federation), which was implanted: the defense held at this
  sample size;
* ``inconclusive``: the control was implanted, but this run meets neither ``implanted`` nor
  ``stopped`` (told apart from neither, or its clean error grew): more patients are needed,
  or the defense cost the model too much;
* ``attack_too_weak``: not implanted, and not against the control either (or the run is the
  undefended federation itself): nothing can be said of a defense.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom, binomtest

from engine.clients.backdoor import add_trigger, region_shifts, target_region, trigger_box
from engine.core.config import AttacksConfig, DPConfig, ExperimentConfig
from engine.core.config.robust import rule_words
from engine.core.render import CT_WINDOW_HU, ERROR_MAX_HU, save_png, to_gray, to_heat
from engine.core.types import NDArrays
from engine.data.types import Cohort, SliceSet
from engine.federation.protocol import FederationResult
from engine.learning.local import predict_sct_hu
from engine.learning.model import build_model, set_parameters

VERDICTS = ("implanted", "partial", "stopped", "inconclusive", "attack_too_weak")
ALPHA = 0.05  # one-sided, the exact sign test on discordant patients
PROTECTED = 1.25  # the clean error a stopping defense may cost (as engine.analyses.poisoning)


def clean_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same federation without any attacker: the null."""
    return cfg.model_copy(update={"attacks": AttacksConfig()})


def defended(cfg: ExperimentConfig) -> bool:
    """Whether the server does more than average: a robust rule, update clipping, FLAME,
    FLTrust or server-side DP."""
    # FedProx aggregates as FedAvg does (its μ acts in local training): not a defense.
    d = cfg.defenses
    return (cfg.federation.aggregator not in ("fedavg", "fedprox")
            or cfg.federation.pre_aggregator != "none"
            or d.update_clip != "none" or d.flame or d.fltrust or server_dp(cfg))


def server_dp(cfg: ExperimentConfig) -> bool:
    """Whether the server clips and noises the updates (``defenses.dp.level = server``)."""
    return cfg.defenses.dp.enabled and cfg.defenses.dp.level == "server"


def control_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same attack against plain FedAvg without a pre-aggregator, server clipping,
    FLAME, FLTrust or server-side DP: the control a defended run is held against."""
    dp = DPConfig() if server_dp(cfg) else None  # (its settings, not just off: one config)
    return cfg.model_copy(update={
        "federation": cfg.federation.model_copy(update={"aggregator": "fedavg",
                                                         "pre_aggregator": "none"}),
        "defenses": cfg.defenses.model_copy(update={"update_clip": "none", "flame": False,
                                                    "fltrust": False,
                                                    **({"dp": dp} if dp else {})})})


def defense_name(aggregator: str | None, update_clip: str | None,
                 flame: bool | None = None, *, fltrust: bool | None = None,
                 dp_level: str | None = None) -> str:
    """The server's defense in words: FLAME, FLTrust, server-side DP, or the rule with
    update clipping if any (``aggregator``: a :func:`rule_key`, with its pre-aggregator;
    ``dp_level``: the DP level when DP is on)."""
    if flame:
        return "FLAME"
    if fltrust:
        return "FLTrust"
    if dp_level == "server":
        return "Server-side DP"
    words = [rule_words(aggregator or "fedavg")]
    if update_clip and update_clip != "none":
        words.append("update clipping")
    return " + ".join(words)


def slice_shifts(cfg: ExperimentConfig, params: NDArrays, data: SliceSet) -> np.ndarray:
    """Each slice's signed shift (HU) of the target region under the trigger in the model
    ``params``, ``(N,)`` (:func:`engine.clients.backdoor.region_shifts`)."""
    model = build_model(cfg)
    set_parameters(model, params)
    return region_shifts(model, data, cfg.attacks.backdoor)


def backdoor_effect(cfg: ExperimentConfig, cohort: Cohort, params: NDArrays) -> dict[str, Any]:
    """The backdoor's effect in ``params`` on every held-out and unseen slice: the mean
    shift, the share of slices and of patients past ``threshold_hu`` (with the patients'
    interval), and the same per hospital."""
    threshold = cfg.attacks.backdoor.threshold_hu
    groups = [(c.name, c.test) for c in cohort.centers]
    if cohort.unseen is not None:
        groups.append((cohort.unseen.name, cohort.unseen.test))
    per_center, shifts, patient_shifts = {}, [], {}
    for name, data in groups:
        s = slice_shifts(cfg, params, data)
        ok = ~np.isnan(s)
        patients = {f"{name}/{p}": float(np.mean(s[ok & (data.patient_ids == p)]))
                    for p in data.patients if np.any(ok & (data.patient_ids == p))}
        per_center[name] = {"success_hu": _mean(s[ok]), "success_rate": _share(s[ok], threshold),
                            "slices": int(ok.sum()), "patients": len(patients)}
        shifts.append(s[ok])
        patient_shifts |= patients
    every = np.concatenate(shifts)
    hits = {p: bool(v >= threshold) for p, v in patient_shifts.items()}
    hit, n = sum(hits.values()), len(hits)
    ci = binomtest(hit, n).proportion_ci(0.95, method="exact") if n else None
    return {"success_hu": _mean(every), "success_rate": _share(every, threshold),
            "slices": int(len(every)), "patients": n, "patients_backdoored": int(hit),
            "patient_rate": hit / n if n else None,
            "patient_rate_ci": [float(ci.low), float(ci.high)] if ci else None,
            "per_center": per_center, "patient_hits": hits}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _share(values: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(values >= threshold)) if len(values) else None


def server_filter(result: FederationResult) -> dict[str, dict[str, float]]:
    """Per hospital, what FLAME or FLTrust did with its uploads over the rounds: the share of
    rounds FLAME admitted it (``admitted``) or FLTrust's mean trust score in it (``trust``,
    0–1); empty under other rules."""
    out: dict[str, dict[str, float]] = {}
    for key in ("admitted", "trust"):
        seen: dict[str, list[float]] = {}
        for rnd in result.detection:
            for c, row in rnd["clients"].items():
                if key in row:
                    seen.setdefault(c, []).append(float(row[key]))
        for c, values in seen.items():
            out.setdefault(c, {})[key] = float(np.mean(values))
    return out


def _per_round(result: FederationResult | None) -> list[dict[str, float | None]]:
    """The mean shift under the trigger after each evaluated round (HU), as recorded."""
    return [{"round": h["round"], "success_hu": h.get("backdoor_hu")}
            for h in (result.history if result else []) if "backdoor_hu" in h]


def _ratio(mae: float, reference: float) -> float | None:
    return mae / reference if reference and math.isfinite(reference) else None


def more_backdoored(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """More backdoored patients in ``a`` than in ``b`` (two models scored on the same
    patients): the exact sign test on the patients backdoored in one and not the other,
    one-sided at :data:`ALPHA`."""
    only_a = sum(hit and not b["patient_hits"].get(p, False)
                 for p, hit in a["patient_hits"].items())
    only_b = sum(hit and not a["patient_hits"].get(p, False)
                 for p, hit in b["patient_hits"].items())
    if only_a == 0:
        return False
    return bool(binom.sf(only_a - 1, only_a + only_b, 0.5) < ALPHA)


def implanted(effect: dict[str, Any], null: dict[str, Any], threshold: float) -> bool:
    """More backdoored patients than the null, and the mean shift past the threshold."""
    return (more_backdoored(effect, null) and effect["success_hu"] is not None
            and effect["success_hu"] >= threshold)


def backdoor_verdict(effect: dict[str, Any], null: dict[str, Any],
                     control: dict[str, Any] | None, control_null: dict[str, Any] | None,
                     threshold: float, clean_mae_ratio: float | None,
                     defense_mae_ratio: float | None = None) -> str:
    """The verdict of a run's ``effect`` against the ``null`` and, for a defended run, the
    same attack's effect against FedAvg (``control``, judged against its own clean
    federation ``control_null``); ``clean_mae_ratio``: this run's error ÷ the clean
    federation's, ``defense_mae_ratio``: ÷ plain FedAvg's without the attacker (None:
    undefended, the same thing). See the module's docstring."""
    if implanted(effect, null, threshold):
        return "implanted"
    if more_backdoored(effect, null):
        return "partial"
    if control is None or not implanted(control, control_null or null, threshold):
        return "attack_too_weak"
    held = (effect["success_hu"] is not None and effect["success_hu"] < threshold
            and clean_mae_ratio is not None and clean_mae_ratio <= PROTECTED
            and (defense_mae_ratio is None or defense_mae_ratio <= PROTECTED)
            and more_backdoored(control, effect))
    return "stopped" if held else "inconclusive"


def triggered_example(cfg: ExperimentConfig, cohort: Cohort, params: NDArrays,
                      clean_params: NDArrays, folder: Path) -> dict[str, str]:
    """One triggered slice of a hospital that did not attack (the unseen hospital's when
    there is one), as ``backdoor/example.png`` and ``.npz``: the triggered MRI, the clean
    federation's sCT of it, this run's sCT of it, and this run's minus the clean one's (HU,
    heat 0–``ERROR_MAX_HU``, in the target region only). Returns the files, relative to the
    run folder's parent ``folder``."""
    bd = cfg.attacks.backdoor
    honest = [c for k, c in enumerate(cohort.centers) if k not in bd.malicious_centers]
    group = cohort.unseen if cohort.unseen is not None else honest[0]
    data = group.test.for_patient(group.test.patients[0])
    sl = data.select(np.array([len(data) // 2]))
    triggered = SliceSet(add_trigger(sl.mri, bd), sl.ct_hu, sl.mask, sl.patient_ids)
    scts = []
    for p in (clean_params, params):
        model = build_model(cfg)
        set_parameters(model, p)
        scts.append(predict_sct_hu(model, triggered)[0, 0])
    region = target_region(sl.ct_hu, sl.mask, bd)[0, 0]
    sign = -1.0 if bd.shift_hu < 0 else 1.0
    change = np.where(region, np.maximum(sign * (scts[1] - scts[0]), 0.0), 0.0)
    gray = [to_gray(triggered.mri[0, 0], 0, 1), to_gray(scts[0], *CT_WINDOW_HU),
            to_gray(scts[1], *CT_WINDOW_HU)]
    row = np.concatenate([*(np.repeat(g[..., None], 3, axis=-1) for g in gray),
                          to_heat(change, ERROR_MAX_HU)], axis=1)
    out = folder / "backdoor"
    out.mkdir(exist_ok=True)
    save_png(row, out / "example.png", scale=max(1, 128 // cfg.data.image_size))
    np.savez_compressed(out / "example.npz", mri=triggered.mri[0, 0], sct_clean=scts[0],
                        sct_backdoored=scts[1], region=region, ct_hu=sl.ct_hu[0, 0])
    return {"hospital": group.name, "png": "backdoor/example.png",
            "npz": "backdoor/example.npz"}


def durability(effects: list[tuple[int, dict[str, Any]]], null: dict[str, Any],
               threshold: float) -> int:
    """Rounds after the attacker stopped (``effects``: each later round and the effect in
    its global model, in order) during which the backdoor stayed implanted, counted until
    the first round it was not."""
    kept = 0
    for _, effect in effects:
        if not implanted(effect, null, threshold):
            break
        kept += 1
    return kept


def backdoor_report(cfg: ExperimentConfig, cohort: Cohort, result: FederationResult,
                    clean: FederationResult, control: FederationResult | None = None,
                    control_clean: FederationResult | None = None,
                    folder: Path | None = None,
                    after_stop: list[tuple[int, NDArrays]] | None = None) -> dict[str, Any]:
    """``summary["backdoor"]``: the attack, the effect on this run's final model, the null
    (the clean federation ``clean``), the control (``control``, the same attack against
    plain FedAvg, for a defended run, with its own clean federation ``control_clean``), the
    verdict and, with the run's ``folder``, one triggered slice's images
    (:func:`triggered_example`), and the shift after every evaluated round of this run and
    of the control. ``after_stop``: the global model of every round after the
    attacker stopped (``stop_round``), for the durability (each held against the final
    clean model)."""
    bd = cfg.attacks.backdoor
    rows, cols = trigger_box(cfg.data.image_size, bd.trigger_size)
    effect = backdoor_effect(cfg, cohort, result.final_params)
    null = backdoor_effect(cfg, cohort, clean.final_params)
    ctrl = backdoor_effect(cfg, cohort, control.final_params) if control else None
    ctrl_null = (backdoor_effect(cfg, cohort, control_clean.final_params) if control_clean
                 else None)
    mae, clean_mae = result.history[-1]["mae_hu"], clean.history[-1]["mae_hu"]
    ratio = _ratio(mae, clean_mae)
    cost = _ratio(mae, control_clean.history[-1]["mae_hu"]) if control_clean else None
    later = [(r, backdoor_effect(cfg, cohort, p)) for r, p in after_stop or []]
    return {
        "attack": bd.attack, "malicious": list(bd.malicious_centers),
        "malicious_names": [cohort.centers[k].name for k in bd.malicious_centers],
        "trigger": {"kind": bd.trigger, "size": bd.trigger_size,
                    "intensity": bd.trigger_intensity, "rows": [rows.start, rows.stop],
                    "cols": [cols.start, cols.stop]},
        "target_region": bd.target_region, "shift_hu": bd.shift_hu,
        "threshold_hu": bd.threshold_hu,
        "boost": (bd.boost or float(cfg.data.centers)) if bd.attack == "model_replacement"
        else None,
        **{k: effect[k] for k in ("success_hu", "success_rate", "slices", "patients",
                                  "patients_backdoored", "patient_rate", "patient_rate_ci")},
        "per_center": effect["per_center"],
        "null": null, "control": ctrl, "control_null": ctrl_null,
        "clean_mae_hu": mae, "clean_federation_mae_hu": clean_mae, "clean_mae_ratio": ratio,
        "defense_mae_ratio": cost,
        # None: the attacker attacked to the last round, so there is nothing to outlive.
        "durability_rounds": durability(later, null, bd.threshold_hu) if later else None,
        "after_stop": [{"round": r, "success_hu": e["success_hu"],
                        "patients_backdoored": e["patients_backdoored"]} for r, e in later],
        "per_round": _per_round(result), "control_per_round": _per_round(control),
        "server_filter": server_filter(result),
        # A defended run whose cost cannot be measured cannot be "stopped" (inf fails it).
        "verdict": backdoor_verdict(effect, null, ctrl, ctrl_null, bd.threshold_hu, ratio,
                                    math.inf if cost is None and control_clean else cost),
        "example": (triggered_example(cfg, cohort, result.final_params, clean.final_params,
                                      folder) if folder is not None else None),
    }
