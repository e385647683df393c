"""Streamlit widgets of the Gradient inversion page: an attacked run's images and iterations,
the defenses form and the studies. Words, figures and tables are in ``app.views.inversion``."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.params import INVERSION_RUN
from app.state import persisted, remember, session_owner
from app.views.common import expected_words, hospital_name
from app.views.inversion import (
    DEFENDED_PRESET,
    DP_LEVELS,
    PRUNE_LEVELS,
    InversionRun,
    budget_figure,
    budget_table,
    cell_words,
    defense_figure,
    defense_sets,
    defense_table,
    factor_figure,
    has_snapshots,
    load_npz,
    loss_figure,
    pair_panels,
    snapshot_panels,
)
from app.widgets import (
    queued_behind,
    refusal_shown,
    study_section,
)
from engine.core.config import ConfigError
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import RunIndex, find_finished_run, runs_root
from engine.orchestration.timings import expected_runs

FLASH = "inv_flash"  # a one-off message shown after the page reruns

def images(run: InversionRun) -> None:
    st.markdown("#### What the attacker rebuilt")
    centers = list(run.inv.per_client)
    if not centers:
        st.info("This run stored no per-hospital results.")
        return
    rid = run.run_id
    left, right = st.columns(2)
    center = left.selectbox("Hospital", centers, key=f"inv_center_{rid}",
                            format_func=hospital_name,
                            help="The hospital whose update was attacked.")
    path = run.npz(center)
    arrays = load_npz(path)
    if arrays is None:
        st.warning(f"The images of {center} can't be shown: `{path}` is missing or damaged.")
        return
    pairs = arrays["pairs"]
    pair = 0
    if len(pairs) > 1:
        pair = right.selectbox(
            "Matched slice", range(len(pairs)), key=f"inv_pair_{rid}_{center}",
            format_func=lambda k: f"patient slice {pairs[k][1] + 1} ↔ reconstruction "
                                  f"{pairs[k][0] + 1}",
            help="The attacker does not know the order of the slices, so each reconstruction "
                 "is paired with the real slice it resembles most.")
    st.caption("Left to right: the real slice, the attacker's reconstruction, the difference "
               "between them, and the average brain the attacker knew before attacking (the "
               "floor). The CT row uses a brain/bone window.")
    try:
        for row, panels in pair_panels(arrays, pair):
            st.markdown(f"**{row}**")
            for col, (img, caption) in zip(st.columns(4), panels, strict=True):
                col.image(img, caption=caption, width="stretch")
        iterations(arrays, rid, center, int(pairs[pair][0]))
    except (ValueError, IndexError, TypeError):  # arrays of an unexpected shape
        st.warning(f"The images of {center} can't be shown: `{path}` is damaged.")


def iterations(arrays: dict[str, np.ndarray], rid: str, center: str, recon: int) -> None:
    st.markdown("#### How the attack converged")
    st.caption("The attacker repeatedly adjusts fake images so that the update they would "
               "produce matches the hospital's real update; the curve is the remaining "
               "mismatch.")
    losses = arrays["losses"]
    if not has_snapshots(arrays) or recon >= arrays["snapshots_mri"].shape[1]:
        st.caption("No intermediate images were stored for this run "
                   "(attacks.inversion.snapshot_every = 0).")
        if len(losses):
            st.plotly_chart(loss_figure(losses, None), key=f"inv_loss_{rid}_{center}")
        return
    its = [int(i) + 1 for i in arrays["snapshot_iterations"]]
    if len(its) > 1:
        shown = st.select_slider("Attack iteration", options=its, value=its[-1],
                                 key=f"inv_iter_{rid}_{center}",
                                 help="Slide to see the reconstruction at that iteration.")
    else:
        shown = its[0]
    step = its.index(shown)
    left, right = st.columns([1, 2])
    with left:
        for col, (img, caption) in zip(st.columns(2), snapshot_panels(arrays, step, recon),
                                       strict=True):
            col.image(img, caption=f"{caption} at iteration {shown}", width="stretch")
    with right:
        st.plotly_chart(loss_figure(losses, shown), key=f"inv_loss_{rid}_{center}")


def defenses() -> None:
    st.markdown("#### Try a defense")
    st.caption("Switch on protections for the vulnerable design (inversion-easy) and run the "
               "same attack again, to see what each one blocks.")
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            secagg = persisted(st.toggle, "Secure aggregation", "inv_secagg", False,
                               help="Each hospital masks its upload; the server only learns "
                                    "the sum of all hospitals' updates.")
        with c2:
            slices = persisted(st.toggle, "4 slices per step", "inv_slices4", False,
                               help="Each update mixes 4 images instead of one, which is "
                                    "harder to untangle.")
        with c3:
            dp = persisted(st.radio, "Differential privacy", "inv_dp", "off",
                           options=list(DP_LEVELS),
                           help="Each hospital clips its update (norm 0.05) and adds the "
                                "noise that gives this ε over the 30 rounds (lower ε = more "
                                "private).")
        with c4:
            prune = persisted(st.radio, "Pruning", "inv_prune", "off",
                              options=list(PRUNE_LEVELS),
                              help="Each hospital zeroes the smallest share of its update "
                                   "before sending it.")
        try:
            cfg = build_config(DEFENDED_PRESET, sets=defense_sets(
                secagg=secagg, slices=slices, epsilon=DP_LEVELS[dp],
                prune=PRUNE_LEVELS[prune]))
        except ConfigError as err:
            st.error(f"These settings can't be combined: {err}")
            return
        found = find_finished_run(cfg, runs_root())
        if found:
            st.caption(f"A finished run with exactly these settings exists (`{found.run_id}`): "
                       "the button shows it instead of training again.")
        else:
            st.caption(expected_words(expected_runs([cfg], DEFENDED_PRESET,
                                                    RunIndex().list()), start=True) + ".")
        behind = queued_behind()
        if st.button("Rerun the attack with these defenses", key="rerun_defended",
                     icon=":material/shield:",
                     help=f"Queued behind {behind}: it starts when that job ends." if behind
                     else "Trains in the background."):
            if found:
                remember(INVERSION_RUN, found.run_id)
                st.session_state[FLASH] = (f"Showing the finished run `{found.run_id}`, which "
                                           "used exactly these settings.")
            else:
                with refusal_shown("The attack"):
                    remember(INVERSION_RUN, start_job(cfg, preset=DEFENDED_PRESET,
                                                  owner=session_owner()).run_id)
                    st.session_state[FLASH] = ("Started the attack with these defenses; its "
                                               "progress is shown at the top of the page.")
                    st.rerun()
                return
            st.rerun()


def factor_study() -> None:
    sweep = study_section("inversion-factors", "Why a design leaks: one factor changed at a "
                          "time", cell_words)
    if sweep:  # study_section returns a study only when it has rows
        st.plotly_chart(factor_figure(sweep.rows), key="inv_factors")
        st.caption("Each pair of bars starts from the vulnerable design and changes one thing; "
                   "red is how close the attacker's reconstruction gets (inside the head), "
                   "grey is its average brain, so red barely above grey means nothing leaked.")


def budget_study() -> None:
    sweep = study_section("inversion-budget", "How much attack is enough: the budget study",
                          cell_words)
    if sweep:
        st.plotly_chart(budget_figure(sweep.rows), key="inv_budget")
        st.caption("Left: red is the strongest attack on the study's model, blue the same "
                   "attack at the same budget on the calibration controls (their mean); dotted "
                   "lines are what each attacker's average brain already "
                   "gets. A verdict of 'no leak' needs blue clearly above its dotted line "
                   "while red stays on its own. Right: how well the attack matched the "
                   "upload.")
        st.dataframe(budget_table(sweep.rows), hide_index=True, column_config={
            k: st.column_config.NumberColumn(format="%.3f")
            for k in ("Body SSIM", "Floor", "Control body SSIM", "Control floor")})


def defense_study() -> None:
    sweep = study_section("inversion-defenses", "Defenses: what they block and what they "
                          "cost", cell_words)
    if sweep:
        st.plotly_chart(defense_figure(sweep.rows), key="inv_defenses")
        st.caption("Each point is one defense: lower means less of the patient's image "
                   "leaks, further right means the shared model's synthetic CT gets worse.")
        st.dataframe(defense_table(sweep.rows), hide_index=True, column_config={
            "Body SSIM of the reconstruction": st.column_config.NumberColumn(format="%.2f"),
            "Floor body SSIM": st.column_config.NumberColumn(format="%.2f"),
            "Model error, MAE (HU)": st.column_config.NumberColumn(format="%.0f"),
            "Extra error (HU)": st.column_config.NumberColumn(format="%+.0f"),
        })
