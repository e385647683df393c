"""Streamlit widgets of the Data & centers page: phantom preview, the upload boxes and their
check (kept per session), and the slice viewer.

Validation is the engine's (``engine.data.nifti``), saving too (``engine.data.uploads``).
Uploaded volumes are limited to 256³ voxels and 130 MiB per file
(``engine.data.nifti.NiftiLimits``; the server's transfer cap, ``app.views.data.MAX_UPLOAD_MB``,
is set just above that), so a session holds at most three uploaded files and one checked pair:
two float32 volumes and a mask, about 150 MiB. Both go when the pair is saved or the session
ends.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from app.views import data as views
from app.views.common import hospital_name, upscale
from engine.core.render import CT_WINDOW_HU, to_gray
from engine.data.nifti import NiftiError, load_affine, load_nifti_pair
from engine.data.phantom import center_profile, phantom_patient
from engine.data.types import PatientVolume
from engine.data.uploads import (
    cohort_counts,
    next_letter,
    next_number,
    patient_id,
    save_patient,
    uploads_folder,
)
from engine.orchestration.resources import release_freed_memory
from engine.orchestration.store import runs_root

PREVIEW_SEED = 0
PREVIEW_SIZE = 128


# --------------------------------------------------------------------------- phantom preview


@st.cache_data(max_entries=8, show_spinner="Generating one artificial patient per hospital…")
def preview_slices(centers: int, seed: int = PREVIEW_SEED,
                   size: int = PREVIEW_SIZE) -> list[tuple[np.ndarray, np.ndarray]]:
    """One mid-brain axial slice (MRI in [0, 1], CT in HU) of patient 0 of every center."""
    out = []
    for c in range(centers):
        s = phantom_patient(seed, c, 0, image_size=size, n_slices=1)
        out.append((s.mri[0, 0], s.ct_hu[0, 0]))
    return out


def phantom_preview(centers: int) -> None:
    """Hospitals side by side: MRI above CT, with each scanner's main settings."""
    lo, hi = CT_WINDOW_HU
    for c, (col, (mri, ct)) in enumerate(zip(st.columns(centers), preview_slices(centers),
                                             strict=True)):
        p = center_profile(PREVIEW_SEED, c)
        col.markdown(f"**{hospital_name(f'center-{c}')}**")
        col.image(to_gray(mri, 0, 1), caption="MRI", width="stretch")
        col.image(to_gray(ct, lo, hi), caption=f"CT ({lo:.0f} to {hi:.0f} HU)",
                  width="stretch")
        col.caption(f"Field of view {p.fov_mm:.0f} mm · MRI noise {p.rician_sigma:.3f} · "
                    f"MRI brightness ×{p.mri_gain:.2f} · CT noise {p.ct_noise_hu:.0f} HU")


# --------------------------------------------------------------------------- upload checks

SAVED_KEY = "data_saved_message"  # the one-off message after a save
_CHECKED = "_upload_checked"  # session key: (the files' upload ids, the engine's verdict)
_ROUND = "_upload_round"  # session key: bumped to give the upload boxes fresh, empty keys
BOXES = (("MRI", "up_mri"), ("CT (Hounsfield units)", "up_ct"), ("Body mask (optional)",
                                                                  "up_mask"))


def upload_boxes(kinds: list[str]) -> list[UploadedFile | None]:
    """The three upload boxes side by side (MRI, CT, mask); the file in each, or None."""
    round_ = st.session_state.get(_ROUND, 0)
    return [col.file_uploader(label, type=kinds, key=f"{key}-{round_}" if round_ else key)
            for col, (label, key) in zip(st.columns(3), BOXES, strict=True)]


def check_upload(mri: UploadedFile, ct: UploadedFile,
                 mask: UploadedFile | None) -> PatientVolume:
    """The engine's verdict on an uploaded pair: the volume, or ``NiftiError`` with a
    readable message. The verdict (a refusal as well as a volume) is kept in this session
    for these uploads, so neither a slider move nor a rerun reads the files again, and it
    goes with the session or with the next upload: one pair per session, never shared."""
    ids = tuple(f.file_id if f is not None else None for f in (mri, ct, mask))
    held = st.session_state.get(_CHECKED)
    if held is None or held[0] != ids:
        st.session_state.pop(_CHECKED, None)  # the previous pair goes before this one is read
        with st.spinner("Checking the files…"):
            try:
                verdict: PatientVolume | NiftiError = load_nifti_pair(
                    mri.getvalue(), ct.getvalue(), mask.getvalue() if mask else None,
                    patient_id="upload")
            except NiftiError as err:
                verdict = err
        st.session_state[_CHECKED] = held = (ids, verdict)
    if isinstance(held[1], NiftiError):
        raise held[1]
    return held[1]


def clear_upload(files: list[UploadedFile | None]) -> None:
    """Forget an upload once it is saved: the checked volume, the uploaded bytes (the
    server keeps them until the session ends otherwise) and the boxes' contents."""
    st.session_state.pop(_CHECKED, None)
    ctx = get_script_run_ctx()
    if runtime.exists() and ctx is not None:
        for f in files:
            if f is not None:
                runtime.get_instance().uploaded_file_mgr.remove_file(ctx.session_id, f.file_id)
    st.session_state[_ROUND] = st.session_state.get(_ROUND, 0) + 1
    release_freed_memory()


def slice_viewer(pv: PatientVolume) -> None:
    """Slider over axial slices, MRI | CT side by side, and the volume's facts."""
    for col, (label, value) in zip(st.columns(4), views.volume_facts(pv).items(), strict=True):
        col.metric(label, value)
    n = pv.mri.shape[2]
    # Counted from 1 as people count slices ("slice 20 of 20"); z indexes from 0.
    shown = st.slider("Axial slice", 1, n, n // 2 + 1, key="slice",
                      help="Move through the head from bottom to top.") if n > 1 else 1
    z = shown - 1
    m_lo, m_hi = views.mri_window(pv.mri)
    c_lo, c_hi = CT_WINDOW_HU
    target = 320
    left, right = st.columns(2)
    left.image(upscale(to_gray(views.axial(pv.mri, z), m_lo, m_hi), target),
               caption=f"MRI, slice {shown} of {n}", width="stretch")
    right.image(upscale(to_gray(views.axial(pv.ct_hu, z), c_lo, c_hi), target),
                caption=f"CT, slice {shown} of {n} ({c_lo:.0f} to {c_hi:.0f} HU)",
                width="stretch")


def upload_section() -> tuple[PatientVolume, list[UploadedFile | None]] | None:
    """The three upload boxes; the checked pair and its files once they belong together."""
    st.caption(views.UPLOAD_LIMITS)
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
        st.error(f"These files cannot be used. {views.with_file_names(str(exc), names)}.",
                 icon=":material/error:")
        return None
    st.success("The files are readable and belong together.", icon=":material/check_circle:")
    slice_viewer(pair)
    return pair, files


def save_section(pair: PatientVolume, files: list[UploadedFile | None]) -> None:
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
