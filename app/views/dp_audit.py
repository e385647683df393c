"""The privacy audit in words, a table and a figure: what the accountant claims beside what
the canaries certify (engine/attacks/dp_audit.py). No Streamlit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.views.common import Verdict
from app.views.results import RunRow, finished_with
from engine.analyses.results import DPAuditSummary
from engine.analyses.sweep_table import SweepRow

CANARIES = {"client": "canary hospitals", "patient": "canary patients in Hospital A's DP-SGD"}
LEVELS = {"client": "hospital-level DP", "patient": "patient-level DP (DP-SGD)"}
# Where the figure draws the audits of runs without noise (ε = ∞) on its log axis.
NO_NOISE_X = 256.0


def audit_runs(rows: list[RunRow]) -> tuple[list[RunRow], list[Any]]:
    """Finished runs with a privacy audit, newest first; and the summary files of finished
    audited runs that cannot be read."""
    return finished_with(rows, "dp_audit")


def _claim(a: DPAuditSummary) -> str:
    return ("ε = ∞ (no noise: the accountant claims nothing)" if a.accountant_epsilon is None
            else f"ε ≤ {a.accountant_epsilon:.3g}")


def basis(a: DPAuditSummary) -> str:
    """What the bound rests on, in one sentence."""
    seen = ("the round's aggregate (secure aggregation)" if a.observed == "aggregate"
            else "each upload")
    guesses = (f"{a.correct} of {a.guesses} guesses right" if a.guesses
               else "no guess set did better than a coin")
    rounds = f"{a.rounds} round" + ("" if a.rounds == 1 else "s")
    return (f"{a.canaries:,} {CANARIES.get(a.kind, 'canaries')}, each present with probability "
            f"½ ({a.present:,} were), scored from {seen} over {rounds}; one-run bound "
            f"of Steinke et al. 2023 at {a.confidence:.0%} confidence, δ = {a.delta:g}: "
            f"{guesses}.")


def audit_verdict(a: DPAuditSummary) -> Verdict:
    """The audit's verdict box."""
    found = (f"The audit certifies ε ≥ **{a.epsilon_lower_bound:.2f}**; the most "
             f"{a.canaries:,} canaries can certify at this confidence is {a.cap:.2f}.")
    detail = f"{found} {basis(a)}"
    figure = f"audit ε ≥ {a.epsilon_lower_bound:.2f} (cap {a.cap:.2f})"
    level = LEVELS.get(a.kind, "DP")
    if a.verdict == "violation":
        return Verdict("red", f"The {level} gives less privacy than claimed: the accountant "
                       f"says {_claim(a)}, the audit proves more leaks", detail + (
                           " Check that every upload is clipped and noised on every path "
                           "(batched, Flower), that σ is the one the accountant was given, and "
                           "that nothing a hospital reports depends on its data."), figure)
    if a.verdict == "weak_audit":
        return Verdict("gray", f"This audit is too small to test the claim ({_claim(a)}): it "
                       "found little and could not have certified the claimed ε",
                       detail + " More canaries raise what the audit can certify.", figure)
    if a.accountant_epsilon is None:
        return Verdict("gray", "No privacy is claimed (no noise); the audit shows how much "
                       "the canaries leak", detail, figure)
    return Verdict("green", f"Consistent with the accountant's {_claim(a)}: the audit found "
                   "no more leakage than the guarantee allows", detail + (
                       " A lower bound below the claim does not prove the claim; it means the "
                       "attack run here did not refute it."), figure)


def audit_table(runs: list[RunRow]) -> pd.DataFrame:
    """One row per audited run: the claim beside the audit."""
    rows = []
    for r in runs:
        a = r.summary.dp_audit if r.summary else None
        if a is None:
            continue
        rows.append({
            "Run": r.name, "DP": LEVELS.get(a.kind, a.kind),
            "Accountant ε": ("∞" if a.accountant_epsilon is None
                             else f"{a.accountant_epsilon:.3g}"),
            "Audit bound ε ≥": round(a.epsilon_lower_bound, 2),
            "Most this audit can certify": round(a.cap, 2),
            "Canaries": a.canaries, "Confidence": f"{a.confidence:.0%}",
            "Verdict": a.verdict.replace("_", " "), "Run id": r.run_id})
    return pd.DataFrame(rows)


def _x(epsilon: float | None) -> float:
    return NO_NOISE_X if epsilon is None or not math.isfinite(epsilon) else epsilon


def audit_figure(rows: list[SweepRow]) -> go.Figure:
    """The ``dp-audit`` sweep: audit bound against the accountant's ε, one line per DP level,
    with the diagonal (a bound above it is a violation) and each cell's cap."""
    fig = go.Figure()
    done = [r for r in rows if r.audit_bound is not None]
    xs = [_x(r.epsilon) for r in done] or [1.0, 64.0]
    low, high = min(0.5, *xs), NO_NOISE_X * 1.5
    # Many points: a straight line on the log ε axis is not one on the audit's linear axis.
    diagonal = np.geomspace(low, high, 80).tolist()
    fig.add_trace(go.Scatter(x=diagonal, y=diagonal, mode="lines", name="bound = claim "
                             "(above: a violation)", line={"color": "gray", "dash": "dot"},
                             hoverinfo="skip"))
    caps = sorted({round(float(r.audit_cap), 2) for r in done})
    for cap in caps:
        fig.add_hline(y=cap, line_dash="dash", line_color="#7f8c8d",
                      annotation_text=f"most the canaries can certify: {cap:.2f}",
                      annotation_position="bottom right")
    colours = {"client": "#2471a3", "patient": "#c0392b"}
    for kind, name in LEVELS.items():
        cells = sorted((r for r in done if r.audit_kind == kind),
                       key=lambda r: _x(r.epsilon))
        if not cells:
            continue
        fig.add_trace(go.Scatter(
            x=[_x(r.epsilon) for r in cells], y=[r.audit_bound for r in cells],
            mode="lines+markers", name=f"{name}: audit lower bound",
            line={"color": colours[kind]},
            text=[(r.audit_verdict or "").replace("_", " ") for r in cells],
            hovertemplate="claimed ε %{x:.3g}: audit ε ≥ %{y:.2f} (%{text})<extra></extra>"))
    ticks = [1, 4, 8, 16, 64, NO_NOISE_X]
    fig.update_xaxes(type="log", title_text="ε the accountant claims (∞: no noise)",
                     tickvals=ticks, ticktext=[*map(str, ticks[:-1]), "∞"])
    # Linear from 0 (a bound of 0 is common) up to just above the caps: the diagonal leaves
    # the chart where no audit of this size could follow it.
    top = 1.15 * max([*caps, *(r.audit_bound for r in done), 1.0])
    fig.update_yaxes(title_text="ε the audit proves, at least", range=[0, top])
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def audit_sweep_sentence(rows: list[SweepRow]) -> str:
    """The sweep in one sentence per level: violations, and the highest bound found."""
    parts = []
    for kind, name in LEVELS.items():
        cells = [r for r in rows if r.audit_kind == kind
                 and r.audit_bound is not None]
        if not cells:
            continue
        bad = [r for r in cells if r.audit_verdict == "violation"]
        noisy = [r for r in cells if r.epsilon is not None]
        if bad:
            parts.append(f"**{name}: the audit refutes the accountant at "
                         + ", ".join(f"ε {r.epsilon:.3g}" for r in bad) + "**.")
        elif noisy:
            best = max(noisy, key=lambda r: r.audit_bound / r.epsilon)
            parts.append(f"With **{name}**, no audit bound exceeds the accountant's ε; the "
                         f"closest: ε ≥ {best.audit_bound:.2f} against a claim of "
                         f"{best.epsilon:.3g}.")
    return " ".join(parts)


def audit_cell_words(label: str | None) -> str:
    """A running ``dp-audit`` cell's label (``level=sample, kind=patient, …``) in words."""
    parts = dict(p.split("=", 1) for p in (label or "").split(", ") if "=" in p)
    level = LEVELS["patient" if parts.get("level") == "sample" else "client"]
    eps = parts.get("target_epsilon")
    return f"{level}, ε {float(eps):g}" if eps and eps != "null" else f"{level}, no noise"


AUDIT_INTRO = ("The ε above is computed, not measured: it holds only if the code adds the noise "
               "the accountant assumes. The audit checks the code. Hundreds of canaries (made-up "
               "hospitals, or made-up patients inside Hospital A's DP-SGD), each present with "
               "probability ½, go through the hospitals' own privacy code; the server then "
               "guesses which were present. Guessing well proves a lower bound on ε: above the "
               "claimed ε, the implementation is wrong.")
