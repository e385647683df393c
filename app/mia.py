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
# The attacks drawn in the DP trade-off: one per kind of signal the server has.
MAIN_ATTACKS = ("fedmia-i/phi", "fedmia-ii/phi", "global_loss")
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
        dp = (self.summary.get("federation") or {}).get("dp") or {}
        parts = ["SecAgg"] if self.secagg else []
        if dp.get("enabled"):
            parts.append(f"DP σ {dp.get('noise_multiplier', 0):g}")
        return " + ".join(parts) or "no defense"

    @property
    def label(self) -> str:
        when = time.strftime("%d %b %H:%M", time.localtime(self.created or 0))
        dp = (self.summary.get("federation") or {}).get("dp") or {}
        dp_text = f"DP on (σ {dp.get('noise_multiplier', 0):g})" if dp.get("enabled") else "DP off"
        return (f"{self.name} · {when} · SecAgg {'on' if self.secagg else 'off'} · {dp_text}")

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


def verdict(mia: dict[str, Any]) -> Verdict:
    """Risk from the headline attack at the hospital where it works best (the worst case)."""
    degenerate = mia.get("degenerate") or {}
    aucs = {c: a for c, a in (mia.get("auc") or {}).items() if not degenerate.get(c)}
    if not aucs:
        return Verdict("gray", NO_SIGNAL)
    center = max(aucs, key=aucs.get)
    auc = aucs[center]
    lo, hi = (mia.get("auc_ci") or {}).get(center) or (auc, auc)
    if auc >= HIGH:
        title = ("High risk: a curious server can tell whether a patient was in this "
                 "hospital's training set")
        colour = "red"
    elif auc >= MODERATE:
        title = ("Moderate risk: a curious server guesses better than chance whether a "
                 "patient was in this hospital's training set")
        colour = "orange"
    else:
        title = "Low risk: the attack does little better than guessing"
        colour = "green"
    return Verdict(colour, title, center, auc, (lo, hi))


def verdict_detail(v: Verdict, mia: dict[str, Any]) -> str:
    if v.auc is None:
        return ("The server's view of every hospital was the same, so this attack had nothing "
                "to compare: it says nothing either way.")
    pooled = (mia.get("pooled") or {}).get("auc")
    text = (f"Worst-case hospital **{v.center}**: AUC **{v.auc:.2f}** (95% interval "
            f"{v.ci[0]:.2f}–{v.ci[1]:.2f}) with {attack_name(mia.get('attack', ''))}.")
    if pooled is not None:
        text += f" All hospitals together: AUC {pooled:.2f}."
    return text + (" AUC 0.5 means guessing; 1.0 means the server is never wrong.")


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
    rows = []
    for center, tpr in per.items():
        row = {"Hospital": center}
        for key, text in FPR_LEVELS:
            value = tpr.get(key)
            row[f"Caught at {text} false alarms"] = (
                "degenerate" if degenerate.get(center)
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


def noise_label(row: dict[str, Any]) -> str:
    if not row.get("dp_enabled"):
        return "no DP"
    sigma = float(row.get("noise_multiplier") or 0.0)
    return "clipping only (σ 0)" if sigma == 0 else f"σ {sigma:g}"


def dp_figure(rows: list[dict[str, Any]], attacks: list[str]) -> go.Figure:
    """Pooled AUC of each main attack (left) and the model's error (right) per noise level."""
    x = [noise_label(r) for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_hrect(y0=0, y1=MODERATE, fillcolor="green", opacity=0.07, line_width=0,
                  secondary_y=False)
    for attack in attacks:
        fig.add_trace(go.Scatter(x=x, y=[r.get(f"auc_pooled[{attack}]") for r in rows],
                                 mode="lines+markers", name=f"{attack_name(attack)}: AUC",
                                 hovertemplate="%{x}: AUC %{y:.2f}<extra></extra>"),
                      secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[r.get("mae_hu") for r in rows], mode="lines+markers",
                             name="Model error: MAE (HU)",
                             line={"dash": "dash", "color": "black"},
                             hovertemplate="%{x}: MAE %{y:.0f} HU<extra></extra>"),
                  secondary_y=True)
    fig.update_yaxes(title_text="attack AUC (0.5 = guessing)", range=[0, 1.02],
                     secondary_y=False)
    # From zero: an auto-ranged axis would blow a few HU up to the full chart height.
    fig.update_yaxes(title_text="model error, MAE (HU), lower = better", tickformat=".0f",
                     rangemode="tozero", secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="privacy noise on each update (noise multiplier σ)")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def dp_sentence(rows: list[dict[str, Any]], attacks: list[str]) -> str:
    """Which noise level first brings every main attack below 0.6, and what it costs."""
    base = rows[0] if noise_label(rows[0]) == "no DP" else None
    if len(rows) == 1 and base is not None:
        return ("Only the run without privacy noise has finished so far; the noise levels "
                "appear here as the sweep goes on.")

    def cost(row: dict[str, Any]) -> str:
        mae, base_mae = row.get("mae_hu"), (base or {}).get("mae_hu")
        if row is base or mae is None or base_mae is None:
            return ""
        return (f" It costs accuracy: the model's average error goes from {base_mae:.0f} HU "
                f"without privacy noise to {mae:.0f} HU ({mae - base_mae:+.0f} HU).")

    for row in rows:
        aucs = [row.get(f"auc_pooled[{a}]") for a in attacks]
        if aucs and all(a is not None and a < MODERATE for a in aucs):
            if row is base:
                return f"Even without privacy noise every attack shown stays below AUC {MODERATE}."
            return (f"From **{noise_label(row)}** on, every attack shown stays below AUC "
                    f"{MODERATE} (close to guessing).{cost(row)}")
    last = rows[-1]
    worst = max(attacks, key=lambda a: last.get(f"auc_pooled[{a}]") or 0)
    return (f"None of the noise levels tested brings every attack below AUC {MODERATE}: at the "
            f"strongest, **{noise_label(last)}**, {attack_name(worst)} still reaches "
            f"{last.get(f'auc_pooled[{worst}]') or 0:.2f}.{cost(last)}")
