"""Data & centers: what each simulated hospital's scans look like, checking and saving your own
NIfTI MRI/CT pairs as a cohort folder, and where SynthRAD2023 data plug in."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.data import check_pair, phantom_preview, save_patient, slice_viewer
from app.state import remember, session_owner
from app.views.common import PAGES_DIR
from app.views.data import (
    COHORT_PRESET,
    DATA_ROOTS_ENV,
    LETTERS,
    MIN_PATIENTS,
    PHANTOM_INTRO,
    SYNTHRAD_INTRO,
    UPLOAD_INTRO,
    UPLOAD_LIMITS,
    allowed_data_path,
    cohort_counts,
    cohort_sets,
    confined_patients,
    data_roots,
    next_letter,
    next_number,
    patient_id,
    run_command,
    uploads_folder,
    with_file_names,
)
from app.widgets import queued_behind, refusal_shown
from engine.core.config import DataConfig
from engine.data.nifti import NiftiError
from engine.data.synthrad import scan_synthrad
from engine.orchestration.jobs import start_job
from engine.orchestration.presets import build_config
from engine.orchestration.store import runs_root

SAVED_KEY = "data_saved_message"


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
            remember("run", run.run_id)
            st.switch_page(str(PAGES_DIR / "federation.py"), query_params={"run": run.run_id})
    st.caption("The same from a terminal:")
    st.code(run_command(folder, counts) or "", language="bash")


def _upload() -> tuple[bytes, bytes, bytes | None] | None:
    """The three upload boxes; the checked files (MRI, CT, mask) once they belong together."""
    st.caption(UPLOAD_LIMITS)
    c1, c2, c3 = st.columns(3)
    kinds = ["nii", "nii.gz", "gz"]
    mri_file = c1.file_uploader("MRI", type=kinds, key="up_mri")
    ct_file = c2.file_uploader("CT (Hounsfield units)", type=kinds, key="up_ct")
    mask_file = c3.file_uploader("Body mask (optional)", type=kinds, key="up_mask")
    if mri_file is None or ct_file is None:
        st.caption("Choose both an MRI and a CT file to check and preview them.")
        return None
    mri, ct = mri_file.getvalue(), ct_file.getvalue()
    mask = mask_file.getvalue() if mask_file is not None else None
    try:
        pair = check_pair(mri, ct, mask)
    except NiftiError as exc:
        names = {"uploaded MRI": mri_file.name, "uploaded CT": ct_file.name}
        if mask_file is not None:
            names["uploaded mask"] = mask_file.name
        st.error(f"These files cannot be used. {with_file_names(str(exc), names)}.",
                 icon=":material/error:")
        return None
    st.success("The files are readable and belong together.", icon=":material/check_circle:")
    slice_viewer(pair)
    return mri, ct, mask


def _save(mri: bytes, ct: bytes, mask: bytes | None) -> None:
    """Where the checked pair goes (hospital and patient number) and the Save button."""
    st.subheader("Add this patient to a hospital")
    folder = uploads_folder(runs_root())
    counts = cohort_counts(folder)
    new = next_letter(counts)
    # "Uploaded": the simulated hospitals above are called Hospital A, B, … too.
    options = ([f"Uploaded hospital {x}" for x in counts]
               + ([f"New uploaded hospital {new}"] if new else []))
    left, right = st.columns(2)
    choice = left.selectbox("Hospital", options, key="save_center",
                            help="Patients of one hospital share its scanners.")
    letter = choice.split()[-1]
    number = right.number_input("Patient number", 1, 999, next_number(folder, letter),
                                key="save_number",
                                help="Any number not used yet in this hospital.")
    pid = patient_id(letter, int(number))
    st.caption(f"Will be saved as `{folder / pid}` (`mr.nii.gz`, `ct.nii.gz`"
               f"{', `mask.nii.gz`' if mask is not None else ''}). The third letter of the "
               f"folder name ({letter}) tells the lab which hospital the patient belongs to.")
    if st.button("Save this patient", key="save_upload", icon=":material/save:"):
        try:
            saved = save_patient(folder, letter, int(number), mri, ct, mask)
        except FileExistsError:
            st.error(f"Patient {pid} already exists in `{folder}`; nothing was changed. Choose "
                     f"another patient number, or delete that folder first to replace it.")
        except (NiftiError, OSError) as exc:
            st.error(f"The patient could not be saved: {exc}.")
        else:
            # Rerun so the hospital list and the next free number include the new patient.
            st.session_state[SAVED_KEY] = f"Saved patient {saved.name} to `{saved}`."
            st.rerun()


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
    files = _upload()
    if files is not None:
        _save(*files)
    if saved_message := st.session_state.pop(SAVED_KEY, None):
        st.success(saved_message, icon=":material/check_circle:")
    _cohort(uploads_folder(runs_root()))
    _synthrad()


main()
