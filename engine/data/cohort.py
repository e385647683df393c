"""Build the federation's cohort from the configured source (phantom, SynthRAD, NIfTI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.config import DataConfig
from engine.data.phantom import phantom_cohort
from engine.data.preprocess import volume_to_slices
from engine.data.types import CenterData, Cohort, SliceSet


def load_cohort(data: DataConfig, seed: int,
                progress: Callable[[str], None] = lambda _msg: None) -> Cohort:
    """The cohort described by ``data`` (``source``: phantom | synthrad | nifti)."""
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


def _folder_cohort(data: DataConfig, progress: Callable[[str], None]) -> Cohort:
    """SynthRAD2023 layout ``<root>/<ID>/{mr,ct,mask}.nii.gz``; center = ID's third letter.

    ``nifti`` uses the same layout (any folder names whose third character marks the center).
    The first ``centers`` center letters train; with ``unseen_center`` the next one is unseen.
    """
    from engine.data.synthrad import load_synthrad_patient, scan_synthrad

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
        parts = []
        for f in folders:
            progress(f"loading {f.name}")
            parts.append(volume_to_slices(load_synthrad_patient(f), data.image_size,
                                          data.slices_per_patient))
        return SliceSet.concat(parts)

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
