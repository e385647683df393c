"""Display and file helpers for the Data & centers page: phantom preview, NIfTI upload checks,
the slice viewer and saving an uploaded pair into a NIfTI cohort folder.

Validation is the engine's (``engine.data.nifti``); the folder layout is the one
``data.source: nifti`` reads (``engine.data.cohort`` → ``engine.data.synthrad``):
``<folder>/<patient ID>/{mr,ct,mask}.nii.gz`` where the ID's third character is the hospital's
letter, e.g. ``uploads/1BA001/mr.nii.gz`` is patient 1 of hospital A.
"""

from __future__ import annotations

import shlex
import string
from pathlib import Path

import numpy as np
import streamlit as st

from app.ui import upscale
from engine.core.render import CT_WINDOW_HU, to_gray
from engine.data.nifti import load_nifti_pair, load_volume, save_patient_folder
from engine.data.phantom import center_profile, phantom_patient
from engine.data.types import PatientVolume

PREVIEW_SEED = 0
PREVIEW_SIZE = 128
UPLOADS = "uploads"
ID_PREFIX = "1B"  # SynthRAD2023 style: task 1, brain; the next letter is the hospital
MIN_PATIENTS = 2  # a hospital needs one patient to train on and one held out
LETTERS = string.ascii_uppercase


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
        col.markdown(f"**Hospital {c + 1}**")
        col.image(to_gray(mri, 0, 1), caption="MRI", width="stretch")
        col.image(to_gray(ct, lo, hi), caption=f"CT ({lo:.0f} to {hi:.0f} HU)",
                  width="stretch")
        col.caption(f"Field of view {p.fov_mm:.0f} mm · MRI noise {p.rician_sigma:.3f} · "
                    f"MRI brightness ×{p.mri_gain:.2f} · CT noise {p.ct_noise_hu:.0f} HU")


# --------------------------------------------------------------------------- upload checks


@st.cache_data(max_entries=4, show_spinner="Checking the files…")
def check_pair(mri: bytes, ct: bytes, mask: bytes | None) -> PatientVolume:
    """The engine's validation of an uploaded pair; raises NiftiError with a readable message.

    Errors are not cached (Streamlit re-raises and retries), successes are, so moving the
    slice slider does not re-read the files.
    """
    return load_nifti_pair(mri, ct, mask, patient_id="upload")


def with_file_names(message: str, names: dict[str, str]) -> str:
    """The engine calls uploads 'uploaded MRI' etc.; name the user's own files instead."""
    for placeholder, name in names.items():
        message = message.replace(f"'{placeholder}'", f"'{name}'")
    return message


def axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of an ``(X, Y, Z)`` RAS volume as ``(Y, X)``, anterior at the top."""
    return np.flip(volume[:, :, z].T, axis=0)


def mri_window(mri: np.ndarray) -> tuple[float, float]:
    """Display range of an MRI in scanner units: 0.5th…99.5th percentile."""
    lo, hi = (float(v) for v in np.percentile(mri, [0.5, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def volume_facts(pv: PatientVolume) -> dict[str, str]:
    sx, sy, sz = pv.spacing_mm
    return {
        "Shape (voxels)": "×".join(str(s) for s in pv.mri.shape),
        "Voxel size (mm)": "×".join(f"{v:.3g}" for v in (sx, sy, sz)),
        "CT range (HU)": f"{float(pv.ct_hu.min()):.0f} to {float(pv.ct_hu.max()):.0f}",
        "Body voxels": f"{int(pv.mask.sum()):,}",
    }


def slice_viewer(pv: PatientVolume) -> None:
    """Slider over axial slices, MRI | CT side by side, and the volume's facts."""
    for col, (label, value) in zip(st.columns(4), volume_facts(pv).items(), strict=True):
        col.metric(label, value)
    n = pv.mri.shape[2]
    z = st.slider("Axial slice", 0, n - 1, n // 2, key="slice",
                  help="Move through the head from bottom to top.") if n > 1 else 0
    m_lo, m_hi = mri_window(pv.mri)
    c_lo, c_hi = CT_WINDOW_HU
    target = 320
    left, right = st.columns(2)
    left.image(upscale(to_gray(axial(pv.mri, z), m_lo, m_hi), target),
               caption=f"MRI, slice {z} of {n - 1}", width="stretch")
    right.image(upscale(to_gray(axial(pv.ct_hu, z), c_lo, c_hi), target),
                caption=f"CT, slice {z} of {n - 1} ({c_lo:.0f} to {c_hi:.0f} HU)",
                width="stretch")


# --------------------------------------------------------------------------- cohort folder


def uploads_folder(runs_folder: Path) -> Path:
    return runs_folder / UPLOADS


def patient_id(letter: str, number: int) -> str:
    return f"{ID_PREFIX}{letter}{number:03d}"


def cohort_counts(folder: Path) -> dict[str, int]:
    """Hospital letter → number of saved patients in the cohort folder."""
    counts: dict[str, int] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_dir() and len(p.name) >= 3 and p.name[2] in LETTERS:
                counts[p.name[2]] = counts.get(p.name[2], 0) + 1
    return counts


def next_letter(counts: dict[str, int]) -> str | None:
    return next((x for x in LETTERS if x not in counts), None)


def next_number(folder: Path, letter: str) -> int:
    taken = {int(p.name[3:]) for p in folder.glob(f"{ID_PREFIX}{letter}[0-9][0-9][0-9]")}
    return next(n for n in range(1, 1000) if n not in taken) if len(taken) < 999 else 999


def save_patient(folder: Path, letter: str, number: int, mri: bytes, ct: bytes,
                 mask: bytes | None) -> Path:
    """Write a checked pair as ``<folder>/<ID>/{mr,ct[,mask]}.nii.gz``; returns the folder.

    The volumes are re-written from the validated voxels (RAS order, the MRI's grid), so no
    free-text header field (which may hold a patient's name) is copied. Raises
    FileExistsError for a patient that is already there, NiftiError for unusable files.
    """
    if letter not in LETTERS or not 1 <= number <= 999:
        raise ValueError(f"hospital letter {letter!r} / patient number {number} out of range")
    target = folder / patient_id(letter, number)
    if target.exists():
        raise FileExistsError(target)
    pv = check_pair(mri, ct, mask)
    _, affine = load_volume(mri, name="uploaded MRI")
    save_patient_folder(pv, target, affine, with_mask=mask is not None)
    return target


def run_command(folder: Path, counts: dict[str, int]) -> str | None:
    """The CLI command that trains on the folder, or None while it is not usable yet."""
    ready = {k: n for k, n in counts.items() if n >= MIN_PATIENTS}
    if not ready or len(ready) != len(counts):
        return None
    per_center = min(ready.values()) - 1
    return ("fedsct run --preset smoke --set data.source=nifti "
            f"--set data.path={shlex.quote(str(folder))} --set data.centers={len(ready)} "
            f"--set data.patients_per_center={per_center} --set data.heldout_per_center=1")

