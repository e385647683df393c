"""Display helpers for the Membership inference page: run listing, verdict, ROC charts, tables.

Only formats what the engine wrote (``summary.json``'s ``mia`` block, ``mia/roc.json`` and the
``mia-dp`` sweep table); the one number derived here is which noise level first brings every
main attack near chance, read straight off the table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.common import Verdict, hospital_name
from app.views.results import RunRow, finished_with, read_json
from engine.analyses.results import MiaSummary
from engine.analyses.sweep_table import SweepRow
from engine.clients.dp import LEVEL_WORDS

ATTACK_NAMES = {
    "fedmia-i/phi": "FedMIA-I (loss, per-sample σ)",
    "fedmia-i/phi_pooled": "FedMIA-I (loss, pooled σ)",
    "fedmia-i/log": "FedMIA-I (loss, log score)",
    "fedmia-ii/phi": "FedMIA-II (gradient, per-sample σ)",
    "fedmia-ii/phi_pooled": "FedMIA-II (gradient, pooled σ)",
    "fedmia-ii/log": "FedMIA-II (gradient, log score)",
    "global_loss": "Global model loss (Yeom)",
    "own_loss": "Hospital's own loss, no reference",
}
POOLED = "pooled"
POOLED_LABEL = "All hospitals"
HIGH, MODERATE = 0.8, 0.6
FPR_LEVELS = (("0.1", "10%"), ("0.01", "1%"), ("0.001", "0.1%"))
NO_SIGNAL = ("No signal: every hospital looked identical to the server "
             "(the attack cannot rank anyone)")


def attack_name(attack: str) -> str:
    return ATTACK_NAMES.get(attack, attack)


class MiaRun(RunRow):
    """A finished run that carries membership-inference results."""

    @property
    def mia(self) -> MiaSummary:
        assert self.summary is not None and self.summary.mia is not None
        return self.summary.mia

    @property
    def short_defenses(self) -> str:
        parts = ["SecAgg"] if self.secure_aggregation else []
        if self.dp_text:
            parts.append(self.dp_text)
        return " + ".join(parts) or "no defense"

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        return (f"{self.name} · {when} · SecAgg {'on' if self.secure_aggregation else 'off'} · "
                f"{self.dp_text or 'DP off'}")

    def legend(self) -> str:
        when = time.strftime("%H:%M", time.localtime(self.created or 0))
        return f"{self.name} {when} ({self.short_defenses})"

    def roc(self) -> dict[str, Any] | None:
        return read_json(self.path / "mia" / "roc.json")


def mia_runs(rows: list[RunRow]) -> tuple[list[MiaRun], list[Path]]:
    """The finished runs of ``rows`` that carry membership results, newest first; and the
    summary files of finished membership runs that are missing or damaged."""
    runs, damaged = finished_with(rows, "mia")
    return [MiaRun(**vars(r)) for r in runs], damaged


# --------------------------------------------------------------------------- verdict


NO_EVIDENCE = ("No evidence of membership leakage at this sample size: the attack did not "
               "tell training patients from held-out ones better than chance in a way these "
               "few patients can show (which is not the same as safe)")
OLD_FORMAT = ("This run was made by an older version without patient-level statistics: "
              "its numbers are shown, but no verdict. Run the preset again for one.")


UNITS = ("The verdict scores patients (each patient's mean slice score), the unit membership "
         "is about; the tables and curves below score single slices, which count every slice "
         "of a patient as separate evidence, so their AUC differs and looks more certain than "
         "it is.")


def interval_words(ci: tuple[float, float] | list[float] | None) -> str:
    """A patient-level 95 % interval in words; a degenerate one (every resample gave the same
    AUC, as with 2 against 2 patients) is not an interval."""
    if ci is None or ci[1] - ci[0] < 1e-9:
        return "95% interval: cannot be estimated at this sample size"
    return f"95% interval {ci[0]:.2f}–{ci[1]:.2f}, resampling patients"


def _figure(auc: float, ci: tuple[float, float] | list[float] | None) -> str:
    if ci is None or ci[1] - ci[0] < 1e-9:
        return f"patient-level AUC {auc:.2f} (interval not estimable)"
    return f"patient-level AUC {auc:.2f} (interval {ci[0]:.2f}–{ci[1]:.2f})"


def _pooled_words(mia: MiaSummary, attack: str) -> list[str]:
    """The verdict's sentences on all hospitals pooled: the AUC, its interval and sample,
    and the correction for the attacks tried ([] without pooled figures)."""
    pooled = mia.figures(attack).pooled
    if pooled.auc is None:
        return []
    n = pooled.n
    words = [f"All hospitals together, {attack_name(attack)}: patient-level AUC "
             f"**{pooled.auc:.2f}** ({interval_words(pooled.auc_ci)}) from "
             f"{n.members} training and {n.nonmembers} held-out patients."]
    fam, p = pooled.auc_ci_family, pooled.p_value
    if fam and p is not None and mia.family:
        words.append(f"Counted as better than chance only if the interval corrected for "
                     f"{mia.family} tests ({fam[0]:.2f}–{fam[1]:.2f}) lies above 0.5 and an "
                     f"exact rank test agrees (here p = {p:.2g}, needed < "
                     f"{0.05 / mia.family:.2g}).")
    return words


def verdict(mia: MiaSummary) -> Verdict:
    """The engine's patient-level verdict (``mia.verdict``). Every run is told on the same
    basis: all hospitals pooled at patient level (what the engine's overall verdict always
    tests), then the worst single hospital, which decides the verdict only where its own
    patients show the risk."""
    if mia.verdict is None:
        return Verdict("gray", OLD_FORMAT)
    attack = mia.verdict_attack or mia.attack
    flat = mia.variants[attack].degenerate if attack in mia.variants else {}
    if flat and all(flat.values()):
        return Verdict("gray", NO_SIGNAL, "The server's view of every hospital was the same, "
                       "so this attack had nothing to compare: it says nothing either way.")
    figures = mia.figures(attack)
    aucs = {c: a for c, a in figures.auc.items() if not flat.get(c)}
    risky = [c for c, v in mia.verdict.items() if c != "overall" and v == "risk" and c in aucs]
    pool = risky or [c for c in aucs if c in mia.verdict]
    center = max(pool, key=aucs.__getitem__) if pool else None
    pooled = figures.pooled
    if center is None and pooled.auc is None:
        return Verdict("gray", NO_SIGNAL, "No hospital has patient-level figures.")
    parts, figure = _pooled_words(mia, attack), ""
    if pooled.auc is not None:
        figure = _figure(pooled.auc, pooled.auc_ci)
    if center is not None and (len(aucs) > 1 or pooled.auc is None):
        ci = figures.auc_ci.get(center)
        n_c = figures.n.get(center)
        own = (", better than chance on its own patients" if center in risky else "")
        parts.append(f"{'Worst-case' if risky else 'Worst single'} hospital "
                     f"**{hospital_name(center)}**: patient-level AUC **{aucs[center]:.2f}** "
                     f"({interval_words(ci)}) from {n_c.members if n_c else '?'} training and "
                     f"{n_c.nonmembers if n_c else '?'} held-out patients{own}.")
        if risky or not figure:
            figure = _figure(aucs[center], ci)
    if not mia.individual_uploads:
        parts.append("The server holds no individual hospital update here (secure "
                     "aggregation), so the per-hospital FedMIA attacks do not apply: their "
                     "scores on the masked uploads are shown below only as a control. The "
                     "verdict rests on the attack on the released global model, which secure "
                     "aggregation does not hide, judged as every run is: all hospitals "
                     "pooled, and each hospital alone.")
    parts.append("AUC 0.5 means guessing; 1.0 means the server is never wrong. " + UNITS)
    detail = " ".join(parts)
    auc = aucs[center] if risky else (pooled.auc if pooled.auc is not None else aucs[center])
    if mia.verdict.get("overall") != "risk":
        return Verdict("blue", NO_EVIDENCE, detail, figure, auc)
    whose = ("this hospital's training set" if risky
             else "a hospital's training set (shown by all hospitals together)")
    if auc >= HIGH:
        return Verdict("red", f"High risk: a curious server can tell whether a patient was in "
                       f"{whose}", detail, figure, auc)
    return Verdict("orange", f"Risk: a curious server tells better than chance whether a "
                   f"patient was in {whose}", detail, figure, auc)


# --------------------------------------------------------------------------- ROC charts


def roc_figure(panels: list[str], runs: list[tuple[MiaRun, dict[str, Any], str]],
               attack: str) -> go.Figure:
    """One small ROC chart per hospital (plus all together); one curve per run.

    ``runs`` holds (run, its roc.json, line dash); a run without this attack is skipped.
    """
    cols = min(len(panels), 5)
    rows = -(-len(panels) // cols)
    variant = runs[0][0].mia.variants.get(attack)
    main_degenerate = variant.degenerate if variant else {}
    titles = [POOLED_LABEL if p == POOLED else hospital_name(p)
              + (" (no signal)" if main_degenerate.get(p) else "") for p in panels]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.04, vertical_spacing=0.18)
    colours = ("#c0392b", "#2471a3")
    for i, panel in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="guessing",
                                 line={"dash": "dot", "color": "gray", "width": 1},
                                 legendgroup="guess", showlegend=i == 0, hoverinfo="skip"),
                      row=r, col=c)
        for k, (run, roc, dash) in enumerate(runs):
            curve = (roc.get(attack) or {}).get(panel)
            if not curve:
                continue
            fig.add_trace(go.Scatter(
                x=curve["fpr"], y=curve["tpr"], mode="lines", name=run.legend(),
                legendgroup=run.run.run_id, showlegend=i == 0,
                line={"dash": dash, "color": colours[k % 2], "width": 2, "shape": "hv"},
                hovertemplate=(f"{run.legend()}<br>AUC {curve['auc']:.2f}<br>"
                               "false alarms %{x:.0%}, caught %{y:.0%}<extra></extra>")),
                row=r, col=c)
        # A little room around 0–100 %: the two "0%" labels at the corner stay apart.
        fig.update_xaxes(range=[-0.05, 1.05], tickformat=".0%", dtick=0.5, row=r, col=c,
                         title_text="false alarms" if r == rows else None)
        # Every panel has the same 0-100% scale: label it once per row, not between panels.
        fig.update_yaxes(range=[-0.05, 1.05], tickformat=".0%", dtick=0.5, row=r, col=c,
                         showticklabels=c == 1, title_text="members caught" if c == 1 else None)
    fig.update_layout(height=300 * rows + 40, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25 if rows == 1 else -0.1})
    fig.update_annotations(font_size=13)
    return fig


# --------------------------------------------------------------------------- tables


def auc_table(mia: MiaSummary) -> pd.DataFrame:
    """Rows = attacks, columns = hospitals + all together; degenerate cells say so, and
    per-hospital FedMIA under secure aggregation is marked as a control."""
    rows = []
    for attack, v in mia.variants.items():
        control = (mia.verdicts.get(attack) or {}).get("overall") == "not_applicable"
        rests = attack == (mia.verdict_attack or mia.attack)
        row = {"Attack": attack_name(attack) + (" ★" if rests else "")
               + (" (control: not applicable)" if control else "")}
        for center, auc in v.auc.items():
            row[hospital_name(center)] = ("degenerate" if v.degenerate.get(center)
                                          else f"{auc:.2f}")
        all_flat = bool(v.degenerate) and all(v.degenerate.values())
        row[POOLED_LABEL] = ("degenerate" if all_flat or v.pooled_auc is None
                             else f"{v.pooled_auc:.2f}")
        rows.append(row)
    return pd.DataFrame(rows)


def tpr_table(mia: MiaSummary) -> pd.DataFrame:
    """The headline attack's share of member slices caught at fixed false-alarm rates over
    slices ("needs ≥ N non-member patients" where the patients cannot resolve the rate)."""
    per = dict(mia.tpr_at_fpr)
    per[POOLED_LABEL] = mia.pooled.tpr_at_fpr
    needs = mia.tpr_min_nonmembers
    rows = []
    for center, tpr in per.items():
        row = {"Hospital": hospital_name(center) if center != POOLED_LABEL else center}
        for key, text in FPR_LEVELS:
            value = tpr.get(key)
            row[f"Slices caught at {text} false alarms"] = (
                "degenerate" if mia.degenerate.get(center)
                else f"needs ≥ {needs[key]} non-member patients" if value is None
                and key in needs
                else "–" if value is None else f"{value:.0%}")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- DP sweep




def noise_label(row: SweepRow) -> str:
    """A DP sweep cell in words: "no DP", or the level and the ε it reached."""
    if not row.dp_enabled:
        return "no DP"
    level = LEVEL_WORDS.get(str(row.dp_level or "client"), "DP")
    eps = row.epsilon
    if "epsilon" not in row.model_fields_set:  # a table from an older sweep: σ only
        sigma = float(row.noise_multiplier or 0.0)
        return "clipping only (σ 0)" if sigma == 0 else f"σ {sigma:g}"
    return f"{level}, ε {eps:.3g}" if eps is not None else f"{level}, ε ∞"


def cell_words(label: str | None) -> str:
    """A running ``mia-dp`` cell's label (``enabled=true, level=sample, …``) in words."""
    parts = dict(p.split("=", 1) for p in (label or "").split(", ") if "=" in p)
    if parts.get("enabled") != "true":
        return "no DP"
    level = LEVEL_WORDS.get(parts.get("level", "client"), "DP")
    eps = parts.get("target_epsilon")
    return f"{level}, target ε {float(eps):g}" if eps else level


def _eps_label(row: SweepRow) -> str:
    eps = row.epsilon
    return f"ε {eps:.3g}" if eps is not None else "ε ∞"


def dp_figure(rows: list[SweepRow]) -> go.Figure:
    """Patient-level AUC (with its interval) of the verdict's attack per privacy budget ε, one
    line per DP level, and the model's error (right axis); the run without DP as dotted
    lines."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", annotation_text="guessing",
                  annotation_position="bottom right")
    base = next((r for r in rows if not r.dp_enabled), None)
    if base and base.patient_auc_pooled is not None:
        fig.add_hline(y=base.patient_auc_pooled, line_dash="dot", line_color="#c0392b",
                      annotation_text=f"no DP: AUC {base.patient_auc_pooled:.2f}",
                      annotation_position="top left")
    colours = {"client": "#2471a3", "sample": "#c0392b", "server": "#7d3c98"}
    for level, name in LEVEL_WORDS.items():
        cells = [r for r in rows if r.dp_enabled and r.dp_level == level]
        if not cells:
            continue
        x = [_eps_label(r) for r in cells]
        y = [r.patient_auc_pooled for r in cells]
        ci = [r.patient_auc_ci_pooled or [v, v] for r, v in zip(cells, y, strict=True)]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=f"{name}: patient-level AUC",
            line={"color": colours[level]},
            error_y={"type": "data", "symmetric": False,
                     "array": [(c[1] - v) if v is not None else None
                               for c, v in zip(ci, y, strict=True)],
                     "arrayminus": [(v - c[0]) if v is not None else None
                                    for c, v in zip(ci, y, strict=True)]},
            hovertemplate="%{x}: AUC %{y:.2f}<extra></extra>"), secondary_y=False)
        fig.add_trace(go.Scatter(
            x=x, y=[r.mae_hu for r in cells], mode="lines+markers",
            name=f"{name}: model error (HU)", line={"dash": "dash", "color": colours[level]},
            marker={"symbol": "square"}, hovertemplate="%{x}: MAE %{y:.0f} HU<extra></extra>"),
            secondary_y=True)
    fig.update_yaxes(title_text="patient-level AUC (0.5 = guessing)", range=[0, 1.05],
                     secondary_y=False)
    # From zero: an auto-ranged axis would blow a few HU up to the full chart height.
    fig.update_yaxes(title_text="model error, MAE (HU), lower = better", tickformat=".0f",
                     rangemode="tozero", secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="privacy budget ε after the last round (lower = more private)")
    fig.update_layout(height=400, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def dp_sentence(rows: list[SweepRow]) -> str:
    """For each DP level, the largest ε at which the attack shows no evidence any more, and
    what it costs the model."""
    base = next((r for r in rows if not r.dp_enabled), None)
    if all(not r.dp_enabled for r in rows):
        return ("Only the run without privacy noise has finished so far; the privacy budgets "
                "appear here as the sweep goes on.")
    parts = []
    for level, name in LEVEL_WORDS.items():
        cells = [r for r in rows if r.dp_enabled and r.dp_level == level]
        if not cells:
            continue
        safe = next((r for r in cells if r.mia_verdict == "no_evidence"), None)
        if safe is None:
            parts.append(f"With **{name}**, every budget tested still leaves evidence of "
                         "membership leakage.")
            continue
        cost = ""
        if base and base.mae_hu is not None and safe.mae_hu is not None:
            cost = (f" The model's average error goes from {base.mae_hu:.0f} HU without DP "
                    f"to {safe.mae_hu:.0f} HU ({safe.mae_hu - base.mae_hu:+.0f} HU).")
        parts.append(f"With **{name}**, from **{_eps_label(safe)}** on the attack shows no "
                     f"evidence at this sample size.{cost}")
    return " ".join(parts)


# --------------------------------------------------------------------------- page words

INTRO = ("In a **membership-inference attack**, a curious server tries to tell whether a given "
         "patient's scans were used to train a hospital's model. That matters even if no image "
         "leaks: knowing that a patient was treated at a hospital (for example a cancer "
         "centre) is itself sensitive. Pick a finished attack run below, or start one.")
EMPTY = ("No membership-inference results yet. Run the 'mia-paper' preset (button above) to "
         "attack an undefended federation, then 'mia-secagg' to see what secure aggregation "
         "changes.")
NO_ROC = ("This run has no ROC curves stored (made by an older version). Run the 'mia-paper' "
          "preset again to get them.")
ROC_CAPTION = ("Each curve slides a threshold over the server's suspicion scores, slice by "
               "slice: upward = share of training slices it catches, rightward = share of "
               "other patients' slices it wrongly flags. The dotted diagonal is guessing; a "
               "curve hugging the top-left corner means the server tells members apart.")
AUC_CAPTION = ("Slice-level AUCs (the verdict above is per patient). ★ the attack the verdict "
               "rests on. \"degenerate\": the server saw the same thing from every hospital, so "
               "the attack could not rank anyone (not a measurement).")
TPR_CAPTION = ("E.g. \"slices caught at 1% false alarms\": the share of training slices the "
               "server identifies while wrongly flagging at most 1 in 100 slices of other "
               "patients (the attacker's true-positive rate at a 1% false-positive rate); shown "
               "only where there are enough non-member patients to resolve that rate.")
ATTACKS_EXPLAINED = (
    "- **FedMIA-I (loss)**: the server checks how well the hospital's uploaded model fits the "
    "patient's scans, compared with the other hospitals' models, which never saw that "
    "patient.\n"
    "- **FedMIA-II (gradient)**: the server checks whether the hospital's update points the "
    "way the patient's scans would push the model.\n"
    "- The σ / log variants differ only in how the comparison with the other hospitals is "
    "turned into a score.\n"
    "- **Global model loss (Yeom)**: how well the final shared model fits the patient. Anyone "
    "who receives the model can try this.\n"
    "- **Hospital's own loss, no reference**: FedMIA-I's signal without the comparison with "
    "other hospitals.")
SECAGG_EXPLAINED = (
    "With **secure aggregation** each hospital masks its upload, so the server only learns the "
    "sum of all hospitals' updates, never one hospital's. Attacks that study an individual "
    "hospital's update (FedMIA) then have nothing to work on: whatever they compute from the "
    "masked uploads is noise, and the page labels them as not applicable. The final shared "
    "model is still released to everyone, though, so an attack on the **global model's loss** "
    "is still possible, with or without the defense: that is what a secure-aggregation verdict "
    "rests on (its patient-level AUC, interval and sample size are in the verdict above).")
NO_SECAGG_RUN = ("Neither run shown used secure aggregation: start the 'mia-secagg' preset and "
                 "compare it with this one.")
DP_INTRO = ("Hospital-level DP: each hospital clips its update and adds noise. Patient-level "
            "DP: each hospital trains with DP-SGD, bounding every patient's influence. ε comes "
            "from an RDP accountant (Opacus) at δ = 1e-5; lower ε = more private, and above ε "
            "10 the guarantee means little. ")
DP_OLD_TABLE = ("This privacy study was made by an older version without patient-level "
                "results: start it again.")


def tested_words(run: MiaRun) -> str:
    """What the verdict was tested on: slices and patients per hospital, rounds, defenses."""
    mia = run.mia
    n = next(iter(mia.n_candidates.values()), None)
    if n is None:
        return ""
    return (f"Tested per hospital: {n.members} training and {n.nonmembers} held-out slices of "
            f"{n.member_patients or '?'} and {n.nonmember_patients or '?'} patients, over "
            f"rounds {', '.join(map(str, mia.rounds))}. Run: {run.defenses or 'no defense'}.")


def compared_words(other: MiaRun) -> str:
    """The compared run's verdict in one line (markdown with its colour)."""
    o = verdict(other.mia)
    figure = f" ({o.figure})" if o.figure else ""
    return f"Compared run, {other.legend()}: :{o.colour}[{o.title}]{figure}."


def secagg_sentence(run: MiaRun) -> str:
    """What the global-model attack still reaches in a secure-aggregation run ("" if none)."""
    glob = run.mia.baselines.get("global_loss") or {}
    if not glob:
        return ""
    center = max(glob, key=glob.__getitem__)
    return (f"In **{run.legend()}**, the attack on the global model still reaches AUC "
            f"**{glob[center]:.2f}** at {hospital_name(center)} ("
            + ", ".join(f"{hospital_name(c)} {a:.2f}" for c, a in glob.items())
            + ", slice level).")
