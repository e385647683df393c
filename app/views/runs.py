"""The Runs page's views: filter, list, link and compare runs (from the one listing,
:func:`app.views.results.list_runs`)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from app.params import FEDERATION_RUN, INVERSION_RUN, MEMBERSHIP_RUN, POISONING_RUN
from app.views import inversion as inv_ui
from app.views import membership as membership_ui
from app.views import poisoning as poi_ui
from app.views.common import PAGES_DIR, STATE_TEXT, computed_with
from app.views.results import RunRow
from engine.core.config.robust import rule_words

# Summary key → (page, URL parameter that page reads the run id from, link label).
DETAIL_PAGES = {
    "federation": (PAGES_DIR / "federation.py", FEDERATION_RUN, "Training results (Federation)"),
    "mia": (PAGES_DIR / "membership.py", MEMBERSHIP_RUN, "Membership inference attack"),
    "inversion": (PAGES_DIR / "inversion.py", INVERSION_RUN, "Gradient inversion attack"),
    "poisoning": (PAGES_DIR / "poisoning.py", POISONING_RUN, "Poisoning attack"),
}
ATTACK_WORDS = {"mia": "membership", "inversion": "inversion", "poisoning": "poisoning",
                "backdoor": "backdoor", "whatif": "what-if", "dp_audit": "privacy audit"}
# Metric key, label, decimals shown.
METRICS = (("mae_hu", "Average error, MAE (HU) — lower is better", 0),
           ("psnr_db", "Image quality, PSNR (dB) — higher is better", 2),
           ("ssim", "Structural similarity, SSIM (0–1) — higher is better", 3))
# Colours and dashes that tell two runs apart in one chart (and in grey-scale print).
RUN_STYLES = (("#c0392b", "solid"), ("#1f618d", "dash"))


def filter_runs(rows: list[RunRow], states: list[str], text: str) -> list[RunRow]:
    """Rows in one of ``states`` (all when empty) whose name or id contains ``text``."""
    needle = text.strip().lower()
    return [r for r in rows if (not states or r.state in states)
            and (not needle or needle in r.name.lower() or needle in r.run_id.lower())]


def runs_frame(rows: list[RunRow]) -> pd.DataFrame:
    return pd.DataFrame({
        "Started": [time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created or 0))
                    for r in rows],
        "Name": [r.name or "run" for r in rows],
        "State": [STATE_TEXT.get(r.state, r.state) for r in rows],
        "Aggregation rule": [rule_words(r.rule) for r in rows],
        "Defenses": [r.defenses for r in rows],
        "Final MAE (HU)": [r.final.mae_hu if r.final else None for r in rows],
        "Attacks": [", ".join(ATTACK_WORDS[a] for a in r.attacks) for r in rows],
        "Run id": [r.run_id for r in rows],
    })


def detail_links(row: RunRow) -> list[tuple[Path, str, dict[str, str]]]:
    """(page, label, query params) of each page that shows this run in detail."""
    keys = ["federation", *(k for k in row.attacks if k in DETAIL_PAGES)]
    return [(DETAIL_PAGES[k][0], DETAIL_PAGES[k][2], {DETAIL_PAGES[k][1]: row.run_id})
            for k in keys]


def security_results(row: RunRow) -> dict[str, str]:
    """Every security result of a run in a few words (verdict and its headline figure):
    the model's DP ε, membership, inversion and poisoning."""
    s = row.summary
    out: dict[str, str] = {}
    if s is None:
        return out
    out["Differential privacy"] = row.dp_text or "off"
    for key, label, verdict in (
            ("mia", "Membership inference", lambda: membership_ui.verdict(s.mia)),
            ("inversion", "Gradient inversion", lambda: inv_ui.verdict(s.inversion)),
            ("poisoning", "Poisoning",
             lambda: poi_ui.verdict(s.poisoning, s.rule))):
        if getattr(s, key) is None:
            out[label] = "not run"
            continue
        v = verdict()
        out[label] = f"{v.figure} ({v.title.split(':')[0].lower()})" if v.figure else v.title
    return out


def design_warning(a: RunRow, b: RunRow) -> str:
    """A sentence when two runs are different experiments, not one design with other
    settings ("" when their designs agree)."""
    if a.design == b.design:
        return ""
    return (f"These runs have different designs ({a.design} against {b.design}): their "
            "figures and curves differ for that reason too, not only because of their "
            "defenses or rule.")


def compare_frame(a: RunRow, b: RunRow) -> pd.DataFrame:
    """Two runs side by side: their design, rule and defenses (same or different), final
    metrics with the difference (second minus first), how
    each was computed (:func:`computed_with`), then every security result either run has
    (with its change where both have a number)."""
    rows = [{"Measure": label, "First run": fa, "Second run": fb,
             "Change (second − first)": "same" if fa == fb else "different"}
            for label, fa, fb in (("Design", a.design, b.design),
                                  ("Aggregation rule", rule_words(a.rule),
                                   rule_words(b.rule)),
                                  ("Defenses", a.defenses or "none", b.defenses or "none"))]
    for key, label, digits in METRICS:
        va = getattr(a.final, key) if a.final else None
        vb = getattr(b.final, key) if b.final else None
        diff = vb - va if va is not None and vb is not None else None
        rows.append({"Measure": label, **{col: None if v is None else f"{v:.{digits}f}"
                                          for col, v in (("First run", va), ("Second run", vb),
                                                         ("Change (second − first)", diff))}})
        if diff is not None:
            rows[-1]["Change (second − first)"] = f"{diff:+.{digits}f}"
    wa, wb = computed_with(a.summary), computed_with(b.summary)
    rows.append({"Measure": "Computed with", "First run": wa, "Second run": wb,
                 "Change (second − first)": "same" if wa == wb else
                 "different: part of any difference in the figures is rounding, not the "
                 "settings"})
    sa, sb = security_results(a), security_results(b)
    for label in dict.fromkeys([*sa, *sb]):
        rows.append({"Measure": label, "First run": sa.get(label, "–"),
                     "Second run": sb.get(label, "–"),
                     "Change (second − first)": security_change(a, b, label)})
    return pd.DataFrame(rows)


def security_change(a: RunRow, b: RunRow, label: str) -> str:
    """The change of a security result's number between two runs, in words ("" if either
    lacks it): the patient-level AUC the membership verdict shows, the worst body-SSIM gain
    over the leak test's null (the floor in older runs), the poisoning error ratio."""
    def number(row: RunRow) -> float | None:
        s = row.summary
        if s is None:
            return None
        if label == "Membership inference" and s.mia is not None:
            return membership_ui.verdict(s.mia).value  # the AUC the verdict shows
        if label == "Gradient inversion" and s.inversion is not None:
            _, _, ssim_body, floor = inv_ui.worst_client(s.inversion)
            return ssim_body - floor
        if label == "Poisoning" and s.poisoning is not None and s.poisoning.cells:
            return s.poisoning.cells[0].mae_ratio
        if label == "Differential privacy" and s.federation.dp.enabled:
            return s.federation.dp.epsilon
        return None

    na, nb = number(a), number(b)
    if na is None or nb is None:
        return ""
    unit = {"Membership inference": "AUC", "Gradient inversion": "body-SSIM gain",
            "Poisoning": "× clean error", "Differential privacy": "ε"}[label]
    return f"{unit} {na:.2f} → {nb:.2f} ({nb - na:+.2f})"


def curves_figure(a: RunRow, b: RunRow) -> go.Figure:
    """Both runs' MAE per round in one chart, told apart by colour and dash."""
    fig = go.Figure()
    for row, tag, (colour, dash) in ((a, "First", RUN_STYLES[0]), (b, "Second", RUN_STYLES[1])):
        hist = row.history
        fig.add_trace(go.Scatter(x=[h.round for h in hist], y=[h.mae_hu for h in hist],
                                 mode="lines+markers", name=f"{tag}: {row.name or row.run_id}",
                                 line={"color": colour, "dash": dash, "width": 3},
                                 marker={"symbol": "circle" if dash == "solid" else "square"},
                                 hovertemplate="round %{x}: %{y:.0f} HU<extra></extra>"))
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="Average error, MAE (HU) per round — lower is better",
                      xaxis_title="round (0 = untrained)", yaxis_title="MAE (HU)",
                      legend={"orientation": "h", "y": -0.25})
    return fig


COMPARE_CAPTION = ("Change: a negative MAE change, or a positive PSNR/SSIM change, means the "
                   "second run's model is better; for the attacks, a lower AUC, body-SSIM "
                   "gain or error ratio means the second run leaks or suffers less.")
