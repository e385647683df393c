"""Display helpers for the Poisoning page: run listing, verdict, curves and detection.

Only formats what the engine wrote (``summary.json``'s ``poisoning`` block and federation
history); the only numbers derived here are differences (the change in percent) for display.
The studies' tables and charts are :mod:`app.views.poisoning_studies`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from app.views.common import (
    Verdict,
    expected_words,
    hospital_name,
    hospital_names,
    log_line_label,
    log_ticks,
)
from app.views.results import RunRow, finished_with
from engine.analyses.poisoning import BROKEN, PROTECTED
from engine.analyses.results import Detection, HistoryPoint, PoisoningSummary
from engine.core.config import ROBUST_AGGREGATORS, ConfigError, ExperimentConfig
from engine.core.config.robust import RULE_NAMES, rule_aggregator, rule_words
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex
from engine.orchestration.sweep_catalogue import POISON_AGGREGATORS, POISON_LEVELS
from engine.orchestration.timings import expected_runs

BASE_PRESET = "poison-base"
SWEEP_COMMAND = "fedsct sweep --preset {name}"
# Verdict thresholds on the attacked model's MAE over the same federation's clean MAE.

KIND_NAMES = {
    "data_noise": "noise on the hospital's images",
    "update_noise": "noise on the uploaded model",
    "sign_flip": "reversed update",
    "scaling": "amplified update (model replacement)",
    "alie": "A Little Is Enough",
    "min_max": "Min-Max (adapts to the honest updates)",
    "min_sum": "Min-Sum (adapts to the honest updates)",
    "alie_opt": "A Little Is Enough, tuned to the rule",
    "ipm_opt": "reversed average, tuned to the rule (IPM)",
    "fang_krum": "Fang's attack on Krum",
    "fang_trim": "Fang's attack on the trimmed mean",
}
KIND_HELP = {
    "data_noise": "The hospital trains on images spoilt with random noise (a broken scanner "
                  "or a deliberate attack) and sends the resulting model as usual.",
    "update_noise": "The hospital adds random noise to the model it sends back.",
    "sign_flip": "The hospital sends the opposite of what it learnt, four times as strong, "
                 "pushing the shared model the wrong way.",
    "scaling": "The hospital multiplies its change by four so that its model outweighs "
               "everyone else's (model replacement).",
    "alie": "The attackers send a change that is slightly wrong but stays within the normal "
            "spread of honest hospitals, so it is hard to spot (Baruch et al., 2019).",
    "min_max": "Each round the attackers see the honest hospitals' changes and send the one "
               "farthest from their average that is no farther from any of them than two "
               "honest ones are from each other (Shejwalkar & Houmansadr, 2021).",
    "min_sum": "As Min-Max, but the attackers' change may be no farther from the honest ones "
               "in total than the most isolated honest hospital is.",
    "alie_opt": "A Little Is Enough with its shift chosen each round, by trying the server's "
                "own rule, to pull the result farthest from the honest average.",
    "ipm_opt": "The attackers send the honest average reversed, scaled each round by trying "
               "the server's own rule for the most damage (Xie et al., 2020).",
    "fang_krum": "The attackers send a step against the direction the honest hospitals are "
                 "moving, as large as the server's rule still picks it: built to be the one "
                 "update Krum keeps (Fang et al., 2020).",
    "fang_trim": "For every number in the model, the attackers send a value just beyond the "
                 "most extreme honest one, on the side opposite to where the honest "
                 "hospitals are moving: built to pull the trimmed mean and the median "
                 "(Fang et al., 2020).",
}
NOISE_KINDS = tuple(POISON_LEVELS)
RULE_COLOURS = {"fedavg": "#c0392b", "fedprox": "#e67e22", "fedmedian": "#2471a3",
                "trimmed_mean": "#17a589", "krum": "#7d3c98", "multikrum": "#a04000",
                "bulyan": "#2e4053", "centered_clipping": "#b7950b", "dnc": "#1e8449"}
METRICS = {"mae_hu": "Average error, MAE (HU) — lower is better",
           "psnr_db": "Image quality, PSNR (dB) — higher is better",
           "ssim": "Structural similarity, SSIM (0–1) — higher is better"}
METRIC_SHORT = {"mae_hu": "MAE", "psnr_db": "PSNR", "ssim": "SSIM"}
TARGET_NAMES = {"mri": "noise on the MRI only", "ct": "noise on the CT only",
                "both": "noise on MRI and CT"}
PAPER_TEXT = ("every single attacking hospital (and every pair for the averaging rules and "
              "the median), noise on images or on the upload at a low and a high level, "
              "against four rules")

INTRO = ("In a **poisoning attack**, one or more hospitals in the federation misbehave: they "
         "train on spoilt images or send back a spoilt model, to make the shared synthetic-CT "
         "model worse. The server combines the hospitals' updates with an **aggregation "
         "rule**; plain averaging (FedAvg) lets one bad update drag everyone along, while "
         "robust rules (FedMedian, trimmed mean) try to outvote it. Each attack is compared "
         "with the same federation trained without attackers.")
EMPTY = "No poisoning results yet. Choose an attack above and press Run, or start the study grid."


def rule_name(rule: str) -> str:
    return rule_words(rule)


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def level_text(kind: str, std: float) -> str:
    """``low (σ 0.1)`` for the study's levels, else ``σ 0.25``."""
    levels = POISON_LEVELS.get(kind)
    if levels and std in levels:
        return f"{'low' if std == levels[0] else 'high'} (σ {std:g})"
    return f"σ {std:g}"


# --------------------------------------------------------------------------- configs


def attack_sets(kind: str, malicious: list[int], rule: str,
                noise_std: float | None = None) -> list[str]:
    """``--set`` overrides of poison-base for one attack and rule, spelt like the sweeps'
    cells so that a finished sweep cell with the same settings is found and reused."""
    sets = list(POISON_AGGREGATORS.get(rule, [f"federation.aggregator={rule}"]))
    sets += ["attacks.poisoning.enabled=true", f"attacks.poisoning.kind={kind}",
             f"attacks.poisoning.malicious_centers={sorted(malicious)}"]
    if kind in NOISE_KINDS and noise_std is not None:
        sets.append(f"attacks.poisoning.noise_std={noise_std!r}")
    return sets


@functools.cache  # the preset is fixed: build it once, not on every rerun of the page
def base_hospitals() -> int:
    """How many hospitals the poisoning page's federation (:data:`BASE_PRESET`) has."""
    return build_config(BASE_PRESET).data.centers


def attack_plans(kind: str, malicious: list[int], rules: list[str], std: float | None
                 ) -> tuple[list[tuple[str, ExperimentConfig]], list[str]]:
    """One run per rule: (rule, its config, :data:`BASE_PRESET` with the attack) for each
    rule that can run the attack, and one sentence per rule that can't, saying why."""
    plans, refusals = [], []
    for rule in rules:
        try:
            plans.append((rule, build_config(BASE_PRESET,
                                             sets=attack_sets(kind, malicious, rule, std))))
        except ConfigError as err:
            refusals.append(f"{rule_name(rule)} can't run this attack: {err}")
    return plans, refusals


def attack_time_text(configs: list[ExperimentConfig]) -> str:
    """How long the attack runs of ``configs`` (one per rule) will take, in words."""
    if not configs:
        return ""
    e = expected_runs(configs, BASE_PRESET, RunIndex().list())
    # Each attacked run also trains its federation without attackers (the comparison),
    # unless a finished clean run is reused: on the safe side, twice the preset's time.
    e = dataclasses.replace(e, seconds=2 * e.seconds)
    rules = f"{len(configs)} rule{'s' if len(configs) > 1 else ''}"
    return f"{rules}, one after the other: {expected_words(e)}."


# --------------------------------------------------------------------------- runs


# Settings that pick the rule; runs that differ only in these attacked the same federation.
RULE_KEYS = ("aggregator", "fedprox_mu", "trim_beta", "num_malicious", "multikrum_m",
             "pre_aggregator", "cc_tau")


class PoisonRun(RunRow):
    """A finished run that carries poisoning results."""

    @property
    def poison(self) -> PoisoningSummary:
        assert self.summary is not None and self.summary.poisoning is not None
        return self.summary.poisoning

    @property
    def attack(self) -> str:
        """The attack in a few words: kind, strength and attackers."""
        p = self.poison
        words = kind_name(p.kind)
        if p.kind in NOISE_KINDS:
            words += f" {level_text(p.kind, p.noise_std)}"
        elif p.kind in ("sign_flip", "scaling"):
            words += f" ×{p.scale:g}"
        elif p.kind == "alie":
            words += f" z {p.z:g}"
        return f"{words} from {hospital_names(p.malicious_names)}"

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        return f"{self.name} · {when} · {rule_name(self.rule)} · {self.attack}"

    @property
    def attack_key(self) -> str:
        """The run's settings without the rule: equal keys = same attack on the same
        federation, so their curves can share a chart."""
        cfg = self.cfg.model_dump(mode="json") if self.cfg else {}
        cfg.pop("name", None)
        for key in RULE_KEYS:
            cfg.get("federation", {}).pop(key, None)
        return json.dumps(cfg, sort_keys=True)


def poisoning_runs(rows: list[RunRow]) -> tuple[list[PoisonRun], list[Path]]:
    """The finished runs of ``rows`` that carry poisoning results, newest first; and the
    summary files of finished poisoning runs that are missing or unreadable, or whose
    poisoning block lacks the attacked cell or the clean baseline of its rule (no verdict can
    be drawn from those)."""
    rows_ok, damaged = finished_with(rows, "poisoning")
    runs = []
    for row in rows_ok:
        run = PoisonRun(**vars(row))
        if run.poison.cells and (run.aggregator or "fedavg") in run.poison.baseline:
            runs.append(run)
        else:
            damaged.append(run.path / "summary.json")
    return runs, damaged


def same_attack(shown: PoisonRun, runs: list[PoisonRun]) -> list[PoisonRun]:
    """The shown run and, per other rule, the newest run of the same attack (rule order)."""
    picked = {shown.rule: shown}
    key = shown.attack_key
    for r in runs:
        if r.rule not in picked and r.attack_key == key:
            picked[r.rule] = r
    order = list(RULE_NAMES)
    return sorted(picked.values(), key=lambda r: order.index(r.rule)
                  if r.rule in order else len(order))


# --------------------------------------------------------------------------- verdict


TITLES = {
    "broken": ("red", "The federation was made useless: the shared model's error at least "
                      "doubled"),
    "damaged": ("orange", "The federation was damaged but still learns: the error rose by "
                          "more than 25 %, without doubling"),
    "protected": ("green", "The rule protected the federation: {rule} kept the error within "
                           "25 % of the clean federation's on average over the seeds, while the "
                           "same attack hurt FedAvg"),
    "attack_too_weak": ("gray", "Attack too weak to judge the rule: it did not hurt FedAvg "
                                "beyond 25 % either"),
}
NO_CONTROL = ("gray", "Within 25 % of the clean error, but this run has no FedAvg control, so "
                      "it cannot show that the rule protected anything")


def _ratios(seeds: list[Any], mean: float, ci: list[float] | None) -> str:
    values = ", ".join(f"{r.mae_ratio:.2f}×" for r in seeds)
    interval = f", 95 % interval {ci[0]:.2f}–{ci[1]:.2f}×" if ci else ""
    return (f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {values} (mean "
            f"{mean:.2f}×{interval})")


def verdict(poison: PoisoningSummary, key: str) -> Verdict:
    """How much the attack hurt the rule ``key`` (:func:`rule_key`), from the final MAE
    against the same federation without attackers (the ratio, over seeds), and whether the
    same attack hurt FedAvg (the control without which "protected" means nothing)."""
    cell = poison.cells[0]
    aggregator = rule_aggregator(key)
    base = poison.baseline[aggregator]
    rule = rule_name(key)
    robust = aggregator in ROBUST_AGGREGATORS or key != aggregator
    ratio = poison.mae_ratio_mean if poison.mae_ratio_mean is not None else cell.mae_ratio
    names = poison.malicious_names
    who = (f"{len(names)} malicious hospital{'s' if len(names) != 1 else ''} "
           f"({hospital_names(names)})")
    detail = (f"With {who} sending {kind_name(poison.kind)}, **{rule}** ended with an average "
              f"error of **{cell.mae_hu:.0f} HU** against **{base.mae_hu:.0f} HU** for the same "
              f"federation without attackers: **{cell.mae_ratio:.2f}×** the clean error "
              f"({(cell.mae_ratio - 1) * 100:+.0f} %). PSNR {cell.psnr_db:.1f} dB vs "
              f"{base.psnr_db:.1f} dB, SSIM {cell.ssim:.3f} vs {base.ssim:.3f}.")
    control = poison.fedavg_control
    state = poison.verdict or ("broken" if ratio >= BROKEN else "damaged" if ratio > PROTECTED
                               else None)  # an older run: one seed, no control
    colour, title = TITLES[state] if state else NO_CONTROL
    if poison.verdict is not None:
        detail += f" Over {_ratios(poison.seeds, ratio, poison.ratio_ci)}."
        if control is not None and not control.self_:
            detail += (f" The same attack against FedAvg (the control), "
                       f"{_ratios(control.seeds, control.mae_ratio_mean, control.ratio_ci)}: "
                       + ("hurt beyond 25 % at every seed." if control.hurt else
                          "not hurt beyond 25 % at every seed."))
    if robust and state in ("broken", "damaged"):
        title += f", even though {rule} is meant to resist attackers"
    detail += (" Twice the clean error or more counts as useless; within 25 % as protected "
               "only where the same attack hurt FedAvg beyond 25 %.")
    return Verdict(colour, title.format(rule=rule), detail, f"{ratio:.2f}× the clean error")


def poison_words(poison: PoisoningSummary) -> str:
    """Who attacked and how, in one clause ("Hospital A sent noise on the uploaded model
    (high, σ 0.3)")."""
    who = hospital_names(poison.malicious_names)
    how = kind_name(poison.kind)
    if poison.kind in NOISE_KINDS:
        how += f" ({level_text(poison.kind, poison.noise_std)})"
    elif poison.kind in ("sign_flip", "scaling"):
        how += f" (×{poison.scale:g})"
    verb = "were malicious and sent" if len(poison.malicious_names) > 1 else \
        "was malicious and sent"
    return f"{who} {verb} {how}"


def cells_table(poison: PoisoningSummary) -> pd.DataFrame:
    """The attacked federation against its clean baseline, one row per cell, in words."""
    return pd.DataFrame([{
        "Malicious hospital(s)": hospital_names([f"center-{k}" for k in c.malicious]
                                                if poison.malicious_names == [] else
                                                poison.malicious_names),
        "Attack": kind_name(c.kind) + (f" ({level_text(c.kind, c.noise_std)})"
                                       if c.kind in NOISE_KINDS else ""),
        "Aggregation rule": rule_name(c.aggregator),
        "MAE (HU)": round(c.mae_hu), "PSNR (dB)": round(c.psnr_db, 2),
        "SSIM": round(c.ssim, 3), "Error × the clean federation's": round(c.mae_ratio, 2),
    } for c in poison.cells])


# --------------------------------------------------------------------------- charts


def axis_title(metric: str) -> str:
    return METRICS.get(metric, metric)


def curves_figure(lines: list[tuple[str, list[HistoryPoint], list[HistoryPoint]]],
                  metric: str) -> go.Figure:
    """Per rule: the attacked federation (solid) and the same one without attackers
    (dashed, same colour), ``metric`` per round."""
    fig = go.Figure()
    for rule, attacked, clean in lines:
        colour = RULE_COLOURS.get(rule, "#555555")
        for history, dash, who in ((attacked, "solid", "under attack"),
                                   (clean, "dash", "without attackers")):
            if not history:
                continue
            fig.add_trace(go.Scatter(
                x=[h.round for h in history], y=[getattr(h, metric) for h in history],
                mode="lines+markers", name=f"{rule_name(rule)} {who}",
                line={"color": colour, "dash": dash, "width": 3 if dash == "solid" else 2},
                hovertemplate=f"{rule_name(rule)} {who}, round %{{x}}: %{{y:.3g}}"
                              "<extra></extra>"))
    fig.update_xaxes(title_text="round (0 = untrained)")
    fig.update_yaxes(title_text=axis_title(metric))
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def detection_figure(detection: Detection, malicious: list[str]) -> go.Figure:
    """Each hospital's distance to the median upload ÷ the typical distance, per round;
    attackers in red, the flag threshold dotted, flagged rounds marked with a cross."""
    per_round = detection.per_round
    clients = list(per_round[0]["clients"]) if per_round else []
    fig = go.Figure()
    greys = ("#7f8c8d", "#95a5a6", "#5d6d7e", "#aab7b8", "#839192", "#4d5656")
    honest = 0
    for c in clients:
        bad = c in malicious
        colour = "#c0392b" if bad else greys[honest % len(greys)]
        honest += 0 if bad else 1
        fig.add_trace(go.Scatter(
            x=[r["round"] for r in per_round],
            y=[r["clients"][c]["distance_ratio"] for r in per_round],
            mode="lines+markers",
            name=f"{hospital_name(c)} ({'attacker' if bad else 'honest'})",
            line={"color": colour, "width": 4 if bad else 1.5},
            hovertemplate=f"{hospital_name(c)}, round %{{x}}: %{{y:.2f}}× the typical "
                          "distance<extra></extra>"))
    flagged = [(r["round"], r["clients"][c]["distance_ratio"], hospital_name(c))
               for r in per_round for c in clients if r["clients"][c]["flagged"]]
    if flagged:
        fig.add_trace(go.Scatter(
            x=[f[0] for f in flagged], y=[f[1] for f in flagged],
            customdata=[f[2] for f in flagged], mode="markers", name="flagged by the server",
            marker={"symbol": "x", "size": 13, "color": "black"},
            hovertemplate="%{customdata} flagged in round %{x}<extra></extra>"))
    threshold = detection.flag_ratio
    fig.add_hline(y=threshold, line_dash="dot", line_color="black")
    log_line_label(fig, threshold, f"flag threshold ({threshold:g}×)")
    ratios = [r["clients"][c]["distance_ratio"] for r in per_round for c in clients]
    fig.update_yaxes(type="log", title_text="distance to the median upload ÷ typical (log)",
                     **log_ticks([*ratios, threshold]))
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def detection_sentence(detection: Detection, malicious: list[str]) -> str:
    """Whether each attacker stood out from the honest hospitals, with the numbers."""
    if not detection.per_round:
        return ("The server had no individual uploads to compare (secure aggregation hides "
                "them), so it could not single out an attacker.")
    rate, ratio = detection.flag_rate, detection.mean_distance_ratio
    detected = set(detection.detected)
    parts = []
    for c in malicious:
        numbers = (f"flagged in {float(rate.get(c, 0)):.0%} of rounds, on average "
                   f"{float(ratio.get(c, 0)):.1f}× as far from the median upload as a typical "
                   "hospital")
        if c in detected:
            parts.append(f"The attacker **{hospital_name(c)}** was visible: {numbers}.")
        else:
            parts.append(f"The attacker **{hospital_name(c)}** hid among the honest "
                         f"hospitals: {numbers}, "
                         "so a server watching for outliers would not have noticed it.")
    false = sorted(detected - set(malicious))
    if false:
        parts.append(f"Honest hospital{'s' if len(false) > 1 else ''} "
                     f"{hospital_names(false)} {'were' if len(false) > 1 else 'was'} flagged "
                     "in most rounds too (false alarms).")
    return " ".join(parts)
