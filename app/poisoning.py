"""Streamlit widgets of the Poisoning page: the attack controls, one attacked run's
verdicts, curves and detection, and the studies (the strongest attacker's breakdown curves
among them). Words, figures and row filtering are in
``app.views.poisoning``."""

from __future__ import annotations

import streamlit as st

from app.state import persisted
from app.views import breakdown as bd_views
from app.views.common import AGGREGATOR_HELP, expected_words, hospital_name
from app.views.poisoning import (
    KIND_HELP,
    KIND_NAMES,
    METRIC_SHORT,
    NOISE_KINDS,
    SWEEP_COMMAND,
    PoisonRun,
    attack_plans,
    base_hospitals,
    curves_figure,
    detection_figure,
    detection_sentence,
    kind_name,
    level_text,
    rule_name,
    same_attack,
    verdict,
)
from app.views.poisoning_studies import (
    OTHER_STUDIES,
    attackers_text,
    cell_words,
    history_curves,
    level_figure,
    levels_of,
    malicious_order,
    paper_cells,
    paper_heatmap,
    paper_lines,
    poisoned,
)
from app.views.results import Sweep, sweep_expected
from app.widgets import (
    study_rows,
    study_section,
    verdict_box,
)
from engine.analyses.breakdown import breakdown
from engine.core.config import AGGREGATORS, ExperimentConfig
from engine.orchestration.sweep_catalogue import POISON_LEVELS

STUDY_RULES = ("fedavg", "fedprox", "fedmedian", "trimmed_mean")


def attack_controls() -> tuple[list[tuple[str, ExperimentConfig]], bool]:
    """The attack chosen in the controls as (rule, its config) per rule; False when the
    choice can't run (an error says why)."""
    left, right = st.columns(2)
    with left:
        kind = persisted(st.selectbox, "Attack", "poi_kind", "update_noise",
                         options=list(KIND_NAMES), format_func=kind_name,
                         help="What the malicious hospital(s) do.")
        st.caption(KIND_HELP[kind])
    std = None
    with right:
        if kind in NOISE_KINDS:
            low, high = POISON_LEVELS[kind]
            sigma = {"low": low, "high": high}
            level = persisted(st.radio, "Noise level", "poi_level", "high",
                              options=["low", "high", "custom"], horizontal=True,
                              format_func=lambda o: f"{o} (σ {sigma[o]:g})" if o in sigma
                              else "another value",
                              help="Standard deviation of the noise: on images in units of "
                                   "the full intensity range (1 = as large as the range), on "
                                   "the model per parameter.")
            std = sigma.get(level)
            if std is None:
                std = float(persisted(st.number_input, "Noise σ", "poi_std", float(high),
                                      min_value=0.0, max_value=100.0, step=0.001,
                                      format="%.4f"))
        else:
            st.caption("This attack has no noise level: the update itself is crafted.")
    left, right = st.columns(2)
    with left:
        hospitals = base_hospitals()
        malicious = persisted(st.multiselect, "Malicious hospital(s)", "poi_malicious", [0],
                              options=list(range(hospitals)),
                              format_func=lambda k: hospital_name(f"center-{k}"),
                              help=f"The federation has {hospitals} hospitals; at least one "
                                   "must stay honest.")
    with right:
        rules = persisted(st.multiselect, "Aggregation rules to compare", "poi_rules",
                          ["fedavg", "fedmedian"], options=list(AGGREGATORS),
                          format_func=rule_name,
                          help="How the server combines the hospitals' updates; each rule is "
                               "one run. " + " ".join(f"{rule_name(a)}: {h}"
                                                      for a, h in AGGREGATOR_HELP.items()))
    if not malicious or not rules:
        st.warning("Pick at least one malicious hospital and one aggregation rule.")
        return [], False
    plans, refusals = attack_plans(kind, malicious, rules, std)
    for refusal in refusals:
        st.error(refusal)
    return plans, not refusals


def rule_verdicts(run: PoisonRun, runs: list[PoisonRun]) -> None:
    """Every rule's verdict on this attack, worst first (the picked run among them)."""
    group = sorted(same_attack(run, runs), key=lambda r: -(r.poison.mae_ratio_mean
                                                          or r.poison.cells[0].mae_ratio))
    for r in group:
        base = r.poison.baseline_run
        verdict_box(verdict(r.poison, r.rule),
                    f"**{rule_name(r.rule)}**. The clean comparison is "
                    + (f"the finished run `{base}`" if base else
                       "the same federation trained without attackers for this run (not "
                       "stored as a run of its own)") + f". Attack: {r.attack}.")


def attack_curves(run: PoisonRun, runs: list[PoisonRun], metric: str) -> None:
    st.markdown("#### How the shared model fared, round by round")
    group = same_attack(run, runs)
    lines = [(r.rule, r.history, r.poison.baseline_history) for r in group]
    st.plotly_chart(curves_figure(lines, metric), key="poi_curves")
    st.caption(f"Solid lines: the shared model's {METRIC_SHORT[metric]} under this attack, one "
               "line per rule; dashed lines of the same colour: the same federation without "
               "attackers, so the gap between a pair is the harm done.")
    have = {r.rule for r in group}
    missing = [rule_name(a) for a in STUDY_RULES if a not in have]
    if missing:
        st.caption(f"No finished run of this attack under {', '.join(missing)} yet: choose the "
                   "same attack above with those rules and press Run to add them.")


def detection_section(run: PoisonRun) -> None:
    st.markdown("#### Could the server spot the attacker?")
    det = run.poison.detection
    names = run.poison.malicious_names
    if det.per_round:
        st.plotly_chart(detection_figure(det, names), key="poi_detection")
        st.caption("Each line is one hospital: how far its upload lies from the middle "
                   "(coordinate-wise median) of all uploads, compared with a typical hospital's "
                   "distance (1× = typical); above the dotted line the server flags it (×).")
    st.markdown(detection_sentence(det, names))


def paper_study(sweep: Sweep, metric: str) -> None:
    st.markdown("### The study grid: every attacker, noise level and rule")
    study_rows(sweep)
    if not sweep.rows:
        if sweep.folder / "table.json" not in sweep.damaged:
            st.info(f"This study has not been run yet: start it above or run "
                    f"`{SWEEP_COMMAND.format(name=sweep.name)}` in a terminal "
                    f"({expected_words(sweep_expected(sweep))}).")
        return
    rows, bad = sweep.rows, poisoned(sweep.rows)
    kinds = [k for k in NOISE_KINDS if any(r.poison_kind == k for r in bad)]
    if not kinds:
        st.info("The study has no attacked experiments yet, only clean ones.")
        return
    c1, c2, c3 = st.columns(3)
    with c1:
        kind = persisted(st.selectbox, "Noise on", "poi_grid_kind", kinds[-1], options=kinds,
                         format_func=kind_name)
    levels = levels_of(rows, kind)
    with c2:
        level = persisted(st.selectbox, "Noise level", f"poi_grid_level_{kind}", levels[-1],
                          options=levels, format_func=lambda v: level_text(kind, v))
    attackers = malicious_order([str(r.malicious) for r in bad])
    with c3:
        chosen = persisted(st.selectbox, "Malicious hospital(s) for the curves",
                           "poi_grid_malicious", attackers[0], options=attackers,
                           format_func=attackers_text)
    cells = paper_cells(rows, kind, level)
    st.plotly_chart(paper_heatmap(cells, attackers), key="poi_grid")
    st.caption(f"Each cell is one experiment with {kind_name(kind)} at {level_text(kind, level)}: "
               "the shared model's final error and how many times the same rule's clean error "
               "that is (green = unharmed, red = three times or worse); empty cells were not "
               "run, because the robust rules cannot outvote two attackers out of four.")
    curves = history_curves(sweep.curves())
    if curves is None:
        st.warning(f"`{sweep.folder / 'curves.json'}` is missing or damaged, so the study's "
                   "round-by-round curves can't be shown.")
    elif lines := paper_lines(cells, rows, chosen, curves):
        st.plotly_chart(curves_figure(lines, metric), key="poi_grid_curves")
        st.caption(f"Round by round with {attackers_text(chosen)} attacking: solid lines are "
                   "the attacked federation under each rule, dashed lines of the same colour "
                   "the same rule without attackers.")
    else:
        st.caption(f"The study has no experiment with {attackers_text(chosen)} attacking at "
                   "this level.")
    st.plotly_chart(level_figure(rows, chosen, metric), key="poi_levels")
    st.caption(f"Each line is one rule: the shared model's final {METRIC_SHORT[metric]} with no "
               f"attack, then with weak and strong noise from {attackers_text(chosen)}; a flat "
               "line means the rule shrugged the noise off.")


def other_studies() -> None:
    for name, (title, figure, caption) in OTHER_STUDIES.items():
        if sweep := study_section(name, title, cell_words):
            st.plotly_chart(figure(sweep.rows), key=f"poi_{name}")
            st.caption(caption)


def breakdown_study() -> None:
    """The strongest attacker against each rule: breakdown curves, the worst-case table and
    every cell."""
    for name, title in bd_views.STUDIES:
        sweep = study_section(name, title, bd_views.cell_words, intro=bd_views.INTRO)
        cells = breakdown(sweep.rows) if sweep is not None else []
        if not cells:
            continue
        st.plotly_chart(bd_views.breakdown_figure(cells), key=f"poi_{name}")
        st.caption(bd_views.CAPTION)
        st.markdown("**Each rule against its worst attack**")
        st.dataframe(bd_views.worst_table(cells), hide_index=True)
        with st.expander("Every rule, number of attackers and attack (mean error ratio)"):
            st.dataframe(bd_views.cell_table(cells), hide_index=True)
