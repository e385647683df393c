"""The Poisoning page's studies (``poison-paper``, ``poison-model``,
``poison-data-factors``): their sweep tables as grids, heat maps and curves, and their cells in
words. Only formats the sweep folders found with
:func:`engine.orchestration.sweeps.sweep_folder`.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from pydantic import ValidationError

from app.views.common import (
    hospital_name,
)
from app.views.poisoning import (
    NOISE_KINDS,
    RULE_COLOURS,
    TARGET_NAMES,
    axis_title,
    kind_name,
    level_text,
    rule_name,
)
from engine.analyses.results import HistoryPoint
from engine.analyses.sweep_table import SweepRow, cell_parts
from engine.core.config.robust import RULE_NAMES


def ratio_heatmap(row_labels: list[str], col_labels: list[str],
                  mae: list[list[float | None]], ratio: list[list[float | None]],
                  x_title: str, y_title: str) -> go.Figure:
    """A grid coloured by the error relative to the clean federation (green 1× … red ≥ 3×),
    each cell labelled with the final MAE and that ratio."""
    text = [[f"{m:.0f} HU<br>×{r:.2f}" if m is not None and r is not None else ""
             for m, r in zip(mrow, rrow, strict=True)]
            for mrow, rrow in zip(mae, ratio, strict=True)]
    fig = go.Figure(go.Heatmap(
        z=ratio, x=col_labels, y=row_labels, text=text, texttemplate="%{text}",
        zmin=1.0, zmax=3.0, colorscale=[[0.0, "#1e8449"], [0.5, "#f4d03f"], [1.0, "#c0392b"]],
        colorbar={"title": {"text": "× clean error"}},
        hovertemplate="%{y} · %{x}: %{text}<extra></extra>", xgap=2, ygap=2))
    fig.update_yaxes(title_text=y_title, autorange="reversed", type="category")
    fig.update_xaxes(title_text=x_title, side="top", type="category")
    fig.update_layout(height=max(220, 60 * len(row_labels) + 120),
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def training_words(row: SweepRow) -> str:
    """A factor-study row's local training in words, e.g. "L1 loss, Adam"."""
    return f"{(row.loss or '').upper()} loss, {'SGD' if row.optimizer == 'sgd' else 'Adam'}"


NOT_RUN = SweepRow()  # a grid cell no experiment filled: every column None


def grid(rows: list[SweepRow], row_of: Any, col_of: Any,
         row_order: list[str] | None = None, col_order: list[str] | None = None
         ) -> tuple[list[str], list[str], list[list[Any]], list[list[Any]]]:
    """Rows of a sweep table as a grid: labels, final MAE and ``mae_ratio`` per cell (None
    where the study has no such cell). ``row_of``/``col_of`` give a row's labels."""
    cells: dict[tuple[str, str], SweepRow] = {}
    for r in rows:
        cells[(row_of(r), col_of(r))] = r
    rlabels = list(dict.fromkeys(k[0] for k in cells))
    clabels = list(dict.fromkeys(k[1] for k in cells))
    if row_order:
        rlabels = sorted(rlabels, key=lambda v: row_order.index(v) if v in row_order
                         else len(row_order))
    if col_order:
        clabels = sorted(clabels, key=lambda v: col_order.index(v) if v in col_order
                         else len(col_order))
    mae = [[cells.get((r, c), NOT_RUN).mae_hu for c in clabels] for r in rlabels]
    ratio = [[cells.get((r, c), NOT_RUN).mae_ratio for c in clabels] for r in rlabels]
    return rlabels, clabels, mae, ratio


def history_curves(data: dict[str, Any] | None) -> dict[str, list[HistoryPoint]] | None:
    """A sweep's ``curves.json`` ({run id: history}) as typed histories; None when it is
    missing or a history in it is damaged."""
    if data is None:
        return None
    try:
        return {str(k): [HistoryPoint.model_validate(h) for h in v] for k, v in data.items()}
    except (TypeError, ValidationError):
        return None


def malicious_order(values: list[str]) -> list[str]:
    """Attacker sets, single hospitals first."""
    return sorted(set(values), key=lambda v: (len(v.split()), v))


def poisoned(rows: list[SweepRow]) -> list[SweepRow]:
    return [r for r in rows if r.poison_kind]


def clean_rows(rows: list[SweepRow]) -> dict[str, SweepRow]:
    """The clean baseline row of each rule (first one wins)."""
    out: dict[str, SweepRow] = {}
    for r in rows:
        if not r.poison_kind:
            out.setdefault(str(r.aggregator), r)
    return out


def levels_of(rows: list[SweepRow], kind: str) -> list[float]:
    return sorted({float(r.noise_std) for r in poisoned(rows)
                   if r.poison_kind == kind and r.noise_std is not None})


def level_figure(rows: list[SweepRow], malicious: str, metric: str) -> go.Figure:
    """Final ``metric`` against the noise level, one panel per noise kind and one line per
    rule, for one set of attackers; 'no attack' is the rule's clean run."""
    kinds = [k for k in NOISE_KINDS if any(r.poison_kind == k for r in rows)]
    fig = make_subplots(rows=1, cols=max(1, len(kinds)), horizontal_spacing=0.1,
                        subplot_titles=[kind_name(k) for k in kinds] or [""])
    clean = clean_rows(rows)
    rules = list(dict.fromkeys(str(r.aggregator) for r in poisoned(rows)
                               if r.malicious == malicious))
    rules.sort(key=rule_order)
    for col, kind in enumerate(kinds, start=1):
        levels = levels_of(rows, kind)
        for rule in rules:
            by_level = {float(r.noise_std): r for r in poisoned(rows)
                        if r.poison_kind == kind and r.aggregator == rule
                        and r.malicious == malicious and r.noise_std is not None}
            x = ["no attack", *[level_text(kind, v) for v in levels]]
            y = [clean.get(rule, NOT_RUN).column(metric),
                 *[by_level.get(v, NOT_RUN).column(metric) for v in levels]]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=rule_name(rule), legendgroup=rule,
                showlegend=col == 1, line={"color": RULE_COLOURS.get(rule, "#555555")},
                hovertemplate=f"{rule_name(rule)}, %{{x}}: %{{y:.3g}}<extra></extra>"),
                row=1, col=col)
        fig.update_yaxes(title_text=axis_title(metric) if col == 1 else None, row=1, col=col)
        fig.update_xaxes(type="category", row=1, col=col)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.2})
    fig.update_annotations(font_size=13)
    return fig


def attackers_text(value: str | None) -> str:
    """``"center-0 center-2"`` (a sweep table's attackers) → ``"Hospital A + Hospital C"``."""
    return " + ".join(hospital_name(c) for c in str(value or "").split()) or "none"


def rule_order(rule: str | None) -> int:
    """Where a rule goes in charts and lists: the study's order, unknown rules last."""
    return list(RULE_NAMES).index(rule) if rule in RULE_NAMES else len(RULE_NAMES)


def paper_cells(rows: list[SweepRow], kind: str, level: float) -> list[SweepRow]:
    """The study grid's attacked experiments with noise ``kind`` at σ ``level``."""
    return [r for r in poisoned(rows) if r.poison_kind == kind and r.noise_std == level]


def paper_heatmap(cells: list[SweepRow], attackers: list[str]) -> go.Figure:
    """The study grid at one noise level: attackers × rules, final MAE and × clean error."""
    rl, cl, mae, ratio = grid(cells, lambda r: attackers_text(r.malicious),
                              lambda r: rule_name(str(r.aggregator)),
                              row_order=[attackers_text(m) for m in attackers],
                              col_order=[rule_name(a) for a in RULE_NAMES])
    return ratio_heatmap(rl, cl, mae, ratio, "aggregation rule", "malicious hospital(s)")


def paper_lines(cells: list[SweepRow], rows: list[SweepRow], attackers: str,
                curves: dict[str, list[HistoryPoint]]
                ) -> list[tuple[str, list[HistoryPoint], list[HistoryPoint]]]:
    """Round-by-round lines of ``cells`` with ``attackers`` attacking, one per rule in the
    study's order, each with the same rule's clean run (for :func:`curves_figure`)."""
    clean = clean_rows(rows)
    lines = []
    for r in sorted((r for r in cells if r.malicious == attackers),
                    key=lambda r: rule_order(r.aggregator)):
        base = clean.get(str(r.aggregator))
        lines.append((str(r.aggregator), curves.get(r.run_id),
                      curves.get(base.run_id) if base else None))
    return lines


def model_study_figure(rows: list[SweepRow]) -> go.Figure:
    """The ``poison-model`` study: crafted update × rule."""
    rl, cl, mae, ratio = grid(poisoned(rows), lambda r: kind_name(str(r.poison_kind)),
                              lambda r: rule_name(str(r.aggregator)),
                              row_order=[kind_name(k) for k in ("sign_flip", "scaling", "alie")],
                              col_order=[rule_name(a) for a in RULE_NAMES])
    return ratio_heatmap(rl, cl, mae, ratio, "aggregation rule", "attack")


def factor_study_figure(rows: list[SweepRow]) -> go.Figure:
    """The ``poison-data-factors`` study: what is noised × local training."""
    rl, cl, mae, ratio = grid(poisoned(rows),
                              lambda r: TARGET_NAMES.get(str(r.poison_target),
                                                         str(r.poison_target)),
                              training_words, row_order=list(TARGET_NAMES.values()))
    return ratio_heatmap(rl, cl, mae, ratio, "local training", "what is noised")


# The studies beyond the study grid: title, figure of the rows, caption (page order).
OTHER_STUDIES = {
    "poison-model": (
        "Model poisoning: crafted updates instead of noise", model_study_figure,
        "Each cell is one experiment: the shared model's final error with one hospital "
        "sending that crafted update, and how many times the same rule's clean error it is "
        "(green = unharmed, red = three times or worse)."),
    "poison-data-factors": (
        "Which image noise hurts: MRI, CT or both", factor_study_figure,
        "Each cell is one experiment: the shared model's final error when one hospital "
        "noises those images, and how many times the clean error of the same training setup "
        "it is (green = unharmed, red = three times or worse)."),
}


# --------------------------------------------------------------------------- sweeps


def cell_words(label: str | None) -> str:
    """A sweep cell label (``aggregator=fedmedian, kind=update_noise, …``) in plain words."""
    if not label or label == "baseline":
        return "clean FedAvg federation"
    parts = cell_parts(label)
    words = [rule_name(parts.get("aggregator", "fedavg"))]
    if parts.get("enabled") == "true" or "kind" in parts:
        kind = parts.get("kind", "update_noise")
        words.append(kind_name(kind))
        if "noise_std" in parts:
            words.append(f"σ {parts['noise_std']}")
        if "target" in parts:
            words.append(TARGET_NAMES.get(parts["target"], parts["target"]))
        if "malicious_centers" in parts:
            words.append(f"attackers {parts['malicious_centers'].strip('[]')}")
    else:
        words.append("without attackers")
    if "loss" in parts:
        words.append(f"{parts['loss'].upper()} loss")
    if "optimizer" in parts:
        words.append(parts["optimizer"].upper() if parts["optimizer"] == "sgd" else "Adam")
    return ", ".join(words)
