"""Streamlit widgets of the Data & centers page: phantom preview, the cached NIfTI upload
check, the slice viewer and saving an uploaded pair into a NIfTI cohort folder.

Validation is the engine's (``engine.data.nifti``); naming and the folder layout are in
``app.views.data``. Uploaded volumes are limited to 256³ voxels and 130 MiB per file
(``engine.data.nifti.NiftiLimits``; ``server.maxUploadSize`` in ``.streamlit/config.toml`` is set
just above that), so a checked pair holds at most about 150 MiB: two float32 volumes and a mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app.views import data as views
from app.views.common import hospital_name, upscale
from engine.core.render import CT_WINDOW_HU, to_gray
from engine.data.nifti import NiftiError, load_affine, load_nifti_pair
from engine.data.phantom import center_profile, phantom_patient
from engine.data.types import PatientVolume

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


# A resource cache, not cache_data: cache_data would keep a pickled copy of every checked pair
# and unpickle another on each rerun (up to ~150 MiB each at 256³); two entries are the pair on
# screen and the one before it.
@st.cache_resource(max_entries=2, show_spinner="Checking the files…")
def _checked(mri: bytes, ct: bytes, mask: bytes | None) -> PatientVolume | NiftiError:
    """The engine's verdict on an uploaded pair, the volume or the refusal: both are cached
    (an exception would not be), so neither a slider move nor a rerun reads the files again.
    The cached volume is shared by every rerun (and by sessions that upload the same files),
    so its arrays are made read-only."""
    try:
        pv = load_nifti_pair(mri, ct, mask, patient_id="upload")
    except NiftiError as err:
        return err
    for array in (pv.mri, pv.ct_hu, pv.mask):
        array.flags.writeable = False
    return pv


def check_pair(mri: bytes, ct: bytes, mask: bytes | None) -> PatientVolume:
    """The checked pair; raises NiftiError with a readable message (see :func:`_checked`)."""
    checked = _checked(mri, ct, mask)
    if isinstance(checked, NiftiError):
        raise checked
    return checked


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


def save_patient(folder: Path, letter: str, number: int, mri: bytes, ct: bytes,
                 mask: bytes | None) -> Path:
    """Check an uploaded pair and save it as patient ``number`` of hospital ``letter``.

    See ``app.views.data.save_patient`` for the folder written and the numbering rule.

    Raises:
        FileExistsError: the patient already exists, or the hospital has no free number.
        NiftiError: the files are unusable.
    """
    pv = check_pair(mri, ct, mask)
    affine = load_affine(mri, name="uploaded MRI")  # the header alone: check_pair read the rest
    return views.save_patient(folder, letter, number, pv, affine, with_mask=mask is not None)
