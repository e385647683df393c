"""The Membership page's "DP that keeps the model useful" section: the privacy–utility
frontiers of the ``dp-frontier`` studies in words and one figure each. The figures are
:mod:`engine.analyses.frontier`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.analyses.frontier import (
    USEFUL,
    FrontierPoint,
    epsilon_label,
    smallest_useful_epsilon,
)
from engine.analyses.sweep_table import cell_parts
from engine.clients.dp import MEANINGFUL_EPSILON
from engine.orchestration.presets import build_config
from engine.orchestration.sweep_catalogue import sweep_spec

CHANCE_BAND = 0.6  # an AUC below this without DP leaves nothing for DP to take away


@dataclass(frozen=True)
class FrontierStudy:
    """A frontier sweep as the page shows it; ``level`` is its DP level (``server`` or
    ``sample``), which decides what the noise covers."""

    name: str
    title: str
    intro: str
    level: str


_SERVER_INTRO = (
    "With 4 hospitals, noise strong enough for a meaningful ε ruins the model. Added by the "
    "server to the average of many hospitals' clipped updates (DP-FedAvg), the same guarantee "
    "costs far less, because the noise is shared. The guarantee covers the models the "
    "federation releases, not the uploads the server itself receives. ")
STUDIES = (
    FrontierStudy("dp-frontier", "Differential privacy that keeps the model useful? 16 "
                  "hospitals share the noise", _SERVER_INTRO, "server"),
    FrontierStudy("dp-frontier-64", "The same with 64 hospitals, a quarter of them each round",
                  _SERVER_INTRO, "server"),
    FrontierStudy(
        "dp-frontier-patients", "Patient-level DP inside each hospital, many patients each",
        "Each hospital trains with DP-SGD whose unit is one patient, so even the server "
        "receives noised updates. The noise is added once to the sum of the patients drawn "
        "in a step: the more patients each step holds, the less it weighs on each of them. "
        "ε ∞ is the same training with its clipping and sampling but no noise. ", "sample"),
)
_CAPTION = ("Left axis: the model's error ÷ the same federation's without DP (mean over seeds, "
            "95 % interval); the dotted line is 1.5×. Right axis (where the study attacks): "
            "patient-level membership AUC of the attack on the released global models and of "
            "FedMIA on the uploads (0.5 = guessing). ")
_COVERS = {"server": "The noise bounds the first; the server sees the uploads before it adds "
                     "noise.",
           "sample": "The noise bounds both: each hospital adds it before its update leaves."}


def caption(level: str) -> str:
    """The frontier figure's caption for a study at DP level ``level``."""
    return _CAPTION + _COVERS[level]


def frontier_figure(points: list[FrontierPoint]) -> go.Figure:
    """Error ratio and membership AUCs against ε (no DP first, then ε falling)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [epsilon_label(p.epsilon) for p in points]
    fig.add_trace(go.Scatter(
        x=x, y=[p.ratio for p in points], mode="lines+markers", name="error ÷ without DP",
        line={"color": "#2471a3", "width": 3},
        error_y={"type": "data", "symmetric": False,
                 "array": [(p.ratio_ci[1] - p.ratio) if p.ratio_ci and p.ratio else None
                           for p in points],
                 "arrayminus": [(p.ratio - p.ratio_ci[0]) if p.ratio_ci and p.ratio else None
                                for p in points]},
        hovertemplate="%{x}: error ×%{y:.2f}<extra></extra>"), secondary_y=False)
    for name, values, colour in (
            ("attack on the released models (AUC)", [p.global_auc for p in points], "#c0392b"),
            ("FedMIA on the uploads (AUC)", [p.server_auc for p in points], "#e67e22")):
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=name,
                                     line={"color": colour, "dash": "dash"},
                                     hovertemplate="%{x}: AUC %{y:.2f}<extra></extra>"),
                          secondary_y=True)
    fig.add_hline(y=USEFUL, line_dash="dot", line_color="gray", secondary_y=False)
    fig.update_yaxes(title_text="error ÷ without DP (lower = better)", rangemode="tozero",
                     secondary_y=False)
    fig.update_yaxes(title_text="membership AUC (0.5 = guessing)", range=[0, 1.05],
                     secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="privacy budget ε after the last round (lower = more private)")
    fig.update_layout(height=400, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def frontier_sentence(points: list[FrontierPoint], scale: str) -> str:
    """The frontier's verdict: the smallest ε whose model stays within 1.5× of the
    non-private error, with what it rests on, or that none does at this scale; ``scale`` is
    :func:`scale_words`'s."""
    if not any(p.epsilon is None for p in points):
        return "The run without DP has not finished yet: the ratios appear once it has."
    seeds = max(len(p.mae_hu) for p in points)
    best = smallest_useful_epsilon(points)
    # ε ∞ (no noise) guarantees nothing, so it is never among the ε tried; its cost is said
    # apart: it can be within 1.5× when no ε is.
    tried = ", ".join(epsilon_label(p.epsilon) for p in points
                      if p.epsilon is not None and math.isfinite(p.epsilon))
    free = next((p for p in points if p.epsilon is not None and math.isinf(p.epsilon)
                 and p.ratio is not None), None)
    no_noise = (f" Without noise (ε ∞: the clipping and sampling alone) the error is "
                f"×{free.ratio:.2f}." if free else "")
    if best is None:
        return (f"With {scale}, no ε tried ({tried}) keeps the model within {USEFUL:g}× of "
                f"its error without DP ({seeds} seeds each).{no_noise}")
    ci = best.ratio_ci
    words = (f"With {scale}, the smallest ε that keeps the model within {USEFUL:g}× of its "
             f"error without DP is **{best.epsilon:.3g}** (δ 1e-5): error ×{best.ratio:.2f}"
             + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
             + f" over {len(best.mae_hu)} seeds; tried {tried}.{no_noise}")
    if best.epsilon > MEANINGFUL_EPSILON:
        words += (f" Above ε {MEANINGFUL_EPSILON:g} the guarantee means little: no "
                  "meaningful ε keeps the model useful at this scale.")
    return words


def _aucs(points: list[FrontierPoint], attr: str) -> str:
    return ", ".join(f"{getattr(p, attr):.2f} at {epsilon_label(p.epsilon)}" for p in points
                     if getattr(p, attr) is not None)


def attack_sentence(points: list[FrontierPoint], level: str) -> str:
    """What the membership AUCs beside the frontier can and cannot show at DP level
    ``level`` (``server``: the uploads carry no noise; ``sample``: they do); "" without
    them."""
    base = next((p for p in points if p.epsilon is None), None)
    noised = [p for p in points if p.epsilon is not None and p.server_auc is not None]
    if base is None or base.global_auc is None or base.server_auc is None or not noised:
        return ""
    if level == "sample":
        if max(base.server_auc, base.global_auc) < CHANCE_BAND:
            return (f"Both attacks are near guessing even without DP (AUC "
                    f"{base.server_auc:.2f} on the uploads, {base.global_auc:.2f} on the "
                    "released models), so this study cannot show what the noise protects.")
        return (f"FedMIA on the uploads: AUC {base.server_auc:.2f} without DP, "
                f"{_aucs(noised, 'server_auc')}. The attack on the released models: AUC "
                f"{base.global_auc:.2f} without DP, {_aucs(noised, 'global_auc')}.")
    uploads = (f"FedMIA on the uploads, which the server receives before it adds noise, stays "
               f"at AUC {min(p.server_auc for p in noised):.2f}–"
               f"{max(p.server_auc for p in noised):.2f} at every ε: server-side DP does not "
               "protect patients from the server itself.")
    if base.global_auc < CHANCE_BAND:
        return (f"The attack on the released models is near guessing even without DP (AUC "
                f"{base.global_auc:.2f}), so this study cannot show what the noise protects "
                f"there. {uploads}")
    return (f"The attack on the released models: AUC {base.global_auc:.2f} without DP, "
            f"{_aucs(noised, 'global_auc')}. {uploads}")


def scale_words(study: str) -> str:
    """A frontier study's federation in words (its base preset's), e.g. "16 hospitals of 3
    patients"."""
    data = build_config(sweep_spec(study)["base"]).data
    return f"{data.centers} hospitals of {data.patients_per_center} patients"


def cell_words(label: str | None) -> str:
    """A frontier study cell label in words."""
    parts = cell_parts(label)
    seed = parts.get("seed", "0")
    if parts.get("enabled") == "false":
        return f"without DP, seed {seed}"
    level = "patient-level DP-SGD" if parts.get("level") == "sample" else "server-side DP"
    if parts.get("noise_multiplier") == "0":
        return f"{level} without noise (ε ∞), seed {seed}"
    return f"{level} at ε {parts.get('target_epsilon', '?')}, seed {seed}"
