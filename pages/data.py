"""Data & centers: what each simulated hospital's scans look like, checking and saving your own
NIfTI MRI/CT pairs as a cohort folder, and where SynthRAD2023 data plug in."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from app.data import check_upload, clear_upload, phantom_preview, slice_viewer, upload_boxes
from app.state import remember, session_owner
from app.views.common import PAGES_DIR
from app.views.data import (
    COHORT_PRESET,
    DATA_ROOTS_ENV,
    MIN_PATIENTS,
    PHANTOM_INTRO,
    SYNTHRAD_INTRO,
    UPLOAD_INTRO,
    UPLOAD_LIMITS,
    allowed_data_path,
    cohort_sets,
    confined_patients,
    data_roots,
    run_command,
    with_file_names,
)
from app.widgets import queued_behind, refusal_shown
from engine.core.config import DataConfig
from engine.data.nifti import NiftiError, load_affine
from engine.data.synthrad import scan_synthrad
from engine.data.types import PatientVolume
from engine.data.uploads import (
    LETTERS,
    cohort_counts,
    next_letter,
    next_number,
    patient_id,
    save_patient,
    uploads_folder,
)
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


def _upload() -> tuple[PatientVolume, list[UploadedFile | None]] | None:
    """The three upload boxes; the checked pair and its files once they belong together."""
    st.caption(UPLOAD_LIMITS)
    files = upload_boxes(["nii", "nii.gz", "gz"])
    mri_file, ct_file, mask_file = files
    if mri_file is None or ct_file is None:
        st.caption("Choose both an MRI and a CT file to check and preview them.")
        return None
    try:
        pair = check_upload(mri_file, ct_file, mask_file)
    except NiftiError as exc:
        names = {f"uploaded {kind}": f.name for kind, f in zip(("MRI", "CT", "mask"), files,
                                                                strict=True) if f is not None}
        st.error(f"These files cannot be used. {with_file_names(str(exc), names)}.",
                 icon=":material/error:")
        return None
    st.success("The files are readable and belong together.", icon=":material/check_circle:")
    slice_viewer(pair)
    return pair, files


def _save(pair: PatientVolume, files: list[UploadedFile | None]) -> None:
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
    with_mask = files[2] is not None
    st.caption(f"Will be saved as `{folder / pid}` (`mr.nii.gz`, `ct.nii.gz`"
               f"{', `mask.nii.gz`' if with_mask else ''}). The third letter of the "
               f"folder name ({letter}) tells the lab which hospital the patient belongs to.")
    if st.button("Save this patient", key="save_upload", icon=":material/save:"):
        try:
            # The header alone: the voxels were read by the check.
            affine = load_affine(files[0].getvalue(), name="uploaded MRI")
            saved = save_patient(folder, letter, int(number), pair, affine, with_mask=with_mask)
        except FileExistsError:
            st.error(f"Patient {pid} already exists in `{folder}`; nothing was changed. Choose "
                     f"another patient number, or delete that folder first to replace it.")
        except (NiftiError, OSError) as exc:
            st.error(f"The patient could not be saved: {exc}.")
        else:
            # The saved pair leaves the server's memory and the boxes; rerun so the hospital
            # list and the next free number include the new patient.
            clear_upload(files)
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
    upload = _upload()
    if upload is not None:
        _save(*upload)
    if saved_message := st.session_state.pop(SAVED_KEY, None):
        st.success(saved_message, icon=":material/check_circle:")
    _cohort(uploads_folder(runs_root()))
    _synthrad()


main()

