"""The store of uploaded patients: one NIfTI cohort folder under the runs root, and the
what-if page's example patients beside it.

The layout is the one ``data.source: nifti`` reads (``engine.data.cohort`` →
``engine.data.synthrad``): ``<folder>/<patient ID>/{mr,ct[,mask]}.nii.gz`` where the ID's
third character is the hospital's letter, e.g. ``uploads/1BA001/mr.nii.gz`` is patient 1 of
hospital A. Every volume is written from validated voxels (``engine.data.nifti``), never by
copying an uploaded file.
"""

from __future__ import annotations

import errno
import string
from pathlib import Path

import numpy as np

from engine.data.nifti import save_patient_folder
from engine.data.phantom import example_patient_volume
from engine.data.types import PatientVolume

UPLOADS = "uploads"
EXAMPLES = "whatif-examples"
ID_PREFIX = "1B"  # SynthRAD2023 style: task 1, brain; the next letter is the hospital
LETTERS = string.ascii_uppercase


def uploads_folder(runs_folder: Path) -> Path:
    return runs_folder / UPLOADS


def patient_id(letter: str, number: int) -> str:
    return f"{ID_PREFIX}{letter}{number:03d}"


def cohort_counts(folder: Path) -> dict[str, int]:
    """Hospital letter → number of saved patients in the cohort folder."""
    counts: dict[str, int] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            # Hidden folders are saves in progress (see save_patient_folder), not patients.
            if p.is_dir() and not p.name.startswith(".") and len(p.name) >= 3 \
                    and p.name[2] in LETTERS:
                counts[p.name[2]] = counts.get(p.name[2], 0) + 1
    return counts


def next_letter(counts: dict[str, int]) -> str | None:
    return next((x for x in LETTERS if x not in counts), None)


def next_number(folder: Path, letter: str) -> int:
    taken = {int(p.name[3:]) for p in folder.glob(f"{ID_PREFIX}{letter}[0-9][0-9][0-9]")}
    return next(n for n in range(1, 1000) if n not in taken) if len(taken) < 999 else 999


def save_patient(folder: Path, letter: str, number: int, pv: PatientVolume,
                 affine: np.ndarray, *, with_mask: bool) -> Path:
    """Write a checked patient as ``<folder>/<ID>/{mr,ct[,mask]}.nii.gz``; returns the folder.

    The volumes are written from the validated voxels (RAS order, the MRI's grid, ``affine``
    its 4×4 voxel→mm matrix), so no free-text header field (which may hold a patient's name)
    is copied. If another save takes patient ``number`` while this one is writing (two
    sessions saving at once), the patient gets the next free number instead; the returned
    folder's name is the ID used.

    Raises:
        ValueError: the letter is not A–Z or the number not 1–999.
        FileExistsError: the patient already exists before saving starts, or every number
            of the hospital is taken.
    """
    if len(letter) != 1 or letter not in LETTERS or not 1 <= number <= 999:
        raise ValueError(f"hospital letter {letter!r} / patient number {number} out of range")
    target = folder / patient_id(letter, number)
    if target.exists():
        raise FileExistsError(errno.EEXIST, "patient already exists", str(target))
    for n in [number, *range(number + 1, 1000), *range(1, number)]:
        target = folder / patient_id(letter, n)
        if target.exists():
            continue
        try:
            return save_patient_folder(pv, target, affine, with_mask=with_mask)
        except FileExistsError:
            continue  # another save got this number first: take the next free one
    raise FileExistsError(errno.EEXIST, f"hospital {letter} has no free patient number left",
                          str(folder))


def add_example_patient(runs_folder: Path, center: int) -> Path:
    """Save a new artificial patient scanned at ``center`` (never part of any cohort) under
    ``<runs root>/whatif-examples/``, as NIfTI like an upload; returns its folder."""
    parent = runs_folder / EXAMPLES
    number = next(n for n in range(1, 10_000) if not (parent / f"example-{n:03d}").exists())
    # Patient numbers from 500 up are never drawn by a cohort (at most 64 + 64 per center).
    volume = example_patient_volume(0, center, 500 + number)
    return save_patient_folder(volume, parent / f"example-{number:03d}")
