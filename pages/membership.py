"""Membership inference: can a curious server tell who was in a hospital's training set?"""

from __future__ import annotations

from typing import Any

import streamlit as st

from app.mia import (
    POOLED,
    MiaRun,
    attack_name,
    auc_table,
    dp_figure,
    dp_sentence,
    latest_dp_sweep,
    mia_runs,
    read_json,
    roc_figure,
    tpr_table,
    verdict,
    verdict_detail,
)
from app.state import persisted, remember, remembered
from app.ui import preset_jobs
from engine.orchestration.store import runs_root

RUN_PARAM, COMPARE_PARAM = "mia_run", "mia_compare"
PRESETS = (("mia-paper", "Attack an undefended federation"),
           ("mia-secagg", "Attack with secure aggregation"))


def _pick(runs: list[MiaRun]) -> tuple[MiaRun, MiaRun | None]:
    """The run to show and an optional one to overlay, both kept in the URL."""
    by_id = {r.run.run_id: r for r in runs}
    ids = list(by_id)
    wanted = remembered(RUN_PARAM)
    # An active or failed run stays remembered (for its progress) while the newest is shown.
    shown = wanted if wanted in by_id else ids[0]
    left, right = st.columns(2)
    picked = left.selectbox("Attacked run", ids, index=ids.index(shown),
                            format_func=lambda rid: by_id[rid].label,
                            help="Finished runs that include a membership-inference attack.")
    if picked != shown:
        remember(RUN_PARAM, picked)
        st.rerun()
    others: list[str | None] = [None, *(i for i in ids if i != shown)]
    wanted_cmp = remembered(COMPARE_PARAM)
    cmp_shown = wanted_cmp if wanted_cmp in others else None
    compare = right.selectbox("Compare with", others, index=others.index(cmp_shown),
                              format_func=lambda rid: "nothing" if rid is None
                              else by_id[rid].label,
                              help="Overlay a second run, e.g. the same federation with "
                                   "secure aggregation.")
    if compare != cmp_shown:
        remember(COMPARE_PARAM, compare)
        st.rerun()
    return by_id[shown], by_id[compare] if compare else None


def _verdict(run: MiaRun, other: MiaRun | None) -> None:
    v = verdict(run.mia)
    with st.container(border=True):
        st.markdown(f"#### :{v.colour}-background[{v.title}]")
        st.markdown(verdict_detail(v, run.mia))
        n = next(iter((run.mia.get("n_candidates") or {}).values()), None)
        if n:
            st.caption(f"Tested per hospital: {n['members']} training and {n['nonmembers']} "
                       f"held-out slices of {n.get('member_patients', '?')} and "
                       f"{n.get('nonmember_patients', '?')} patients, over rounds "
                       f"{', '.join(map(str, run.mia.get('rounds', [])))}. Run: "
                       f"{run.defenses}.")
        if other:
            o = verdict(other.mia)
            auc = f" (worst-case patient-level AUC {o.auc:.2f})" if o.auc is not None else ""
            st.markdown(f"Compared run, {other.legend()}: :{o.colour}[{o.title}]{auc}.")


def _curves(run: MiaRun, other: MiaRun | None) -> None:
    st.markdown("#### Per hospital: how many patients can the server pick out?")
    roc = run.roc()
    if not roc:
        st.info("This run has no ROC curves stored (made by an older version). Run the "
                "'mia-paper' preset again to get them.")
        return
    attacks = list(roc)
    attack = persisted(st.selectbox, "Attack to plot", "mia_attack",
                       run.mia.get("attack", attacks[0]), options=attacks,
                       format_func=attack_name)
    curves: list[tuple[MiaRun, dict[str, Any], str]] = [(run, roc, "solid")]
    other_roc = other.roc() if other else None
    if other and other_roc:
        curves.append((other, other_roc, "dash"))
        if attack not in other_roc:
            st.caption(f"The compared run has no {attack_name(attack)} results.")
    panels = [p for p in roc[attack] if p != POOLED] + [POOLED]
    st.plotly_chart(roc_figure(panels, curves, attack))
    st.caption("Each curve slides a threshold over the server's suspicion scores: upward = "
               "share of real training patients it catches, rightward = share of other "
               "patients it wrongly flags. The dotted diagonal is guessing; a curve hugging the "
               "top-left corner means the server can tell.")


def _tables(run: MiaRun) -> None:
    st.markdown("#### All attacks at a glance (AUC: 0.5 = guessing, 1 = always right)")
    st.dataframe(auc_table(run.mia), hide_index=True)
    st.caption("★ the run's headline attack. \"degenerate\": the server saw the same thing "
               "from every hospital, so the attack could not rank anyone (not a measurement).")
    st.markdown(f"**{attack_name(run.mia.get('attack', ''))}: patients caught at a fixed rate "
                "of false alarms**")
    st.dataframe(tpr_table(run.mia), hide_index=True)
    st.caption("E.g. \"caught at 1% false alarms\": the share of training patients the server "
               "identifies while wrongly accusing at most 1 in 100 other patients (the "
               "attacker's true-positive rate at a 1% false-positive rate).")
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
            "so an attack on the **global model's loss** still works as well as it does "
            "without the defense: that is what a secure-aggregation verdict rests on.")
        secagg = next((r for r in (run, other) if r and r.secagg), None)
        if secagg is None:
            st.caption("Neither run shown used secure aggregation: start the "
                       "'mia-secagg' preset and compare it with this one.")
            return
        glob = (secagg.mia.get("baselines") or {}).get("global_loss") or {}
        if glob:
            center = max(glob, key=glob.get)
            st.markdown(f"In **{secagg.legend()}**, the attack on the global model still "
                        f"reaches AUC **{glob[center]:.2f}** at {center} ("
                        + ", ".join(f"{c} {a:.2f}" for c, a in glob.items()) + ").")


def _dp_tradeoff() -> None:
    found = latest_dp_sweep(runs_root())
    if not found:
        return
    folder, rows = found
    st.markdown("#### Differential privacy: how much ε protects patients, and what it costs")
    st.caption("Hospital-level DP: each hospital clips its update and adds noise. "
               "Patient-level DP: each hospital trains with DP-SGD, bounding every patient's "
               "influence. ε comes from an RDP accountant (Opacus) at δ = 1e-5; lower ε = "
               "more private, and above ε 10 the guarantee means little. Bars: 95% intervals "
               "resampling patients, all hospitals together.")
    if not any(r.get("patient_auc_pooled") is not None for r in rows):
        st.info("This privacy sweep was made by an older version without patient-level "
                "results: run `fedsct sweep --preset mia-dp` again.")
        return
    st.plotly_chart(dp_figure(rows))
    st.markdown(dp_sentence(rows))
    cells = len((read_json(folder / "sweep.json") or {}).get("cells") or rows)
    if cells > len(rows):
        st.caption(f"{len(rows)} of {cells} noise levels finished so far (the sweep is still "
                   "running, or was stopped).")


st.title("Membership inference")
st.markdown(
    "In a **membership-inference attack**, a curious server tries to tell whether a given "
    "patient's scans were used to train a hospital's model. That matters even if no image "
    "leaks: knowing that a patient was treated at a hospital (for example a cancer centre) is "
    "itself sensitive. Pick a finished attack run below, or start one.")

preset_jobs(RUN_PARAM, PRESETS, kind="attack", retry="mia-paper",
            intro="**Run a new attack experiment** (about 2 minutes each, in the background: "
                  "you may leave this page and come back)")
runs = mia_runs()
if not runs:
    st.info("No membership-inference results yet. Run the 'mia-paper' preset (button above) "
            "to attack an undefended federation, then 'mia-secagg' to see what secure "
            "aggregation changes.")
else:
    shown, compare = _pick(runs)
    try:
        _verdict(shown, compare)
        _curves(shown, compare)
        _tables(shown)
        _secagg(shown, compare)
    except (KeyError, TypeError, ValueError, AttributeError):
        # Results written by an older engine lack fields: explain instead of a traceback.
        st.info("This run's attack results are in an older format this page can't read. "
                "Run the 'mia-paper' preset again.")
_dp_tradeoff()
