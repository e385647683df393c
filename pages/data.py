"""Data & centers: what each simulated hospital's scans look like, checking and saving your own
NIfTI MRI/CT pairs as a cohort folder, and where SynthRAD2023 data plug in."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.data import SAVED_KEY, phantom_preview, save_section, upload_section
from app.params import FEDERATION_RUN
from app.state import remember, session_owner
from app.views.common import PAGES_DIR
from app.views.data import (
    COHORT_PRESET,
    DATA_ROOTS_ENV,
    MIN_PATIENTS,
    PHANTOM_INTRO,
    SYNTHRAD_INTRO,
    UPLOAD_INTRO,
    allowed_data_path,
    cohort_sets,
    confined_patients,
    data_roots,
    run_command,
)
from app.widgets import queued_behind, refusal_shown
from engine.core.config import DataConfig
from engine.data.synthrad import scan_synthrad
from engine.data.uploads import LETTERS, cohort_counts, uploads_folder
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import runs_root


def _cohort(folder: Path) -> None:
    """The saved patients per hospital and the button that trains a federation on them."""
    counts = cohort_counts(folder)
    if not counts:
        return
    st.subheader("Your cohort")
    st.markdown(f"In `{folder}`: " + ", ".join(
        f"hospital {x}: {n} patient{'s' if n != 1 else ''}" for x, n in counts.items()))
    sets = cohort_sets(folder, counts)
    if sets is None:
        st.caption(f"Each hospital needs at least {MIN_PATIENTS} patients (one to train on, one "
                   "held out to test) before a federation can train on the cohort.")
        return
    behind = queued_behind()
    if st.button("Train a federation on these patients", key="train_cohort",
                 icon=":material/play_arrow:",
                 help=(f"Queued behind {behind}: it starts when that job ends. " if behind
                       else "") + "Each hospital trains on all its patients but one, which is "
                       "held out to test the shared model (about a minute)."):
        with refusal_shown("The federation"):
            run = start_job(build_config(COHORT_PRESET, sets=sets), preset=COHORT_PRESET,
                            owner=session_owner())
            remember(FEDERATION_RUN, run.run_id)
            st.switch_page(str(PAGES_DIR / "federation.py"),
                           query_params={FEDERATION_RUN: run.run_id})
    st.caption("The same from a terminal:")
    st.code(run_command(folder, counts) or "", language="bash")


def _synthrad() -> None:
    st.header("SynthRAD2023 brain data")
    st.markdown(SYNTHRAD_INTRO)
    roots = data_roots(runs_root())
    path = st.text_input("Check a SynthRAD2023 folder", key="synthrad_path",
                         placeholder=str(roots[0] / "Task1" / "brain"),
                         help="Only folders inside " + ", ".join(f"`{r}`" for r in roots)
                              + f" can be read here (set {DATA_ROOTS_ENV} to change that).")
    if not path.strip():
        return
    try:
        groups = confined_patients(scan_synthrad(allowed_data_path(path, roots)), roots)
    except ValueError as exc:  # a NiftiError too
        st.warning(f"{exc}.")
    else:
        found = ", ".join(f"hospital {x}: {len(v)} patients" for x, v in groups.items()
                          if x in LETTERS)
        st.success(f"Found {found}.")


def main() -> None:
    st.title("Data & centers")
    st.header("The simulated hospitals")
    st.markdown(PHANTOM_INTRO)
    phantom_preview(DataConfig().centers)
    st.header("Use your own scans (NIfTI)")
    st.markdown(UPLOAD_INTRO)
    upload = upload_section()
    if upload is not None:
        save_section(*upload)
    if saved_message := st.session_state.pop(SAVED_KEY, None):
        st.success(saved_message, icon=":material/check_circle:")
    _cohort(uploads_folder(runs_root()))
    _synthrad()


main()

