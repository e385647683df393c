"""Membership inference: can a curious server tell who was in a hospital's training set?"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.params import AUDIT_RUN, MEMBERSHIP_COMPARE, MEMBERSHIP_RUN
from app.state import persisted
from app.views import dp_audit as audit
from app.views import frontier
from app.views import membership as views
from app.views.membership import MiaRun
from app.views.results import RunRow, list_runs
from app.widgets import damaged_warnings, preset_jobs, run_picker, study_section, verdict_box
from engine.analyses.frontier import frontier as frontier_points

PRESETS = (("mia-paper", "Attack an undefended federation"),
           ("mia-secagg", "Attack with secure aggregation"))


def _pick(runs: list[MiaRun]) -> tuple[MiaRun, MiaRun | None]:
    """The run to show and an optional one to overlay, both kept in the URL."""
    left, right = st.columns(2)
    shown = run_picker(runs, MEMBERSHIP_RUN, "Attacked run", column=left,
                       help="Finished runs that include a membership-inference attack.")
    assert shown is not None
    other = run_picker(runs, MEMBERSHIP_COMPARE, "Compare with", column=right, optional=True,
                       exclude=shown.run_id,
                       help="Overlay a second run, e.g. the same federation with secure "
                            "aggregation.")
    return shown, other


def _curves(run: MiaRun, other: MiaRun | None) -> None:
    st.markdown("#### Per hospital: how many patients can the server pick out?")
    roc = run.roc()
    if not roc:
        st.info(views.NO_ROC)
        return
    attacks = list(roc)
    # Open on the attack the verdict rests on (the global model under secure aggregation).
    first = run.mia.verdict_attack or run.mia.attack
    attack = persisted(st.selectbox, "Attack to plot", "mia_attack",
                       first if first in attacks else attacks[0], options=attacks,
                       format_func=views.attack_name)
    curves: list[tuple[MiaRun, dict[str, Any], str]] = [(run, roc, "solid")]
    other_roc = other.roc() if other else None
    if other and other_roc:
        curves.append((other, other_roc, "dash"))
        if attack not in other_roc:
            st.caption(f"The compared run has no {views.attack_name(attack)} results.")
    panels = [p for p in roc[attack] if p != views.POOLED] + [views.POOLED]
    st.plotly_chart(views.roc_figure(panels, curves, attack))
    st.caption(views.ROC_CAPTION)


def _tables(run: MiaRun) -> None:
    st.markdown("#### All attacks at a glance (AUC: 0.5 = guessing, 1 = always right)")
    st.dataframe(views.auc_table(run.mia), hide_index=True)
    st.caption(views.AUC_CAPTION)
    st.markdown(f"**{views.attack_name(run.mia.attack)}: slices caught at a fixed rate of "
                "false alarms**")
    st.dataframe(views.tpr_table(run.mia), hide_index=True)
    st.caption(views.TPR_CAPTION)
    with st.expander("What the attacks do"):
        st.markdown(views.ATTACKS_EXPLAINED)


def _secagg(run: MiaRun, other: MiaRun | None) -> None:
    with st.expander("What secure aggregation hides and what it leaves visible"):
        st.markdown(views.SECAGG_EXPLAINED)
        secagg = next((r for r in (run, other) if r and r.secure_aggregation), None)
        if secagg is None:
            st.caption(views.NO_SECAGG_RUN)
        elif sentence := views.secagg_sentence(secagg):
            st.markdown(sentence)


def _dp_tradeoff() -> None:
    sweep = study_section("mia-dp", "Differential privacy: how ε changes the attack, and what "
                          "it costs", views.cell_words, intro=views.DP_INTRO)
    if sweep is None:
        return
    if not any(r.patient_auc_pooled is not None for r in sweep.rows):
        st.info(views.DP_OLD_TABLE)
        return
    st.plotly_chart(views.dp_figure(sweep.rows))
    st.caption("Bars: 95% intervals resampling patients, all hospitals together.")
    st.markdown(views.dp_sentence(sweep.rows))


def _dp_frontier() -> None:
    for study in frontier.STUDIES:
        sweep = study_section(study.name, study.title, frontier.cell_words, intro=study.intro)
        if sweep is not None:
            points = frontier_points(sweep.rows)
            st.plotly_chart(frontier.frontier_figure(points), key=f"mia_{study.name}")
            st.caption(frontier.caption(study.level))
            st.markdown(frontier.frontier_sentence(points, frontier.scale_words(study.name)))
            st.markdown(frontier.attack_sentence(points, study.level))


def _dp_audit(rows: list[RunRow]) -> None:
    st.markdown("#### Privacy audit: does the noise give the ε the accountant claims?")
    st.caption(audit.AUDIT_INTRO)
    preset_jobs(AUDIT_RUN, (("dp-audit", "Audit hospital-level DP at ε 8"),),
                kind="audit", retry="dp-audit",
                intro="**Run a privacy audit** (in the background)")
    runs, damaged = audit.audit_runs(rows)
    damaged_warnings(damaged, "audit")
    if runs:
        shown = run_picker(runs, AUDIT_RUN, "Audited run",
                           help="Finished runs with a privacy audit (attacks.dp_audit).")
        if shown is not None and shown.summary and shown.summary.dp_audit:
            verdict_box(audit.audit_verdict(shown.summary.dp_audit))
        st.dataframe(audit.audit_table(runs), hide_index=True)
    sweep = study_section("dp-audit", "The audit at every ε", audit.audit_cell_words)
    audited = [r for r in (sweep.rows if sweep else []) if r.audit_bound is not None]
    if audited:
        st.plotly_chart(audit.audit_figure(audited))
        st.markdown(audit.audit_sweep_sentence(audited))


def main() -> None:
    st.title("Membership inference")
    st.markdown(views.INTRO)
    preset_jobs(MEMBERSHIP_RUN, PRESETS, kind="attack", retry="mia-paper",
                intro="**Run a new attack experiment** (in the background: you may leave "
                      "this page and come back; the time each takes is under its button)")
    rows = list_runs()
    runs, damaged = views.mia_runs(rows)
    damaged_warnings(damaged, "attack")
    if not runs:
        st.info(views.EMPTY)
    else:
        shown, compare = _pick(runs)
        verdict_box(views.verdict(shown.mia), views.tested_words(shown))
        if compare:
            st.markdown(views.compared_words(compare))
        _curves(shown, compare)
        _tables(shown)
        _secagg(shown, compare)
    _dp_tradeoff()
    _dp_frontier()
    _dp_audit(rows)


main()
