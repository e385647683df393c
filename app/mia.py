"""Display helpers for the Membership inference page: run listing, verdict, ROC charts, tables.

Only formats what the engine wrote (``summary.json``'s ``mia`` block, ``mia/roc.json`` and the
``mia-dp`` sweep table); the one number derived here is which noise level first brings every
main attack near chance, read straight off the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.results import ResultRun, finished_runs_with, read_json

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


class MiaRun(ResultRun):
    """A finished run that carries membership-inference results."""

    @property
    def mia(self) -> dict[str, Any]:
        return self.summary["mia"]

    @property
    def secagg(self) -> bool:
        return bool((self.summary.get("federation") or {}).get("secure_aggregation"))

    @property
    def defenses(self) -> str:
        parts = ["SecAgg"] if self.secagg else []
        if self.dp_text:
            parts.append(self.dp_text)
        return " + ".join(parts) or "no defense"

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        return (f"{self.name} · {when} · SecAgg {'on' if self.secagg else 'off'} · "
                f"{self.dp_text or 'DP off'}")

    def legend(self) -> str:
        when = time.strftime("%H:%M", time.localtime(self.created or 0))
        return f"{self.name} {when} ({self.defenses})"

    def roc(self) -> dict[str, Any] | None:
        return read_json(self.run.path / "mia" / "roc.json")


def mia_runs() -> list[MiaRun]:
    """Finished runs whose summary has a ``mia`` block, newest first."""
    runs, _ = finished_runs_with("mia", "membership")
    return [MiaRun(r.run, r.created, r.summary) for r in runs]


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    colour: str
    title: str
    center: str | None = None
    auc: float | None = None
    ci: tuple[float, float] | None = None
    attack: str = ""


NO_EVIDENCE = ("No evidence of membership leakage at this sample size: the attack did not "
               "tell training patients from held-out ones better than chance in a way these "
               "few patients can show (which is not the same as safe)")
OLD_FORMAT = ("This run was made by an older version without patient-level statistics: "
              "its numbers are shown, but no verdict. Run the preset again for one.")


def patient_figures(mia: dict[str, Any], attack: str) -> dict[str, Any]:
    """The patient-level block of ``attack`` (AUC, intervals, p-values, patients; pooled)."""
    if attack == mia.get("attack") and isinstance(mia.get("patient"), dict):
        return mia["patient"]
    return ((mia.get("variants") or {}).get(attack) or {}).get("patient") or {}


def verdict(mia: dict[str, Any]) -> Verdict:
    """The engine's patient-level verdict (``mia.verdict``), at the hospital where the attack
    it rests on works best."""
    verdicts = mia.get("verdict")
    if not isinstance(verdicts, dict):
        return Verdict("gray", OLD_FORMAT)
    attack = str(mia.get("verdict_attack") or mia.get("attack") or "")
    flat = ((mia.get("variants") or {}).get(attack) or {}).get("degenerate") or {}
    if flat and all(flat.values()):
        return Verdict("gray", NO_SIGNAL, attack=attack)
    figures = patient_figures(mia, attack)
    aucs = {c: a for c, a in (figures.get("auc") or {}).items() if not flat.get(c)}
    cis = figures.get("auc_ci") or {}
    risky = [c for c, v in verdicts.items() if c != "overall" and v == "risk" and c in aucs]
    pool = risky or [c for c in aucs if c in verdicts]
    center = max(pool, key=aucs.get) if pool else None
    auc = aucs.get(center) if center else None
    ci = tuple(cis.get(center) or (auc, auc)) if center else None
    if verdicts.get("overall") != "risk":
        return Verdict("blue", NO_EVIDENCE, center, auc, ci, attack)
    pooled = figures.get("pooled") or {}
    if not risky and pooled.get("auc") is not None:
        # Only all hospitals together show it: the evidence is the pooled figure.
        center, auc, ci = None, pooled["auc"], tuple(pooled.get("auc_ci") or (0.5, 0.5))
    where = ("this hospital's training set" if risky
             else "a hospital's training set (shown by all hospitals together)")
    if (auc or 0) >= HIGH:
        title = f"High risk: a curious server can tell whether a patient was in {where}"
        colour = "red"
    else:
        title = (f"Risk: a curious server tells better than chance whether a patient was in "
                 f"{where}")
        colour = "orange"
    return Verdict(colour, title, center, auc, ci, attack)


def verdict_detail(v: Verdict, mia: dict[str, Any]) -> str:
    if v.auc is None:
        return ("The server's view of every hospital was the same, so this attack had nothing "
                "to compare: it says nothing either way.")
    figures = patient_figures(mia, v.attack)
    family = mia.get("family")
    if v.center is None:
        pooled = figures.get("pooled") or {}
        where, n = "All hospitals together", pooled.get("n") or {}
        fam, p = pooled.get("auc_ci_family"), pooled.get("p_value")
    else:
        where = f"Worst-case hospital **{v.center}**"
        n = (figures.get("n") or {}).get(v.center) or {}
        fam = (figures.get("auc_ci_family") or {}).get(v.center)
        p = (figures.get("p_value") or {}).get(v.center)
    text = (f"{where}, {attack_name(v.attack)}: patient-level AUC **{v.auc:.2f}** (95% "
            f"interval {v.ci[0]:.2f}–{v.ci[1]:.2f}, resampling patients) from "
            f"{n.get('members', '?')} training and {n.get('nonmembers', '?')} held-out "
            "patients.")
    if fam and p is not None and family:
        text += (f" Counted as better than chance only if the interval corrected for "
                 f"{family} tests ({fam[0]:.2f}–{fam[1]:.2f}) lies above 0.5 and an exact "
                 f"rank test agrees (here p = {p:.2g}, needed < {0.05 / family:.2g}).")
    if not mia.get("individual_uploads", True):
        text += (" The server holds no individual hospital update here (secure aggregation), "
                 "so the per-hospital FedMIA attacks do not apply: their scores on the masked "
                 "uploads are shown below only as a control. The verdict rests on the attack "
                 "on the released global model, which secure aggregation does not hide.")
    return text + " AUC 0.5 means guessing; 1.0 means the server is never wrong."


# --------------------------------------------------------------------------- ROC charts


def roc_figure(panels: list[str], runs: list[tuple[MiaRun, dict[str, Any], str]],
               attack: str) -> go.Figure:
    """One small ROC chart per hospital (plus all together); one curve per run.

    ``runs`` holds (run, its roc.json, line dash); a run without this attack is skipped.
    """
    cols = min(len(panels), 5)
    rows = -(-len(panels) // cols)
    main_degenerate = (runs[0][0].mia.get("variants", {}).get(attack, {})
                       .get("degenerate") or {})
    titles = [POOLED_LABEL if p == POOLED else p + (" (no signal)" if main_degenerate.get(p)
                                                     else "") for p in panels]
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
        fig.update_xaxes(range=[0, 1], tickformat=".0%", dtick=0.5, row=r, col=c,
                         title_text="false alarms" if r == rows else None)
        # Every panel has the same 0-100% scale: label it once per row, not between panels.
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%", dtick=0.5, row=r, col=c,
                         showticklabels=c == 1, title_text="members caught" if c == 1 else None)
    fig.update_layout(height=300 * rows + 40, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25 if rows == 1 else -0.1})
    fig.update_annotations(font_size=13)
    return fig


# --------------------------------------------------------------------------- tables


def auc_table(mia: dict[str, Any]) -> pd.DataFrame:
    """Rows = attacks, columns = hospitals + all together; degenerate cells say so."""
    headline = mia.get("attack")
    rows = []
    for attack, v in (mia.get("variants") or {}).items():
        degenerate = v.get("degenerate") or {}
        row = {"Attack": attack_name(attack) + (" ★" if attack == headline else "")}
        for center, auc in (v.get("auc") or {}).items():
            row[center] = "degenerate" if degenerate.get(center) else f"{auc:.2f}"
        all_flat = bool(degenerate) and all(degenerate.values())
        row[POOLED_LABEL] = ("degenerate" if all_flat or v.get("pooled_auc") is None
                             else f"{v['pooled_auc']:.2f}")
        rows.append(row)
    return pd.DataFrame(rows)


def tpr_table(mia: dict[str, Any]) -> pd.DataFrame:
    """The headline attack's share of members caught at fixed false-alarm rates."""
    degenerate = mia.get("degenerate") or {}
    per = dict(mia.get("tpr_at_fpr") or {})
    per[POOLED_LABEL] = (mia.get("pooled") or {}).get("tpr_at_fpr") or {}
    needs = mia.get("tpr_min_nonmembers") or {}
    rows = []
    for center, tpr in per.items():
        row = {"Hospital": center}
        for key, text in FPR_LEVELS:
            value = tpr.get(key)
            row[f"Caught at {text} false alarms"] = (
                "degenerate" if degenerate.get(center)
                else f"needs ≥ {needs[key]} non-members" if value is None and key in needs
                else "–" if value is None else f"{value:.0%}")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- DP sweep


def latest_dp_sweep(root: Path) -> tuple[Path, list[dict[str, Any]]] | None:
    """The newest ``mia-dp`` sweep table under the runs root, if one has rows."""
    tables = sorted((root / "sweeps").glob("mia-dp-*/table.json"),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for path in tables:
        rows = read_json(path)
        if isinstance(rows, list) and rows:
            return path.parent, rows
    return None


LEVEL_NAMES = {"client": "hospital-level DP", "sample": "patient-level DP"}


def noise_label(row: dict[str, Any]) -> str:
    """A DP sweep cell in words: "no DP", or the level and the ε it reached."""
    if not row.get("dp_enabled"):
        return "no DP"
    level = LEVEL_NAMES.get(str(row.get("dp_level") or "client"), "DP")
    eps = row.get("epsilon")
    if "epsilon" not in row:  # a table from an older sweep: σ only
        sigma = float(row.get("noise_multiplier") or 0.0)
        return "clipping only (σ 0)" if sigma == 0 else f"σ {sigma:g}"
    return f"{level}, ε {eps:.3g}" if eps is not None else f"{level}, ε ∞"


def _eps_label(row: dict[str, Any]) -> str:
    eps = row.get("epsilon")
    return f"ε {eps:.3g}" if eps is not None else "ε ∞"


def dp_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Patient-level AUC (with its interval) of the verdict's attack per privacy budget ε, one
    line per DP level, and the model's error (right axis); the run without DP as dotted
    lines."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray", annotation_text="guessing",
                  annotation_position="bottom right")
    base = next((r for r in rows if not r.get("dp_enabled")), None)
    if base and base.get("patient_auc_pooled") is not None:
        fig.add_hline(y=base["patient_auc_pooled"], line_dash="dot", line_color="#c0392b",
                      annotation_text=f"no DP: AUC {base['patient_auc_pooled']:.2f}",
                      annotation_position="top left")
    colours = {"client": "#2471a3", "sample": "#c0392b"}
    for level, name in LEVEL_NAMES.items():
        cells = [r for r in rows if r.get("dp_enabled") and r.get("dp_level") == level]
        if not cells:
            continue
        x = [_eps_label(r) for r in cells]
        y = [r.get("patient_auc_pooled") for r in cells]
        ci = [r.get("patient_auc_ci_pooled") or [v, v] for r, v in zip(cells, y, strict=True)]
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
            x=x, y=[r.get("mae_hu") for r in cells], mode="lines+markers",
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


def dp_sentence(rows: list[dict[str, Any]]) -> str:
    """For each DP level, the largest ε at which the attack shows no evidence any more, and
    what it costs the model."""
    base = next((r for r in rows if not r.get("dp_enabled")), None)
    if all(not r.get("dp_enabled") for r in rows):
        return ("Only the run without privacy noise has finished so far; the privacy budgets "
                "appear here as the sweep goes on.")
    parts = []
    for level, name in LEVEL_NAMES.items():
        cells = [r for r in rows if r.get("dp_enabled") and r.get("dp_level") == level]
        if not cells:
            continue
        safe = next((r for r in cells if r.get("mia_verdict") == "no_evidence"), None)
        if safe is None:
            parts.append(f"With **{name}**, every budget tested still leaves evidence of "
                         "membership leakage.")
            continue
        cost = ""
        if base and base.get("mae_hu") is not None and safe.get("mae_hu") is not None:
            cost = (f" The model's average error goes from {base['mae_hu']:.0f} HU without DP "
                    f"to {safe['mae_hu']:.0f} HU ({safe['mae_hu'] - base['mae_hu']:+.0f} HU).")
        parts.append(f"With **{name}**, from **{_eps_label(safe)}** on the attack shows no "
                     f"evidence at this sample size.{cost}")
    return " ".join(parts)
