"""What-if: would this patient be exposed if their hospital joined the federation?"""

from __future__ import annotations

import streamlit as st

from app.state import persisted, remember, remembered
from app.views.common import PAGES_DIR, hospital_name
from app.views.whatif import (
    add_example_patient,
    finished_cells,
    membership_verdict,
    patient_folders,
    patient_pairs,
    read_whatif,
    reconstruction_verdict,
    score_figure,
    whatif_progress_text,
    whatif_sets,
)
from app.widgets import queued_behind, sweep_progress
from engine.orchestration.jobs import cancel_sweep, start_sweep_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import runs_root

PATIENT_PARAM = "patient"

st.title("What-if: would this patient be exposed?")
st.markdown(
    "Pick one patient and the hospital that would train on them. The lab runs the live-demo "
    "federation (4 hospitals) twice with this patient among that hospital's training "
    "patients: once **without defenses** and once **with secure aggregation and privacy "
    "noise**. In both, the curious server then tries to tell whether this patient was used "
    "(*membership inference*) and to rebuild their images from the hospital's update "
    "(*gradient inversion*). The two answers are shown side by side."
)

root = runs_root()
centers = build_config("whatif").data.centers
patients = patient_folders(root)
with st.container(border=True):
    left, right = st.columns(2)
    center = persisted(right.selectbox, "Hospital that trains on the patient", "whatif_center",
                       0, options=list(range(centers)),
                       format_func=lambda c: hospital_name(f"center-{c}"))
    if not patients:
        left.info("No patient to ask about yet: upload an MRI + CT pair on **Data & centers**, "
                  "or add an example patient.")
        patient = None
    else:
        labels = list(patients)
        # The URL holds the patient's label (e.g. "1BA002 (uploaded)"), never a server path.
        wanted = remembered(PATIENT_PARAM)
        shown = wanted if wanted in patients else labels[-1]
        label = left.selectbox("Patient", labels, index=labels.index(shown),
                               help="Uploaded patients (Data & centers) and example patients.")
        patient = patients[label]
        if label != wanted:
            remember(PATIENT_PARAM, label)
    if st.button("Add an example patient", icon=":material/person_add:", key="whatif_example",
                 help="An artificial patient scanned at the chosen hospital, saved like an "
                      "upload (nobody has trained on it yet)."):
        with st.spinner("Creating an artificial patient…"):
            added = add_example_patient(root, center)
            remember(PATIENT_PARAM, next(k for k, p in patient_folders(root).items()
                                         if p == added))
        st.rerun()
    sweep = read_whatif(patient, center) if patient else None
    if sweep and sweep.active:
        sweep_progress(lambda: read_whatif(patient, center), whatif_progress_text)
        st.caption("You may leave this page; the experiments go on in the background.")
        if st.button("Stop", icon=":material/stop_circle:", key="whatif_stop"):
            with st.spinner("Stopping: the experiment in progress is cancelled first…"):
                cancel_sweep(sweep.folder)
            st.rerun()
    elif sweep and sweep.state != "done":
        if sweep.state in ("failed", "ended"):
            st.error("The last attempt did not finish "
                     f"(`{sweep.folder / 'log.txt'}` says why). Starting again keeps what "
                     "finished.")
        behind = queued_behind()
        if st.button("Run the what-if (about 16 minutes)", icon=":material/play_arrow:",
                     type="primary", key="whatif_start",
                     help=(f"Queued behind {behind}: it starts when that job ends. "
                           if behind else "") + "Two experiments, one after the other; one "
                          "that already ran with the same settings is reused."):
            start_sweep_job("whatif", whatif_sets(patient, center))
            st.rerun()

cells = finished_cells(sweep) if sweep and sweep.state else []
if not any(cells):
    if patients:
        st.page_link(str(PAGES_DIR / "data.py"), label="Upload another patient",
                     icon=":material/upload_file:")
    st.stop()
# The undefended run is the control that decides whether a low rank may read "not exposed".
undefended = cells[0].whatif.membership if cells[0] is not None else None
for col, cell in zip(st.columns(2), cells, strict=True):
    with col:
        if cell is None:
            st.subheader("…")
            st.caption("Not finished yet.")
            continue
        st.subheader(cell.title)
        w = cell.whatif
        m = w.membership
        if m is not None:
            with st.container(border=True):
                v = membership_verdict(m, undefended if cell is not cells[0] else None)
                st.markdown(f"#### :{v.colour}-background[{v.title}]")
                st.markdown("**Was this patient used?** (membership inference) " + v.detail)
                st.plotly_chart(score_figure(m), key=f"scores_{cell.run.run_id}")
        r = w.reconstruction
        with st.container(border=True):
            v = reconstruction_verdict(r)
            st.markdown(f"#### :{v.colour}-background[{v.title}]")
            st.markdown("**Can their images be rebuilt?** (gradient inversion) " + v.detail)
            if r and r.n:
                st.caption("A short attempt (50 iterations of Inverting Gradients on the "
                           "hospital's first recorded update); the Gradient inversion page has "
                           "stronger ones.")
            for orig_mri, rec_mri, orig_ct, rec_ct in patient_pairs(cell.run, w):
                a, b, c, d = st.columns(4)
                a.image(orig_mri, caption="Patient's MRI", width="stretch")
                b.image(rec_mri, caption="Rebuilt MRI", width="stretch")
                c.image(orig_ct, caption="Patient's CT", width="stretch")
                d.image(rec_ct, caption="Rebuilt CT", width="stretch")
        final = cell.summary.federation.final
        if final:
            st.caption(f"Shared model's synthetic-CT error (MAE) {final.mae_hu:.0f} HU · "
                       f"run `{cell.run.run_id}`")
