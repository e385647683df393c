"""Membership inference: can a curious server tell who was in a hospital's training set?"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.state import persisted
from app.views.common import hospital_name
from app.views.dp_audit import (
    audit_cell_words,
    audit_figure,
    audit_runs,
    audit_sweep_sentence,
    audit_table,
    audit_verdict,
)
from app.views.mia import (
    POOLED,
    MiaRun,
    attack_name,
    auc_table,
    cell_words,
    dp_figure,
    dp_sentence,
    mia_runs,
    roc_figure,
    tpr_table,
    verdict,
)
from app.views.results import list_runs, read_sweep
from app.widgets import preset_jobs, run_picker, study_box, verdict_box
from engine.core.config import ConfigError
from engine.orchestration.presets import sweep_spec

RUN_PARAM, COMPARE_PARAM, AUDIT_PARAM = "mia_run", "mia_compare", "audit_run"
PRESETS = (("mia-paper", "Attack an undefended federation"),
           ("mia-secagg", "Attack with secure aggregation"))


def _pick(runs: list[MiaRun]) -> tuple[MiaRun, MiaRun | None]:
    """The run to show and an optional one to overlay, both kept in the URL."""
    left, right = st.columns(2)
    shown = run_picker(runs, RUN_PARAM, "Attacked run", column=left,
                       help="Finished runs that include a membership-inference attack.")
    assert shown is not None
    other = run_picker(runs, COMPARE_PARAM, "Compare with", column=right, optional=True,
                       exclude=shown.run_id,
                       help="Overlay a second run, e.g. the same federation with secure "
                            "aggregation.")
    return shown, other


def _verdict(run: MiaRun, other: MiaRun | None) -> None:
    mia = run.mia
    n = next(iter(mia.n_candidates.values()), None)
    tested = (f"Tested per hospital: {n.members} training and {n.nonmembers} held-out slices "
              f"of {n.member_patients or '?'} and {n.nonmember_patients or '?'} patients, over "
              f"rounds {', '.join(map(str, mia.rounds))}. Run: {run.defenses or 'no defense'}."
              if n else "")
    verdict_box(verdict(mia), tested)
    if other:
        o = verdict(other.mia)
        figure = f" ({o.figure})" if o.figure else ""
        st.markdown(f"Compared run, {other.legend()}: :{o.colour}[{o.title}]{figure}.")


def _curves(run: MiaRun, other: MiaRun | None) -> None:
    st.markdown("#### Per hospital: how many patients can the server pick out?")
    roc = run.roc()
    if not roc:
        st.info("This run has no ROC curves stored (made by an older version). Run the "
                "'mia-paper' preset again to get them.")
        return
    attacks = list(roc)
    # Open on the attack the verdict rests on (the global model under secure aggregation).
    first = run.mia.verdict_attack or run.mia.attack
    attack = persisted(st.selectbox, "Attack to plot", "mia_attack",
                       first if first in attacks else attacks[0], options=attacks,
                       format_func=attack_name)
    curves: list[tuple[MiaRun, dict[str, Any], str]] = [(run, roc, "solid")]
    other_roc = other.roc() if other else None
    if other and other_roc:
        curves.append((other, other_roc, "dash"))
        if attack not in other_roc:
            st.caption(f"The compared run has no {attack_name(attack)} results.")
    panels = [p for p in roc[attack] if p != POOLED] + [POOLED]
    st.plotly_chart(roc_figure(panels, curves, attack))
    st.caption("Each curve slides a threshold over the server's suspicion scores, slice by "
               "slice: upward = share of training slices it catches, rightward = share of "
               "other patients' slices it wrongly flags. The dotted diagonal is guessing; a "
               "curve hugging the top-left corner means the server tells members apart.")


def _tables(run: MiaRun) -> None:
    st.markdown("#### All attacks at a glance (AUC: 0.5 = guessing, 1 = always right)")
    st.dataframe(auc_table(run.mia), hide_index=True)
    st.caption("Slice-level AUCs (the verdict above is per patient). ★ the attack the verdict "
               "rests on. \"degenerate\": the server saw the same thing "
               "from every hospital, so the attack could not rank anyone (not a measurement).")
    st.markdown(f"**{attack_name(run.mia.attack)}: slices caught at a fixed rate "
                "of false alarms**")
    st.dataframe(tpr_table(run.mia), hide_index=True)
    st.caption("E.g. \"slices caught at 1% false alarms\": the share of training slices the "
               "server identifies while wrongly flagging at most 1 in 100 slices of other "
               "patients (the attacker's true-positive rate at a 1% false-positive rate); shown "
               "only where there are enough non-member patients to resolve that rate.")
    with st.expander("What the attacks do"):
        st.markdown(
            "- **FedMIA-I (loss)**: the server checks how well the hospital's uploaded model "
            "fits the patient's scans, compared with the other hospitals' models, which never "
            "saw that patient.\n"
            "- **FedMIA-II (gradient)**: the server checks whether the hospital's update points "
            "the way the patient's scans would push the model.\n"
            "- The σ / log variants differ only in how the comparison with the other hospitals "
            "is turned into a score.\n"
            "- **Global model loss (Yeom)**: how well the final shared model fits the patient. "
            "Anyone who receives the model can try this.\n"
            "- **Hospital's own loss, no reference**: FedMIA-I's signal without the comparison "
            "with other hospitals.")


def _secagg(run: MiaRun, other: MiaRun | None) -> None:
    with st.expander("What secure aggregation hides and what it leaves visible"):
        st.markdown(
            "With **secure aggregation** each hospital masks its upload, so the server only "
            "learns the sum of all hospitals' updates, never one hospital's. Attacks that "
            "study an individual hospital's update (FedMIA) then have nothing to work on: "
            "whatever they compute from the masked uploads is noise, and the page labels them "
            "as not applicable. The final shared model is still released to everyone, though, "
            "so an attack on the **global model's loss** is still possible, with or without "
            "the defense: that is what a secure-aggregation verdict rests on (its "
            "patient-level AUC, interval and sample size are in the verdict above).")
        secagg = next((r for r in (run, other) if r and r.secure_aggregation), None)
        if secagg is None:
            st.caption("Neither run shown used secure aggregation: start the "
                       "'mia-secagg' preset and compare it with this one.")
            return
        glob = secagg.mia.baselines.get("global_loss") or {}
        if glob:
            center = max(glob, key=glob.__getitem__)
            st.markdown(f"In **{secagg.legend()}**, the attack on the global model still "
                        f"reaches AUC **{glob[center]:.2f}** at {hospital_name(center)} ("
                        + ", ".join(f"{hospital_name(c)} {a:.2f}" for c, a in glob.items())
                        + ", slice level).")


def _dp_tradeoff() -> None:
    st.markdown("#### Differential privacy: how ε changes the attack, and what it costs")
    try:
        sweep = read_sweep("mia-dp")
    except ConfigError as err:  # a study the engine no longer offers
        st.warning(f"The 'mia-dp' study can't be shown: {err}")
        return
    st.caption("Hospital-level DP: each hospital clips its update and adds noise. "
               "Patient-level DP: each hospital trains with DP-SGD, bounding every patient's "
               "influence. ε comes from an RDP accountant (Opacus) at δ = 1e-5; lower ε = "
               "more private, and above ε 10 the guarantee means little. "
               + sweep_spec("mia-dp")["description"])
    study_box(sweep, cell_words)
    for path in sweep.damaged:
        st.warning(f"`{path}` is damaged or unreadable; starting the study again rewrites it "
                   "(finished experiments are reused).")
    rows = sweep.rows or []
    if not rows:
        return
    if not any(r.get("patient_auc_pooled") is not None for r in rows):
        st.info("This privacy study was made by an older version without patient-level "
                "results: start it again.")
        return
    st.plotly_chart(dp_figure(rows))
    st.caption("Bars: 95% intervals resampling patients, all hospitals together.")
    st.markdown(dp_sentence(rows))
    if sweep.state != "done" and sweep.total > len(rows):
        st.caption(f"{len(rows)} of {sweep.total} noise levels finished so far.")


def _dp_audit(rows: list) -> None:
    st.markdown("#### Privacy audit: does the noise give the ε the accountant claims?")
    st.caption("The ε above is computed, not measured: it holds only if the code adds the noise "
               "the accountant assumes. The audit checks the code. Hundreds of canaries (made-up "
               "hospitals, or made-up patients inside Hospital A's DP-SGD), each present with "
               "probability ½, go through the hospitals' own privacy code; the server then "
               "guesses which were present. Guessing well proves a lower bound on ε: above the "
               "claimed ε, the implementation is wrong.")
    preset_jobs(AUDIT_PARAM, (("dp-audit", "Audit hospital-level DP at ε 8"),),
                kind="audit", retry="dp-audit",
                intro="**Run a privacy audit** (about 10 s, in the background)")
    runs, damaged = audit_runs(rows)
    for path in damaged:
        st.warning(f"`{path}` is missing or damaged, so that run's audit can't be shown. Run "
                   "the preset again.")
    if runs:
        shown = run_picker(runs, AUDIT_PARAM, "Audited run",
                           help="Finished runs with a privacy audit (attacks.dp_audit).")
        if shown is not None and shown.summary and shown.summary.dp_audit:
            verdict_box(audit_verdict(shown.summary.dp_audit))
        st.dataframe(audit_table(runs), hide_index=True)
    sweep = read_sweep("dp-audit")
    st.caption(sweep_spec("dp-audit")["description"])
    study_box(sweep, audit_cell_words)
    audited = [r for r in sweep.rows or [] if r.get("audit_bound") is not None]
    if audited:
        st.plotly_chart(audit_figure(audited))
        st.markdown(audit_sweep_sentence(audited))


st.title("Membership inference")
st.markdown(
    "In a **membership-inference attack**, a curious server tries to tell whether a given "
    "patient's scans were used to train a hospital's model. That matters even if no image "
    "leaks: knowing that a patient was treated at a hospital (for example a cancer centre) is "
    "itself sensitive. Pick a finished attack run below, or start one.")

preset_jobs(RUN_PARAM, PRESETS, kind="attack", retry="mia-paper",
            intro="**Run a new attack experiment** (about 2 minutes each, in the background: "
                  "you may leave this page and come back)")
listed = list_runs()
runs, damaged = mia_runs(listed)
for path in damaged:
    st.warning(f"`{path}` is missing or damaged, so that run's attack results can't be "
               "shown. Run the preset again.")
if not runs:
    st.info("No membership-inference results yet. Run the 'mia-paper' preset (button above) "
            "to attack an undefended federation, then 'mia-secagg' to see what secure "
            "aggregation changes.")
else:
    shown, compare = _pick(runs)
    _verdict(shown, compare)
    _curves(shown, compare)
    _tables(shown)
    _secagg(shown, compare)
_dp_tradeoff()
_dp_audit(listed)
