"""Build the federation's cohort from the configured source (phantom, SynthRAD, NIfTI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.config import DataConfig
from engine.data.phantom import phantom_cohort
from engine.data.preprocess import volume_to_slices
from engine.data.types import CenterData, Cohort, SliceSet

WHATIF_PREFIX = "whatif-"


def whatif_patient_id(data: DataConfig) -> str | None:
    """The cohort's id of ``data.whatif_patient`` (its folder name, marked as added)."""
    return None if data.whatif_patient is None else WHATIF_PREFIX + Path(data.whatif_patient).name


def load_cohort(data: DataConfig, seed: int,
                progress: Callable[[str], None] = lambda _msg: None) -> Cohort:
    """The cohort described by ``data`` (``source``: phantom | synthrad | nifti), with
    ``data.whatif_patient`` (if set) added to center ``data.whatif_center``'s training set."""
    cohort = _base_cohort(data, seed, progress)
    if data.whatif_patient is not None:
        _add_whatif_patient(cohort, data, progress)
    return cohort


def _add_whatif_patient(cohort: Cohort, data: DataConfig,
                        progress: Callable[[str], None]) -> None:
    """Append the what-if patient's slices (same size and count as everyone's) to the
    training patients of center ``data.whatif_center``."""
    from dataclasses import replace

    from engine.data.synthrad import load_synthrad_patient

    folder = Path(data.whatif_patient or "")
    progress(f"loading the what-if patient {folder.name}")
    volume = replace(load_synthrad_patient(folder), patient_id=whatif_patient_id(data))
    center = cohort.centers[data.whatif_center]
    center.train = SliceSet.concat(
        [center.train, volume_to_slices(volume, data.image_size, data.slices_per_patient)])


def _base_cohort(data: DataConfig, seed: int, progress: Callable[[str], None]) -> Cohort:
    if data.source == "phantom":
        progress("generating phantom patients")
        return phantom_cohort(
            seed, centers=data.centers, patients_per_center=data.patients_per_center,
            heldout_per_center=data.heldout_per_center,
            slices_per_patient=data.slices_per_patient, image_size=data.image_size,
            unseen_center=data.unseen_center, unseen_patients=data.unseen_patients,
            lesion_probability=data.lesion_probability,
        )
    return _folder_cohort(data, progress)


def folder_slices(folders: list[Path], data: DataConfig,
                  progress: Callable[[str], None] = lambda _msg: None) -> SliceSet:
    """The slices of the patient folders ``folders`` (``<ID>/{mr,ct[,mask]}.nii.gz``), cut
    as ``data`` says."""
    from engine.data.synthrad import load_synthrad_patient

    parts = []
    for f in folders:
        progress(f"loading {f.name}")
        parts.append(volume_to_slices(load_synthrad_patient(f), data.image_size,
                                      data.slices_per_patient))
    return SliceSet.concat(parts)


def _folder_cohort(data: DataConfig, progress: Callable[[str], None]) -> Cohort:
    """SynthRAD2023 layout ``<root>/<ID>/{mr,ct,mask}.nii.gz``; center = ID's third letter.

    ``nifti`` uses the same layout (any folder names whose third character marks the center).
    The first ``centers`` center letters train; with ``unseen_center`` the next one is unseen.
    """
    from engine.data.synthrad import scan_synthrad

    groups = scan_synthrad(Path(data.path))
    letters = sorted(groups)
    need = data.centers + int(data.unseen_center)
    if len(letters) < need:
        raise ValueError(
            f"data.path {data.path!r} holds centers {letters}, but data.centers = "
            f"{data.centers}{' plus an unseen center' if data.unseen_center else ''} "
            f"needs {need}; lower data.centers"
        )

    def slices(folders: list[Path]) -> SliceSet:
        return folder_slices(folders, data, progress)

    centers = []
    for letter in letters[: data.centers]:
        folders = groups[letter]
        n_train, n_test = data.patients_per_center, data.heldout_per_center
        if len(folders) < n_train + n_test:
            raise ValueError(
                f"center {letter} has {len(folders)} patients, fewer than "
                f"data.patients_per_center + data.heldout_per_center = {n_train + n_test}"
            )
        centers.append(CenterData(name=f"center-{letter}", train=slices(folders[:n_train]),
                                  test=slices(folders[n_train : n_train + n_test])))
    unseen = None
    if data.unseen_center:
        letter = letters[data.centers]
        test = slices(groups[letter][: data.unseen_patients])
        unseen = CenterData(name=f"unseen-{letter}",
                            train=test.select(np.zeros(len(test), bool)), test=test)
    return Cohort(centers, unseen, description=f"SynthRAD2023 folder {data.path}")
