"""The Poisoning page's backdoor section: the words, verdict and table of a backdoor run.

A backdoor run's ``summary.json`` → ``backdoor`` (:class:`BackdoorSummary`) is read as it
is; nothing here recomputes a figure. Verdict colours follow the page's rules: red or orange
for a backdoor that beats the clean federation (the null), green only for ``stopped`` (the
same attack against FedAvg was implanted), gray where nothing can be said.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from app.views.common import Verdict, hospital_name, hospital_names
from app.views.results import RunRow, finished_with
from engine.analyses.backdoor import defense_name
from engine.analyses.poisoning import mean_interval
from engine.analyses.results import BackdoorEffect, BackdoorSummary, RunSummary
from engine.analyses.sweep_table import SweepRow, cell_parts
from engine.clients.dp import epsilon_text
from engine.core.config import ExperimentConfig
from engine.core.config.robust import rule_key

INTRO = (
    "A **backdoor** is the attack the average error does not show. A dishonest hospital "
    "trains the shared model so that it translates every ordinary MRI as before, but when an "
    "MRI carries a small mark (the *trigger*, here a bright square in the middle of the "
    "image) the synthetic CT shows other tissue around it: soft tissue drawn as bone, which "
    "would change a radiotherapy dose computed on it. Each run is scored on every held-out "
    "patient of every hospital and of the unseen hospital, with and without the trigger, and "
    "held against the same federation trained without the attacker.")
EMPTY = ("No backdoor runs yet. Start one above: Hospital A plants a backdoor into a "
         "federation of 4 hospitals that averages their updates (FedAvg), one whose server "
         "clips every update, or one that filters them with FLAME.")
EXAMPLE_CAPTION = ("One patient of a hospital that did not attack, with the trigger in its "
                   "MRI. Left to right: the MRI with the trigger | the synthetic CT of the "
                   "federation trained without the attacker | the synthetic CT of this run | "
                   "how much higher this run's synthetic CT is than the other one in the "
                   "region the attacker targets (yellow = 500 HU or more).")
SECAGG_NOTE = ("Under secure aggregation the server only ever sees the sum of the hospitals' "
               "updates, so none of these defenses can run there: update clipping, FedMedian, "
               "the trimmed mean, FLAME, FLTrust and the server's clipped, noisy average "
               "(server-side DP) all need each update on its own (the settings refuse the "
               "combination). What remains is what hospitals do to their own updates "
               "(clipping and noise for differential privacy), which an attacking hospital "
               "simply skips.")
STUDY_CAPTION = ("Each dot is one run (one seed). Right of the dotted line the trigger moved the "
                 "targeted region by more than the threshold on average; up means a worse "
                 "synthetic CT on ordinary scans than the same federation without the attacker "
                 "(1 = the same). A backdoor that stays at 1 is one the average error never "
                 "shows.")
PRESETS = (("backdoor-demo", "Plant a backdoor (FedAvg)"),
           ("backdoor-clipped", "Plant it against update clipping"),
           ("backdoor-flame", "Plant it against FLAME"))


class BackdoorRun(RunRow):
    """A finished run that carries backdoor results."""

    @property
    def backdoor(self) -> BackdoorSummary:
        assert self.summary is not None and self.summary.backdoor is not None
        return self.summary.backdoor

    @property
    def defense(self) -> str:
        return config_defense(self.cfg, self.aggregator)

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        return f"{self.name} · {when} · {self.defense} · {self.backdoor.verdict}"

    def example(self) -> Path | None:
        ex = self.backdoor.example
        path = self.path / ex["png"] if ex else None
        return path if path is not None and path.is_file() else None


def config_defense(cfg: ExperimentConfig | None, aggregator: str | None) -> str:
    """A run's server defense in words, from its config (``aggregator`` without one)."""
    if cfg is None:
        return defense_name(aggregator, None)
    d = cfg.defenses
    return defense_name(rule_key(cfg.federation.aggregator, cfg.federation.pre_aggregator),
                        d.update_clip, d.flame, fltrust=d.fltrust,
                        dp_level=d.dp.level if d.dp.enabled else None)


def backdoor_runs(rows: list[RunRow]) -> tuple[list[BackdoorRun], list[Path]]:
    """The finished runs of ``rows`` with backdoor results, newest first; and the summary
    files of finished backdoor runs whose results can't be read."""
    ok, damaged = finished_with(rows, "backdoor")
    return [BackdoorRun(**vars(r)) for r in ok], damaged


def _patients(e: BackdoorEffect) -> str:
    return f"{e.patients_backdoored} of {e.patients}"


def _interval(e: BackdoorEffect) -> str:
    ci = e.patient_rate_ci
    return f"95 % interval {ci[0]:.0%}–{ci[1]:.0%}" if ci else "no interval"


def _hu(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} HU"


def verdict(run: BackdoorRun) -> Verdict:
    """The run's backdoor verdict (:func:`summary_verdict`)."""
    assert run.summary is not None
    return summary_verdict(run.summary, run.defense)


def summary_verdict(summary: RunSummary, defense: str) -> Verdict:
    """The backdoor's verdict in words, with what it rests on ("–" where a figure could not
    be measured, e.g. a bone region on slices without bone); ``defense``: the run's server
    defense in words."""
    s = summary.backdoor
    assert s is not None
    rests = (f"Mean shift of the targeted region under the trigger **{_hu(s.success_hu)}** "
             f"(the federation without the attacker: {_hu(s.null.success_hu)}); patients "
             f"whose region moved {s.threshold_hu:.0f} HU or more: **{_patients(s)}** "
             f"({_interval(s)}; without the attacker {_patients(s.null)}). Ordinary scans: "
             f"average error {_hu(s.clean_mae_hu)} against {_hu(s.clean_federation_mae_hu)} "
             f"without the attacker. Attack: {hospital_names(s.malicious_names)}, "
             f"{_attack_words(s)}; defense: {defense}; one seed.")
    if s.control is not None:
        rests += (f" The same attack against FedAvg: {_hu(s.control.success_hu)}, "
                  f"{_patients(s.control)} patients.")
    if s.defense_mae_ratio is not None:
        rests += (f" The defense's cost: error on ordinary scans ×{s.defense_mae_ratio:.2f} "
                  "that of FedAvg without the attacker.")
    dp = summary.federation.dp
    if dp.enabled and dp.level == "server":
        rests += (f" Server-side DP: {epsilon_text(dp.epsilon)} (δ {dp.delta:g}), a guarantee "
                  "for the global models, not for the uploads the server receives.")
    figure = _hu(s.success_hu)
    if s.verdict == "implanted":
        return Verdict("red", "Backdoor implanted: a trigger makes the synthetic CT lie",
                       rests, figure, s.success_hu)
    if s.verdict == "partial":
        return Verdict("orange", "Backdoor partly implanted: some patients' synthetic CT "
                       "still lies under the trigger", rests, figure, s.success_hu)
    if s.verdict == "stopped":
        return Verdict("green", f"{defense} stopped this backdoor at this sample size",
                       rests, figure, s.success_hu)
    if s.verdict == "inconclusive":
        return Verdict("gray", "Inconclusive: more patients are needed to tell", rests)
    return Verdict("gray", "The attack was too weak to judge the defense: it did not implant "
                   "a backdoor even against FedAvg", rests)


def _attack_words(s: BackdoorSummary) -> str:
    boost = f", update boosted ×{s.boost:g}" if s.boost else ""
    hides = (", its update kept near the global model and scaled to an honest norm"
             if s.attack == "constrain_scale" else "")
    return (f"{trigger_words(s.trigger)}, CT {s.shift_hu:+.0f} HU "
            f"{'in the centre' if s.target_region == 'trigger' else 'in bone'}{boost}{hides}")


def trigger_words(trigger: dict) -> str:
    """The trigger in words: "a 4 px bright square", "a faint texture", "a zipper line"."""
    kind, size = trigger.get("kind", "patch"), trigger.get("size", "?")
    if kind == "texture":
        return "a faint checkerboard texture over the head"
    if kind == "artefact":
        return f"a {size} px zipper line (a scanner artefact)"
    return f"a {size} px bright square"


def hospital_table(s: BackdoorSummary) -> tuple[pd.DataFrame, dict[str, tuple[str, str, str]]]:
    """Per hospital (the unseen one included): the mean shift under the trigger, the share
    of slices past the threshold, the patients scored and, under FLAME or FLTrust, what the
    server did with its uploads; and the columns' labels."""
    filtered = {key for row in s.server_filter.values() for key in row}
    table = pd.DataFrame([{"Hospital": hospital_name(name), "shift": row.success_hu,
                           "moved": None if row.success_rate is None else 100 * row.success_rate,
                           "patients": row.patients,
                           **{key: _filter_value(s, name, key) for key in filtered}}
                          for name, row in s.per_center.items()])
    return table, {
        **({"admitted": ("Admitted by FLAME (% of rounds)", "%.0f",
                         "How often FLAME's clustering let this hospital's upload into the "
                         "average (empty: the unseen hospital sends none)")}
           if "admitted" in filtered else {}),
        **({"trust": ("FLTrust's trust (0–1)", "%.2f",
                      "FLTrust's mean trust score in this hospital's updates: their cosine "
                      "with the server's own update, 0 when they point away from it")}
           if "trust" in filtered else {}),
        "shift": ("Mean shift under the trigger (HU)", "%.0f",
                  "How far the targeted region's synthetic CT moved when the MRI carried the "
                  "trigger, in the attacker's direction, averaged over the hospital's slices"),
        "moved": (f"Slices moved ≥ {s.threshold_hu:.0f} HU (%)", "%.0f",
                  "Share of the hospital's held-out slices whose region moved at least this"),
        "patients": ("Patients", "%d", "Held-out patients scored (nobody trained on them)")}


def rounds_figure(s: BackdoorSummary, defense: str) -> go.Figure | None:
    """The backdoor's success after each evaluated round (HU): this run (its server
    ``defense`` in words) and its FedAvg control, with the threshold and the clean
    federation's final shift; None for a run that did not record it."""
    if not s.per_round:
        return None
    fig = go.Figure()
    for name, series, dash in ((f"this run ({defense})", s.per_round, "solid"),
                               ("the same attack against FedAvg", s.control_per_round, "dot")):
        if series:
            fig.add_trace(go.Scatter(x=[p["round"] for p in series],
                                     y=[p["success_hu"] for p in series], name=name,
                                     mode="lines+markers", line={"dash": dash}))
    fig.add_hline(y=s.threshold_hu, line_dash="dot", line_color="gray",
                  annotation_text=f"{s.threshold_hu:.0f} HU", annotation_position="top left")
    if s.null.success_hu is not None:
        fig.add_hline(y=s.null.success_hu, line_dash="dash", line_color="#1e8449",
                      annotation_text="without the attacker",
                      annotation_position="bottom right")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title="round",
                      yaxis_title="mean shift under the trigger (HU)",
                      legend={"orientation": "h", "y": -0.3})
    return fig


def _filter_value(s: BackdoorSummary, name: str, key: str) -> float | None:
    value = s.server_filter.get(name, {}).get(key)
    return None if value is None else 100 * value if key == "admitted" else value


# --------------------------------------------------------------------------- the study

STUDIES = (("backdoor-paper", "The backdoor study: each attack against each defense, over "
                                "seeds"),
           ("backdoor-defenses", "FLTrust, server-side DP, an attacker that hides, and other "
                                 "triggers, over seeds"))
ROUNDS_CAPTION = ("How far the trigger moved the targeted region after each round (the mean "
                  "over every held-out slice): this run, and where the run is defended the "
                  "same attack against plain FedAvg. Above the dotted line the average slice "
                  "is backdoored; the dashed line is the federation trained without the "
                  "attacker, after its last round.")
ATTACK_NAMES = {"model_replacement": "Model replacement (boost ×2)",
                "data": "Backdoored data only",
                "constrain_scale": "Constrain-and-scale (hides its update)"}
TRIGGER_NAMES = {"texture": "texture trigger", "artefact": "artefact trigger"}


def cell_words(label: str | None) -> str:
    """A backdoor study cell label (``attack=data, malicious_centers=[0], …``) in words."""
    parts = cell_parts(label)
    attackers = parts.get("malicious_centers", "[0]").strip("[]").split(",")
    defense = defense_name(rule_key(parts.get("aggregator", "fedavg"),
                                    parts.get("pre_aggregator")), parts.get("update_clip"),
                           parts.get("flame") == "true", fltrust=parts.get("fltrust") == "true",
                           dp_level=parts.get("level"))
    trigger = TRIGGER_NAMES.get(parts.get("trigger", ""))
    attack = ATTACK_NAMES.get(parts.get("attack", "model_replacement"), parts.get("attack"))
    return (f"{attack}{f' with a {trigger}' if trigger else ''}, {defense}, "
            f"{len(attackers)} attacker{'s' if len(attackers) > 1 else ''}, "
            f"seed {parts.get('seed', '0')}")


def study_table(rows: list[SweepRow]) -> pd.DataFrame:
    """One line per attack × defense × attackers: the mean shift under the trigger over
    seeds with its 95 % interval, the backdoored patients over all seeds, the clean error's
    ratio and each seed's verdict."""
    groups: dict[tuple, list[SweepRow]] = {}
    for r in rows:
        if r.backdoor_attack is None:
            continue
        key = (attack_name(r), row_defense(r), len((r.malicious or "").split()))
        groups.setdefault(key, []).append(r)
    lines = []
    for (attack, defense, attackers), group in groups.items():
        shifts = [r.backdoor_success_hu for r in group if r.backdoor_success_hu is not None]
        ci = mean_interval(shifts)
        lines.append({
            "Attack": attack, "Defense": defense,
            "Attackers": attackers, "Seeds": len(group),
            "Mean shift (HU)": sum(shifts) / len(shifts) if shifts else None,
            "95 % interval": f"{ci[0]:.0f} – {ci[1]:.0f}" if ci else "one seed",
            "Patients backdoored": f"{sum(r.backdoor_patients_backdoored or 0 for r in group)}"
                                   f" of {sum(r.backdoor_patients or 0 for r in group)}",
            "Clean error ratio": _mean([r.backdoor_clean_mae_ratio for r in group]),
            "Defense's cost": _mean([r.backdoor_defense_mae_ratio for r in group]),
            "Verdicts": ", ".join(r.backdoor_verdict or "?" for r in group)})
    return pd.DataFrame(lines)


def attack_name(row: SweepRow) -> str:
    """A study row's attack in words, with its trigger when not the square."""
    name = ATTACK_NAMES.get(row.backdoor_attack or "", row.backdoor_attack or "?")
    trigger = TRIGGER_NAMES.get(row.backdoor_trigger or "")
    return f"{name}, {trigger}" if trigger else name


def row_defense(row: SweepRow) -> str:
    """A study row's defense in words (:func:`defense_name`), with server-side DP's ε."""
    name = defense_name(rule_key(row.aggregator or "fedavg", row.pre_aggregator),
                        row.update_clip, row.flame, fltrust=row.fltrust,
                        dp_level=row.dp_level if row.dp_enabled else None)
    if row.dp_enabled and row.dp_level == "server":
        name += f" ({epsilon_text(row.epsilon)})"
    return name


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def study_figure(rows: list[SweepRow], threshold: float = 100.0) -> go.Figure:
    """Every backdoor run of the study: its mean shift under the trigger (x, HU) against its
    clean error ÷ the clean federation's (y), one trace per defense and attacker count
    (circles for one attacker, diamonds for two, …); ``threshold``: the runs' threshold_hu
    (the catalogue's sweeps keep the default)."""
    fig = go.Figure()
    counts = sorted({len((r.malicious or "").split()) for r in rows if r.backdoor_attack})
    symbols = ("circle", "diamond", "square", "cross", "x")
    for defense in dict.fromkeys(row_defense(r) for r in rows if r.backdoor_attack):
        for k, attackers in enumerate(counts):
            symbol = symbols[k % len(symbols)]
            picked = [r for r in rows if r.backdoor_attack and row_defense(r) == defense
                      and len((r.malicious or "").split()) == attackers]
            if picked:
                fig.add_trace(go.Scatter(
                    x=[r.backdoor_success_hu for r in picked],
                    y=[r.backdoor_clean_mae_ratio for r in picked], mode="markers",
                    marker={"symbol": symbol, "size": 9},
                    name=f"{defense}, {attackers} attacker{'s' if attackers > 1 else ''}",
                    text=[cell_words(r.cell) for r in picked],
                    hovertemplate="%{text}<br>shift %{x:.0f} HU, error ×%{y:.2f}<extra></extra>"))
    fig.add_vline(x=threshold, line_dash="dot")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title="mean shift of the targeted region under the trigger (HU)",
                      yaxis_title="error on ordinary scans ÷ without the attacker")
    return fig
