"""What-if: would this patient be exposed if their hospital joined the federation?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app.state import persisted, remember, remembered, session_owner
from app.views import whatif as views
from app.views.common import PAGES_DIR, expected_words, hospital_name
from app.views.results import Sweep, sweep_expected, sweep_state_text
from app.widgets import queued_behind, refusal_shown, sweep_progress, verdict_box
from engine.data.uploads import add_example_patient
from engine.orchestration.jobs import cancel_sweep, start_sweep_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import runs_root

PATIENT_PARAM = "patient"


def _patient(column: Any, patients: dict[str, Path]) -> Path | None:
    """The patient picker (its label kept in the URL, never a server path)."""
    if not patients:
        column.info(views.NO_PATIENT)
        return None
    labels = list(patients)
    wanted = remembered(PATIENT_PARAM)
    shown = wanted if wanted in patients else labels[-1]
    label = column.selectbox("Patient", labels, index=labels.index(shown),
                             help="Uploaded patients (Data & centers) and example patients.")
    if label != wanted:
        remember(PATIENT_PARAM, label)
    return patients[label]


def _controls(root: Path) -> tuple[Sweep | None, bool]:
    """Patient, hospital, example patient, start and stop; the what-if of that pair (None
    before one is picked) and whether any patient exists."""
    patients = views.patient_folders(root)
    with st.container(border=True):
        left, right = st.columns(2)
        center = persisted(right.selectbox, "Hospital that trains on the patient",
                           "whatif_center", 0,
                           options=list(range(build_config("whatif").data.centers)),
                           format_func=lambda c: hospital_name(f"center-{c}"))
        patient = _patient(left, patients)
        if st.button("Add an example patient", icon=":material/person_add:",
                     key="whatif_example", help=views.EXAMPLE_HELP):
            with st.spinner("Creating an artificial patient…"):
                added = add_example_patient(root, center)
                remember(PATIENT_PARAM, next(k for k, p in views.patient_folders(root).items()
                                             if p == added))
            st.rerun()
        sweep = views.read_whatif(patient, center) if patient else None
        if sweep and sweep.active:
            sweep_progress(lambda: views.read_whatif(patient, center),
                           views.whatif_progress_text)
            st.caption("You may leave this page; the experiments go on in the background.")
            if st.button("Stop", icon=":material/stop_circle:", key="whatif_stop"):
                with st.spinner("Stopping: the experiment in progress is cancelled first…"):
                    cancel_sweep(sweep.folder)
                st.rerun()
        elif sweep and sweep.state != "done":
            if sweep.state == "cancelled":
                st.info(sweep_state_text(sweep), icon=":material/stop_circle:")
            elif sweep.state in ("failed", "ended"):
                st.error(sweep_state_text(sweep))
            behind = queued_behind()
            st.caption(f"Two experiments, {expected_words(sweep_expected(sweep))}.")
            if st.button("Run the what-if", icon=":material/play_arrow:",
                         type="primary", key="whatif_start",
                         help=(f"Queued behind {behind}: it starts when that job ends. "
                               if behind else "") + views.START_HELP):
                with refusal_shown("The what-if"):
                    start_sweep_job("whatif", views.whatif_sets(patient, center),
                                    owner=session_owner())
                    st.rerun()
    return sweep, bool(patients)


def _cell(cell: views.WhatifCell, control: views.WhatifMembership | None) -> None:
    """One finished experiment: membership and reconstruction verdicts with their figures."""
    st.subheader(cell.title)
    w = cell.whatif
    if w.membership is not None:
        with verdict_box(views.membership_verdict(w.membership, control),
                         lead=views.MEMBERSHIP_LEAD):
            st.plotly_chart(views.score_figure(w.membership), key=f"scores_{cell.run.run_id}")
    r = w.reconstruction
    with verdict_box(views.reconstruction_verdict(r), lead=views.RECONSTRUCTION_LEAD):
        if r and r.n:
            st.caption(views.SHORT_ATTEMPT)
        for images in views.patient_pairs(cell.run, w):
            for col, image, caption in zip(st.columns(4), images, views.PAIR_CAPTIONS,
                                           strict=True):
                col.image(image, caption=caption, width="stretch")
    final = cell.summary.federation.final
    if final:
        st.caption(f"Shared model's synthetic-CT error (MAE) {final.mae_hu:.0f} HU · "
                   f"run `{cell.run.run_id}`")


def main() -> None:
    st.title("What-if: would this patient be exposed?")
    st.markdown(views.INTRO)
    sweep, any_patient = _controls(runs_root())
    cells = views.finished_cells(sweep) if sweep and sweep.state else []
    if not any(cells):
        if any_patient:
            st.page_link(str(PAGES_DIR / "data.py"), label="Upload another patient",
                         icon=":material/upload_file:")
        return
    # The undefended run is the control that decides whether a low rank may read "not
    # exposed".
    undefended = cells[0].whatif.membership if cells[0] is not None else None
    for col, cell in zip(st.columns(2), cells, strict=True):
        with col:
            if cell is None:
                st.subheader("…")
                st.caption("Not finished yet.")
            else:
                _cell(cell, undefended if cell is not cells[0] else None)


main()
