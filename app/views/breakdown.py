"""The Poisoning page's "Strongest attacker" section: breakdown curves and the worst-case
table of the ``poison-breakdown`` studies (8, 16 and 64 hospitals), in words and figures. The
figures are :mod:`engine.analyses.breakdown`'s; nothing here recomputes them."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from engine.analyses.breakdown import BreakdownCell, worst_cases
from engine.analyses.poisoning import BROKEN, PROTECTED
from engine.analyses.sweep_table import cell_parts
from engine.core.config.robust import rule_key, rule_words

STUDIES = (("poison-breakdown", "Strongest attacker: each rule up to its breakdown point"),
           ("poison-breakdown-16", "The same with 16 hospitals, 3 and 6 of them attacking"),
           ("poison-breakdown-64", "The same with 64 hospitals, 16 of them attacking"))
INTRO = ("A rule that survives a fixed attack may still fall to an attacker who adapts. "
         "Here the attacking hospitals see the other hospitals' updates every round (the "
         "standard worst case of this research) and tune theirs to the rule. ")
KIND_NAMES = {"alie": "ALIE (z 1, fixed)", "alie_opt": "ALIE tuned to the rule",
              "ipm_opt": "IPM tuned to the rule", "min_max": "Min-Max", "min_sum": "Min-Sum",
              "fang_krum": "Fang (Krum)", "fang_trim": "Fang (trimmed mean)"}
VERDICT_WORDS = {"broken": "broken (error doubled)", "damaged": "damaged (> 25 % worse)",
                 "holds": "holds (an attack it stopped hurt FedAvg)",
                 "attack_too_weak": "attack too weak to judge",
                 "inconclusive": "inconclusive (the seeds disagree: more are needed)"}
CAPTION = ("Each point: the strongest attack against the rule with that many attackers, "
           "its error ÷ the same federation's without attackers, mean over 3 seeds with its "
           "95 % interval. Above the dotted line (1.25) the rule let the attack through; at "
           "2 the federation is useless. A line stops at the most attackers the study tried: "
           "with 8 hospitals, the most the rule is built to withstand.")


def _rule(name: str) -> str:
    return rule_words(name)


def breakdown_figure(cells: list[BreakdownCell]) -> go.Figure:
    """Error ratio (y) against the number of attackers (x), one line per rule."""
    fig = go.Figure()
    for rule in dict.fromkeys(c.rule for c in cells):
        mine = [c for c in cells if c.rule == rule]
        ci = [c.strongest.interval or [c.strongest.mean] * 2 for c in mine]
        fig.add_trace(go.Scatter(
            x=[c.attackers for c in mine], y=[c.strongest.mean for c in mine],
            mode="lines+markers", name=_rule(rule),
            text=[KIND_NAMES.get(c.strongest.kind, c.strongest.kind) for c in mine],
            error_y={"type": "data", "symmetric": False,
                     "array": [hi - c.strongest.mean for c, (_, hi) in zip(mine, ci,
                                                                          strict=True)],
                     "arrayminus": [c.strongest.mean - lo for c, (lo, _) in zip(mine, ci,
                                                                               strict=True)]},
            hovertemplate="%{x} attackers: ×%{y:.2f} (%{text})<extra></extra>"))
    fig.add_hline(y=PROTECTED, line_dash="dot", line_color="gray")
    fig.add_hline(y=BROKEN, line_dash="dash", line_color="#c0392b")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis={"title": "attacking hospitals", "dtick": 1},
                      yaxis_title="error ÷ without attackers (strongest attack)",
                      legend={"orientation": "h", "y": -0.3})
    return fig


def _ratio(cell: BreakdownCell) -> str:
    ci = cell.strongest.interval
    return f"×{cell.strongest.mean:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def worst_table(cells: list[BreakdownCell]) -> pd.DataFrame:
    """Each rule against its worst attack: the attackers, the attack, the ratio with its
    interval, the seeds, the same attack against FedAvg and the verdict."""
    return pd.DataFrame([{
        "Rule": _rule(rule), "Attackers": c.attackers,
        "Strongest attack": KIND_NAMES.get(c.strongest.kind, c.strongest.kind),
        "Error ratio [95 % interval]": _ratio(c), "Seeds": len(c.strongest.ratios),
        "Same attack against FedAvg": (f"×{c.fedavg.mean:.2f}" if c.fedavg and rule != "fedavg"
                                       else "–"),
        "Control (the attack that hurt FedAvg most)": (
            f"{KIND_NAMES.get(c.control.kind, c.control.kind)}: ×{c.control.mean:.2f} "
            f"(lowest seed ×{min(c.control.ratios):.2f})" if c.control and rule != "fedavg"
            else "–"),
        "Verdict": VERDICT_WORDS[c.verdict]}
        for rule, c in worst_cases(cells).items()])


def cell_table(cells: list[BreakdownCell]) -> pd.DataFrame:
    """Every rule × attackers × attack: the mean ratio (for the curious: which attack
    is strongest where)."""
    return pd.DataFrame([{"Rule": _rule(c.rule), "Attackers": c.attackers,
                          **{KIND_NAMES.get(a.kind, a.kind): round(a.mean, 2)
                             for a in c.attacks},
                          "Verdict": VERDICT_WORDS[c.verdict]} for c in cells])


def cell_words(label: str | None) -> str:
    """A breakdown study cell label in words."""
    parts = cell_parts(label)
    rule = _rule(rule_key(parts.get("aggregator", "fedavg"), parts.get("pre_aggregator")))
    seed = parts.get("seed", "0")
    if parts.get("enabled") != "true":
        return f"{rule} without attackers, seed {seed}"
    f = len(parts.get("malicious_centers", "[0]").strip("[]").split(","))
    kind = KIND_NAMES.get(parts.get("kind", ""), parts.get("kind", "?"))
    return f"{rule}, {f} attacker{'s' if f > 1 else ''}, {kind}, seed {seed}"
